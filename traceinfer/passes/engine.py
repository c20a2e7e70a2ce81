"""Timed passes of a workload on our engine: warm-up, one pass, and passes under several probe sets.

    warm_up(llm, workload, full=True)
    result = run_workload(llm, workload, progress=show)      # PassResult; requests arrive as the workload says
    result = timed_pass(llm, workload)                        # the same as one offline batch
    runs = probed_passes(llm, workload, ("off", "default"), repeat=7)   # set -> [PassResult, ...], offline

Every pass should start from an empty prefix cache (``llm.engine.block_manager.reset_prefix_cache()``,
before probes attach, so the reset is not in their log), so passes over the same workload do the same work.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from traceinfer.config import ProbesConfig
from traceinfer.engine.device import synchronize
from traceinfer.errors import TraceinferError
from traceinfer.passes import PassResult
from traceinfer.passes.gpu_counters import GpuCounters, between
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


@dataclass(frozen=True)
class Progress:
    """Where a pass stands, handed to a progress callback (at most every ``progress_every_s``)."""

    elapsed_s: float
    requests_done: int
    requests_total: int
    output_tokens: int
    max_output_tokens: int  # what the workload asks for in all (ignore_eos: what it will produce)
    running: int
    waiting: int  # in the engine's queue
    not_sent: int  # arrivals still to come, or held back by max_concurrency
    kv_used_blocks: int
    kv_total_blocks: int
    failed: int

    @property
    def output_tok_s(self) -> float:
        return self.output_tokens / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def eta_s(self) -> float | None:
        """Seconds left at the rate so far (None before the first token)."""
        rate = self.output_tok_s
        return max(self.max_output_tokens - self.output_tokens, 0) / rate if rate > 0 else None


class PassStopped(TraceinferError):
    """A pass was stopped from outside (``stop`` returned a reason): its requests were aborted."""


def run_workload(
    llm,
    workload: Workload,
    offline: bool = False,
    count_steps: bool = False,
    progress: Callable[[Progress], None] | None = None,
    progress_every_s: float = 0.5,
    stop: Callable[[], str | None] | None = None,
) -> PassResult:
    """One pass of ``workload`` through the engine's step API, timed with the device synchronized at both
    ends. Requests arrive at their ``arrival_s`` (``offline``: all at t=0), at most ``max_concurrency`` in
    flight; a request's arrival time is when it arrived, or when a slot freed for it, so TTFT is what its
    client sees. The engine idles (sleeps) when nothing is in flight and the next arrival is ahead.
    ``count_steps`` subscribes a StepCounter (``details["steps"]``; it makes the engine build each step's
    batch summary, a little host work). ``stop`` is asked after every step; a reason aborts the in-flight
    requests and raises PassStopped."""
    engine = llm.engine
    bm, scheduler = engine.block_manager, engine.scheduler
    n = workload.num_requests
    arrivals = [0.0] * n if offline else workload.arrival_s
    limit = workload.max_concurrency or n
    counter = StepCounter() if count_steps else None
    unsubscribe = engine.hooks.subscribe(counter, ("schedule",)) if counter else None
    steps0, graphs0, pieces0 = engine.step_index, engine.runner.stats.graph_steps, engine.runner.stats.piecewise_steps
    clock = time.perf_counter_ns
    outputs: dict[str, object] = {}
    ids: list[str] = []
    in_flight = failed = tokens = 0
    next_i = 0
    blocked_upto = -1  # requests up to this index came due while max_concurrency held them back...
    slot_free_ns = 0  # ... and arrive when a slot frees for them
    every_ns = int(progress_every_s * 1e9)
    try:
        synchronize(engine.device)
        start = clock()
        next_report = start + every_ns
        while next_i < n or in_flight:
            now = clock()
            while next_i < n and start + int(arrivals[next_i] * 1e9) <= now:
                if in_flight >= limit:  # every request due by now waits for a slot
                    j = max(next_i, blocked_upto + 1)
                    while j < n and start + int(arrivals[j] * 1e9) <= now:
                        j += 1
                    blocked_upto = j - 1
                    break
                due = start + int(arrivals[next_i] * 1e9)
                arrival_ns = slot_free_ns if next_i <= blocked_upto else due
                ids.append(engine.add_request(workload.prompts[next_i], workload.params[next_i], arrival_ns=arrival_ns))
                next_i += 1
                in_flight += 1
            if not in_flight:  # nothing to run until the next arrival
                time.sleep(max(start + int(arrivals[next_i] * 1e9) - clock(), 0) / 1e9)
                continue
            for out in engine.step():
                outputs[out.request_id] = out
                in_flight -= 1
                failed += out.finish_reason == "error"
                tokens += len(out.token_ids)
                slot_free_ns = clock()
            if stop is not None and (reason := stop()):
                for rid in ids:
                    engine.abort(rid)
                raise PassStopped(reason)
            if progress is not None and (now := clock()) >= next_report:
                next_report = now + every_ns
                progress(Progress(
                    (now - start) / 1e9, len(outputs), n, tokens + _running_tokens(scheduler),
                    workload.max_output_tokens, len(scheduler.running), len(scheduler.waiting), n - next_i,
                    bm.num_used_blocks, bm.num_blocks, failed,
                ))  # fmt: skip
        synchronize(engine.device)
        seconds = (clock() - start) / 1e9
    finally:
        if unsubscribe:
            unsubscribe()
    ordered = [outputs[rid] for rid in ids]
    details = {
        "engine_steps": engine.step_index - steps0,
        "cuda_graph_steps": engine.runner.stats.graph_steps - graphs0,
        "piecewise_graph_steps": engine.runner.stats.piecewise_steps - pieces0,
        "finish_reasons": sorted({o.finish_reason for o in ordered}),
        "failed_requests": failed,
        "arrival": "offline" if offline else workload.arrival,
        "attention_backend": engine.attention_backend,
        "num_kv_blocks": bm.num_blocks,
    }
    if counter:
        details["steps"] = counter.as_dict()
    return PassResult(
        system="traceinfer",
        num_requests=len(ordered),
        prompt_tokens=workload.prompt_tokens,
        output_tokens=sum(len(o.token_ids) for o in ordered),
        seconds=seconds,
        timings=[(o.arrival_ns, o.token_times_ns) for o in ordered],
        details=details,
    )


def _running_tokens(scheduler) -> int:
    """Output tokens of the requests still running or waiting (for progress; finished ones are counted)."""
    return sum(seq.num_output_tokens for seq in scheduler.running) + sum(seq.num_output_tokens for seq in scheduler.waiting)


def timed_pass(llm, workload: Workload, count_steps: bool = False) -> PassResult:
    """The workload as one offline batch (every request at t=0): what a throughput benchmark times."""
    return run_workload(llm, workload, offline=True, count_steps=count_steps)


def probed_passes(
    llm, workload: Workload, probe_sets: Sequence[str], repeat: int = 1, options: ProbesConfig | None = None,
    counters: GpuCounters | None = None, on_pass: Callable[[int, int, PassResult], None] | None = None,
) -> dict[str, list[PassResult]]:
    """One timed pass (an offline batch) per probe set, ``repeat`` rounds, each round in rotated order (so
    no set always runs first or after the same one); each pass writes a temporary run directory, so writing
    is part of the cost. ``options``: the probes' settings (rates, ...). Returns set -> its passes, in the
    order they ran; each pass's ``details["gpu"]`` holds the GPU's counters over it (passes.gpu_counters),
    read through ``counters`` (the caller's, left open) or counters of its own. ``on_pass(i, count, result)``
    after each pass, between passes (a command's progress line)."""
    order = [probe_sets[(i + r) % len(probe_sets)] for r in range(repeat) for i in range(len(probe_sets))]
    passes: dict[str, list[PassResult]] = {spec: [] for spec in probe_sets}
    own = counters is None
    counters = GpuCounters(llm.engine.device) if own else counters
    try:
        for i, spec in enumerate(order):
            llm.engine.block_manager.reset_prefix_cache()
            session = attach(llm.engine, spec, None, options)
            try:
                before = counters.read()
                result = timed_pass(llm, workload, count_steps=True)
                result.details["gpu"] = between(before, counters.read(), result.output_tokens)
            finally:
                session.close()
            result.details["probes"] = spec
            passes[spec].append(result)
            if on_pass is not None:
                on_pass(i, len(order), result)
    finally:
        if own:
            counters.close()
    return passes


def median_pass(results: list[PassResult]) -> PassResult:
    """The pass of median throughput (the upper median of an even count); its details list every pass's."""
    ranked = sorted(results, key=lambda r: r.output_tok_s)
    median = ranked[len(ranked) // 2]
    median.details["output_tok_s_runs"] = [r.output_tok_s for r in results]
    median.details["gpu_runs"] = [r.details.get("gpu") for r in results]
    return median
