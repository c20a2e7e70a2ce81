"""``traceinfer bench``: nano-vLLM's offline throughput benchmark, HF's continuous batching, and the physical floor.

The workload is nano-vLLM's bench.py exactly (https://github.com/GeeeekExplorer/nano-vllm/blob/main/bench.py):
``random.seed(0)``; 256 prompts of ``randint(100, 1024)`` random token ids in [0, 10000]; then one
``max_tokens = randint(100, 1024)`` per request; ignore_eos; temperature 0.6. Every request is added at
time 0 (an offline batch), so time to first token includes queueing.

Stages, each a function: ``make_workload`` (pure) -> ``run_traceinfer`` / ``run_hf`` (measure) ->
``latency_summary`` and ``physical_floor`` (pure arithmetic) -> ``format_report`` (text) and the JSON dict.

The floor is the time the device needs at its measured copy bandwidth and matmul rate to move what
must move and compute what must be computed:

    floor_s = (steps x weight bytes + sum over decode steps of context length x KV bytes per token) / bandwidth
              + (2 x layer matmul params x prompt tokens + 4 x layers x q_heads x head_dim x causal pairs) / matmul rate
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import gc
import inspect
import json
import math
import platform
import random
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from traceinfer.config import load_section
from traceinfer.engine.sampling_params import SamplingParams
from traceinfer.engine.synthetic import is_synthetic
from traceinfer.errors import ConfigError, TraceinferError

BENCHMARK = "nano-vLLM offline throughput (bench.py workload)"
CUDA_MODEL = "synthetic:qwen3-0.6b"
CPU_MODEL = "synthetic:tiny"
MAX_TOKEN_ID = 10000  # nano-vLLM draws prompt ids from randint(0, 10000)
PERCENTILES = (50, 90, 99)


# -- workload (pure) -----------------------------------------------------------------------
@dataclass(frozen=True)
class WorkloadSpec:
    num_requests: int = 256
    min_input_len: int = 100
    max_input_len: int = 1024
    min_output_len: int = 100
    max_output_len: int = 1024
    seed: int = 0
    temperature: float = 0.6

    def __post_init__(self) -> None:
        if self.num_requests < 1:
            raise ConfigError(f"bench --num-requests must be >= 1, got {self.num_requests}")
        for kind in ("input", "output"):
            lo, hi = getattr(self, f"min_{kind}_len"), getattr(self, f"max_{kind}_len")
            if not 1 <= lo <= hi:
                raise ConfigError(f"bench --min-{kind}-len/--max-{kind}-len need 1 <= min <= max, got {lo}..{hi}")
        if self.temperature < 0:
            raise ConfigError(f"bench --temperature must be >= 0, got {self.temperature}")


CUDA_WORKLOAD = WorkloadSpec()  # nano-vLLM's
CPU_WORKLOAD = WorkloadSpec(num_requests=16, min_input_len=16, max_input_len=64, min_output_len=16, max_output_len=64)


def make_workload(spec: WorkloadSpec) -> tuple[list[list[int]], list[SamplingParams]]:
    """nano-vLLM's prompts and per-request params; a private Random gives the same draws as random.seed()."""
    rng = random.Random(spec.seed)
    prompts = [
        [rng.randint(0, MAX_TOKEN_ID) for _ in range(rng.randint(spec.min_input_len, spec.max_input_len))]
        for _ in range(spec.num_requests)
    ]
    params = [
        SamplingParams(
            temperature=spec.temperature,
            ignore_eos=True,
            max_tokens=rng.randint(spec.min_output_len, spec.max_output_len),
        )
        for _ in range(spec.num_requests)
    ]
    return prompts, params


# -- latency (pure) ------------------------------------------------------------------------
def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile with linear interpolation between closest ranks (numpy's default); None if empty."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def summarize(values: Sequence[float]) -> dict[str, float | None]:
    out = {f"p{q}": percentile(values, q) for q in PERCENTILES}
    out["mean"] = sum(values) / len(values) if values else None
    return out


def latency_summary(timings: Sequence[tuple[int, Sequence[int]]]) -> dict[str, dict[str, float | None]]:
    """(arrival_ns, token_times_ns) per request -> TTFT and inter-token latency percentiles, in ms."""
    ttft = [(times[0] - arrival) / 1e6 for arrival, times in timings if times]
    itl = [(b - a) / 1e6 for _, times in timings for a, b in zip(times, times[1:])]
    return {"ttft_ms": summarize(ttft), "itl_ms": summarize(itl)}


# -- physical floor (pure) -----------------------------------------------------------------
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

    @property
    def kv_bytes_per_token(self) -> int:
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * self.dtype_bytes


def model_cost(model: torch.nn.Module) -> ModelCost:
    """ModelCost of an engine CausalLM (works on the meta device too)."""
    attn = model.model.layers[0].self_attn
    params = list(model.parameters())  # shared (tied) parameters appear once
    return ModelCost(
        num_layers=len(model.model.layers),
        num_heads=attn.num_heads,
        num_kv_heads=attn.num_kv_heads,
        head_dim=attn.head_dim,
        matmul_params=sum(p.numel() for p in model.model.layers.parameters() if p.dim() == 2),
        weight_bytes=sum(p.numel() * p.element_size() for p in params),
        dtype_bytes=params[0].element_size(),
    )


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


# -- device rates (measured) ---------------------------------------------------------------
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_op(fn, device: torch.device, repeats: int) -> float:
    """Best seconds of ``repeats`` calls after one warm-up; CUDA events on CUDA, perf_counter on CPU."""
    fn()
    synchronize(device)
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            with torch.cuda.device(device):  # events record on the current device's stream
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
            seconds = start.elapsed_time(end) / 1e3
        else:
            t0 = time.perf_counter()
            fn()
            seconds = time.perf_counter() - t0
        best = min(best, seconds)
    return best


def measure_bandwidth(device: torch.device, nbytes: int | None = None, repeats: int = 10) -> float:
    """Device-to-device copy rate in bytes/s, counting bytes read plus bytes written (1 GiB on CUDA, 128 MiB on CPU)."""
    nbytes = nbytes or (2**30 if device.type == "cuda" else 2**27)
    src = torch.empty(nbytes, dtype=torch.uint8, device=device).fill_(1)
    dst = torch.empty_like(src)
    seconds = _time_op(lambda: dst.copy_(src), device, repeats)
    del src, dst
    return 2 * nbytes / seconds


def measure_matmul(device: torch.device, dtype: torch.dtype, n: int | None = None, repeats: int = 10) -> float:
    """Square GEMM rate in FLOP/s (8192^3 on CUDA, 1024^3 on CPU) in the serving dtype."""
    n = n or (8192 if device.type == "cuda" else 1024)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    seconds = _time_op(lambda: torch.mm(a, b), device, repeats)
    del a, b
    return 2.0 * n**3 / seconds


def release_device_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


# -- runs ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunResult:
    system: str  # "traceinfer" or "hf"
    num_requests: int
    prompt_tokens: int
    output_tokens: int
    seconds: float
    output_tok_s: float
    total_tok_s: float
    latency: dict  # latency_summary(...), empty when the system recorded no token times
    details: dict = field(default_factory=dict)


def _run_result(system: str, prompts, token_counts, seconds, timings, details) -> RunResult:
    prompt_tokens, output_tokens = sum(map(len, prompts)), sum(token_counts)
    return RunResult(
        system=system,
        num_requests=len(prompts),
        prompt_tokens=prompt_tokens,
        output_tokens=output_tokens,
        seconds=seconds,
        output_tok_s=output_tokens / seconds,
        total_tok_s=(prompt_tokens + output_tokens) / seconds,
        latency=latency_summary(timings) if timings else {},
        details=details,
    )


def warmup_request(temperature: float) -> tuple[list[int], SamplingParams]:
    """One short request, run by each system before its clock starts."""
    return [1, 2, 3, 4, 5, 6, 7, 8], SamplingParams(temperature=temperature, max_tokens=8, ignore_eos=True)


class StepCounter:
    """Subscriber to the 'schedule' hook: counts steps that ran the model, from the end event's batch summary."""

    def __init__(self) -> None:
        self.model_steps = 0
        self.decode_steps = 0
        self.decode_only_steps = 0
        self.prefill_steps = 0
        self.prefill_tokens = 0
        self.preemptions = 0

    def __call__(self, point: str, phase: str, t_ns: int, fields: dict) -> None:
        if phase != "E" or not fields.get("num_batched_tokens"):
            return
        self.model_steps += 1
        self.decode_steps += fields["num_decode_seqs"] > 0
        self.decode_only_steps += fields["num_prefill_tokens"] == 0
        self.prefill_steps += fields["num_prefill_tokens"] > 0
        self.prefill_tokens += fields["num_prefill_tokens"]
        self.preemptions += fields["num_preempted"]

    def as_dict(self) -> dict[str, int]:
        return dict(vars(self))


@dataclass
class EngineRun:
    result: RunResult
    cost: ModelCost
    steps: StepCounter
    label: str
    synthetic: bool
    config: dict
    hf_config: Any
    hf_state_dict: dict | None  # the engine's weights under HF names, on CPU (only for --compare hf)
    probe_runs: dict = field(default_factory=dict)  # probe set -> RunResult


def warm_up(llm, prompts: list[list[int]], params: list[SamplingParams], full: bool) -> None:
    """The whole workload at 4 tokens each: every prefill chunk shape and mixed-step decode split a timed
    run meets gets its Triton compile here (a cold cache costs ~4 s of compiles otherwise), and the
    allocator grows to its working size. ``full``: then the whole workload once more, for runs compared
    with each other: the first full run after the short warm-up came out ~10% slower than later ones in
    every H100 experiment (docs/benchmarks.md). The prefix cache is left empty."""
    llm.generate(prompts, [dataclasses.replace(p, max_tokens=min(p.max_tokens, 4)) for p in params])
    if full:
        llm.engine.block_manager.reset_prefix_cache()
        llm.generate(prompts, params)
    llm.engine.block_manager.reset_prefix_cache()


def run_traceinfer(
    engine_options: dict,
    prompts: list[list[int]],
    params: list[SamplingParams],
    config_file=None,
    keep_weights=False,
    probe_sets: Sequence[str] = ("off",),
    repeat: int = 1,
) -> EngineRun:
    """Build the engine, warm up, then time one generate over the whole batch under each probe set
    (same engine, prefix cache emptied before each). With repeat > 1 the sets run in rotated order each
    round and each set's result is its median run; the first set's result is the headline."""
    from traceinfer.engine.llm_engine import LLM
    from traceinfer.probes import attach

    llm = LLM(config_file=config_file, **engine_options)
    engine = llm.engine
    order = [probe_sets[(i + r) % len(probe_sets)] for r in range(repeat) for i in range(len(probe_sets))]
    warm_up(llm, prompts, params, full=len(order) > 1)
    all_runs: dict[str, list[RunResult]] = {spec: [] for spec in probe_sets}
    steps = StepCounter()
    for spec in order:
        engine.block_manager.reset_prefix_cache()  # each run starts cold, or later runs would hit earlier prompts
        counter = StepCounter()
        unsubscribe = engine.hooks.subscribe(counter, ("schedule",))
        graph_steps_before = engine.runner.stats.graph_steps
        session = attach(engine, spec, None)  # a temporary run directory: writing is part of the cost
        try:
            synchronize(engine.device)
            start = time.perf_counter()
            outputs = llm.generate(prompts, params)
            synchronize(engine.device)
            seconds = time.perf_counter() - start
        finally:
            session.close()
            unsubscribe()
        if spec == probe_sets[0]:
            steps = counter
        details = {
            "probes": spec,
            "engine_steps": counter.as_dict(),
            "attention_backend": engine.attention_backend,
            "num_kv_blocks": engine.block_manager.num_blocks,
            "cuda_graph_steps": engine.runner.stats.graph_steps - graph_steps_before,
            "finish_reasons": sorted({o.finish_reason for o in outputs}),
        }
        all_runs[spec].append(_run_result(
            "traceinfer", prompts, [len(o.token_ids) for o in outputs], seconds,
            [(o.arrival_ns, o.token_times_ns) for o in outputs], details,
        ))  # fmt: skip
    runs = {}
    for spec, results in all_runs.items():
        ranked = sorted(results, key=lambda r: r.output_tok_s)
        median = ranked[len(ranked) // 2]
        median.details["output_tok_s_runs"] = [r.output_tok_s for r in results]
        runs[spec] = median
    config = dataclasses.asdict(engine.config)
    config.update(resolved_device=str(engine.device), resolved_dtype=str(engine.dtype).removeprefix("torch."))
    run = EngineRun(
        result=runs[probe_sets[0]],
        cost=model_cost(engine.model),
        steps=steps,
        label=engine.model_label,
        synthetic=engine.synthetic,
        config=config,
        hf_config=copy.deepcopy(engine.hf_config),
        hf_state_dict=hf_state_dict(engine.model) if keep_weights else None,
        probe_runs=runs,
    )
    del llm, engine, outputs
    return run


def probe_costs(runs: dict[str, RunResult]) -> dict[str, float] | None:
    """Throughput cost of each probe set against 'off', in percent (positive = slower)."""
    if "off" not in runs or len(runs) < 2:
        return None
    base = runs["off"].output_tok_s
    return {spec: 100.0 * (1.0 - r.output_tok_s / base) for spec, r in runs.items() if spec != "off"}


def run_spread_pct(runs: dict[str, RunResult]) -> float | None:
    """How far one run of 'off' strays from their median, in percent: half the range of its repeated
    runs over their median. Probe costs smaller than this are within the run-to-run drift."""
    values = runs["off"].details.get("output_tok_s_runs", []) if "off" in runs else []
    if len(values) < 2:
        return None
    return 50.0 * (max(values) - min(values)) / statistics.median(values)


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
) -> RunResult:
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
        warm_prompt, warm_params = warmup_request(temperature)
        _hf_collect(manager, [warm_prompt], [warm_params.max_tokens], "warmup")
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
        "api": "init_continuous_batching + manager.add_request(max_new_tokens=...) + get_result",
    }
    return _run_result("hf", prompts, [len(o.generated_tokens) for o in outputs], seconds, timings, details)


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


# -- the benchmark -------------------------------------------------------------------------
@dataclass(frozen=True)
class BenchOptions:
    workload: WorkloadSpec
    engine_options: dict  # EngineConfig keys, model resolved
    config_file: str | None = None
    compare: str | None = None  # "hf"
    probe_sets: tuple[str, ...] = ("off",)  # timed one after another on one engine
    repeat: int = 1  # rounds over the probe sets; each set reports its median run
    bandwidth_bytes_per_s: float | None = None  # given: skip measuring
    matmul_flops_per_s: float | None = None


def parse_probe_sets(spec: str | None) -> tuple[str, ...]:
    """'off,default,all' -> ('off', 'default', 'all'); each set is checked by the probe registry."""
    from traceinfer.probes import resolve_probes

    sets = tuple(p.strip() for p in (spec or "off").split(",") if p.strip())
    for s in sets:
        resolve_probes(s)
    if len(set(sets)) != len(sets):
        raise ConfigError(f"--probes lists a set twice: {spec!r}")
    return sets


def options_from_args(args: argparse.Namespace) -> BenchOptions:
    """Resolve device-dependent defaults: nano-vLLM's workload on qwen3-0.6b on CUDA, a small one on tiny on CPU."""
    from traceinfer.engine.llm_engine import resolve_device

    if args.repeat < 1:
        raise ConfigError(f"--repeat must be >= 1, got {args.repeat}")
    config_file = getattr(args, "config", None)
    from traceinfer.cli import engine_options as given_engine_options

    engine_options = given_engine_options(args)
    without_model = {k: v for k, v in engine_options.items() if k != "model"}
    device = resolve_device(load_section("engine", without_model, config_file).device)
    on_cuda = device.type == "cuda"
    engine_options.setdefault("model", CUDA_MODEL if on_cuda else CPU_MODEL)
    base = CUDA_WORKLOAD if on_cuda else CPU_WORKLOAD
    given = {
        "num_requests": args.num_requests, "min_input_len": args.min_input_len, "max_input_len": args.max_input_len,
        "min_output_len": args.min_output_len, "max_output_len": args.max_output_len, "seed": args.workload_seed,
        "temperature": args.temperature,
    }  # fmt: skip
    workload = dataclasses.replace(base, **{k: v for k, v in given.items() if v is not None})
    return BenchOptions(
        workload=workload,
        engine_options=engine_options,
        config_file=config_file,
        compare=args.compare,
        probe_sets=parse_probe_sets(args.probes),
        repeat=args.repeat,
        bandwidth_bytes_per_s=args.bandwidth * 1e9 if args.bandwidth else None,
        matmul_flops_per_s=args.matmul_tflops * 1e12 if args.matmul_tflops else None,
    )


def run_benchmark(opts: BenchOptions) -> dict:
    """Measure the device, run traceinfer (and HF), compute the floor; returns the JSON-ready result."""
    from traceinfer.engine.llm_engine import resolve_device, resolve_dtype

    config = load_section("engine", opts.engine_options, opts.config_file)
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, device)
    prompts, params = make_workload(opts.workload)
    output_lens = [p.max_tokens for p in params]

    # rates first, while the device is empty: the engine sizes its KV cache from free memory
    bandwidth = opts.bandwidth_bytes_per_s or measure_bandwidth(device)
    flops = opts.matmul_flops_per_s or measure_matmul(device, dtype)
    release_device_memory(device)

    keep_weights = opts.compare == "hf" and is_synthetic(config.model)  # a directory: HF loads it itself
    run = run_traceinfer(opts.engine_options, prompts, params, opts.config_file, keep_weights, opts.probe_sets, opts.repeat)
    release_device_memory(device)
    floor = physical_floor(run.cost, list(map(len, prompts)), output_lens, run.steps.model_steps, bandwidth, flops)

    hf = None
    if opts.compare == "hf":
        hf_model = build_hf_model(config.model, run.hf_config, run.hf_state_dict, device, dtype)
        run.hf_state_dict = None
        hf = run_hf(hf_model, device, prompts, params, opts.workload.seed)
        del hf_model
        release_device_memory(device)

    ours = run.result
    return {
        "benchmark": BENCHMARK,
        "model": run.label,
        "synthetic": run.synthetic,
        "device": device_name(device),
        "torch": torch.__version__,
        "engine_config": run.config,
        "workload": {
            **dataclasses.asdict(opts.workload),
            "ignore_eos": True,
            "prompt_tokens": ours.prompt_tokens,
            "expected_output_tokens": sum(output_lens),
            "arrivals": "all requests at t=0 (offline batch): TTFT includes queueing",
        },
        "device_rates": {
            "bandwidth_bytes_per_s": bandwidth,
            "bandwidth_measured": opts.bandwidth_bytes_per_s is None,
            "matmul_flops_per_s": flops,
            "matmul_measured": opts.matmul_flops_per_s is None,
            "matmul_dtype": str(dtype).removeprefix("torch."),
        },
        "model_cost": {**dataclasses.asdict(run.cost), "kv_bytes_per_token": run.cost.kv_bytes_per_token},
        "traceinfer": dataclasses.asdict(ours),
        "hf": dataclasses.asdict(hf) if hf else None,
        "ratio_traceinfer_over_hf": ours.output_tok_s / hf.output_tok_s if hf else None,
        "floor": dataclasses.asdict(floor),
        "fraction_of_floor": ours.output_tok_s / floor.output_tok_s,
        "probe_runs": {spec: dataclasses.asdict(r) for spec, r in run.probe_runs.items()},
        "probe_cost_pct": probe_costs(run.probe_runs),
        "probe_off_spread_pct": run_spread_pct(run.probe_runs),
    }


# -- rendering -----------------------------------------------------------------------------
def _si(value: float, unit: str) -> str:
    """1.19e9, "B" -> "1.19 GB"."""
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.2f} {prefix}{unit}"
    return f"{value:.0f} {unit}"


def _fmt(value, spec: str = ",.1f") -> str:
    return "-" if value is None else format(value, spec)


def format_report(result: dict) -> str:
    """The plain-text table printed by ``traceinfer bench``."""
    w, ours, hf, floor = result["workload"], result["traceinfer"], result["hf"], result["floor"]
    runs = [("traceinfer", ours)] + ([("HF transformers", hf)] if hf else [])
    lines = [
        f"traceinfer bench: {result['benchmark']}",
        f"model    {result['model']}" + ("  [synthetic weights: the timings are real]" if result["synthetic"] else ""),
        f"device   {result['device']}, torch {result['torch']}, dtype {result['engine_config']['resolved_dtype']}, "
        f"attention {ours['details']['attention_backend']}",
        f"workload {w['num_requests']} requests, seed {w['seed']}, prompts {w['min_input_len']}-{w['max_input_len']} "
        f"({w['prompt_tokens']:,} tokens), outputs {w['min_output_len']}-{w['max_output_len']} "
        f"({w['expected_output_tokens']:,} tokens), temperature {w['temperature']}, ignore_eos",
        "offline batch: every request is added at t=0, so TTFT includes queueing",
        "",
    ]
    rows: list[tuple[str, list[str]]] = [
        ("output tokens", [f"{r['output_tokens']:,}" for _, r in runs]),
        ("seconds", [f"{r['seconds']:.2f}" for _, r in runs]),
        ("output tok/s", [f"{r['output_tok_s']:,.1f}" for _, r in runs]),
        ("total tok/s", [f"{r['total_tok_s']:,.1f}" for _, r in runs]),
    ]
    for metric, title in (("ttft_ms", "TTFT ms"), ("itl_ms", "ITL ms")):
        for q in PERCENTILES:
            rows.append((f"{title} p{q}", [_fmt(r["latency"].get(metric, {}).get(f"p{q}"), ",.2f") for _, r in runs]))
    widths = [max(len(name), *(len(cells[i]) for _, cells in rows)) for i, (name, _) in enumerate(runs)]
    label_w = max(len(label) for label, _ in rows)
    lines.append(" " * label_w + "  " + "  ".join(name.rjust(wd) for (name, _), wd in zip(runs, widths)))
    for label, cells in rows:
        lines.append(label.ljust(label_w) + "  " + "  ".join(c.rjust(wd) for c, wd in zip(cells, widths)))
    if hf:
        lines.append(f"traceinfer / HF output tok/s: {result['ratio_traceinfer_over_hf']:.2f}x")
    costs = result.get("probe_cost_pct")
    if costs:
        lines.append("")
        lines.append("probe set   output tok/s   cost vs off   runs (tok/s)")
        for spec, r in result["probe_runs"].items():
            cost = "-" if spec == "off" else f"{costs[spec]:+.2f}%"
            each = ", ".join(f"{x:,.0f}" for x in r["details"].get("output_tok_s_runs", []))
            lines.append(f"{spec:<10}  {r['output_tok_s']:>12,.1f}   {cost:>11}   {each}")
        spread = result.get("probe_off_spread_pct")
        if spread is not None:
            lines.append(f"(runs of off lie within +-{spread:.1f}% of their median: smaller costs are within the "
                         "run-to-run drift; more --repeat narrows the medians)")  # fmt: skip
    steps = ours["details"]["engine_steps"]
    rates = result["device_rates"]
    lines += [
        "",
        f"engine steps: {steps['model_steps']:,} ({steps['decode_steps']:,} with decodes, {steps['prefill_steps']:,} "
        f"with prefill), preemptions {steps['preemptions']:,}; CUDA graph replays: {ours['details']['cuda_graph_steps']:,} "
        f"of {steps['decode_only_steps']:,} decode-only steps",
        f"device rates ({'measured' if rates['bandwidth_measured'] else 'given'} copy, "
        f"{'measured' if rates['matmul_measured'] else 'given'} {rates['matmul_dtype']} GEMM): "
        f"{_si(rates['bandwidth_bytes_per_s'], 'B/s')}, {_si(rates['matmul_flops_per_s'], 'FLOP/s')}",
        f"physical floor: ({floor['num_steps']:,} steps x {_si(result['model_cost']['weight_bytes'], 'B')} weights "
        f"+ {_si(floor['kv_read_bytes'], 'B')} KV reads) / bandwidth = {floor['memory_s']:.3f} s, "
        f"+ {_si(floor['prefill_flops'], 'FLOP')} prefill / matmul rate = {floor['compute_s']:.3f} s",
        f"floor {floor['seconds']:.3f} s = {floor['output_tok_s']:,.1f} output tok/s; traceinfer reaches "
        f"{100 * result['fraction_of_floor']:.1f}% of it",
    ]
    return "\n".join(lines)


# -- CLI -----------------------------------------------------------------------------------
def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``traceinfer bench``, engine options included (dests are EngineConfig field names)."""
    from traceinfer.cli import add_engine_arguments

    w = parser.add_argument_group("workload (nano-vLLM's bench.py; defaults: 256 requests of 100-1024 / 100-1024 "
                                  "tokens on CUDA, 16 of 16-64 / 16-64 on CPU)")  # fmt: skip
    w.add_argument("--num-requests", type=int)
    w.add_argument("--min-input-len", type=int)
    w.add_argument("--max-input-len", type=int)
    w.add_argument("--min-output-len", type=int)
    w.add_argument("--max-output-len", type=int)
    w.add_argument("--seed", dest="workload_seed", type=int, help="workload seed (default 0)")
    w.add_argument("--temperature", type=float, help="default 0.6")
    b = parser.add_argument_group("bench")
    b.add_argument("--compare", choices=["hf"], help="also run HF transformers continuous batching on the same weights")
    b.add_argument("--json", metavar="PATH", help="write the result as JSON")
    b.add_argument("--probes", default="off", metavar="SETS",
                   help="probe sets to time one after another on one engine, e.g. off,default,all (default: off); "
                        "the first set's run is the headline result")  # fmt: skip
    b.add_argument("--repeat", type=int, default=1, metavar="N",
                   help="rounds over the probe sets, in rotated order; each set reports its median (default 1)")  # fmt: skip
    b.add_argument("--bandwidth", type=float, metavar="GB/S", help="copy bandwidth for the floor (default: measured)")
    b.add_argument("--matmul-tflops", type=float, help="matmul rate for the floor (default: measured)")
    add_engine_arguments(parser)


def run_bench(args: argparse.Namespace) -> int:
    """Run the benchmark from parsed arguments, print the table, write --json; returns the exit status."""
    try:
        result = run_benchmark(options_from_args(args))
    except TraceinferError as exc:
        print(f"traceinfer bench: error: {exc}", file=sys.stderr)
        return 2
    print(format_report(result))
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nwrote {path} (read it with: python -m json.tool {path})")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m traceinfer.bench``: the same as ``traceinfer bench``."""
    from traceinfer.cli import main as cli_main

    return cli_main(["bench", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
