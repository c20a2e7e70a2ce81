"""Folded stacks: the interchange between every stack source, transform and renderer of traceinfer.

The format is Brendan Gregg's (https://github.com/brendangregg/FlameGraph#2-fold-stacks): one line per
distinct stack, frames root first joined by ';', a space, and a count::

    engine/llm_engine.py:LLMEngine.step;engine/scheduler.py:Scheduler.schedule 42
    step;forward (graph);_decode_kernel 1834567.5
    step;sample;aten::softmax 120 95

A ';' inside a frame name becomes ':' (and a line break a space), so every frame stays one frame. A frame
may end with a kind annotation, as FlameGraph's ``_[k]``: ``_[k]`` a GPU kernel, ``_[r]`` a range (NVTX or
record_function), ``_[n]`` native code, ``_[i]`` idle or waiting; a frame without one is Python (readers
write ``file.py:function``) or unknown. Renderers color by kind and show the name without it. Counts
are samples, nanoseconds or bytes (``Folded.unit``) and may be decimal. A differential has a second count
per line (difffolded.pl's format): the first profile's count, then the second's. Files merge by
concatenation: the counts of equal stacks add up. A line that is not ``stack count [count]`` is ignored
and counted, so a partial file still gives a partial graph ("ignored 3 lines").

Standard library only.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

Stack = tuple[str, ...]
KINDS = {"_[k]": "kernel", "_[r]": "range", "_[n]": "native", "_[i]": "idle"}


def annotate(name: str, kind: str) -> str:
    """``name`` with the annotation of ``kind`` (kernel, range, native or idle)."""
    suffix = next(s for s, k in KINDS.items() if k == kind)
    return frame_name(name) + suffix


def kind_of(frame: str) -> tuple[str, str]:
    """(the frame's name without its annotation, its kind: kernel, range, native, idle, or python)."""
    for suffix, kind in KINDS.items():
        if frame.endswith(suffix):
            return frame[: -len(suffix)], kind
    return frame, "python"


def frame_name(name: str) -> str:
    """A frame name safe in a folded line: no ';' (it would split the frame), no line break, not empty."""
    cleaned = " ".join(str(name).replace(";", ":").split())
    return cleaned or "?"


def python_frame(filename: str, function: str) -> str:
    """A Python frame as every stack source of traceinfer writes it: ``dir/file.py:function``, the path cut
    to its last two parts (``engine/llm_engine.py:LLMEngine.step``)."""
    parts = str(filename).replace("\\", "/").rsplit("/", 2)
    return frame_name(f"{'/'.join(parts[-2:])}:{function}")


@dataclass
class Folded:
    """Stacks and their counts; ``other``: the second profile's counts, for a differential."""

    counts: dict[Stack, float] = field(default_factory=dict)
    unit: str = "samples"  # samples | ns | bytes | s
    other: dict[Stack, float] | None = None

    @property
    def total(self) -> float:
        return math.fsum(self.counts.values())

    @property
    def differential(self) -> bool:
        return self.other is not None

    def add(self, stack: Iterable[str], count: float = 1.0, other: float | None = None) -> None:
        """Add ``count`` (and, for a differential, ``other``) to ``stack``, its frames cleaned."""
        key = tuple(frame_name(f) for f in stack)
        if not key:
            return
        self.counts[key] = self.counts.get(key, 0.0) + count
        if other is not None:
            if self.other is None:
                self.other = {}
            self.other[key] = self.other.get(key, 0.0) + other

    def __len__(self) -> int:
        return len(self.counts)


@dataclass(frozen=True)
class Parsed:
    folded: Folded
    ignored: int  # lines that are not ``stack count [count]``

    @property
    def message(self) -> str | None:
        """What a reader tells the user about the lines it skipped (FlameGraph's "Ignored N lines")."""
        if not self.ignored:
            return None
        many = self.ignored > 1
        return f"ignored {self.ignored} line{'s' if many else ''} that {'are' if many else 'is'} not 'stack count'"


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None


def parse(lines: str | Iterable[str], unit: str = "samples") -> Parsed:
    """Folded text (or its lines) -> Folded; blank lines are skipped, bad ones counted in ``ignored``."""
    if isinstance(lines, str):
        lines = lines.splitlines()
    folded = Folded(unit=unit)
    ignored = 0
    for raw in lines:
        line = raw.strip()
        if not line:
            continue
        stack_text, _, rest = line.rpartition(" ")
        last = _number(rest)
        if not stack_text or last is None:
            ignored += 1
            continue
        first_text, _, maybe = stack_text.rpartition(" ")
        first = _number(maybe) if first_text else None
        if first is not None:  # "stack count count": a differential line
            stack, counts = first_text, (first, last)
        else:
            stack, counts = stack_text, (last, None)
        frames = [f for f in stack.split(";") if f]
        if not frames:
            ignored += 1
            continue
        folded.add(frames, counts[0], counts[1])
    if folded.other is not None:  # a file of mixed lines: the single-count ones had no second count
        for key in folded.counts:
            folded.other.setdefault(key, 0.0)
    return Parsed(folded, ignored)


def _fmt(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def format_folded(folded: Folded) -> str:
    """Folded text, one line per stack in sorted order (stable, so files diff and merge)."""
    lines = []
    for stack in sorted(folded.counts):
        line = f"{';'.join(stack)} {_fmt(folded.counts[stack])}"
        if folded.other is not None:
            line += f" {_fmt(folded.other.get(stack, 0.0))}"
        lines.append(line)
    return "\n".join(lines) + ("\n" if lines else "")


@dataclass
class Node:
    """One frame of the tree a flame graph draws: its total (itself and everything above it), its own
    count (``self_count``), and for a differential the second profile's total."""

    name: str
    total: float = 0.0
    self_count: float = 0.0
    other: float = 0.0
    children: dict[str, Node] = field(default_factory=dict)


def tree(folded: Folded, root: str = "all") -> Node:
    """The folded stacks as a tree under one root frame (children in insertion order; sort to draw)."""
    top = Node(root)
    for stack, count in folded.counts.items():
        other = folded.other.get(stack, 0.0) if folded.other is not None else 0.0
        node = top
        node.total += count
        node.other += other
        for name in stack:
            child = node.children.get(name)
            if child is None:
                child = node.children[name] = Node(name)
            child.total += count
            child.other += other
            node = child
        node.self_count += count
    return top
