"""The Chrome trace-event format, checked (shared by the probe tests)."""

from __future__ import annotations

import math

PHASES = {"X", "B", "E", "i", "I", "C", "M"}


def trace_problems(trace: dict) -> list[str]:
    """Check a Chrome trace against the Trace Event Format: required keys and types per phase, matching
    B/E pairs with non-decreasing ts, and X slices on one track either nested or disjoint."""
    problems = []
    if not isinstance(trace, dict) or not isinstance(trace.get("traceEvents"), list):
        return ["top level must be an object with a 'traceEvents' list"]
    stacks: dict = {}
    slices: dict = {}
    for n, e in enumerate(trace["traceEvents"]):
        where = f"event {n} ({e.get('name')!r}, ph {e.get('ph')!r})"
        if not isinstance(e.get("name"), str) or e.get("ph") not in PHASES:
            problems.append(f"{where}: needs a string name and ph in {sorted(PHASES)}")
            continue
        if not all(isinstance(e.get(k), int) and not isinstance(e.get(k), bool) for k in ("pid", "tid")):
            problems.append(f"{where}: pid and tid must be integers")
        ts = e.get("ts")
        if not isinstance(ts, (int, float)) or isinstance(ts, bool) or not math.isfinite(ts):
            problems.append(f"{where}: ts must be a finite number")
            continue
        if "args" in e and not isinstance(e["args"], dict):
            problems.append(f"{where}: args must be an object")
        track = (e["pid"], e["tid"])
        ph = e["ph"]
        if ph == "X":
            dur = e.get("dur")
            if not isinstance(dur, (int, float)) or dur < 0:
                problems.append(f"{where}: X needs dur >= 0")
            else:
                slices.setdefault(track, []).append((ts, ts + dur, e["name"]))
        elif ph == "B":
            stacks.setdefault(track, []).append((e["name"], ts))
        elif ph == "E":
            if not stacks.get(track):
                problems.append(f"{where}: E without a B on its track")
            else:
                _, begin = stacks[track].pop()
                if ts < begin:
                    problems.append(f"{where}: E before its B")
        elif ph in ("i", "I"):
            if e.get("s", "t") not in ("g", "p", "t"):
                problems.append(f"{where}: instant scope must be g, p or t")
        elif ph == "C":
            args = e.get("args")
            if not args or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                                   for v in args.values()):  # fmt: skip
                problems.append(f"{where}: counter args must be finite numbers")
        elif ph == "M":
            if e["name"] not in ("process_name", "thread_name", "process_sort_index", "thread_sort_index",
                                 "process_labels") or not isinstance(e.get("args"), dict):  # fmt: skip
                problems.append(f"{where}: unknown metadata event or no args")
    problems += [f"track {t}: {len(s)} B without E" for t, s in stacks.items() if s]
    for track, spans in slices.items():
        spans.sort(key=lambda s: (s[0], -s[1]))
        open_ends: list = []
        for start, end, name in spans:
            while open_ends and open_ends[-1][0] <= start + 1e-3:
                open_ends.pop()
            if open_ends and end > open_ends[-1][0] + 1e-3:
                problems.append(
                    f"track {track}: {name!r} [{start}, {end}] overlaps {open_ends[-1][1]!r} without nesting"
                )
            open_ends.append((end, name))
    return problems
