"""What the probes cost in throughput: pure arithmetic over the throughputs of timed passes."""

from __future__ import annotations

import math
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


def interleaved_overhead(probed_tok_s: Sequence[float], off_tok_s: Sequence[float]) -> dict:
    """The probes' cost from interleaved probed and unprobed passes of one workload on one warm engine:
    1 - median(probed) / median(off), in percent, and whether it is resolved: a cost no larger than how
    far the passes of either kind stray from their median (``spread_pct``) is not. With one pass of each
    there is no spread to compare with, so nothing is resolved."""
    probed, off = statistics.median(probed_tok_s), statistics.median(off_tok_s)
    cost = 100.0 * (1.0 - probed / off)
    spreads = [s for s in (spread_pct(probed_tok_s), spread_pct(off_tok_s)) if s is not None]
    spread = max(spreads) if spreads else None
    resolved = spread is not None and abs(cost) > spread
    return {
        "probed_output_tok_s": list(probed_tok_s),
        "off_output_tok_s": list(off_tok_s),
        "probed_median_tok_s": probed,
        "off_median_tok_s": off,
        "cost_pct": cost,
        "spread_pct": spread,
        "resolved": resolved,
    }


def describe_overhead(o: dict) -> str:
    """One line that never presents noise as a figure."""
    n, m = len(o["probed_output_tok_s"]), len(o["off_output_tok_s"])
    passes = f"{n} probed and {m} unprobed pass{'es' if m > 1 else ''}"
    if o["resolved"]:
        return (f"probe cost {o['cost_pct']:+.1f}% of throughput (medians of {passes}, interleaved; passes stray "
                f"+-{o['spread_pct']:.1f}% from their median)")  # fmt: skip
    if o["spread_pct"] is None:
        return (f"probe cost not resolved: {passes} differ by {o['cost_pct']:+.1f}%, and one pair cannot tell a cost "
                f"from run-to-run drift (--overhead-passes 3 or more measures it)")  # fmt: skip
    return (f"probe cost not resolved: the medians of {passes} differ by {o['cost_pct']:+.1f}%, within the "
            f"+-{o['spread_pct']:.1f}% the passes stray from their median")  # fmt: skip


def paired_cost(probed_tok_s: Sequence[float], base_tok_s: Sequence[float], confidence: float = 0.95) -> dict | None:
    """The cost of the probed passes against the base passes run beside them, round by round: each round's
    cost 100 * (1 - probed / base), their median, and a distribution-free confidence interval for that
    median (order statistics of the round costs; the binomial gives its coverage, at least ``confidence``).
    Pairing cancels the drift both passes of a round share (clocks, heat, other load), so the interval is
    narrower than the passes' spread. Resolved: the interval excludes 0. ``upper_pct`` bounds the cost
    from above ("under 1%" holds when it is below 1). None with fewer than 6 rounds (no 95% interval)."""
    n = min(len(probed_tok_s), len(base_tok_s))
    costs = sorted(100.0 * (1.0 - p / b) for p, b in zip(probed_tok_s[:n], base_tok_s[:n]))
    # the largest k with P(Binomial(n, 1/2) < k) <= (1 - confidence) / 2: [costs[k-1], costs[n-k]] covers
    tail, k = 0.0, 0
    while k < n // 2:
        nxt = tail + math.comb(n, k) / 2**n
        if nxt > (1 - confidence) / 2:
            break
        tail, k = nxt, k + 1
    if k == 0:
        return None
    lo, hi = costs[k - 1], costs[n - k]
    return {"cost_pct": statistics.median(costs), "ci_pct": [lo, hi], "coverage": 1 - 2 * tail, "rounds": n,
            "resolved": lo > 0 or hi < 0, "upper_pct": hi, "method": "median of per-round paired costs; "
            "order-statistic interval (sign test)"}  # fmt: skip


def describe_paired(p: dict) -> str:
    lo, hi = p["ci_pct"]
    verdict = f"resolved: {p['cost_pct']:+.2f}%" if p["resolved"] else f"not resolved, under {hi:.2f}%"
    return (f"{verdict} (median of {p['rounds']} paired rounds {p['cost_pct']:+.2f}%, "
            f"{100 * p['coverage']:.0f}% interval {lo:+.2f}..{hi:+.2f}%)")  # fmt: skip
