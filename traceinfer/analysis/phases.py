"""Engine phases in time: which part of a step (or none) the engine thread was in at any instant, from the
step trace (stream 'steps'), and stack samples joined to it.

    phase_at(steps, times_ns)        -> one phase name per time
    align_pyspy(trace, marks, rate)  -> ns to add to a py-spy time to get the engine's perf_counter_ns
    pyspy_samples(trace, offset, rate) / thread_samples(frame) -> samples: t_ns, thread, stack, weight
    flames_by_phase(samples, steps, engine_thread) -> (the whole graph, one graph per phase)

Phases: the five stages of a step (schedule, prepare, forward: its launch on a GPU, sample: on a GPU it
waits for the forward there, postprocess), ``handover`` (the probes' work behind the GPU), ``other`` (the
rest of a step) and ``between steps`` (the engine idle or waiting for arrivals).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from traceinfer.flamegraphs.folded import Folded, annotate
from traceinfer.ingest.pyspy import PySpyTrace, Span
from traceinfer.rundir.schema import PHASES, STAGES

MARKER_FRAMES = ("pyspy_sync_even", "pyspy_sync_odd")  # traceinfer.probes.pyspy's clock marker


def phase_at(steps: pd.DataFrame, times_ns) -> np.ndarray:
    """The phase of the engine at each time (an array of names from PHASES)."""
    t = np.asarray(times_ns, dtype=np.int64)
    out = np.full(len(t), "between steps", dtype=object)
    if steps.empty or not len(t):
        return out
    rows = steps.sort_values("t_ns")
    starts = rows["t_ns"].to_numpy(np.int64)
    ends = starts + rows["dur_ns"].fillna(0).to_numpy(np.int64)
    i = np.searchsorted(starts, t, side="right") - 1
    inside = (i >= 0) & (t < ends[np.clip(i, 0, None)])
    out[inside] = "other"
    for part in ("handover", *STAGES):  # the handover lies in 'other': no stage overlaps another
        begin = rows[f"{part}_start_ns"].to_numpy(np.float64)[np.clip(i, 0, None)]
        length = rows[f"{part}_ns"].to_numpy(np.float64)[np.clip(i, 0, None)]
        hit = inside & ~np.isnan(begin) & (t >= begin) & (t < begin + np.nan_to_num(length))
        out[hit] = part
    return out


#: a frame of the engine's own code -> the stage it runs in; the innermost such frame of a stack names it
STAGE_FRAMES: tuple[tuple[str, str], ...] = (
    ("LLMEngine._handover_behind_forward", "handover"),
    ("Scheduler.schedule", "schedule"),
    ("ModelRunner.prepare", "prepare"),
    ("ModelRunner._fill_graph_inputs", "prepare"),
    ("ModelRunner.forward_logits", "forward"),  # the sampler's launch too: it runs inside the forward span
    ("ModelRunner.wait_tokens", "sample"),
    ("LLMEngine._advance", "postprocess"),
    ("LLMEngine._postprocess", "postprocess"),
)


def stack_phase(stack: tuple[str, ...]) -> str | None:
    """The stage a stack shows the engine in, from its innermost frame of the engine's stage functions."""
    for frame in reversed(stack):
        for marker, phase in STAGE_FRAMES:
            if frame.endswith(marker):
                return phase
    return None


@dataclass(frozen=True)
class Alignment:
    offset_ns: float  # add to py-spy's clock (µs x 1000) to get perf_counter_ns
    method: str
    agreement: float | None  # of the samples whose stack names a stage: the share whose time falls in it
    samples: int  # how many such samples


def _marker_offset(trace: PySpyTrace, marks_ns: list[int], engine_thread: int) -> float | None:
    """A first offset from the clock marker (traceinfer.probes.pyspy.sync_marker): each run of samples
    showing one marker function started after the switch into that function, so ``switch - first sample``
    is a lower bound on the offset; the largest of them is the first estimate. None without the marker."""
    runs: list[tuple[str, float]] = []  # (function, its first sample's time in µs)
    for s in trace.spans:
        if s.tid == engine_thread and s.stack and s.stack[-1].endswith(MARKER_FRAMES):
            if not runs or runs[-1][0] != s.stack[-1]:
                runs.append((s.stack[-1], s.start_us))
    switches = marks_ns[:-1]  # the last mark is the marker's end
    if not runs or not switches:
        return None
    first = switches[0] - runs[0][1] * 1e3
    bounds = [first]
    for function, start_us in runs[1:]:  # the switch into this function last before its first sample
        t = start_us * 1e3 + first
        parity = 0 if function.endswith(MARKER_FRAMES[0]) else 1
        candidates = [m for j, m in enumerate(switches) if j % 2 == parity and m <= t]
        if candidates:
            bounds.append(candidates[-1] - start_us * 1e3)
    return max(bounds)


def align_pyspy(
    trace: PySpyTrace, marks_ns: list[int], engine_thread: int, rate_hz: float, steps: pd.DataFrame,
    window_ms: float = 25.0, resolution_ms: float = 0.25,
) -> Alignment | None:
    """The offset from py-spy's clock to the engine's. py-spy stamps a sample when its main thread receives
    it from its sampler thread, late by a varying delay (a few ms on a loaded machine), so the clock marker
    gives a first estimate only. It is refined against the step trace: within ``window_ms`` of it, the
    offset at which most samples whose stack names a stage (STAGE_FRAMES) fall in that stage's interval.
    The agreement at that offset says how far the time join can be trusted. None without the marker."""
    coarse = _marker_offset(trace, marks_ns, engine_thread)
    if coarse is None:
        return None
    named = [(s, stack_phase(s.stack)) for s in trace.spans if s.tid == engine_thread]
    named = [(s.start_us, phase) for s, phase in named if phase is not None]
    if not named or steps.empty:
        return Alignment(coarse, "clock marker", None, 0)
    times = np.array([t for t, _ in named]) * 1e3
    phases = np.array([p for _, p in named], dtype=object)
    best = (-1.0, 0.0)
    for delta in np.arange(-window_ms, window_ms + resolution_ms / 2, resolution_ms) * 1e6:
        agree = float(np.mean(phase_at(steps, times + coarse + delta) == phases))
        if agree > best[0] + 1e-12 or (abs(agree - best[0]) <= 1e-12 and abs(delta) < abs(best[1])):
            best = (agree, delta)
    return Alignment(coarse + best[1], "clock marker, refined on the step trace", best[0], len(named))


#: leaf frames of a thread waiting (for a lock, an event, a queue): idle, though py-spy may report it active
#: (in its default blocking mode it stops every thread to read it, so it cannot tell a sleeping one)
WAITING_FRAMES = ("threading.py:Condition.wait", "threading.py:Thread.join", "queue.py:Queue.get",
                  "selectors.py:EpollSelector.select", "selectors.py:PollSelector.select", "subprocess.py:Popen.wait")  # fmt: skip


def pyspy_samples(
    trace: PySpyTrace, offset_ns: float, rate_hz: float, thread_names: dict[int, str], idle: bool = False
) -> pd.DataFrame:
    """Samples of a py-spy trace on the engine's clock: each span of one stack becomes the samples it held
    (its length over the sampling interval, at least one), each at its own time; the clock marker's frames
    are left out, and so are waiting threads (WAITING_FRAMES) unless ``idle`` (py-spy's --idle), when their
    leaf is marked idle instead. Columns: t_ns, pid, tid, thread, stack (tuple of frames), weight (samples)."""
    interval_us = 1e6 / rate_hz
    rows = []
    for s in trace.spans:
        if any(f.endswith(MARKER_FRAMES) for f in s.stack[-1:]):
            continue
        if s.stack[-1].endswith(WAITING_FRAMES):
            if not idle:
                continue
            s = Span(s.pid, s.tid, s.start_us, s.end_us, (*s.stack[:-1], annotate(s.stack[-1], "idle")))
        n = max(1, round((s.end_us - s.start_us) / interval_us))
        thread = thread_names.get(s.tid, f"thread {s.tid:#x}")
        for k in range(n):
            rows.append((int((s.start_us + k * interval_us) * 1e3 + offset_ns), s.pid, s.tid, thread, s.stack, 1.0))
    return pd.DataFrame(rows, columns=["t_ns", "pid", "tid", "thread", "stack", "weight"])


def thread_samples(frame: pd.DataFrame) -> pd.DataFrame:
    """The thread probe's stream (thread_samples) as samples: t_ns, pid, tid, thread, stack, weight."""
    stacks = [tuple(s.split(";")) if s else ("(no frames)",) for s in frame["stack"].fillna("")]
    return pd.DataFrame({
        "t_ns": frame["t_ns"].to_numpy(np.int64), "pid": 0, "tid": frame["thread_id"].to_numpy(),
        "thread": frame["thread_name"].to_numpy(), "stack": stacks, "weight": 1.0,
    })  # fmt: skip


def flames_by_phase(samples: pd.DataFrame, steps: pd.DataFrame, engine_thread: int) -> tuple[Folded, dict[str, Folded]]:
    """The whole CPU flame graph (every thread, the thread as the root frame) and one per engine phase (the
    engine thread's samples at the times it was in that phase; every phase is present, maybe empty)."""
    whole = Folded(unit="samples")
    for thread, stack, weight in zip(samples["thread"], samples["stack"], samples["weight"]):
        whole.add((annotate(thread, "range"), *stack), weight)
    phases = {p: Folded(unit="samples") for p in PHASES}
    engine = samples[samples["tid"] == engine_thread]
    for phase, stack, weight in zip(phase_at(steps, engine["t_ns"]), engine["stack"], engine["weight"]):
        phases[phase].add(stack, weight)
    return whole, phases


def phase_shares(phases: dict[str, Folded]) -> dict[str, float]:
    """Each phase's share of the engine thread's samples."""
    total = sum(f.total for f in phases.values())
    return {p: (f.total / total if total else 0.0) for p, f in phases.items()}
