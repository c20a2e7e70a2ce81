"""The baseline: HF transformers' continuous batching on the engine's own weights and the same requests.

    hf_model = build_hf_model(model, engine.hf_config, hf_state_dict(engine.model), device, dtype)
    result = run_hf(hf_model, device, workload.prompts, workload.params, seed)      # PassResult
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import time
from typing import Any

import torch

from traceinfer.engine.device import synchronize
from traceinfer.engine.sampling_params import SamplingParams
from traceinfer.errors import ConfigError
from traceinfer.passes import PassResult

# checkpoint projections packed into one engine parameter, in shard order
_UNFUSE = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}


@torch.no_grad()
def hf_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The engine's weights under HF checkpoint names, fused projections split back, copied to CPU."""
    out: dict[str, torch.Tensor] = {}
    for name, tensor in model.named_parameters(remove_duplicate=False):
        module = name.split(".")[-2] if name.count(".") else ""
        if module in _UNFUSE:
            parts = tensor.detach().split(model.shard_sizes(module), dim=0)
            for hf_module, part in zip(_UNFUSE[module], parts):
                out[name.replace(f".{module}.", f".{hf_module}.")] = part.to("cpu", copy=True)
        else:
            out[name] = tensor.detach().to("cpu", copy=True)
    return out


def build_hf_model(model: str, hf_config, state_dict: dict | None, device: torch.device, dtype: torch.dtype):
    """The HF model on the same weights: from_pretrained for a directory, else the config + the engine's weights."""
    from transformers import AutoModelForCausalLM

    if state_dict is None:
        net = AutoModelForCausalLM.from_pretrained(model, dtype=dtype, attn_implementation="sdpa")
        return net.to(device).eval()
    with torch.device(device):
        net = AutoModelForCausalLM.from_config(hf_config, dtype=dtype, attn_implementation="sdpa")
    missing, unexpected = net.load_state_dict(state_dict, strict=False)
    if unexpected or missing:
        raise ConfigError(f"engine weights do not fit the HF model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return net.eval()


def _accepted(fn, kwargs: dict) -> dict:
    """The kwargs ``fn`` takes (transformers' continuous-batching signatures move between releases)."""
    names = inspect.signature(fn).parameters
    return {k: v for k, v in kwargs.items() if k in names}


def _hf_cb_config(device: torch.device, prompts: list[list[int]], params: list[SamplingParams]):
    """HF's defaults on CUDA; on CPU a cache sized to the workload and small padding buckets (the CUDA-graph
    defaults pad the key length to 16k, which makes CPU sdpa crawl)."""
    from transformers.generation import ContinuousBatchingConfig

    if device.type == "cuda":
        return ContinuousBatchingConfig()
    known = {f.name for f in dataclasses.fields(ContinuousBatchingConfig)}
    defaults = ContinuousBatchingConfig()
    page = getattr(defaults, "page_size", None) or getattr(defaults, "block_size", None) or 256
    pages = sum(math.ceil((len(p) + sp.max_tokens) / page) for p, sp in zip(prompts, params)) + len(prompts)
    wanted = dict(num_blocks=pages, max_batch_tokens=512, q_padding_interval_size=16, kv_padding_interval_size=64)
    return ContinuousBatchingConfig(**{k: v for k, v in wanted.items() if k in known})


def run_hf(
    hf_model, device: torch.device, prompts: list[list[int]], params: list[SamplingParams], seed: int
) -> PassResult:
    """HF transformers continuous batching through its manager: one add_request per request with its max_new_tokens."""
    import transformers
    from transformers import GenerationConfig

    temperature = params[0].temperature
    generation_config = GenerationConfig(
        do_sample=temperature > 0, temperature=temperature if temperature > 0 else None, top_k=0, top_p=1.0,
        eos_token_id=-1, max_new_tokens=max(p.max_tokens for p in params),
    )  # fmt: skip  # eos -1 can never be sampled: ignore_eos
    init_kwargs: dict[str, Any] = {
        "generation_config": generation_config,
        "continuous_batching_config": _hf_cb_config(device, prompts, params),
    }
    try:
        from transformers.generation.continuous_batching.utils import WorkloadHints

        init_kwargs["workload_hints"] = WorkloadHints(
            max_prompt_length=max(map(len, prompts)),
            max_generated_length=max(p.max_tokens for p in params),
            num_requests=len(prompts),
        )
    except ImportError:
        pass
    torch.manual_seed(seed)
    manager = hf_model.init_continuous_batching(**_accepted(hf_model.init_continuous_batching, init_kwargs))
    attn_implementation = getattr(hf_model.config, "_attn_implementation", None)  # stop() restores the original
    if device.type == "cuda" and hasattr(manager, "warmup"):
        manager.warmup()  # CUDA graph capture, as generate_batch does by default
    manager.start()
    try:
        _hf_collect(manager, [[1, 2, 3, 4, 5, 6, 7, 8]], [8], "warmup")  # one short request before the clock starts
        synchronize(device)
        start = time.perf_counter()
        outputs = _hf_collect(manager, prompts, [p.max_tokens for p in params], "req")
        synchronize(device)
        seconds = time.perf_counter() - start
    finally:
        manager.stop(block=True)
        if hasattr(manager, "destroy"):
            manager.destroy()
    timings = [  # created_time and timestamps are time.perf_counter() seconds, the engine's clock
        (int(o.created_time * 1e9), [int(t * 1e9) for t in o.timestamps])
        for o in outputs
        if getattr(o, "timestamps", None) is not None and hasattr(o, "created_time")
    ]
    resolved = getattr(manager, "continuous_batching_config", None)
    details = {
        "transformers": transformers.__version__,
        "attn_implementation": attn_implementation,
        "continuous_batching_config": repr(resolved) if resolved is not None else None,
        "kv_cache": {  # as HF sized it (from the device's free memory on CUDA); block_size is page_size after 5.17
            "num_blocks": getattr(resolved, "num_blocks", None),
            "block_size": getattr(resolved, "page_size", None) or getattr(resolved, "block_size", None),
            "max_batch_tokens": getattr(resolved, "max_batch_tokens", None),
        },
        "api": "init_continuous_batching + manager.add_request(max_new_tokens=...) + get_result",
    }
    return PassResult(
        system="hf",
        num_requests=len(prompts),
        prompt_tokens=sum(map(len, prompts)),
        output_tokens=sum(len(o.generated_tokens) for o in outputs),
        seconds=seconds,
        timings=timings,
        details=details,
    )


def _hf_collect(manager, prompts: list[list[int]], max_new_tokens: list[int], prefix: str) -> list:
    """Add every request, wait for every result; results in request order."""
    ids = []
    for i, (prompt, n) in enumerate(zip(prompts, max_new_tokens)):
        kwargs = dict(
            input_ids=prompt, request_id=f"{prefix}-{i}", max_new_tokens=n, record_timestamps=True, eos_token_id=-1
        )
        ids.append(manager.add_request(**_accepted(manager.add_request, kwargs)))
    done: dict[str, Any] = {}
    while len(done) < len(ids):
        out = manager.get_result(timeout=1)
        if out is None:
            if not _hf_running(manager):
                raise RuntimeError(f"HF continuous batching stopped with {len(ids) - len(done)} requests unfinished")
            continue
        if out.is_finished():
            if getattr(out, "error", None) is not None:
                raise RuntimeError(f"HF continuous batching failed request {out.request_id}: {out.error}")
            done[out.request_id] = out
    return [done[i] for i in ids]


def _hf_running(manager) -> bool:
    if hasattr(manager, "is_running"):
        return manager.is_running()
    thread = getattr(manager, "_generation_thread", None)
    return thread is not None and thread.is_alive()


