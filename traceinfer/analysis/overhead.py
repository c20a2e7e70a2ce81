"""What the probes cost in throughput: pure arithmetic over the throughputs of timed passes."""

from __future__ import annotations

import statistics
from collections.abc import Sequence


def probe_costs(output_tok_s: dict[str, float]) -> dict[str, float] | None:
    """Throughput cost of each probe set against 'off' in percent (positive = slower), from each set's
    (median) throughput; None without an 'off' set and another to compare."""
    if "off" not in output_tok_s or len(output_tok_s) < 2:
        return None
    base = output_tok_s["off"]
    return {spec: 100.0 * (1.0 - tok_s / base) for spec, tok_s in output_tok_s.items() if spec != "off"}


def spread_pct(values: Sequence[float]) -> float | None:
    """How far one pass strays from the median of its repeats, in percent: half their range over their
    median. Costs smaller than this are within the pass-to-pass drift; None for fewer than two passes."""
    if len(values) < 2:
        return None
    return 50.0 * (max(values) - min(values)) / statistics.median(values)


def one_pair_overhead(probed_tok_s: float, baseline_tok_s: float, probed_s: float, baseline_s: float) -> dict:
    """The cost of one probed pass against one unprobed pass of the same workload on the same warm engine."""
    ratio = probed_tok_s / baseline_tok_s
    return {
        "method": "the same workload on the same warm engine with probes off, right after the probed run "
        "(prefix cache reset before each); one run each, so expect a few % of noise on a shared machine",
        "baseline_output_tok_s": baseline_tok_s,
        "probed_output_tok_s": probed_tok_s,
        "baseline_seconds": baseline_s,
        "probed_seconds": probed_s,
        "throughput_ratio": ratio,
        "cost_pct": (1.0 - ratio) * 100.0,
    }
