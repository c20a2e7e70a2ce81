"""The physical floor of a run: the time the device needs, at its measured copy bandwidth and matmul rate,
to move what must move and compute what must be computed.

    floor_s = (steps x weight bytes + sum over decode steps of context length x KV bytes per token) / bandwidth
              + (2 x layer matmul params x prompt tokens + 4 x layers x q_heads x head_dim x causal pairs) / matmul rate

Fed by the model's shapes as the engine reports them (``CausalLM.shapes()``, recorded in a run's manifest
as ``engine.model_shapes``) and the device rates (traceinfer.engine.device.measure_*, recorded as
``device_rates``): ``run_floor`` computes it from a run directory alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import pandas as pd


@dataclass(frozen=True)
class ModelCost:
    """What a model moves and computes, from its shapes."""

    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    matmul_params: int  # 2-D weights of the decoder layers; prefill samples one row, so lm_head is left out
    weight_bytes: int  # every parameter once (tied embeddings once): read by each step
    dtype_bytes: int

    @classmethod
    def from_shapes(cls, shapes: dict) -> ModelCost:
        """From ``CausalLM.shapes()`` (a manifest's ``engine.model_shapes``)."""
        return cls(**{f.name: int(shapes[f.name]) for f in fields(cls)})

    @property
    def kv_bytes_per_token(self) -> int:
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * self.dtype_bytes


def decode_kv_token_reads(prompt_lens: Sequence[int], output_lens: Sequence[int]) -> int:
    """KV rows read by all decode steps: the first output token comes from prefill, then output k (k >= 2)
    is sampled by a step whose attention reads P + k - 1 rows, so one request reads sum_{j=1}^{O-1} (P + j)."""
    return sum((o - 1) * p + (o - 1) * o // 2 for p, o in zip(prompt_lens, output_lens))


def prefill_attention_pairs(prompt_lens: Sequence[int]) -> int:
    """Causal (query, key) pairs of prefilling every prompt: P (P + 1) / 2 each."""
    return sum(p * (p + 1) // 2 for p in prompt_lens)


def prefill_flops(cost: ModelCost, prompt_lens: Sequence[int]) -> float:
    """2 FLOPs per multiply-add: weights 2 x params per token; attention QK^T and PV, 2 x head_dim each per pair."""
    weights = 2.0 * cost.matmul_params * sum(prompt_lens)
    attention = 4.0 * cost.num_layers * cost.num_heads * cost.head_dim * prefill_attention_pairs(prompt_lens)
    return weights + attention


@dataclass(frozen=True)
class Floor:
    num_steps: int
    weight_read_bytes: float
    kv_read_bytes: float
    prefill_flops: float
    bandwidth_bytes_per_s: float
    matmul_flops_per_s: float
    memory_s: float
    compute_s: float
    seconds: float
    output_tokens: int
    output_tok_s: float


def physical_floor(
    cost: ModelCost,
    prompt_lens: Sequence[int],
    output_lens: Sequence[int],
    num_steps: int,
    bandwidth_bytes_per_s: float,
    matmul_flops_per_s: float,
) -> Floor:
    """Seconds the device needs at its measured rates: weights once per step plus every decode KV read, over the
    copy bandwidth; plus prefill FLOPs over the matmul rate."""
    weight_bytes = float(num_steps) * cost.weight_bytes
    kv_bytes = float(decode_kv_token_reads(prompt_lens, output_lens)) * cost.kv_bytes_per_token
    flops = prefill_flops(cost, prompt_lens)
    memory_s = (weight_bytes + kv_bytes) / bandwidth_bytes_per_s
    compute_s = flops / matmul_flops_per_s
    seconds = memory_s + compute_s
    tokens = sum(output_lens)
    return Floor(
        num_steps=num_steps,
        weight_read_bytes=weight_bytes,
        kv_read_bytes=kv_bytes,
        prefill_flops=flops,
        bandwidth_bytes_per_s=bandwidth_bytes_per_s,
        matmul_flops_per_s=matmul_flops_per_s,
        memory_s=memory_s,
        compute_s=compute_s,
        seconds=seconds,
        output_tokens=tokens,
        output_tok_s=tokens / seconds if seconds > 0 else float("inf"),
    )


def run_floor(manifest: dict, requests: pd.DataFrame, steps: pd.DataFrame) -> Floor | None:
    """The floor of a run directory's workload, from what the run recorded: the model's shapes and the
    device's measured rates (manifest ``engine.model_shapes``, ``device_rates``), every request's prompt and
    output length (stream 'requests') and the steps that ran the model (stream 'steps'). None when the run
    lacks one of them."""
    shapes, rates = manifest.get("engine", {}).get("model_shapes"), manifest.get("device_rates")
    if not shapes or not rates or requests.empty or steps.empty:
        return None
    arrivals = requests[requests["event"] == "arrival"].set_index("request_id")["prompt_len"]
    finished = requests[requests["event"] == "finished"].set_index("request_id")["num_output_tokens"]
    lens = pd.concat([arrivals.rename("prompt"), finished.rename("output")], axis=1, join="inner")
    num_steps = int((steps["num_batched_tokens"].fillna(0) > 0).sum())
    return physical_floor(
        ModelCost.from_shapes(shapes),
        lens["prompt"].astype(int).tolist(),
        lens["output"].astype(int).tolist(),
        num_steps,
        rates["bandwidth_bytes_per_s"],
        rates["matmul_flops_per_s"],
    )
