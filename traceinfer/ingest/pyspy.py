"""py-spy's outputs as tables and folded stacks.

    read_chrometrace(path) -> PySpyTrace     ``py-spy record --format chrometrace``: stacks with times
    read_raw(path)         -> Parsed         ``py-spy record --format raw``: folded stacks, no times

A chrometrace is a JSON array of B/E events per thread: at each sample where a thread's stack changed,
E events close the frames that left (leaf first) and B events open the new ones (root first), all at the
sample's time ``ts`` in microseconds from py-spy's start; one frame per function (name, args.filename,
args.line). ``spans`` turns it into intervals of one unchanged stack per thread: each starts at the sample
that first showed the stack and ends at the one that first showed another. Frames are written
``dir/file.py:function`` (traceinfer.flamegraphs.folded.python_frame), as the thread probe writes them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from traceinfer.errors import IngestError
from traceinfer.flamegraphs.folded import Parsed, frame_name, parse, python_frame


@dataclass(frozen=True)
class Span:
    pid: int
    tid: int
    start_us: float
    end_us: float
    stack: tuple[str, ...]  # root first


@dataclass(frozen=True)
class PySpyTrace:
    spans: list[Span]
    ignored: int  # events that could not be read (a trace cut off mid-write, an unknown phase)


def frame_of(event: dict) -> str:
    args = event.get("args") or {}
    filename = args.get("filename")
    name = event.get("name", "?")
    return python_frame(filename, name) if filename else frame_name(name)


def read_chrometrace(source: str | Path | list) -> PySpyTrace:
    """The spans of a py-spy chrometrace (a path or the loaded list); IngestError, naming the file, for a
    file that is not one."""
    events = source
    if not isinstance(source, list):
        try:
            events = json.loads(Path(source).read_text())
        except (OSError, ValueError) as exc:
            raise IngestError(f"{source} is not a py-spy chrometrace (JSON array of trace events): {exc}") from None
        if not isinstance(events, list):
            raise IngestError(f"{source} is not a py-spy chrometrace: expected a JSON array of trace events")
    open_stacks: dict[tuple[int, int], list[str]] = {}
    last_ts: dict[tuple[int, int], float] = {}
    spans: list[Span] = []
    ignored = 0
    for e in events:
        try:
            key, ts, ph = (int(e["pid"]), int(e["tid"])), float(e["ts"]), e["ph"]
        except (KeyError, TypeError, ValueError):
            ignored += 1
            continue
        stack = open_stacks.setdefault(key, [])
        before = last_ts.get(key)
        if before is not None and ts > before and stack:
            spans.append(Span(key[0], key[1], before, ts, tuple(stack)))
        last_ts[key] = ts
        if ph == "B":
            stack.append(frame_of(e))
        elif ph == "E":
            if stack:
                stack.pop()
        else:
            ignored += 1
    return PySpyTrace(spans, ignored)


def read_raw(source: str | Path) -> Parsed:
    """``py-spy record --format raw`` output: folded stacks (with ``--threads``, the thread is the root)."""
    try:
        text = Path(source).read_text(errors="replace")
    except OSError as exc:
        raise IngestError(f"cannot read {source}: {exc}") from None
    return parse(text)
