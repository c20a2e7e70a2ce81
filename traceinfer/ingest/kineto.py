"""torch.profiler (Kineto) Chrome traces as folded stacks: GPU kernels under the ranges that launched them,
and CPU self time under ranges and ops; and as a GpuCapture, the tables nsys's reports are computed from.

    trace = load_trace("runs/r1/torch_trace.json.gz")   # a .json or .json.gz path, or the loaded dict
    gpu_stacks(trace)   step_[r];forward (graph)_[r];void gemv_kernel<...>_[k] 1834567
    cpu_stacks(trace)   step_[r];forward (eager)_[r];layer.3_[r];aten::mm_[n] 120500
    capture_of_trace(trace)   -> ingest.capture.GpuCapture (analysis.gpu_trace's input when nsys is not there)

The format is Chrome's Trace Event Format (https://docs.google.com/document/d/1CvAClvFfyA5R-PhYUmn5OOQtYMH4h6I0nSsKchNAySU)
as Kineto writes it: complete events (``ph`` "X") with ``ts`` and ``dur`` in microseconds (three decimals:
nanoseconds), a ``cat`` per kind and ``pid``/``tid``. The kinds read here:

    cat                        where          what
    user_annotation            CPU thread     a record_function range (the torch_profiler probe's "step", ...)
    cpu_op                     CPU thread     an aten op (or a ProfilerStep#N wrapper)
    cuda_runtime, cuda_driver  CPU thread     a runtime call (cudaLaunchKernel, cudaGraphLaunch, cuLaunchKernel,
                                              cudaMemcpyAsync, ...); ``args.correlation`` names the GPU work it
                                              started
    kernel, gpu_memcpy,        GPU stream     GPU work; ``args.correlation`` is its launch's (every kernel of a
    gpu_memset                                CUDA graph replay shares the cudaGraphLaunch's)

Other kinds (gpu_user_annotation, python_function, ac2g flows, metadata, ...) are skipped. Events on one
CPU thread nest by time: an event is the child of the innermost event still open at its start; a child
that outlasts its parent (rounding, an unbalanced range) is clipped to the parent's end, so the self times
of a thread add up exactly to the time its outermost events cover. No torch: the standard library, and
pandas for ``capture_of_trace``'s tables.
"""

from __future__ import annotations

import gzip
import json
import math
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from traceinfer.errors import IngestError
from traceinfer.flamegraphs.folded import Folded, annotate, frame_name
from traceinfer.ingest.capture import GPU_COLUMNS, LAUNCH_COLUMNS, GpuCapture, empty

RANGE_CATS = frozenset({"user_annotation"})
OP_CATS = frozenset({"cpu_op"})
RUNTIME_CATS = frozenset({"cuda_runtime", "cuda_driver"})
GPU_CATS = frozenset({"kernel", "gpu_memcpy", "gpu_memset"})
NO_LAUNCH = "(no launch found)"

# at equal start and end, a range encloses an op, an op encloses a runtime call
_RANK = {**dict.fromkeys(RANGE_CATS, 0), **dict.fromkeys(OP_CATS, 1), **dict.fromkeys(RUNTIME_CATS, 2)}

Trace = dict[str, Any]


def load_trace(source: str | Path | Trace) -> Trace:
    """The trace as a dict (``source`` itself if it is one); IngestError naming the file when it cannot be
    read as a Chrome trace with a ``traceEvents`` list (missing, truncated, not JSON)."""
    if isinstance(source, dict):
        data, where = source, "the trace given"
    else:
        path = Path(source)
        where = str(path)
        try:
            with path.open("rb") as f:
                raw = f.read()
            if raw[:2] == b"\x1f\x8b":  # gzip's magic, whatever the file's name says
                raw = gzip.decompress(raw)
            data = json.loads(raw)
        except FileNotFoundError:
            raise IngestError(f"{where}: no such torch.profiler trace") from None
        except (OSError, EOFError, zlib.error, ValueError) as exc:  # ValueError: JSON and UTF-8 errors
            reason = " ".join(str(exc).split()) or type(exc).__name__
            raise IngestError(
                f"{where}: not a readable torch.profiler trace (truncated or not JSON: {reason})"
            ) from None
    if not isinstance(data, dict) or not isinstance(data.get("traceEvents"), list):
        raise IngestError(f"{where}: not a torch.profiler trace (no 'traceEvents' list)")
    return data


@dataclass(frozen=True, slots=True)
class _Event:
    start: int  # ns from the trace's first event read
    end: int
    rank: int
    cat: str
    name: str
    track: tuple  # (pid, tid)
    correlation: int | None


def _events(trace: Trace) -> list[_Event]:
    """The complete events of the kinds read here; malformed ones are counted and warned about."""
    return _read_events(trace)[0]


def _read_events(trace: Trace) -> tuple[list[_Event], float | None]:
    """The events (as ``_events``) and the ``ts`` (us) their times count from: the first one's."""
    out = []
    bad = 0
    base: float | None = None  # µs; times relative to it keep their nanoseconds within a float's 53 bits
    for e in trace["traceEvents"]:
        if not isinstance(e, dict) or e.get("ph") != "X":
            continue
        cat = e.get("cat")
        if cat not in _RANK and cat not in GPU_CATS:
            continue
        try:
            ts, dur = float(e["ts"]), float(e["dur"])
            if not (math.isfinite(ts) and math.isfinite(dur)):
                raise ValueError(ts, dur)
            base = ts if base is None else base
            start = round((ts - base) * 1000)
            end = start + max(0, round(dur * 1000))
            args = e.get("args") or {}
            corr = args.get("correlation")
            out.append(_Event(start, end, _RANK.get(cat, 3), cat, str(e["name"]), (e.get("pid"), e.get("tid")),
                              int(corr) if corr is not None else None))  # fmt: skip
        except (KeyError, TypeError, ValueError):
            bad += 1
    if bad:
        warnings.warn(
            f"ignored {bad} trace event{'s' if bad > 1 else ''} without a usable ts, dur or name", stacklevel=4
        )
    return out, base


def _frame(ev: _Event) -> str:
    if ev.cat in RANGE_CATS:
        return annotate(ev.name, "range")
    return annotate(ev.name, "native")  # aten ops and runtime calls are native code


def _nest(events: list[_Event]) -> Iterator[tuple[_Event, tuple[str, ...], int]]:
    """(event, its path root -> itself, its self time in ns) for every event of one track, by containment;
    each event is yielded once its children are done."""
    stack: list[list] = []  # [event, path, clipped end, children's time]
    for ev in sorted(events, key=lambda e: (e.start, -e.end, e.rank)):
        while stack and stack[-1][2] <= ev.start:
            done = stack.pop()
            yield done[0], done[1], done[2] - done[0].start - done[3]
        end = min(ev.end, stack[-1][2]) if stack else ev.end
        if stack:
            stack[-1][3] += end - ev.start
        stack.append([ev, (stack[-1][1] if stack else ()) + (_frame(ev),), end, 0])
    while stack:
        done = stack.pop()
        yield done[0], done[1], done[2] - done[0].start - done[3]


def _tracks(events: list[_Event], cats: frozenset) -> dict[tuple, list[_Event]]:
    tracks: dict[tuple, list[_Event]] = {}
    for ev in events:
        if ev.cat in cats:
            tracks.setdefault(ev.track, []).append(ev)
    return tracks


def _thread_names(trace: Trace) -> dict[tuple, str]:
    names = {}
    for e in trace["traceEvents"]:
        if isinstance(e, dict) and e.get("ph") == "M" and e.get("name") == "thread_name":
            name = (e.get("args") or {}).get("name")
            if isinstance(name, str):
                names[(e.get("pid"), e.get("tid"))] = name
    return names


def cpu_stacks(trace: str | Path | Trace, threads: bool = False) -> Folded:
    """Self time (ns) of every range, op and runtime call on the CPU threads, on its path of enclosing
    ranges (``_[r]``) and ops (``_[n]``), root first. ``threads``: a first frame per thread (its name in
    the trace, e.g. "thread 1234 (python)"), which keeps the threads apart."""
    trace = load_trace(trace)
    events = _events(trace)
    names = _thread_names(trace) if threads else {}
    folded = Folded(unit="ns")
    for track, evs in _tracks(events, RANGE_CATS | OP_CATS | RUNTIME_CATS).items():
        prefix = (frame_name(names.get(track, f"thread {track[1]}")),) if threads else ()
        for _, path, self_ns in _nest(evs):
            if self_ns > 0:
                folded.add(prefix + path, self_ns)
    return folded


def gpu_stacks(trace: str | Path | Trace, ops: bool = False) -> Folded:
    """GPU time (ns) of every kernel, memcpy and memset, on the path of the ranges (``_[r]``) open on the
    CPU thread at the runtime call that launched it (matched by correlation id), then the kernel
    (``_[k]``). ``ops``: the aten ops enclosing the launch too (``_[n]``, between the ranges and the
    kernel). GPU work whose launch is not in the trace goes under "(no launch found)". A CPU-only trace
    gives an empty Folded."""
    trace = load_trace(trace)
    events = _events(trace)
    kernels = [ev for ev in events if ev.cat in GPU_CATS]
    folded = Folded(unit="ns")
    if not kernels:
        return folded
    launch_path: dict[int, tuple[str, ...]] = {}
    for evs in _tracks(events, RANGE_CATS | RUNTIME_CATS | (OP_CATS if ops else frozenset())).values():
        for ev, path, _ in _nest(evs):
            if ev.cat in RUNTIME_CATS and ev.correlation is not None:
                launch_path[ev.correlation] = path[:-1]  # the launch's own frame is not shown
    no_launch = (NO_LAUNCH,)
    for k in kernels:
        path = launch_path.get(k.correlation) if k.correlation is not None else None
        folded.add((no_launch if path is None else path) + (annotate(k.name, "kernel"),), k.end - k.start)
    return folded


# -- the trace as a GpuCapture ---------------------------------------------------------------------------

#: Kineto's GPU event kinds -> the capture's
GPU_KINDS = {"kernel": "kernel", "gpu_memcpy": "memcpy", "gpu_memset": "memset"}
_FIELD = 0x1000000  # a thread id holds its process id as nsys's globalTid does: pid * 2**24 + tid


class _TrackIds:
    """Stable integers for a trace's (pid, tid) tracks: ``pid * 2**24 + tid`` (so ingest.nsys.pid_of gives
    the pid back) when both are integers below 2**24, as Kineto writes them on Linux; otherwise numbers
    counted down from 2**24 - 1 in order of first appearance."""

    def __init__(self) -> None:
        self.other: dict = {}

    def _part(self, value) -> int:
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < _FIELD:
            return value
        return self.other.setdefault(value, _FIELD - 1 - len(self.other))

    def pid(self, track: tuple) -> int:
        return self._part(track[0])

    def tid(self, track: tuple) -> int:
        return self._part(track[0]) * _FIELD + self._part(track[1])


def capture_of_trace(trace: str | Path | Trace) -> GpuCapture:
    """The trace's ranges, runtime calls and GPU work as a GpuCapture (ingest.capture), the tables
    analysis.gpu_trace computes nsys's reports from:

        ranges    every ``user_annotation`` event (a record_function range): style "PushPop", name and text
                  the range's text, tid a stable integer per (pid, tid) (``pid * 2**24 + tid``), payload <NA>
        launches  every ``cuda_runtime`` / ``cuda_driver`` event, its ``args.correlation`` (-1 without one)
        gpu       every ``kernel`` / ``gpu_memcpy`` / ``gpu_memset`` event: kind kernel, memcpy or memset,
                  Kineto's name, device and stream (the event's pid and tid), its correlation, and the pid
                  of the launch with that correlation (-1: no launch in the trace); graph_node <NA>

    Times are integer ns on the trace's clock (``ts`` us * 1000; each time counted from the first event's,
    as the folded readers do, so a duration is exactly the one ``gpu_stacks`` adds up). Kineto lists the
    kernels of a CUDA graph replay one by one, each with the cudaGraphLaunch's correlation: ``graph_trace``
    is "node" when a cudaGraphLaunch started GPU work in the trace, else None. ``threads``: the trace's
    thread names; ``meta["gpus"]``: its deviceProperties' names."""
    source = "the trace given" if isinstance(trace, dict) else str(trace)
    trace = load_trace(trace)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        events, base = _read_events(trace)
    notes = [str(w.message) for w in caught]
    base_ns = round(base * 1000) if base is not None else 0
    ids = _TrackIds()
    ranges = [(ev.start + base_ns, ev.end + base_ns, ev.name, ids.tid(ev.track), ids.pid(ev.track))
              for ev in events if ev.cat in RANGE_CATS]  # fmt: skip
    calls = [(ev.start + base_ns, ev.end + base_ns, ids.tid(ev.track), ids.pid(ev.track),
              -1 if ev.correlation is None else ev.correlation, ev.name) for ev in events if ev.cat in RUNTIME_CATS]  # fmt: skip
    launch_pid = {c[4]: c[3] for c in reversed(calls) if c[4] >= 0}  # a correlation's first call
    work = [(ev.start + base_ns, ev.end + base_ns, GPU_KINDS[ev.cat], ev.name, _int(ev.track[0]), _int(ev.track[1]),
             -1 if ev.correlation is None else ev.correlation) for ev in events if ev.cat in GPU_CATS]  # fmt: skip

    def frame(rows: list, columns: tuple[str, ...]) -> pd.DataFrame:
        return pd.DataFrame.from_records(rows, columns=list(columns)) if rows else empty(columns)

    r = frame(ranges, ("start", "end", "name", "tid", "pid"))
    r = pd.DataFrame({"start": r["start"].astype("int64"), "end": r["end"].astype("int64"), "style": "PushPop",
                      "name": r["name"].astype(object), "text": r["name"].astype(object), "tid": r["tid"].astype("int64"),
                      "pid": r["pid"].astype("int64"), "payload": pd.array([None] * len(r), dtype="Int64")})  # fmt: skip
    r = r.sort_values(["start", "end"], ascending=[True, False], kind="stable").reset_index(drop=True)
    la = frame(calls, LAUNCH_COLUMNS)
    la["name"] = la["name"].astype("category")
    la = la.astype({c: "int64" for c in LAUNCH_COLUMNS if c != "name"}).sort_values("start", kind="stable")
    g = frame(work, ("start", "end", "kind", "name", "device", "stream", "correlation"))
    g["pid"] = [launch_pid.get(c, -1) for c in g["correlation"].tolist()]
    g["graph_node"] = pd.array([None] * len(g), dtype="Int64")
    g = g.astype({"start": "int64", "end": "int64", "device": "int64", "stream": "int64", "correlation": "int64",
                  "pid": "int64", "kind": "category", "name": "category"})  # fmt: skip
    g = g[list(GPU_COLUMNS)].sort_values("start", kind="stable").reset_index(drop=True)
    graph_calls = {c[4] for c in calls if c[5].startswith("cudaGraphLaunch") and c[4] >= 0}
    graph_trace = "node" if not graph_calls.isdisjoint(g["correlation"].tolist()) else None
    threads = {}
    for track, name in _thread_names(trace).items():
        threads[ids.tid(track)] = name
    props = trace.get("deviceProperties")
    meta: dict = {"format": "kineto"}
    if isinstance(props, list):
        meta["gpus"] = [p.get("name") for p in props if isinstance(p, dict)]
    if r.empty:
        notes.append("no user_annotation events: the trace has no ranges (record_function)")
    if g.empty:
        notes.append("the trace holds no GPU work (no kernel, gpu_memcpy or gpu_memset events)")
    return GpuCapture(source, r, la.reset_index(drop=True), g, threads, graph_trace, meta, notes)


def _int(value) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else -1
