"""A run's report as data: every figure the markdown, HTML and JSON renderers show, computed from the run
directory's streams and manifest (traceinfer.render.report_* draw it; nothing here draws).

    report = build_report(manifest, frames, flamegraphs=[...])     # frames: {stream name: DataFrame}

Sections (issue 13's order): headline; the USE method table (utilization, saturation, errors for each
resource: each cell a measured figure with where it comes from, or "not measured" with what would
measure it); step anatomy (a median and a p99 step by part, CUDA-graph coverage, how much of the run the
GPU waited for the host); KV cache; GC and threads; flame graphs; findings (traceinfer.analysis.findings,
ranked by the time they explain); methodology (the command to reproduce, versions, probes and their
cost). ``series`` holds the binned time series and histograms the charts draw (not part of the JSON).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from traceinfer.analysis import as_mask
from traceinfer.analysis.derived import Derived
from traceinfer.analysis.findings import Finding, RunData, find
from traceinfer.analysis.floor import run_floor
from traceinfer.analysis.summary import RunSummary, graph_coverage, run_summary
from traceinfer.rundir.schema import NSYS_STATS, STAGES

PARTS = (*STAGES, "handover", "other")
MAX_POINTS = 600  # time series are binned to at most this many points
HEAT_TIME_BINS = 120
HEAT_LATENCY_BINS = 40


@dataclass(frozen=True)
class Cell:
    """One USE cell: the text a table shows, the figure (a fraction, a count, a rate) for scripts, where it
    comes from, or, when not measured, what would measure it."""

    text: str
    value: float | None = None
    evidence: str | None = None
    needs: str | None = None

    @classmethod
    def missing(cls, needs: str) -> Cell:
        return cls("not measured", None, None, needs)


@dataclass(frozen=True)
class UseRow:
    resource: str
    utilization: Cell
    saturation: Cell
    errors: Cell


@dataclass
class Report:
    run: dict  # path, status, command, started_unix
    headline: dict
    summary: RunSummary
    use: list[UseRow]
    anatomy: dict
    kv: dict
    gc_threads: dict
    flamegraphs: list[str]
    findings: list[Finding]
    methodology: dict
    series: dict = field(default_factory=dict, repr=False)  # name -> DataFrame or dict of arrays, for charts
    #: an nsys capture's tables (analysis.gpu_trace.summary, the run's nsys_stats.json), or None
    gpu_trace: dict | None = None

    def as_dict(self) -> dict:
        """Everything but the chart series, JSON-ready (numbers as numbers, times in the units named)."""
        return _jsonable({
            "run": self.run, "headline": self.headline, "summary": asdict(self.summary),
            "use": [asdict(r) for r in self.use], "step_anatomy": self.anatomy, "kv_cache": self.kv,
            "gc_threads": self.gc_threads, "flamegraphs": self.flamegraphs,
            "findings": [f.as_dict() for f in self.findings], "methodology": self.methodology,
            "gpu_trace": self.gpu_trace,
        })  # fmt: skip


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return None if not np.isfinite(value) else float(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def _frame(frames: dict, name: str) -> pd.DataFrame:
    frame = frames.get(name)
    return frame if frame is not None else pd.DataFrame()


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


# -- headline -------------------------------------------------------------------------------
def headline(manifest: dict, summary: RunSummary, frames: dict) -> dict:
    engine = manifest.get("engine", {})
    config = engine.get("config", {})
    workload = manifest.get("workload", {})
    floor = run_floor(manifest, _frame(frames, "requests"), _frame(frames, "steps"))
    results = manifest.get("results") or {}
    fraction = results.get("output_tok_s") / floor.output_tok_s if floor and results.get("output_tok_s") else None
    return {
        "workload": {k: workload.get(k) for k in ("name", "num_requests", "arrival", "rate", "max_concurrency",
                                                  "prompt_tokens", "max_output_tokens")},  # fmt: skip
        "model": engine.get("model"),
        "synthetic": engine.get("synthetic"),
        "device": manifest.get("device", {}).get("name"),
        "engine": {
            "dtype": engine.get("dtype"), "attention_backend": engine.get("attention_backend"),
            "cuda_graphs": engine.get("cuda_graphs"), "async_scheduling": engine.get("async_scheduling"),
            "kernels": engine.get("kernels"),  # None in runs from before it was recorded
            "num_kv_blocks": engine.get("num_kv_blocks"),
            "block_size": engine.get("block_size"), "max_model_len": engine.get("max_model_len"),
            **{k: config.get(k) for k in ("max_num_seqs", "max_num_batched_tokens", "enable_prefix_caching",
                                          "enable_chunked_prefill", "enforce_eager")},
        },  # fmt: skip
        "output_tok_s": results.get("output_tok_s"),
        "seconds": results.get("seconds"),
        "requests": results.get("requests"),
        "failed_requests": results.get("failed_requests"),
        "latency_ms": {k: summary.latency_ms.get(k) for k in ("ttft", "itl", "e2e")},
        "floor": None if floor is None else {
            "seconds": floor.seconds, "output_tok_s": floor.output_tok_s, "memory_s": floor.memory_s,
            "compute_s": floor.compute_s, "fraction_reached": fraction,
            "note": None if workload.get("arrival") in (None, "offline") else
            "requests arrived over time: the pass lasts at least until the last arrival, so the fraction of the "
            "floor measures the arrivals as much as the engine",
        },  # fmt: skip
    }


# -- the USE method -------------------------------------------------------------------------
def use_table(manifest: dict, frames: dict, summary: RunSummary, wall_s: float, gpu_trace: dict | None = None) -> list[UseRow]:
    """Utilization, saturation and errors of every resource the engine uses (Brendan Gregg's USE method)."""
    steps, gpu, host = _frame(frames, "steps"), _frame(frames, "gpu_samples"), _frame(frames, "host_samples")
    requests_, gc, threads = _frame(frames, "requests"), _frame(frames, "gc"), _frame(frames, "thread_samples")
    engine = manifest.get("engine", {})
    config = engine.get("config", {})
    on_cuda = str(engine.get("device", "")).startswith("cuda")
    wall_ns = wall_s * 1e9 if wall_s else None
    rows = []

    # GPU SMs
    if on_cuda and not steps.empty and steps["gpu_forward_ns"].notna().any() and wall_ns:
        busy = float(steps["gpu_forward_ns"].sum()) / wall_ns
        util = Cell(f"{_pct(busy)} of the run in forwards (CUDA events)", busy, "steps.gpu_forward_ns / wall time")
        if not gpu.empty and gpu["gpu_util_pct"].notna().any():
            nvml = float(gpu["gpu_util_pct"].mean()) / 100
            util = Cell(f"{_pct(busy)} in forwards (CUDA events); NVML utilization {_pct(nvml)} mean", busy,
                        "steps.gpu_forward_ns; gpu_samples.gpu_util_pct")  # fmt: skip
        idle = float(steps["gpu_gap_ns"].fillna(0).sum()) / wall_ns
        sat = Cell(f"idle {_pct(idle)} of the run between forwards, waiting for the host", idle, "steps.gpu_gap_ns")
    else:
        why = "a GPU run (CUDA events of the steps probe; NVML of the samplers probe)"
        util, sat = Cell.missing(why), Cell.missing(why)
    totals = ((gpu_trace or {}).get("gpu_gaps") or {}).get("totals") or {}
    if totals.get("busy_pct") is not None:  # kernel by kernel, from the nsys capture
        busy = totals["busy_pct"] / 100
        util = Cell(f"{_pct(busy)} of the captured span running GPU work (nsys, kernel by kernel)", busy,
                    "nsys_stats.json gpu_gaps.totals.busy_pct")  # fmt: skip
        by_phase = (gpu_trace.get("gpu_gaps") or {}).get("by_phase") or []
        if by_phase:
            top = by_phase[0]
            sat = Cell(f"idle {_pct(1 - busy)}; most of it during {top['phase']} ({top['idle_pct']:.0f}% of the idle time)",
                       1 - busy, "nsys_stats.json gpu_gaps.by_phase")  # fmt: skip
    rows.append(UseRow("GPU SMs", util, sat, Cell.missing("per-kernel occupancy and errors: nsys / ncu")))

    # HBM bandwidth
    floor = run_floor(manifest, requests_, steps) if not steps.empty else None
    if on_cuda and floor is not None and wall_s:
        share = floor.memory_s / wall_s
        util = Cell(f"{_pct(share)}: the bytes every step must read, at the measured copy rate, over the run's "
                    "time", share, "floor.memory_s (manifest device_rates, engine.model_shapes) / wall time")  # fmt: skip
        if not gpu.empty and gpu["mem_util_pct"].notna().any():
            nvml = float(gpu["mem_util_pct"].mean()) / 100
            util = Cell(util.text + f"; NVML memory controller busy {_pct(nvml)} mean", share, util.evidence + "; gpu_samples.mem_util_pct")
        rows.append(UseRow("HBM bandwidth", util, Cell.missing("DRAM throughput counters: ncu"), Cell.missing("ECC errors: nvidia-smi -q")))
    else:
        rows.append(UseRow("HBM bandwidth", Cell.missing("a GPU run with the steps probe (the floor's bytes)"),
                           Cell.missing("DRAM throughput counters: ncu"), Cell.missing("ECC errors: nvidia-smi -q")))  # fmt: skip

    # KV-cache blocks
    blocks = engine.get("num_kv_blocks")
    if not steps.empty and blocks:
        used = blocks - steps["num_free_blocks"].dropna()
        util = Cell(f"peak {summary.peak_kv_used_blocks:,} of {blocks:,} blocks ({_pct(summary.peak_kv_use)}), mean "
                    f"{_pct(float(used.mean()) / blocks)}", summary.peak_kv_use, "steps.num_free_blocks; kv_events.num_used")  # fmt: skip
        preempted = int(steps["num_preempted"].fillna(0).sum())
        sat = Cell(f"{preempted:,} preemptions (requests whose KV was dropped)", preempted, "steps.num_preempted")
        failed = 0
        if not requests_.empty:
            fin = requests_[requests_["event"] == "finished"]
            failed = int((fin["error"].fillna("").astype(str).str.contains("KV|block", case=False)).sum())
        err = Cell(f"{failed} requests failed for want of blocks", failed, "requests.error (finished)")
        rows.append(UseRow("KV-cache blocks", util, sat, err))
    else:
        rows.append(UseRow("KV-cache blocks", *(Cell.missing("the steps probe") for _ in range(3))))

    # the scheduler's token budget and sequence slots
    if not steps.empty and steps["token_budget"].notna().any():
        budget = int(steps["token_budget"].dropna().iloc[0])
        ran = steps[steps["num_batched_tokens"].fillna(0) > 0]
        use = float(ran["num_batched_tokens"].mean()) / budget if len(ran) else 0.0
        full = ran[(ran["num_batched_tokens"] >= budget) & (ran["num_waiting"].fillna(0) > 0)]
        rows.append(UseRow(
            "Scheduler token budget",
            Cell(f"{_pct(use)} of {budget:,} tokens per step, mean", use, "steps.num_batched_tokens / token_budget"),
            Cell(f"{len(full):,} of {len(ran):,} steps full while requests waited", float(len(full)),
                 "steps.num_batched_tokens, steps.num_waiting"),
            Cell("none (a request too large for the budget fails alone: see errors of KV-cache blocks)", 0, None),
        ))  # fmt: skip
        slots = config.get("max_num_seqs")
        if slots:
            occupancy = float(steps["num_running"].fillna(0).mean()) / slots
            at_max = steps[(steps["num_running"].fillna(0) >= slots) & (steps["num_waiting"].fillna(0) > 0)]
            rows.append(UseRow(
                "Sequence slots",
                Cell(f"{_pct(occupancy)} of {slots} slots running, mean; peak {int(steps['num_running'].max())}",
                     occupancy, "steps.num_running / max_num_seqs"),
                Cell(f"{len(at_max):,} steps with every slot taken and requests waiting", float(len(at_max)),
                     "steps.num_running, steps.num_waiting"),
                Cell("none", 0, None),
            ))  # fmt: skip
    else:
        rows.append(UseRow("Scheduler token budget", *(Cell.missing("the steps probe") for _ in range(3))))

    # the engine thread and the GIL
    if not steps.empty and wall_ns:
        host_ns = float(steps["dur_ns"].sum()) - (float(steps["gpu_forward_ns"].fillna(0).sum()) if on_cuda else 0.0)
        busy = float(steps["dur_ns"].sum()) / wall_ns
        util = Cell(f"in steps {_pct(busy)} of the run", busy, "steps.dur_ns / wall time")
        if not threads.empty and threads["cpu_ns"].notna().any():
            main = threads[threads["thread_id"] == manifest.get("engine_thread")].sort_values("t_ns")
            if len(main) > 1:
                cpu = float(main["cpu_ns"].iloc[-1] - main["cpu_ns"].iloc[0]) / float(main["t_ns"].iloc[-1] - main["t_ns"].iloc[0])
                util = Cell(f"in steps {_pct(busy)} of the run; on a CPU {_pct(cpu)} of the time (thread clock)", cpu,
                            "steps.dur_ns; thread_samples.cpu_ns of the engine thread")  # fmt: skip
        sat = (Cell(f"the GPU idled {_pct(float(steps['gpu_gap_ns'].fillna(0).sum()) / wall_ns)} of the run for it",
                    float(steps["gpu_gap_ns"].fillna(0).sum()) / wall_ns, "steps.gpu_gap_ns")  # fmt: skip
               if on_cuda else Cell.missing("a GPU run: on a CPU the host is the device"))
        rows.append(UseRow("Engine thread and GIL", util, sat, Cell.missing("GIL contention: py-spy --pyspy-gil (samples holding the GIL)")))
        del host_ns
    else:
        rows.append(UseRow("Engine thread and GIL", *(Cell.missing("the steps probe") for _ in range(3))))

    # GC
    if "gc" in frames and wall_s:
        pause = float(gc["dur_ns"].sum()) / 1e9 if not gc.empty else 0.0
        in_steps = int(as_mask(gc["in_step"]).sum()) if not gc.empty else 0
        rows.append(UseRow(
            "Garbage collector",
            Cell(f"{_pct(pause / wall_s)} of the run paused ({len(gc)} collections)", pause / wall_s, "gc.dur_ns"),
            Cell(f"{in_steps} collections inside a step", float(in_steps), "gc.in_step"),
            Cell(f"{int(gc['uncollectable'].fillna(0).sum()) if not gc.empty else 0} uncollectable objects",
                 float(gc["uncollectable"].fillna(0).sum()) if not gc.empty else 0.0, "gc.uncollectable"),
        ))  # fmt: skip
    else:
        rows.append(UseRow("Garbage collector", *(Cell.missing("the gc probe") for _ in range(3))))

    # PCIe
    if not gpu.empty and (gpu["pcie_rx_bytes_s"].notna().any() or gpu["pcie_tx_bytes_s"].notna().any()):
        rx, tx = float(gpu["pcie_rx_bytes_s"].mean() or 0), float(gpu["pcie_tx_bytes_s"].mean() or 0)
        rows.append(UseRow("PCIe", Cell(f"receive {rx / 1e6:,.1f} MB/s, transmit {tx / 1e6:,.1f} MB/s mean", rx + tx,
                                        "gpu_samples.pcie_rx_bytes_s, pcie_tx_bytes_s"),  # fmt: skip
                           Cell.missing("link saturation: nsys (CUDA memcpy traces)"), Cell.missing("replay counters: nvidia-smi -q")))
    else:
        rows.append(UseRow("PCIe", Cell.missing("a GPU run with the samplers probe (NVML)"),
                           Cell.missing("nsys (CUDA memcpy traces)"), Cell.missing("nvidia-smi -q")))  # fmt: skip

    # host CPU and memory
    load = manifest.get("host_load") or {}
    if not host.empty:
        cpu = float(host["cpu_percent"].mean()) / 100
        util = Cell(f"this process {cpu:.2f} cores mean, {float(host['cpu_percent'].max()) / 100:.2f} peak, of "
                    f"{load.get('usable_cpus') or load.get('cpu_count') or '?'} CPUs", cpu, "host_samples.cpu_percent")  # fmt: skip
    else:
        util = Cell.missing("the samplers probe (psutil)")
    if load:
        other = load.get("other_processes_cpu_share")
        avg = (load.get("load_average_end") or [None])[0]
        sat = Cell(f"other processes took {_pct(other)} of the machine; load average {avg if avg is None else f'{avg:.1f}'}"
                   + ("; oversubscribed" if load.get("oversubscribed") else ""), other, "manifest host_load")  # fmt: skip
    else:
        sat = Cell.missing("the probe session's host_load record")
    rows.append(UseRow("Host CPU", util, sat, Cell("none", 0, None)))
    if not host.empty:
        rss = float(host["rss_bytes"].max())
        rows.append(UseRow("Host memory", Cell(f"RSS peak {rss / 2**30:.2f} GiB", rss, "host_samples.rss_bytes"),
                           Cell.missing("swapping: vmstat"), Cell.missing("allocation failures: none recorded")))  # fmt: skip
    else:
        rows.append(UseRow("Host memory", Cell.missing("the samplers probe (psutil)"), Cell.missing("vmstat"),
                           Cell.missing("none recorded")))  # fmt: skip
    return rows


# -- step anatomy ---------------------------------------------------------------------------
def step_anatomy(steps: pd.DataFrame, wall_s: float, on_cuda: bool) -> dict:
    """A median and a p99 step (by duration) by part, CUDA-graph coverage, and the share of the run the GPU
    waited for the host (on a GPU)."""
    if steps.empty:
        return {}
    ordered = steps.sort_values("dur_ns", kind="stable").reset_index(drop=True)

    def parts(row) -> dict:
        out = {p: (float(row[f"{p}_ns"]) / 1e6 if pd.notna(row[f"{p}_ns"]) else 0.0) for p in PARTS}
        out["other"] = max(out["other"] - out["handover"], 0.0)
        if on_cuda:
            out["gpu_forward"] = float(row["gpu_forward_ns"]) / 1e6 if pd.notna(row["gpu_forward_ns"]) else None
        return {"step": int(row["step"]), "total_ms": float(row["dur_ns"]) / 1e6, "parts_ms": out}

    median = ordered.iloc[(len(ordered) - 1) // 2]
    p99 = ordered.iloc[min(int(round(0.99 * (len(ordered) - 1))), len(ordered) - 1)]
    gaps = float(steps["gpu_gap_ns"].fillna(0).sum()) / 1e9 if on_cuda else None
    return {
        "steps": int(len(steps)),
        "median_step": parts(median),
        "p99_step": parts(p99),
        "step_ms": {"p50": float(steps["dur_ns"].quantile(0.5)) / 1e6, "p99": float(steps["dur_ns"].quantile(0.99)) / 1e6},
        "cuda_graph": graph_coverage(steps),
        "host_bound_share": gaps / wall_s if on_cuda and wall_s else None,
        "gpu_idle_s": gaps,
    }


# -- KV cache, GC and threads ----------------------------------------------------------------
def kv_section(frames: dict, summary: RunSummary, derived: Derived | None = None) -> dict:
    d = derived or Derived(frames)
    events = _frame(frames, "kv_events")
    out = {"hit_rate": summary.prefix_hit_rate, "prefix_query_tokens": summary.prefix_query_tokens,
           "peak_used_blocks": summary.peak_kv_used_blocks, "blocks": summary.kv_blocks,
           "preemptions": summary.preemptions}  # fmt: skip
    if events.empty:
        out["note"] = "no KV event log (the kv probe): block lifetimes, reuse gaps and fragmentation not measured"
        return out
    ops = events["op"].value_counts().to_dict()
    lives, gaps = d.block_lives, d.reuse_gaps
    out.update(
        ops={k: int(v) for k, v in ops.items()},
        evictions=int(ops.get("evict", 0)),
        lifetime_s=_quantiles(lives["lifetime_ns"].dropna() / 1e9),
        idle_before_evict_s=_quantiles(lives["idle_before_evict_ns"].dropna() / 1e9),
        reuse_gap_s=_quantiles(gaps["gap_ns"] / 1e9),
    )
    if "requests" in frames and "tokens" in frames and not _frame(frames, "requests").empty:
        frag = d.internal_fragmentation
        out["internal_fragmentation"] = float(frag["unused_fraction"].dropna().mean()) if len(frag) else None
    return out


def _quantiles(values: pd.Series) -> dict:
    if values.empty:
        return {"count": 0}
    q = values.quantile([0.5, 0.9, 0.99])
    return {"count": int(len(values)), "p50": float(q.iloc[0]), "p90": float(q.iloc[1]), "p99": float(q.iloc[2]),
            "max": float(values.max())}  # fmt: skip


def gc_threads_section(manifest: dict, frames: dict, summary: RunSummary) -> dict:
    steps, gc, threads = _frame(frames, "steps"), _frame(frames, "gc"), _frame(frames, "thread_samples")
    out: dict = {"gc": summary.gc}
    if not gc.empty and not steps.empty:
        hit = gc[as_mask(gc["in_step"])]["step"].dropna().astype(int)
        with_gc = steps[steps["step"].isin(set(hit))]["dur_ns"]
        without = steps[~steps["step"].isin(set(hit))]["dur_ns"]
        out["steps_with_gc_ms"] = float(with_gc.median()) / 1e6 if len(with_gc) else None
        out["steps_without_gc_ms"] = float(without.median()) / 1e6 if len(without) else None
    if not threads.empty and threads["cpu_ns"].notna().any():
        per = []
        for (tid, name), g in threads.sort_values("t_ns").groupby(["thread_id", "thread_name"]):
            g = g[g["cpu_ns"].notna()]
            if len(g) > 1 and g["t_ns"].iloc[-1] > g["t_ns"].iloc[0]:
                share = float(g["cpu_ns"].iloc[-1] - g["cpu_ns"].iloc[0]) / float(g["t_ns"].iloc[-1] - g["t_ns"].iloc[0])
                per.append({"thread": name, "cpu_share": share, "samples": int(len(g))})
        out["threads"] = sorted(per, key=lambda r: -r["cpu_share"])
    return out


# -- series for the charts --------------------------------------------------------------------
def _bins(t_s: np.ndarray, width: float | None = None) -> np.ndarray:
    span = float(t_s.max() - t_s.min()) if len(t_s) else 0.0
    width = width or max(span / MAX_POINTS, 1e-3)
    return np.arange(float(t_s.min()) if len(t_s) else 0.0, (float(t_s.max()) if len(t_s) else 0.0) + width, width)


def _heatmap(t_s: np.ndarray, latency_ms: np.ndarray) -> dict | None:
    """Brendan Gregg's latency heat map: counts in time columns x log-spaced latency rows."""
    ok = np.isfinite(latency_ms) & (latency_ms > 0)
    t_s, latency_ms = t_s[ok], latency_ms[ok]
    if not len(t_s):
        return None
    lo, hi = float(latency_ms.min()), float(latency_ms.max())
    lat_edges = np.geomspace(lo, hi * 1.0001 if hi > lo else lo * 2, HEAT_LATENCY_BINS + 1)
    time_edges = np.linspace(float(t_s.min()), float(t_s.max()) + 1e-9, min(HEAT_TIME_BINS, max(len(t_s), 2)) + 1)
    # both axes are evenly spaced (latency in log10), so each value's cell is arithmetic, not a search:
    # np.histogram2d takes seconds on a long run's 10M gaps
    nt, nl = len(time_edges) - 1, len(lat_edges) - 1
    col = np.clip(((t_s - time_edges[0]) / (time_edges[-1] - time_edges[0]) * nt).astype(np.int64), 0, nt - 1)
    log_lo, log_hi = np.log10(lat_edges[0]), np.log10(lat_edges[-1])
    row = np.clip(((np.log10(latency_ms) - log_lo) / (log_hi - log_lo) * nl).astype(np.int64), 0, nl - 1)
    counts = np.bincount(col * nl + row, minlength=nt * nl).reshape(nt, nl).astype(float)
    return {"time_edges_s": time_edges, "latency_edges_ms": lat_edges, "counts": counts.T}  # rows: latency


def chart_series(manifest: dict, frames: dict, derived: Derived | None = None) -> dict:
    """Binned series and histograms for the charts, times in seconds from the run's t0."""
    d = derived or Derived(frames)
    t0 = (manifest.get("clock") or {}).get("t0_ns") or 0
    steps, tokens, gpu = _frame(frames, "steps"), _frame(frames, "tokens"), _frame(frames, "gpu_samples")
    out: dict = {}
    if not tokens.empty:
        t = (tokens["t_ns"].to_numpy(np.int64) - t0) / 1e9
        edges = _bins(t, None)
        counts, _ = np.histogram(t, bins=edges)
        width = edges[1] - edges[0] if len(edges) > 1 else 1.0
        out["throughput"] = pd.DataFrame({"t_s": edges[:-1], "output_tok_s": counts / width})
        itl = d.inter_token_latencies
        out["itl_heatmap"] = _heatmap((itl["t_ns"].to_numpy(np.int64) - t0) / 1e9, itl["itl_ms"].to_numpy(float))
    if not _frame(frames, "requests").empty and not tokens.empty:
        metrics = d.request_metrics
        m = metrics[metrics["ttft_ms"].notna()]
        out["ttft_heatmap"] = _heatmap((m["arrival_ns"].to_numpy(np.int64) - t0) / 1e9, m["ttft_ms"].to_numpy(float))
        out["ttft_points"] = pd.DataFrame({"t_s": (m["arrival_ns"] - t0) / 1e9, "ttft_ms": m["ttft_ms"]})
    if not steps.empty:
        s = steps.assign(t_s=(steps["t_ns"] - t0) / 1e9)
        edges = _bins(s["t_s"].to_numpy(float))
        b = pd.cut(s["t_s"], edges, include_lowest=True, labels=edges[:-1]) if len(edges) > 1 else None
        if b is not None:
            grouped = s.groupby(b, observed=True)
            blocks = manifest.get("engine", {}).get("num_kv_blocks")
            series = pd.DataFrame({
                "t_s": np.asarray(grouped["t_s"].min()),
                "waiting": np.asarray(grouped["num_waiting"].mean()),
                "running": np.asarray(grouped["num_running"].mean()),
                "prefill_tokens": np.asarray(grouped["num_prefill_tokens"].sum()),
                "decode_tokens": np.asarray(grouped["num_decode_tokens"].sum()),
                "kv_used": np.asarray(1 - grouped["num_free_blocks"].mean() / blocks) if blocks else np.nan,
                "step_ms": np.asarray(grouped["dur_ns"].median() / 1e6),
            })  # fmt: skip
            out["steps"] = series
        out["step_points"] = pd.DataFrame({"t_s": s["t_s"], "dur_ms": s["dur_ns"] / 1e6}).iloc[:: max(len(s) // 5000, 1)]
    if not gpu.empty:
        out["gpu"] = pd.DataFrame({"t_s": (gpu["t_ns"] - t0) / 1e9, "util_pct": gpu["gpu_util_pct"],
                                   "power_w": gpu["power_w"]})  # fmt: skip
    gc = _frame(frames, "gc")
    if not gc.empty:
        out["gc"] = pd.DataFrame({"t_s": (gc["t_ns"] - t0) / 1e9, "pause_ms": gc["dur_ns"] / 1e6, "generation": gc["generation"]})
    events = _frame(frames, "kv_events")
    if not events.empty:
        out["block_lifetime_s"] = (d.block_lives["lifetime_ns"].dropna() / 1e9).to_numpy()
        out["reuse_gap_s"] = (d.reuse_gaps["gap_ns"] / 1e9).to_numpy()
    return out


# -- the report -----------------------------------------------------------------------------
def methodology(manifest: dict, run_path: str) -> dict:
    packages = manifest.get("packages", {})
    probes = manifest.get("probes", {})
    return {
        "command": manifest.get("command"),
        "reproduce": " ".join(manifest.get("command") or []) or None,
        "report": f"traceinfer report {run_path}",
        "versions": {k: packages.get(k) for k in ("python", "traceinfer", "torch", "torch_runtime", "cuda",
                                                    "transformers", "triton", "pandas", "pyarrow")},  # fmt: skip
        "git": manifest.get("git"),
        "probes": probes.get("enabled"),
        "probe_rates_hz": {"samplers": probes.get("sample_hz"), "threads": probes.get("stack_hz")},
        "probe_cost": manifest.get("overhead"),
        "probe_cpu": (probes.get("cost") or {}),
        "handover": manifest.get("handover"),
        "host_load": manifest.get("host_load"),
        "warmup": manifest.get("warmup"),
    }


def build_report(manifest: dict, frames: dict[str, pd.DataFrame], run_path: str = "", flamegraphs=(),
                 gpu_trace: dict | None = None) -> Report:
    """The report of a run from its manifest and stream frames (a missing stream: a missing frame), and
    the tables of its nsys capture when it has one."""
    derived = Derived(frames).prefetch()  # the analyzers' tables, each computed once for every section
    summary = run_summary(manifest, frames, derived)
    wall_s = float(summary.seconds or 0.0)
    on_cuda = str(manifest.get("engine", {}).get("device", "")).startswith("cuda")
    data = RunData(manifest, frames, wall_s, extras={"gpu_trace": gpu_trace}, derived=derived)
    return Report(
        run={"path": run_path, "status": manifest.get("status"), "command": manifest.get("command"),
             "started_unix": (manifest.get("timing") or {}).get("started_unix"), "error": manifest.get("error")},  # fmt: skip
        headline=headline(manifest, summary, frames),
        summary=summary,
        use=use_table(manifest, frames, summary, wall_s, gpu_trace),
        anatomy=step_anatomy(_frame(frames, "steps"), wall_s, on_cuda),
        kv=kv_section(frames, summary, derived),
        gc_threads=gc_threads_section(manifest, frames, summary),
        flamegraphs=list(flamegraphs),
        findings=find(data),
        methodology=methodology(manifest, run_path),
        series=chart_series(manifest, frames, derived),
        gpu_trace=gpu_trace,
    )


#: columns no section of the report reads, left unread: on a long run they are most of its bytes (every
#: token's id; every KV op's content hashes and token lists)
UNREAD = {"tokens": ("token_id",), "kv_events": ("vllm_event", "block_hashes", "parent_block_hashes", "token_ids")}


#: text columns the report reads as categoricals: one small code per row instead of a string per row
CATEGORICAL = {"tokens": ("request_id",), "kv_events": ("op", "request_id")}


def report_frames(run) -> dict[str, pd.DataFrame]:
    """The run's streams as the report reads them: without the ``UNREAD`` columns, list columns left in
    Arrow, the tokens' request ids as categoricals (a long run's streams read in seconds rather than
    minutes, in a fraction of the memory)."""
    import pyarrow as pa

    from traceinfer.rundir.schema import stream

    frames = {}
    for name in run.streams:
        skip = UNREAD.get(name, ())
        columns = [c for c in stream(name).names if c not in skip] if skip else None
        frames[name] = run.frame(name, columns, lists="arrow", categorical=CATEGORICAL.get(name, ()))
    # Arrow's allocator keeps the Parquet decoder's freed buffers for reuse, but the analyzers allocate with
    # numpy: give them back (about 0.15 GB of a 10M-token run's peak)
    pa.default_memory_pool().release_unused()
    return frames


def report_of_run(run) -> Report:
    """``build_report`` of an opened run directory (traceinfer.rundir.Run), with its flame graphs."""
    frames = report_frames(run)
    folder = run.path / "flamegraphs"
    graphs = sorted(str(p.relative_to(run.path)) for p in folder.glob("*.svg")) if folder.is_dir() else []
    nsys = run.path / NSYS_STATS
    gpu_trace = json.loads(nsys.read_text()) if nsys.exists() else None
    return build_report(run.manifest, frames, str(run.path), graphs, gpu_trace)


# -- two runs side by side ------------------------------------------------------------------
def _get(d: dict, path: str):
    for key in path.split("."):
        if not isinstance(d, dict):
            return None
        d = d.get(key)
    return d


#: (section, label, path into Report.as_dict(), unit, better: "higher" | "lower" | None)
COMPARED: tuple[tuple[str, str, str, str, str | None], ...] = (
    ("headline", "output", "headline.output_tok_s", "tok/s", "higher"),
    ("headline", "wall time", "headline.seconds", "s", "lower"),
    ("headline", "fraction of the floor", "headline.floor.fraction_reached", "", "higher"),
    *((("latency", f"{name} p{q}", f"headline.latency_ms.{key}.p{q}", "ms", "lower")
       for key, name in (("ttft", "TTFT"), ("itl", "ITL"), ("e2e", "E2E")) for q in (50, 90, 99))),
    ("step anatomy", "steps", "step_anatomy.steps", "", None),
    ("step anatomy", "step p50", "step_anatomy.step_ms.p50", "ms", "lower"),
    ("step anatomy", "step p99", "step_anatomy.step_ms.p99", "ms", "lower"),
    *((("step anatomy", f"median step: {p}", f"step_anatomy.median_step.parts_ms.{p}", "ms", "lower") for p in PARTS)),
    ("step anatomy", "CUDA-graph coverage", "step_anatomy.cuda_graph.coverage", "", "higher"),
    ("step anatomy", "host-bound share", "step_anatomy.host_bound_share", "", "lower"),
    ("KV cache", "prefix hit rate", "kv_cache.hit_rate", "", "higher"),
    ("KV cache", "peak blocks used", "kv_cache.peak_used_blocks", "blocks", None),
    ("KV cache", "preemptions", "kv_cache.preemptions", "", "lower"),
    ("KV cache", "evictions", "kv_cache.evictions", "", None),
    ("GC", "collections", "gc_threads.gc.count", "", "lower"),
    ("GC", "pause total", "gc_threads.gc.total_ms", "ms", "lower"),
    ("GC", "longest pause", "gc_threads.gc.max_ms", "ms", "lower"),
    ("GPU (nsys)", "GPU busy share of its span", "gpu_trace.gpu_gaps.totals.busy_pct", "%", "higher"),
    ("GPU (nsys)", "GPU idle time", "gpu_trace.gpu_gaps.totals.idle_ns", "ns", "lower"),
)  # fmt: skip


def compare(a: Report, b: Report) -> list[dict]:
    """The figures of two reports side by side: B against A, with the change and whether it is better."""
    da, db = a.as_dict(), b.as_dict()
    rows = []
    for section, label, path, unit, better in COMPARED:
        va, vb = _get(da, path), _get(db, path)
        if va is None and vb is None:
            continue
        delta = vb - va if isinstance(va, (int, float)) and isinstance(vb, (int, float)) else None
        rel = delta / va if delta is not None and va else None
        verdict = None
        if delta and better:
            verdict = "better" if (delta > 0) == (better == "higher") else "worse"
        rows.append({"section": section, "metric": label, "unit": unit, "a": va, "b": vb, "delta": delta,
                     "relative": rel, "verdict": verdict})  # fmt: skip
    return rows
