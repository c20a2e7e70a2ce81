"""One Chrome / Perfetto trace from a run directory: engine spans, GC pauses, per-thread activity,
requests, KV counters, queue lengths and samplers on one timeline.

Format: the Trace Event Format (https://docs.google.com/document/d/1CvAClvFfyA5R-PhYUmn5OOQtYMH4h4I0nSwKqjMPj5o):
``{"traceEvents": [...], "displayTimeUnit": "ms"}`` with events ``{"name", "ph", "ts" (µs), "pid", "tid", ...}``;
here ph is X (complete, with "dur"), i (instant, with "s"), C (counter, numeric "args") or M (metadata).
Opens in https://ui.perfetto.dev and chrome://tracing. Timestamps are µs since the run's ``t0_ns``.

Tracks:
    pid 1 engine   : steps (step > schedule, prepare, forward, sample, postprocess, handover), gc, KV and
                     queue counters, GPU forward time, CUDA allocator
    pid 2 requests : one track per request (queued, prefill, decode; preemptions as instants)
    pid 3 threads  : one track per sampled thread (runs of identical stacks, named by the leaf frame), CPU %
    pid 4 host     : process CPU %, RSS, context switches/s
    pid 5 gpu      : NVML counters
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

from traceinfer.rundir import Run
from traceinfer.rundir.schema import STAGES

PID_ENGINE, PID_REQUESTS, PID_THREADS, PID_HOST, PID_GPU = 1, 2, 3, 4, 5
TID_STEPS, TID_GC, TID_KV = 1, 2, 3


class _Trace:
    def __init__(self, t0_ns: int) -> None:
        self.t0 = t0_ns
        self.events: list[dict] = []
        self.meta: list[dict] = []

    def us(self, t_ns: int) -> float:
        return round((t_ns - self.t0) / 1e3, 3)

    def process(self, pid: int, name: str, sort: int) -> None:
        self.meta.append({"name": "process_name", "ph": "M", "pid": pid, "tid": 0, "ts": 0, "args": {"name": name}})
        self.meta.append({"name": "process_sort_index", "ph": "M", "pid": pid, "tid": 0, "ts": 0, "args": {"sort_index": sort}})  # fmt: skip

    def thread(self, pid: int, tid: int, name: str, sort: int | None = None) -> None:
        self.meta.append({"name": "thread_name", "ph": "M", "pid": pid, "tid": tid, "ts": 0, "args": {"name": name}})
        if sort is not None:
            self.meta.append({"name": "thread_sort_index", "ph": "M", "pid": pid, "tid": tid, "ts": 0, "args": {"sort_index": sort}})  # fmt: skip

    def span(self, pid: int, tid: int, name: str, t_ns: int, dur_ns: int, cat: str, args: dict | None = None) -> None:
        ev = {
            "name": name,
            "cat": cat,
            "ph": "X",
            "ts": self.us(t_ns),
            "dur": round(max(dur_ns, 0) / 1e3, 3),
            "pid": pid,
            "tid": tid,
        }
        if args:
            ev["args"] = args
        self.events.append(ev)

    def instant(self, pid: int, tid: int, name: str, t_ns: int, cat: str, args: dict | None = None) -> None:
        ev = {"name": name, "cat": cat, "ph": "i", "s": "t", "ts": self.us(t_ns), "pid": pid, "tid": tid}
        if args:
            ev["args"] = args
        self.events.append(ev)

    def counter(self, pid: int, name: str, t_ns: int, values: dict[str, Any]) -> None:
        args = {k: v for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if args:
            self.events.append({"name": name, "ph": "C", "ts": self.us(t_ns), "pid": pid, "tid": 0, "args": args})


def _steps(tr: _Trace, rows: list[dict]) -> None:
    for r in rows:
        if r["dur_ns"] is None:
            continue
        summary = {k: r[k] for k in ("step", "num_seqs", "num_prefill_tokens", "num_decode_tokens", "num_waiting",
                                      "num_running", "num_preempted", "cuda_graph") if r[k] is not None}  # fmt: skip
        tr.span(PID_ENGINE, TID_STEPS, "step", r["t_ns"], r["dur_ns"], "engine", summary)
        for stage in STAGES:
            start, dur = r[f"{stage}_start_ns"], r[f"{stage}_ns"]
            if start is None or dur is None:
                continue
            name = stage
            if stage == "forward" and r["cuda_graph"] is not None:
                name = "forward (graph)" if r["cuda_graph"] else "forward (eager)"
            args = {"step": r["step"]}
            if stage == "forward" and r["gpu_forward_ns"] is not None:
                args["gpu_ms"] = r["gpu_forward_ns"] / 1e6
            tr.span(PID_ENGINE, TID_STEPS, name, start, dur, "engine", args)
        if r.get("handover_ns") is not None:  # the probes' share of the step, behind the GPU on CUDA
            tr.span(PID_ENGINE, TID_STEPS, "handover", r["handover_start_ns"], r["handover_ns"], "probes",
                    {"step": r["step"]})  # fmt: skip
        t = r["t_ns"]
        tr.counter(PID_ENGINE, "queues", t, {"waiting": r["num_waiting"], "running": r["num_running"]})
        tr.counter(
            PID_ENGINE, "batch tokens", t, {"prefill": r["num_prefill_tokens"], "decode": r["num_decode_tokens"]}
        )
        if r["gpu_forward_ns"] is not None:
            tr.counter(PID_ENGINE, "GPU forward ms", t, {"gpu_forward": r["gpu_forward_ns"] / 1e6,
                                                          "gpu_gap": (r["gpu_gap_ns"] or 0) / 1e6})  # fmt: skip


def _gc(tr: _Trace, rows: list[dict]) -> None:
    for r in rows:
        tr.span(PID_ENGINE, TID_GC, f"gc gen{r['generation']}", r["t_ns"], r["dur_ns"], "gc",
                {k: r[k] for k in ("generation", "collected", "uncollectable", "step", "in_step", "thread")})  # fmt: skip


def _kv(tr: _Trace, rows: list[dict]) -> None:
    last = None
    for r in rows:
        values = (r["num_used"], r["num_free"], r["num_cached"])
        if values != last:
            tr.counter(PID_ENGINE, "KV blocks", r["t_ns"], {"used": values[0], "free": values[1], "cached": values[2]})
            last = values
        if r["op"] in ("preempt", "reset"):
            tr.instant(PID_ENGINE, TID_KV, f"kv {r['op']}", r["t_ns"], "kv",
                       {"request_id": r["request_id"], "blocks": len(r["block_ids"] or [])})  # fmt: skip


def _requests(tr: _Trace, rows: list[dict], tokens: list[dict]) -> None:
    """Per request: queued -> prefill (scheduled to its next token) -> decode -> finished; a preemption
    closes the current slice and starts 'queued (preempted)'."""
    timeline: dict[str, list[tuple[int, str, dict | None]]] = {}
    for r in rows:
        timeline.setdefault(r["request_id"], []).append((r["t_ns"], r["event"], r))
    for t in tokens:
        if t["request_id"] in timeline:
            timeline[t["request_id"]].append((t["t_ns"], "token", None))
    order = sorted(timeline, key=lambda rid: min(t for t, _, _ in timeline[rid]))
    for tid, rid in enumerate(order, start=1):
        tr.thread(PID_REQUESTS, tid, f"request {rid}", tid)
        state, since, args = None, 0, None  # the open slice
        for t, kind, e in sorted(timeline[rid], key=lambda x: x[0]):
            if kind == "token" and state != "prefill":
                continue
            if state is not None and t >= since and kind != "arrival":
                extra = {"tokens": e["num_output_tokens"], "reason": e["reason"]} if kind == "finished" else {}
                tr.span(PID_REQUESTS, tid, state, since, t - since, "request", {**(args or {}), **extra} or None)
            if kind == "token":  # the first token after (re-)admission ends the prefill
                state, since, args = "decode", t, None
            elif kind == "arrival":
                state, since, args = "queued", t, {"prompt_len": e["prompt_len"]}
            elif kind == "scheduled":
                state, since, args = "prefill", t, {"cached_tokens": e["cached_tokens"]}
            elif kind == "preempted":
                tr.instant(PID_REQUESTS, tid, "preempted", t, "request")
                state, since, args = "queued (preempted)", t, None
            elif kind == "finished":
                state = None


def _threads(tr: _Trace, rows: list[dict], period_ns: int) -> None:
    by_thread: dict[int, list[dict]] = {}
    for r in rows:
        by_thread.setdefault(r["thread_id"], []).append(r)
    for i, (ident, samples) in enumerate(sorted(by_thread.items(), key=lambda kv: kv[1][0]["t_ns"]), start=1):
        samples.sort(key=lambda r: r["t_ns"])
        name = samples[0]["thread_name"]
        tid = samples[0]["native_id"] or i
        tr.thread(PID_THREADS, tid, name, i)
        run_start = 0
        for j in range(1, len(samples) + 1):
            if j < len(samples) and samples[j]["stack"] == samples[run_start]["stack"]:
                continue
            first = samples[run_start]
            end = samples[j]["t_ns"] if j < len(samples) else samples[j - 1]["t_ns"] + period_ns
            stack = first["stack"] or ""
            tr.span(PID_THREADS, tid, stack.rsplit(";", 1)[-1] or "(no frames)", first["t_ns"], end - first["t_ns"],
                    "thread", {"stack": stack, "samples": j - run_start})  # fmt: skip
            run_start = j
        for a, b in itertools.pairwise(samples):
            if a["cpu_ns"] is not None and b["cpu_ns"] is not None and b["t_ns"] > a["t_ns"]:
                pct = 100.0 * (b["cpu_ns"] - a["cpu_ns"]) / (b["t_ns"] - a["t_ns"])
                tr.counter(PID_THREADS, f"CPU % {name}", b["t_ns"], {"cpu_pct": round(pct, 2)})


def _host(tr: _Trace, rows: list[dict]) -> None:
    prev = None
    for r in rows:
        tr.counter(PID_HOST, "process CPU %", r["t_ns"], {"cpu_pct": r["cpu_percent"]})
        tr.counter(
            PID_HOST, "RSS MB", r["t_ns"], {"rss_mb": r["rss_bytes"] / 2**20 if r["rss_bytes"] is not None else None}
        )
        if prev is not None and r["t_ns"] > prev["t_ns"]:
            dt = (r["t_ns"] - prev["t_ns"]) / 1e9
            tr.counter(PID_HOST, "context switches/s", r["t_ns"], {
                "voluntary": (r["ctx_switches_voluntary"] - prev["ctx_switches_voluntary"]) / dt,
                "involuntary": (r["ctx_switches_involuntary"] - prev["ctx_switches_involuntary"]) / dt,
            })  # fmt: skip
        prev = r


def _gpu(tr: _Trace, rows: list[dict]) -> None:
    for r in rows:
        t = r["t_ns"]
        tr.counter(PID_GPU, "utilization %", t, {"gpu": r["gpu_util_pct"], "memory": r["mem_util_pct"]})
        if r["mem_used_bytes"] is not None:
            tr.counter(PID_GPU, "memory used GiB", t, {"used": r["mem_used_bytes"] / 2**30})
        tr.counter(PID_GPU, "power W", t, {"power": r["power_w"]})
        tr.counter(PID_GPU, "clocks MHz", t, {"sm": r["sm_clock_mhz"], "memory": r["mem_clock_mhz"]})
        tr.counter(PID_GPU, "temperature C", t, {"gpu": r["temperature_c"]})
        if r["pcie_rx_bytes_s"] is not None or r["pcie_tx_bytes_s"] is not None:
            tr.counter(PID_GPU, "PCIe MB/s", t, {
                "rx": r["pcie_rx_bytes_s"] / 1e6 if r["pcie_rx_bytes_s"] is not None else None,
                "tx": r["pcie_tx_bytes_s"] / 1e6 if r["pcie_tx_bytes_s"] is not None else None,
            })  # fmt: skip


def _cuda_memory(tr: _Trace, rows: list[dict]) -> None:
    for r in rows:
        tr.counter(PID_ENGINE, "CUDA allocator GiB", r["t_ns"], {
            "allocated": r["allocated_bytes"] / 2**30 if r["allocated_bytes"] is not None else None,
            "reserved": r["reserved_bytes"] / 2**30 if r["reserved_bytes"] is not None else None,
        })  # fmt: skip


def build_trace(run: Run) -> dict:
    """The trace of an opened run directory as a dict (see the module docstring for its tracks)."""
    manifest = run.manifest
    streams = {name: run.records(name) for name in (
        "steps", "gc", "kv_events", "requests", "tokens", "thread_samples", "host_samples", "gpu_samples", "cuda_memory")}  # fmt: skip
    t0 = manifest.get("clock", {}).get("t0_ns")
    if t0 is None:
        t0 = min((r["t_ns"] for rows in streams.values() for r in rows if r.get("t_ns") is not None), default=0)
    tr = _Trace(t0)
    tr.process(PID_ENGINE, "traceinfer engine", 1)
    tr.thread(PID_ENGINE, TID_STEPS, "steps", 1)
    tr.thread(PID_ENGINE, TID_GC, "gc", 2)
    tr.thread(PID_ENGINE, TID_KV, "kv", 3)
    _steps(tr, streams["steps"])
    _gc(tr, streams["gc"])
    _kv(tr, streams["kv_events"])
    _cuda_memory(tr, streams["cuda_memory"])
    if streams["requests"]:
        tr.process(PID_REQUESTS, "requests", 2)
        _requests(tr, streams["requests"], streams["tokens"])
    if streams["thread_samples"]:
        tr.process(PID_THREADS, "threads (stack samples)", 3)
        hz = manifest.get("probes", {}).get("stack_hz") or 100.0
        _threads(tr, streams["thread_samples"], int(1e9 / hz))
    if streams["host_samples"]:
        tr.process(PID_HOST, "host (psutil)", 4)
        _host(tr, streams["host_samples"])
    if streams["gpu_samples"]:
        tr.process(PID_GPU, "gpu (NVML)", 5)
        _gpu(tr, streams["gpu_samples"])
    tr.events.sort(key=lambda e: e["ts"])
    engine = manifest.get("engine", {})
    return {
        "traceEvents": tr.meta + tr.events,
        "displayTimeUnit": "ms",
        "otherData": {
            "run": str(run.path.resolve()),
            "status": manifest.get("status"),
            "model": engine.get("model"),
            "device": manifest.get("device", {}).get("name"),
            "probes": ",".join(manifest.get("probes", {}).get("enabled", [])),
            "t0_ns": t0,
        },
    }


def write_trace(trace: dict, path: str | Path) -> Path:
    """Write a trace as compact JSON, through a temporary file; returns ``path``."""
    out = Path(path)
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(trace, fh, separators=(",", ":"))
    tmp.replace(out)
    return out
