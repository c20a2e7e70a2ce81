"""Workloads: the requests a command runs, with when each arrives. Pure and seeded; no torch.

    workloads.validate(config.workload, on_cuda)          # every check that needs no model: seconds
    workload = workloads.make(config.workload, on_cuda, vocab_size=..., tokenize=tokenizer.encode)
    workload.prompts, workload.params, workload.arrival_s  # token ids, SamplingParams, seconds; per request

The catalog (``traceinfer workloads`` prints it with every parameter), lengths in tokens at GPU size:

    chatbot       ~128 prompt (a 32-token system prompt shared by all) -> ~256 out, poisson 8/s
    rag_qa        ~2048 (a long retrieved context) -> ~64, poisson 4/s
    code_gen      ~512 -> ~512, poisson 4/s
    summarization ~4096 -> ~256, offline
    prefix_share  a 1,536-token shared system prompt + ~64-token questions -> ~64, poisson 16/s
    mixed         chatbot 40%, rag_qa 30%, code_gen 20%, summarization 10%, each as itself; poisson 8/s
    bench         nano-vLLM's benchmark exactly: 256 requests, 100-1024 in and out, offline
    file          the requests of a JSON Lines file (traceinfer.workloads.jsonl)

Each has a spec at its GPU size and a smaller one, same shape, for a CPU (traceinfer.workloads.specs);
``[workload]`` (traceinfer.config.WorkloadConfig) picks one and changes its spec's fields. Generators:
traceinfer.workloads.generators; arrival times: traceinfer.workloads.arrivals.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from traceinfer.config import WorkloadConfig
from traceinfer.engine.sampling_params import SamplingParams
from traceinfer.workloads.arrivals import arrival_times
from traceinfer.workloads.generators import MAX_TOKEN_ID, bench_workload, chatbot_workload, generate, token_bound
from traceinfer.workloads.jsonl import read_requests, token_ids
from traceinfer.workloads.specs import (
    DESCRIPTIONS,
    SPECS,
    WORKLOADS,
    BenchSpec,
    ChatbotSpec,
    FileSpec,
    MixedSpec,
    Spec,
    resolve,
)

__all__ = ["MAX_TOKEN_ID", "SPECS", "WORKLOADS", "BenchSpec", "ChatbotSpec", "MixedSpec", "Workload",
           "bench_workload", "chatbot_workload", "describe", "make", "validate"]  # fmt: skip


@dataclass(frozen=True)
class Workload:
    name: str
    prompts: list[list[int]]  # token ids, per request
    params: list[SamplingParams]
    arrival_s: list[float]  # seconds after the workload starts, non-decreasing
    arrival: str  # offline, poisson, gamma, or file (a file's own times)
    max_concurrency: int | None  # most requests in flight; None: no limit
    spec: dict  # the spec that made it, JSON-able, for the manifest: {"kind": "ChatbotSpec", **fields}

    @property
    def num_requests(self) -> int:
        return len(self.prompts)

    @property
    def prompt_tokens(self) -> int:
        return sum(map(len, self.prompts))

    @property
    def max_output_tokens(self) -> int:
        return sum(p.max_tokens for p in self.params)

    @property
    def offline(self) -> bool:
        """Every request arrives at t=0."""
        return all(t == 0 for t in self.arrival_s)


def validate(config: WorkloadConfig, on_cuda: bool) -> None:
    """Every check ``make`` can do without a model: the workload, its parameters, its arrivals, a file's
    lines. A ConfigError that says what is wrong; call it before loading a model."""
    _, spec = resolve(config, on_cuda)
    if isinstance(spec, FileSpec):
        read_requests(spec.file)


def make(
    config: WorkloadConfig,
    on_cuda: bool,
    vocab_size: int | None = None,
    tokenize: Callable[[str], list[int]] | None = None,
) -> Workload:
    """The workload ``config`` names at its GPU (``on_cuda``) or CPU size, with ``config``'s changes.
    Token ids lie in [0, min(MAX_TOKEN_ID, vocab_size - 1)]; ``tokenize`` turns a file's text prompts into
    token ids (a file with text prompts needs it)."""
    name, spec = resolve(config, on_cuda)
    spec_json = {"kind": type(spec).__name__, **dataclasses.asdict(spec)}
    if isinstance(spec, FileSpec):
        requests = sorted(read_requests(spec.file), key=lambda r: r.arrival_s)  # stable: ties keep file order
        prompts = token_ids(requests, spec.file, vocab_size, tokenize)
        arrival_s = [r.arrival_s for r in requests]
        arrival = "offline" if all(t == 0 for t in arrival_s) else "file"
        params = [r.params for r in requests]
        return Workload(name, prompts, params, arrival_s, arrival, spec.max_concurrency, spec_json)
    prompts, params = generate(spec, token_bound(vocab_size))
    arrival_s = arrival_times(len(prompts), spec.arrival, spec.rate, spec.burstiness, spec.seed)
    return Workload(name, prompts, params, arrival_s, spec.arrival, spec.max_concurrency, spec_json)


def describe() -> list[dict]:
    """One entry per workload, for ``traceinfer workloads``: name, description, default arrival, and the
    parameters with their values at GPU and CPU size (a blend's components as {name: weight})."""
    file = {f.name: None if f.default is dataclasses.MISSING else f.default for f in dataclasses.fields(FileSpec)}
    entries = []
    for name in WORKLOADS:
        gpu, cpu = (_parameters(spec) for spec in SPECS[name]) if name in SPECS else (file, file)
        entries.append({"name": name, "description": DESCRIPTIONS[name], "arrival": gpu.get("arrival", "file"),
                        "gpu": gpu, "cpu": cpu})  # fmt: skip
    return entries


def _parameters(spec: Spec) -> dict:
    values = {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec)}
    if isinstance(spec, MixedSpec):
        values["components"] = {c.name: c.weight for c in spec.components}
    return values
