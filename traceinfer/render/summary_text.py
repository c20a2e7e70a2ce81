"""A run's summary (traceinfer.analysis.summary.RunSummary) as the plain text ``traceinfer profile`` prints."""

from __future__ import annotations

from traceinfer.analysis.summary import RunSummary


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.1f}" if value >= 10 else f"{value:,.2f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def format_summary(s: RunSummary) -> list[str]:
    """The summary's lines, most read first."""
    lines = []
    if s.seconds:
        failed = f", {s.failed_requests} failed" if s.failed_requests else ""
        lines.append(f"throughput   {s.output_tok_s:,.1f} output tok/s: {s.requests} requests{failed}, "
                     f"{s.output_tokens:,} output tokens in {s.seconds:.2f} s")  # fmt: skip
        if s.arrival not in (None, "offline"):
            lines.append(f"  ({s.arrival} arrivals: the pass lasts at least until the last arrival, so throughput "
                         "follows the arrival rate as much as the engine)")  # fmt: skip
    if s.latency_ms:
        lines.append(f"latency ms   {'p50':>9s} {'p90':>9s} {'p99':>9s}")
        for key, label in (("ttft", "TTFT"), ("itl", "ITL"), ("e2e", "E2E"), ("queue", "queue")):
            q = s.latency_ms.get(key, {})
            lines.append(f"  {label:<10s} {_ms(q.get('p50')):>9s} {_ms(q.get('p90')):>9s} {_ms(q.get('p99')):>9s}")
    if s.step_split:
        lines.append(f"step time    {s.num_steps:,} steps; share of the run's wall time by stage (host):")
        lines.append("  " + ", ".join(f"{p.name} {_pct(p.share)}" for p in s.step_split))
        if s.gpu_busy_share is not None:
            lines.append(f"  GPU forward time (CUDA events) {_pct(s.gpu_busy_share)} of the wall time")
    if not s.cuda_graphs:
        lines.append(f"CUDA graphs  none captured ({'every forward eager on ' + s.device if s.device else 'eager'})")
    elif s.cuda_graph and s.cuda_graph["decode_only_steps"]:
        g = s.cuda_graph
        lines.append(f"CUDA graphs  {g['graph_steps']:,} of {g['decode_only_steps']:,} decode-only steps replayed a graph "
                     f"({_pct(g['coverage'])})")  # fmt: skip
    if s.prefix_hit_rate is not None or s.prefix_query_tokens:
        lines.append(f"prefix cache hit rate {_pct(s.prefix_hit_rate)} of {s.prefix_query_tokens or 0:,} prompt tokens looked up")
    if s.peak_kv_used_blocks is not None:
        lines.append(f"KV cache     peak {s.peak_kv_used_blocks:,} of {s.kv_blocks:,} blocks used ({_pct(s.peak_kv_use)}); "
                     f"preemptions {s.preemptions or 0:,}")  # fmt: skip
    if s.gc is not None:
        g = s.gc
        if g["count"]:
            gens = ", ".join(f"gen{k} {v}" for k, v in g["by_generation"].items())
            lines.append(f"GC           {g['count']} pause{'s' if g['count'] > 1 else ''} ({gens}), {g['total_ms']:.1f} ms in all, longest "
                         f"{g['max_ms']:.2f} ms, {g['in_step']} inside a step")  # fmt: skip
        else:
            lines.append("GC           no collection during the run")
    return lines
