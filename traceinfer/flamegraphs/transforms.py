"""Small pure functions over folded stacks (traceinfer.flamegraphs.folded.Folded): each returns a new Folded.

    grep(f, r"Scheduler")          stacks with a frame matching the pattern
    start_at(f, r"LLMEngine.step") each stack from its first frame matching the pattern (others dropped)
    strip_prefix(f, 2)             the first frames of every stack dropped
    merge(a, b, ...)               counts of equal stacks added
    scale(f, 1e-6)                 every count multiplied (ns -> ms)
    differential(a, b)             a, normalized to b's total, beside b: the input of a red/blue graph
"""

from __future__ import annotations

import re
from collections.abc import Callable

from traceinfer.flamegraphs.folded import Folded, Stack


def _keep(folded: Folded, keep: Callable[[Stack], Stack | None]) -> Folded:
    out = Folded(unit=folded.unit)
    for stack, count in folded.counts.items():
        kept = keep(stack)
        if kept:
            out.add(kept, count, folded.other.get(stack, 0.0) if folded.other is not None else None)
    return out


def grep(folded: Folded, pattern: str, invert: bool = False) -> Folded:
    """Stacks with (``invert``: without) a frame matching the regular expression ``pattern``."""
    rx = re.compile(pattern)
    return _keep(folded, lambda s: s if any(rx.search(f) for f in s) != invert else None)


def start_at(folded: Folded, pattern: str) -> Folded:
    """Each stack from its first frame matching ``pattern`` on; stacks without one are dropped."""
    rx = re.compile(pattern)

    def cut(stack: Stack) -> Stack | None:
        for i, frame in enumerate(stack):
            if rx.search(frame):
                return stack[i:]
        return None

    return _keep(folded, cut)


def strip_prefix(folded: Folded, frames: int) -> Folded:
    """Every stack without its first ``frames`` frames (a stack no longer than that is dropped)."""
    return _keep(folded, lambda s: s[frames:] or None)


def merge(*folded: Folded) -> Folded:
    """One Folded with the counts of every input added (they must share a unit)."""
    units = {f.unit for f in folded}
    if len(units) > 1:
        raise ValueError(f"cannot merge folded stacks of different units: {sorted(units)}")
    out = Folded(unit=units.pop() if units else "samples")
    for f in folded:
        for stack, count in f.counts.items():
            out.add(stack, count, f.other.get(stack, 0.0) if f.other is not None else None)
    return out


def scale(folded: Folded, factor: float, unit: str | None = None) -> Folded:
    """Every count times ``factor`` (and the unit renamed, when given)."""
    out = Folded(unit=unit or folded.unit)
    for stack, count in folded.counts.items():
        out.add(stack, count * factor, folded.other[stack] * factor if folded.other is not None else None)
    return out


def differential(before: Folded, after: Folded, normalize: bool = True) -> Folded:
    """The differential of two profiles: ``counts`` are ``before``'s, ``other`` ``after``'s, for every
    stack either has. ``normalize`` scales ``before`` to ``after``'s total (difffolded.pl -n), so that two
    runs of different length compare by share: a profile against itself is then zero everywhere."""
    factor = after.total / before.total if normalize and before.total else 1.0
    out = Folded(unit=after.unit)
    for stack in set(before.counts) | set(after.counts):
        out.add(stack, before.counts.get(stack, 0.0) * factor, after.counts.get(stack, 0.0))
    return out
