"""Latency percentiles: the one implementation every latency summary uses.

Percentiles interpolate linearly between closest ranks (numpy's and pandas' default); None for no values.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

PERCENTILES = (50, 90, 99)


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile of ``values``; None if there are none."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def summarize(values: Sequence[float], percentiles: Sequence[int] = PERCENTILES) -> dict[str, float | None]:
    """{"p50": ..., "p90": ..., "p99": ..., "mean": ...} of ``values`` (None values are left out)."""
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    out: dict[str, float | None] = {f"p{q}": percentile(values, q) for q in percentiles}
    out["mean"] = sum(values) / len(values) if values else None
    return out


def token_latency_summary(timings: Sequence[tuple[int, Sequence[int]]]) -> dict[str, dict[str, float | None]]:
    """(arrival_ns, token_times_ns) per request -> TTFT and inter-token latency summaries, in ms."""
    ttft = [(times[0] - arrival) / 1e6 for arrival, times in timings if times]
    itl = [(b - a) / 1e6 for _, times in timings for a, b in zip(times, times[1:])]
    return {"ttft_ms": summarize(ttft), "itl_ms": summarize(itl)}
