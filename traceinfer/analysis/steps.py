"""Step analysis: pure functions over the 'steps' stream (traceinfer.rundir.STREAMS['steps'])."""

from __future__ import annotations

import pandas as pd


def handover_summary(steps: pd.DataFrame) -> dict | None:
    """The probes' handover in each step (``handover_ns``: host time handing the step's events to the
    probes once the forward is launched) against the forward's GPU time.

    On a GPU the handover is free while it is shorter than the forward: ``exposed_steps`` counts the
    steps where it was not, and ``exposed_us`` what they cost in all. Without CUDA-event timing the
    GPU fields are None (the handover is then on the host's path). None if no step has a handover."""
    rows = steps[steps["handover_ns"].notna()]
    if rows.empty:
        return None
    hand = rows["handover_ns"].astype(float) / 1e3
    out = {
        "steps": len(rows),
        "median_us": float(hand.median()),
        "p99_us": float(hand.quantile(0.99)),
        "max_us": float(hand.max()),
        "gpu_forward_median_us": None,
        "exposed_steps": None,
        "exposed_us": None,
    }
    timed = rows[rows["gpu_forward_ns"].notna()]
    if len(timed) == len(rows):
        gap = (timed["handover_ns"] - timed["gpu_forward_ns"]).astype(float) / 1e3
        out.update(
            gpu_forward_median_us=float(timed["gpu_forward_ns"].astype(float).median() / 1e3),
            exposed_steps=int((gap > 0).sum()),
            exposed_us=float(gap[gap > 0].sum()),
        )
    return out


def describe_handover(summary: dict) -> str:
    """One line for a terminal: how long the handover took and whether the GPU hid it."""
    text = f"probe handover: median {summary['median_us']:,.0f} us per step (p99 {summary['p99_us']:,.0f} us)"
    if summary["exposed_steps"] is None:
        return text + ", on the host's path (no CUDA-event timing: nothing to hide it behind)"
    hidden = summary["steps"] - summary["exposed_steps"]
    text += (f", behind the forward's GPU time (median {summary['gpu_forward_median_us']:,.0f} us) in {hidden:,} "
             f"of {summary['steps']:,} steps")  # fmt: skip
    if summary["exposed_steps"]:
        text += f"; {summary['exposed_us']:,.0f} us exposed in the others"
    return text
