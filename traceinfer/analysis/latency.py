"""Latency percentiles: the one implementation every latency summary uses.

Percentiles interpolate linearly between closest ranks (numpy's default, and pandas'); None for no values.
Values may be any sequence, a numpy array or a pandas Series; None and NaN are left out.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

PERCENTILES = (50, 90, 99)


def _values(values: Iterable[float | None]) -> np.ndarray:
    """``values`` as a float64 array without None and NaN."""
    if hasattr(values, "to_numpy"):  # a pandas Series or Index, nullable types included
        arr = values.to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        arr = np.asarray(values if isinstance(values, np.ndarray) else list(values), dtype=np.float64)
    arr = arr.ravel()
    return arr[~np.isnan(arr)]


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile of ``values``; None if there are none."""
    arr = _values(values)
    return float(np.percentile(arr, q)) if len(arr) else None


def summarize(values: Iterable[float | None], percentiles: Sequence[int] = PERCENTILES) -> dict[str, float | None]:
    """{"p50": ..., "p90": ..., "p99": ..., "mean": ...} of ``values`` (None and NaN are left out)."""
    arr = _values(values)
    if not len(arr):
        return {**{f"p{q}": None for q in percentiles}, "mean": None}
    points = np.percentile(arr, list(percentiles)) if len(percentiles) else []
    out: dict[str, float | None] = {f"p{q}": float(v) for q, v in zip(percentiles, points)}
    out["mean"] = float(arr.mean())
    return out


def token_latency_summary(timings: Sequence[tuple[int, Sequence[int]]]) -> dict[str, dict[str, float | None]]:
    """(arrival_ns, token_times_ns) per request -> TTFT and inter-token latency summaries, in ms."""
    ttft = [(times[0] - arrival) / 1e6 for arrival, times in timings if len(times)]
    itl = [np.diff(np.asarray(times, dtype=np.int64)) / 1e6 for _, times in timings if len(times) > 1]
    return {"ttft_ms": summarize(ttft), "itl_ms": summarize(np.concatenate(itl) if itl else [])}
