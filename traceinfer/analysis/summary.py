"""The first things a performance engineer reads about a run, computed from the run directory's streams:
throughput, latency percentiles, where step time goes, the prefix cache, KV use, preemptions, GC pauses
and CUDA-graph coverage. Every figure comes from a stream or the manifest; absent streams give None.

    summary = run_summary(run.manifest, {name: run.frame(name) for name in run.streams})
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from traceinfer.analysis import as_mask, kv, steps
from traceinfer.analysis.derived import Derived
from traceinfer.analysis.latency import summarize

STAGE_COLUMNS = ("schedule", "prepare", "forward", "sample", "postprocess")


@dataclass(frozen=True)
class Share:
    """Time in one part of the run: total and fraction of the run's wall time."""

    name: str
    total_ms: float
    share: float


@dataclass
class RunSummary:
    requests: int
    failed_requests: int
    output_tokens: int
    prompt_tokens: int
    seconds: float | None
    output_tok_s: float | None
    arrival: str | None = None  # offline, poisson, gamma, file: how the requests came
    device: str | None = None
    cuda_graphs: bool = False  # whether the engine captured graphs (not on a CPU, not with enforce_eager)
    latency_ms: dict[str, dict[str, float | None]] = field(default_factory=dict)  # ttft, itl, e2e, queue -> pXX
    num_steps: int = 0
    step_split: list[Share] = field(default_factory=list)  # host time by stage, handover, the rest, between steps
    gpu_busy_share: float | None = None  # forward GPU time over wall time (CUDA only)
    prefix_hit_rate: float | None = None
    prefix_query_tokens: int | None = None
    peak_kv_used_blocks: int | None = None
    kv_blocks: int | None = None
    preemptions: int | None = None
    gc: dict | None = None  # count, total_ms, max_ms, in_step, by_generation
    cuda_graph: dict | None = None  # decode_only_steps, graph_steps, coverage
    handover: dict | None = None  # analysis.steps.handover_summary

    @property
    def peak_kv_use(self) -> float | None:
        if self.peak_kv_used_blocks is None or not self.kv_blocks:
            return None
        return self.peak_kv_used_blocks / self.kv_blocks


def _empty(frames: dict[str, pd.DataFrame], name: str) -> bool:
    frame = frames.get(name)
    return frame is None or frame.empty


def step_split(step_rows: pd.DataFrame, wall_ns: float | None) -> list[Share]:
    """Host time by stage over every step, the handover to the probes (part of the rest), the rest of
    the steps, and the time between steps (the driver waiting for arrivals, or the end of the pass)."""
    wall = float(wall_ns) if wall_ns else float(step_rows["dur_ns"].sum())
    parts = [(stage, float(step_rows[f"{stage}_ns"].fillna(0).sum())) for stage in STAGE_COLUMNS]
    handover = float(step_rows["handover_ns"].fillna(0).sum())
    parts += [("handover", handover), ("other", float(step_rows["other_ns"].fillna(0).sum()) - handover)]
    parts.append(("between steps", max(wall - float(step_rows["dur_ns"].sum()), 0.0)))
    return [Share(name, ns / 1e6, ns / wall if wall else 0.0) for name, ns in parts]


def gc_summary(gc: pd.DataFrame) -> dict:
    pauses = gc["dur_ns"].astype(float) / 1e6
    return {
        "count": int(len(gc)),
        "total_ms": float(pauses.sum()),
        "max_ms": float(pauses.max()) if len(gc) else None,
        "in_step": int(as_mask(gc["in_step"]).sum()),
        "by_generation": {int(g): int(c) for g, c in gc["generation"].value_counts().sort_index().items()},
    }


def graph_coverage(step_rows: pd.DataFrame) -> dict:
    """Decode-only steps (no prefill tokens) and how many of them replayed a CUDA graph."""
    decode_only = step_rows[(step_rows["num_prefill_tokens"].fillna(0) == 0) & step_rows["forward_ns"].notna()]
    graphs = int(as_mask(decode_only["cuda_graph"]).sum())
    return {
        "decode_only_steps": int(len(decode_only)),
        "graph_steps": graphs,
        "coverage": graphs / len(decode_only) if len(decode_only) else None,
    }


def run_summary(manifest: dict, frames: dict[str, pd.DataFrame], derived: Derived | None = None) -> RunSummary:
    """The summary of a run from its manifest and stream frames (a frame may be missing or empty);
    ``derived``: the run's analyzer tables when the caller shares them (a report does)."""
    d = derived or Derived(frames)
    results = manifest.get("results") or {}
    wall_ns = results["seconds"] * 1e9 if results.get("seconds") else None
    out = RunSummary(
        requests=int(results.get("requests") or 0),
        failed_requests=int(results.get("failed_requests") or 0),
        output_tokens=int(results.get("output_tokens") or 0),
        prompt_tokens=int(results.get("prompt_tokens") or 0),
        seconds=results.get("seconds"),
        output_tok_s=results.get("output_tok_s"),
        arrival=results.get("arrival"),
        device=manifest.get("engine", {}).get("device"),
        cuda_graphs=bool(manifest.get("engine", {}).get("cuda_graphs")),
        kv_blocks=manifest.get("engine", {}).get("num_kv_blocks"),
        handover=manifest.get("handover"),
    )
    if not _empty(frames, "requests") and "tokens" in frames:
        metrics = d.request_metrics
        itl = d.inter_token_latencies if not frames["tokens"].empty else None
        out.latency_ms = {
            "ttft": summarize(metrics["ttft_ms"]),
            "itl": summarize(itl["itl_ms"] if itl is not None else []),
            "e2e": summarize(metrics["e2e_ms"]),
            "queue": summarize(metrics["queue_ms"]),
        }
        hits = d.prefix_hits
        out.prefix_hit_rate = kv.hit_rate(hits)
        out.prefix_query_tokens = int(hits["query_tokens"].sum())
    if not _empty(frames, "steps"):
        rows = frames["steps"]
        out.num_steps = len(rows)
        out.step_split = step_split(rows, wall_ns)
        free = rows["num_free_blocks"].dropna()
        if out.kv_blocks and len(free):
            out.peak_kv_used_blocks = int(out.kv_blocks - free.min())
        out.preemptions = int(rows["num_preempted"].fillna(0).sum())
        out.cuda_graph = graph_coverage(rows)
        gpu = rows["gpu_forward_ns"].dropna()
        if len(gpu) and wall_ns:
            out.gpu_busy_share = float(gpu.sum()) / wall_ns
        if out.handover is None:
            out.handover = steps.handover_summary(rows)
    if not _empty(frames, "kv_events"):
        usage = kv.utilization(frames["kv_events"], out.kv_blocks)
        peak = int(usage["num_used"].max())
        out.peak_kv_used_blocks = max(out.peak_kv_used_blocks or 0, peak)  # ops between schedules count too
    if "gc" in frames:
        out.gc = gc_summary(frames["gc"])
    return out
