"""Timed passes of a workload on our engine: warm-up, one pass, and passes under several probe sets.

    warm_up(llm, workload, full=True)
    result = timed_pass(llm, workload)                        # PassResult
    runs = probed_passes(llm, workload, ("off", "default"), repeat=7)   # set -> [PassResult, ...]

Every pass should start from an empty prefix cache (``llm.engine.block_manager.reset_prefix_cache()``,
before probes attach, so the reset is not in their log), so passes over the same workload do the same work.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

from traceinfer.engine.device import synchronize
from traceinfer.passes import PassResult
from traceinfer.probes import attach
from traceinfer.workloads import Workload


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


def warm_up(llm, workload: Workload, full: bool) -> None:
    """The whole workload at 4 tokens each: every prefill chunk shape and mixed-step decode split a timed
    pass meets gets its Triton compile here (a cold cache costs ~4 s of compiles otherwise), and the
    allocator grows to its working size. ``full``: then the whole workload once more: the first full pass
    after the short warm-up came out ~10% slower than later ones in every H100 experiment
    (docs/benchmarks.md). The prefix cache is left empty."""
    params = [dataclasses.replace(p, max_tokens=min(p.max_tokens, 4)) for p in workload.params]
    llm.generate(workload.prompts, params)
    if full:
        llm.engine.block_manager.reset_prefix_cache()
        llm.generate(workload.prompts, workload.params)
    llm.engine.block_manager.reset_prefix_cache()


def timed_pass(llm, workload: Workload, count_steps: bool = False) -> PassResult:
    """Generate the whole workload as one offline batch, timed with the device synchronized at both ends. ``count_steps`` subscribes a StepCounter (its counts go to
    ``details["steps"]``); it makes the engine build each step's batch summary, a little host work."""
    engine = llm.engine
    counter = StepCounter() if count_steps else None
    unsubscribe = engine.hooks.subscribe(counter, ("schedule",)) if counter else None
    steps0, graphs0 = engine.step_index, engine.runner.stats.graph_steps
    try:
        synchronize(engine.device)
        start = time.perf_counter()
        outputs = llm.generate(workload.prompts, workload.params)
        synchronize(engine.device)
        seconds = time.perf_counter() - start
    finally:
        if unsubscribe:
            unsubscribe()
    details = {
        "engine_steps": engine.step_index - steps0,
        "cuda_graph_steps": engine.runner.stats.graph_steps - graphs0,
        "finish_reasons": sorted({o.finish_reason for o in outputs}),
        "attention_backend": engine.attention_backend,
        "num_kv_blocks": engine.block_manager.num_blocks,
    }
    if counter:
        details["steps"] = counter.as_dict()
    return PassResult(
        system="traceinfer",
        num_requests=len(outputs),
        prompt_tokens=workload.prompt_tokens,
        output_tokens=sum(len(o.token_ids) for o in outputs),
        seconds=seconds,
        timings=[(o.arrival_ns, o.token_times_ns) for o in outputs],
        details=details,
    )


def probed_passes(llm, workload: Workload, probe_sets: Sequence[str], repeat: int = 1) -> dict[str, list[PassResult]]:
    """One timed pass per probe set, ``repeat`` rounds, each round in rotated order (so no set always runs
    first or after the same one); each pass writes a temporary run directory, so writing is part of the
    cost. Returns set -> its passes, in the order they ran."""
    order = [probe_sets[(i + r) % len(probe_sets)] for r in range(repeat) for i in range(len(probe_sets))]
    passes: dict[str, list[PassResult]] = {spec: [] for spec in probe_sets}
    for spec in order:
        llm.engine.block_manager.reset_prefix_cache()
        session = attach(llm.engine, spec, None)
        try:
            result = timed_pass(llm, workload, count_steps=True)
        finally:
            session.close()
        result.details["probes"] = spec
        passes[spec].append(result)
    return passes


def median_pass(results: list[PassResult]) -> PassResult:
    """The pass of median throughput (the upper median of an even count); its details list every pass's."""
    ranked = sorted(results, key=lambda r: r.output_tok_s)
    median = ranked[len(ranked) // 2]
    median.details["output_tok_s_runs"] = [r.output_tok_s for r in results]
    return median
