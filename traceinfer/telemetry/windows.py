"""Sliding windows of what the probes see, folded off the engine thread, and the snapshot ``top`` draws.

The engine thread only appends one tuple per hook event to an inbox (``Telemetry.put``, a deque's append:
O(1), no lock). A thread of the telemetry's own (``traceinfer-telemetry``, 4 Hz) folds the inbox into
cumulative counters and histograms (what /metrics serves) and bounded, time-stamped windows (what the
percentiles and rates of a snapshot are computed from), and samples per-thread CPU (psutil) and the GPU
(NVML). A snapshot folds what is left, then computes; it runs on the caller's thread (the HTTP thread, or
top's), never the engine's. Inbox events::

    ("step", step, t_begin_ns, t_end_ns, [schedule, prepare, forward, sample, postprocess ns], handover_ns, summary)
    ("arrival", t_ns, fields)   ("block", ops)   ("tokens", t_ns, fields)   ("finish", t_ns, fields)
    ("gc", t_start_ns, pause_ns, generation)
"""

from __future__ import annotations

import bisect
import os
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from itertools import accumulate, repeat
from typing import Any

from traceinfer.engine.block_manager import BlockOp
from traceinfer.probes.base import SamplerThread
from traceinfer.rundir.schema import STAGES
from traceinfer.telemetry.metrics import METRICS, PHASES

FORMAT = "traceinfer-telemetry"
FORMAT_VERSION = 1
TICK_HZ = 4.0  # folds and samples per second
SERIES_BIN_S = 0.5  # the output tok/s series (top's sparkline)
MAX_WINDOW_ROWS = 20_000  # a window keeps at most this many rows (the newest; ITL: a row per distinct gap of a step)
MAX_SORTED = 4096  # percentiles sort at most this many of a window's values (evenly strided): a snapshot stays ~1 ms
_OP, _REQUEST, _BLOCKS, _T = (BlockOp._fields.index(f) for f in ("op", "request_id", "block_ids", "t_ns"))


class Histogram:
    """Cumulative counts over fixed upper bounds (Prometheus ``le``: a value lands in the first bucket >= it)."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last: +Inf
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float, n: int = 1) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += n
        self.count += n
        self.sum += value * n

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, observations <= it), ending with (inf, count)."""
        out, running = [], 0
        for bound, c in zip((*self.bounds, float("inf")), self.counts):
            running += c
            out.append((bound, running))
        return out

    def copy(self) -> Histogram:
        h = Histogram(self.bounds)
        h.counts, h.count, h.sum = list(self.counts), self.count, self.sum
        return h


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile with linear interpolation between ranks (numpy's default, as
    traceinfer.analysis.latency uses); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


class _Window:
    """(t_ns, value) pairs of the last ``window_ns`` (at most MAX_WINDOW_ROWS of them)."""

    __slots__ = ("rows", "window_ns")

    def __init__(self, window_ns: int) -> None:
        self.window_ns = window_ns
        self.rows: deque = deque(maxlen=MAX_WINDOW_ROWS)

    def add(self, t: int, value) -> None:
        self.rows.append((t, value))

    def trim(self, now: int) -> None:
        rows, cutoff = self.rows, now - self.window_ns
        while rows and rows[0][0] < cutoff:
            rows.popleft()

    def since(self, cutoff: int) -> list:
        return [v for t, v in self.rows if t >= cutoff]


class GpuSampler:
    """The engine's GPU from NVML (pynvml, from nvidia-ml-py): utilization, memory, power. Absent, with the
    reason, on a CPU, without pynvml, or when NVML cannot be reached."""

    def __init__(self, nvml_index: int | None, no_gpu_reason: str | None = None) -> None:
        self.available = False
        self.reason = no_gpu_reason
        self.last: dict[str, Any] = {}
        self._nvml = self._handle = None
        if nvml_index is None:
            self.reason = self.reason or "no GPU"
            return
        try:
            import pynvml

            pynvml.nvmlInit()
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(nvml_index)
            self._nvml = pynvml
            self.available = True
        except ImportError:
            self.reason = "pynvml is not installed (pip install nvidia-ml-py)"
        except Exception as exc:  # NVML absent or the device unreachable: the rest still works
            self.reason = f"NVML: {type(exc).__name__}: {exc}"

    def sample(self) -> dict[str, Any] | None:
        if not self.available:
            return None
        nv, h = self._nvml, self._handle
        out: dict[str, Any] = {}
        for key, read in (("util_pct", lambda: float(nv.nvmlDeviceGetUtilizationRates(h).gpu)),
                          ("mem_used_bytes", lambda: int(nv.nvmlDeviceGetMemoryInfo(h).used)),
                          ("mem_total_bytes", lambda: int(nv.nvmlDeviceGetMemoryInfo(h).total)),
                          ("power_w", lambda: nv.nvmlDeviceGetPowerUsage(h) / 1000.0)):  # fmt: skip
            try:
                out[key] = read()
            except Exception:  # a field this GPU does not report: null, never 0
                out[key] = None
        self.last = out
        return out

    def close(self) -> None:
        if self._nvml is not None:
            try:
                self._nvml.nvmlShutdown()
            except Exception:
                pass
            self._nvml = None


class ThreadCpu:
    """Per-thread CPU share of this process between two samples (psutil), named by Python's threads."""

    def __init__(self) -> None:
        try:
            import psutil

            self._proc = psutil.Process()
        except ImportError:
            self._proc = None
        self._last: dict[int, float] = {}
        self._t = time.perf_counter()
        self.shares: list[dict] = []

    def sample(self) -> None:
        if self._proc is None:
            return
        try:
            threads = self._proc.threads()
        except Exception:
            return
        now = time.perf_counter()
        dt = max(now - self._t, 1e-9)
        names = {t.native_id: t.name for t in threading.enumerate()}
        shares, last = [], {}
        for th in threads:
            cpu = th.user_time + th.system_time
            last[th.id] = cpu
            prev = self._last.get(th.id)
            if prev is not None:
                shares.append({"name": names.get(th.id, f"tid {th.id}"), "native_id": th.id,
                               "cpu_pct": round(100.0 * max(cpu - prev, 0.0) / dt, 1)})  # fmt: skip
        self._last, self._t = last, now
        self.shares = sorted(shares, key=lambda s: -s["cpu_pct"])


class Telemetry:
    """Counters, histograms and sliding windows of one engine, fed through ``put`` (see the module doc)."""

    def __init__(
        self,
        window_s: float = 30.0,
        engine: dict | None = None,
        gpu: GpuSampler | None = None,
        clock: Callable[[], int] = time.perf_counter_ns,
    ) -> None:
        self.window_s = window_s
        self.engine = dict(engine or {})  # model, device, num_kv_blocks, block_size
        self._num_blocks = self.engine.get("num_kv_blocks") or 0
        self._block_size = self.engine.get("block_size") or 0
        self._clock = clock
        self._inbox: deque = deque()
        self.put = self._inbox.append  # the engine thread's whole cost per event
        self._lock = threading.Lock()
        self.t0_ns = clock()
        self.status = "running"
        self.gpu = gpu or GpuSampler(None, "no GPU")
        self._threads = ThreadCpu()
        self._ticker: SamplerThread | None = None
        self.server_cpu_s = 0.0  # the HTTP thread's CPU, reported by the server
        window_ns = int(window_s * 1e9)
        # cumulative (what /metrics serves)
        self.running = self.waiting = 0
        self.kv_usage = 0.0
        self.counters = {name: 0 for name in ("prefix_cache_queries", "prefix_cache_hits", "num_preemptions",
                                              "prompt_tokens", "generation_tokens", "engine_steps")}  # fmt: skip
        self.arrived = 0
        self.success: dict[str, int] = {}
        self.phase_ns = dict.fromkeys(PHASES, 0)
        self.gc_count: dict[str, int] = {}
        self.gc_pause_ns: dict[str, int] = {}
        self.hists = {name: Histogram(m.buckets) for name, m in METRICS.items() if m.kind == "histogram"}
        # windows
        self.w_steps = _Window(window_ns)  # (t_end, (dur, phases...))
        self.w_tokens = _Window(window_ns)  # (t, n) per step
        self.w_prompt = _Window(window_ns)  # (t, prompt tokens) at first tokens
        self.w_ttft = _Window(window_ns)
        self.w_itl = _Window(window_ns)  # (t, (itl s, tokens)): one row per distinct gap of a step, not per token
        self.w_e2e = _Window(window_ns)
        self.w_queue = _Window(window_ns)
        self.w_prefix = _Window(window_ns)  # (t, (queries, hits))
        self.w_gc = _Window(window_ns)  # (t, pause ns)
        self.w_gpu = _Window(window_ns)  # (t, util %)
        # per request, while in flight
        self._arrival: dict[str, tuple[int, int]] = {}  # rid -> (arrival ns, prompt tokens)
        self._admitted: set[str] = set()
        self._last_token: dict[str, int] = {}
        self._emitted: dict[str, int] = {}
        self._pending: tuple | None = None  # the last tokens event (request ids, t, indices), not yet settled
        self._folded_step = -1
        self._early_finishes: dict[int, int] = {}  # step -> its finishes folded before the step itself

    def resize(self, window_s: float) -> None:
        """Make every window ``window_s`` long (from the next fold on)."""
        with self._lock:
            self.window_s = window_s
            for w in self._windows():
                w.window_ns = int(window_s * 1e9)

    # -- the fold thread -------------------------------------------------------------------
    def start(self) -> None:
        self._ticker = SamplerThread("traceinfer-telemetry", TICK_HZ, self.tick)
        self._ticker.start()

    def stop(self) -> None:
        """Stop the fold thread, fold what is left, and mark the figures final. Safe to call twice."""
        if self._ticker is not None:
            self._ticker.stop()
        self.fold()
        self.status = "finished"
        self.gpu.close()

    @property
    def cpu_s(self) -> float:
        """CPU seconds of the telemetry's own threads (the fold thread and the server's)."""
        return (self._ticker.cpu_s if self._ticker else 0.0) + self.server_cpu_s

    def tick(self) -> None:
        self.fold()
        self._threads.sample()
        g = self.gpu.sample()
        if g is not None and g.get("util_pct") is not None:
            with self._lock:
                self.w_gpu.add(self._clock(), g["util_pct"])

    def fold(self) -> None:
        """Fold the inbox into the counters and windows (any thread; the lock keeps folds whole)."""
        with self._lock:
            inbox = self._inbox
            handlers = self._handlers
            while inbox:
                event = inbox.popleft()
                handlers[event[0]](self, *event[1:])
            now = self._clock()
            for w in self._windows():
                w.trim(now)

    def _windows(self) -> tuple[_Window, ...]:
        return (self.w_steps, self.w_tokens, self.w_prompt, self.w_ttft, self.w_itl, self.w_e2e, self.w_queue,
                self.w_prefix, self.w_gc, self.w_gpu)  # fmt: skip

    # -- folding each event ----------------------------------------------------------------
    def _step(self, step: int, t0: int, t1: int, stages: list, handover: int | None, summary: dict | None) -> None:
        c = self.counters
        self._folded_step = step
        early = self._early_finishes.pop(step, 0)
        c["engine_steps"] += 1
        dur = t1 - t0
        parts = [s or 0 for s in stages]
        hand = handover or 0
        other = dur - sum(parts) - hand
        phase_ns = self.phase_ns
        for name, ns in zip(STAGES, parts):
            phase_ns[name] += ns
        phase_ns["handover"] += hand
        phase_ns["other"] += other
        self.w_steps.add(t1, (dur, *parts, hand, other))
        if summary:
            self.running = max(summary.get("num_running", self.running) - early, 0)
            self.waiting = summary.get("num_waiting", self.waiting)
            c["num_preemptions"] += summary.get("num_preempted") or 0
            if self._num_blocks and summary.get("num_free_blocks") is not None:
                self.kv_usage = 1.0 - summary["num_free_blocks"] / self._num_blocks
            if summary.get("num_batched_tokens"):
                self.hists["iteration_tokens_total"].observe(summary["num_batched_tokens"])

    def _on_arrival(self, t: int, f: dict) -> None:
        self._arrival[f["request_id"]] = (f.get("arrival_ns") or t, f.get("prompt_len") or 0)
        self.arrived += 1

    def _block(self, ops: list) -> None:
        if self._pending is not None and any(o[_OP] == "allocate" or o[_OP] == "hit" for o in ops):
            self._settle()  # the prefix queries count each request's output tokens so far
        arrival, emitted, admitted = self._arrival, self._emitted, self._admitted
        c = self.counters
        for o in ops:
            op = o[_OP]
            if op != "allocate" and op != "hit":
                continue
            rid = o[_REQUEST]
            known = arrival.get(rid)
            if known is None:  # arrived before the telemetry attached
                continue
            queries = known[1] + emitted.get(rid, 0)
            hits = len(o[_BLOCKS]) * self._block_size if op == "hit" else 0
            c["prefix_cache_queries"] += queries
            c["prefix_cache_hits"] += hits
            t = o[_T]
            self.w_prefix.add(t, (queries, hits))
            if rid not in admitted:
                admitted.add(rid)
                wait = (t - known[0]) / 1e9
                self.hists["request_queue_time_seconds"].observe(wait)
                self.w_queue.add(t, wait)

    def _tokens(self, t: int, f: dict) -> None:
        """One step's tokens: TTFT of the first ones, ITL of the others. The tokens of one step share ``t``,
        and in a steady batch (the same requests as the step before, in the same order) every one's previous
        token came at the previous event's time: one ITL value for the whole batch, and the per-request
        times and counts are written only when the batch changes (``_settle``). Otherwise the ITL values
        are still few, counted once each (Counter, map, zip and repeat run in C), not once per token."""
        rids, indices = f["request_ids"], f["indices"]
        n = len(rids)
        pending = self._pending
        if pending is not None and 0 not in indices and pending[0] == rids:
            v = (t - pending[1]) / 1e9
            self.hists["inter_token_latency_seconds"].observe(v, n)
            self.w_itl.add(t, (v, n))
            self._pending = (rids, t, indices)
            self.counters["generation_tokens"] += n
            self.w_tokens.add(t, n)
            return
        self._settle()
        arrival, last = self._arrival, self._last_token
        prompt = 0
        if 0 in indices:  # first tokens (one per request): TTFT
            ttft = self.hists["time_to_first_token_seconds"]
            for rid, idx in zip(rids, indices):
                if idx == 0 and (known := arrival.get(rid)) is not None:
                    v = (t - known[0]) / 1e9
                    ttft.observe(v)
                    self.w_ttft.add(t, v)
                    prompt += known[1]
        # a previous token's time: None for a first token or a request that arrived before we attached
        previous = Counter(map(last.get, rids))
        previous.pop(None, None)
        if previous:
            itl, w_itl = self.hists["inter_token_latency_seconds"], self.w_itl
            for prev, count in previous.items():
                v = (t - prev) / 1e9
                itl.observe(v, count)
                w_itl.add(t, (v, count))
        self._pending = (rids, t, indices)
        self.counters["generation_tokens"] += n
        self.counters["prompt_tokens"] += prompt
        self.w_tokens.add(t, n)
        if prompt:
            self.w_prompt.add(t, prompt)

    def _settle(self) -> None:
        """Write the last tokens event's per-request time and output count (held back while the batch stays)."""
        if self._pending is not None:
            rids, t, indices = self._pending
            self._last_token.update(zip(rids, repeat(t)))
            self._emitted.update(zip(rids, map((1).__add__, indices)))
            self._pending = None

    def _finish(self, t: int, f: dict) -> None:
        self._settle()
        rid = f["request_id"]
        step = f.get("step")
        if step is not None and step > self._folded_step:  # handed over before its step's own event
            self._early_finishes[step] = self._early_finishes.get(step, 0) + 1
        else:  # the running count of its step's schedule included it
            self.running = max(self.running - 1, 0)
        reason = f.get("reason") or "unknown"
        self.success[reason] = self.success.get(reason, 0) + 1
        known = self._arrival.pop(rid, None)
        if known is not None:
            v = (t - known[0]) / 1e9
            self.hists["e2e_request_latency_seconds"].observe(v)
            self.w_e2e.add(t, v)
        self._admitted.discard(rid)
        self._last_token.pop(rid, None)
        self._emitted.pop(rid, None)

    def _gc(self, t: int, pause: int, generation) -> None:
        gen = str(generation)
        self.gc_count[gen] = self.gc_count.get(gen, 0) + 1
        self.gc_pause_ns[gen] = self.gc_pause_ns.get(gen, 0) + pause
        self.w_gc.add(t, pause)

    _handlers = {"step": _step, "arrival": _on_arrival, "block": _block, "tokens": _tokens, "finish": _finish,
                 "gc": _gc}  # fmt: skip

    # -- reading ---------------------------------------------------------------------------
    def cumulative(self) -> dict[str, Any]:
        """Every metric of METRICS by name: a number, {label value: number}, a Histogram, or None (absent)."""
        self.fold()
        with self._lock:
            gpu_idle = self._gpu_idle(self._clock() - int(self.window_s * 1e9))
            out: dict[str, Any] = {
                "num_requests_running": self.running,
                "num_requests_waiting": self.waiting,
                "kv_cache_usage_perc": self.kv_usage,
                **self.counters,
                "request_success": dict(self.success),
                **{name: h.copy() for name, h in self.hists.items()},
                "step_time_seconds": {p: ns / 1e9 for p, ns in self.phase_ns.items()},
                "gpu_idle_perc": gpu_idle,
                "gc_collections": dict(self.gc_count),
                "gc_pause_seconds": {g: ns / 1e9 for g, ns in self.gc_pause_ns.items()},
                "probe_handover_seconds": self.phase_ns["handover"] / 1e9,
                "telemetry_cpu_seconds": self.cpu_s,
            }
        assert out.keys() == METRICS.keys(), set(out) ^ set(METRICS)
        return out

    def _gpu_idle(self, cutoff: int) -> float | None:
        utils = self.w_gpu.since(cutoff)
        return 1.0 - sum(utils) / len(utils) / 100.0 if utils else None

    def snapshot(self, since_ns: int | None = None) -> dict[str, Any]:
        """A plain dict of the figures now: cumulative metrics (by METRICS name) and the window's rates,
        percentiles and shares. ``since_ns`` (a ``t_ns`` of an earlier snapshot) starts the window no earlier
        than then (top's reset)."""
        metrics = self.cumulative()
        with self._lock:
            now = self._clock()
            start = max(now - int(self.window_s * 1e9), self.t0_ns, since_ns or 0)
            span = max((now - start) / 1e9, 1e-9)
            steps = self.w_steps.since(start)
            tokens = sum(self.w_tokens.since(start))
            prefix = self.w_prefix.since(start)
            gc_pauses = self.w_gc.since(start)
            lat = {name: _summary(w.since(start)) for name, w in
                   (("ttft", self.w_ttft), ("e2e", self.w_e2e), ("queue", self.w_queue))}  # fmt: skip
            lat["itl"] = _weighted_summary(self.w_itl.since(start))
            step_total = sum(s[0] for s in steps)
            phases = {p: sum(s[i + 1] for s in steps) for i, p in enumerate(PHASES)}
            window = {
                "seconds": span,
                "output_tok_s": tokens / span,
                "prompt_tok_s": sum(self.w_prompt.since(start)) / span,
                "steps_per_s": len(steps) / span,
                "tok_s_series": self._series(start, now),
                "series_bin_s": SERIES_BIN_S,
                "latency_s": lat,
                "step_ms": {"mean": step_total / len(steps) / 1e6 if steps else None,
                            "p99": (percentile([s[0] for s in steps], 99) or 0) / 1e6 if steps else None,
                            "phases": {p: ns / len(steps) / 1e6 for p, ns in phases.items()} if steps else {}},  # fmt: skip
                # share of the window's wall time: each phase, and the engine thread outside any step
                "shares": {**{p: ns / 1e9 / span for p, ns in phases.items()},
                           "between steps": max(0.0, 1.0 - step_total / 1e9 / span)},  # fmt: skip
                "prefix_hit_rate": (sum(h for _, h in prefix) / q) if (q := sum(q for q, _ in prefix)) else None,
                "gc": {"count": len(gc_pauses), "pause_ms": sum(gc_pauses) / 1e6,
                       "max_ms": max(gc_pauses) / 1e6 if gc_pauses else None},  # fmt: skip
                "gpu_idle_perc": self._gpu_idle(start),
                "probe_handover_share": phases["handover"] / step_total if step_total else None,
            }
            c = self.counters
            snap = {
                "format": FORMAT, "version": FORMAT_VERSION, "status": self.status, "pid": os.getpid(),
                "t_ns": now, "unix": time.time(), "uptime_s": (now - self.t0_ns) / 1e9, "window_s": self.window_s,
                "since_ns": since_ns, "engine": self.engine,
                "requests": {"running": self.running, "waiting": self.waiting, "arrived": self.arrived,
                             "finished": sum(self.success.values()), "preemptions": c["num_preemptions"]},
                "kv": {"usage_perc": self.kv_usage, "num_blocks": self._num_blocks,
                       "prefix_hit_rate": c["prefix_cache_hits"] / q if (q := c["prefix_cache_queries"]) else None},
                "window": window,
                "gpu": {"available": self.gpu.available, "reason": self.gpu.reason, **self.gpu.last},
                "threads": self._threads.shares,
                "telemetry_cpu_s": self.cpu_s,
            }  # fmt: skip
        snap["metrics"] = {name: ({"count": v.count, "sum": v.sum} if isinstance(v, Histogram) else v)
                           for name, v in metrics.items()}  # fmt: skip
        return snap

    def _series(self, start: int, now: int) -> list[float]:
        """Output tok/s in SERIES_BIN_S bins from ``start`` to ``now`` (the last bin is partial)."""
        bin_ns = int(SERIES_BIN_S * 1e9)
        n = max(1, -(-(now - start) // bin_ns))
        bins = [0] * n
        for t, count in self.w_tokens.rows:
            if t >= start:
                bins[min((t - start) // bin_ns, n - 1)] += count
        return [b / SERIES_BIN_S for b in bins]


def weighted_percentile(pairs: Sequence[tuple[float, int]], q: float) -> float | None:
    """``percentile`` of the values the (value, count) pairs stand for, each value repeated count times,
    computed from the pairs (sorted once) without repeating them."""
    pairs = sorted(p for p in pairs if p[1] > 0)
    if not pairs:
        return None
    cum = list(accumulate(c for _, c in pairs))
    pos = (cum[-1] - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, cum[-1] - 1)
    v_lo, v_hi = pairs[bisect.bisect_right(cum, lo)][0], pairs[bisect.bisect_right(cum, hi)][0]
    return v_lo + (v_hi - v_lo) * (pos - lo)


def _weighted_summary(pairs: list[tuple[float, int]]) -> dict[str, float | None]:
    return {"p50": weighted_percentile(pairs, 50), "p99": weighted_percentile(pairs, 99), "n": sum(c for _, c in pairs)}


def _summary(values: list[float]) -> dict[str, float | None]:
    n = len(values)
    sample = values[:: -(-n // MAX_SORTED)] if n > MAX_SORTED else values
    return {"p50": percentile(sample, 50), "p99": percentile(sample, 99), "n": n}
