"""Passes: one timed generate of a whole workload, on our engine (optionally under probes) or on HF
transformers' continuous batching. A pass returns raw measurements (PassResult); latency summaries,
the floor and probe costs are computed from them by traceinfer.analysis."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class PassResult:
    """One timed pass over a workload."""

    system: str  # "traceinfer" or "hf"
    num_requests: int
    prompt_tokens: int
    output_tokens: int
    seconds: float
    timings: list = field(repr=False)  # (arrival_ns, token_times_ns) per request; empty when not recorded
    details: dict = field(default_factory=dict)

    @property
    def output_tok_s(self) -> float:
        return self.output_tokens / self.seconds

    @property
    def total_tok_s(self) -> float:
        return (self.prompt_tokens + self.output_tokens) / self.seconds
