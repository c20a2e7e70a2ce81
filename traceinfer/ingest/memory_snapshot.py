"""A ``torch.cuda.memory`` snapshot as folded stacks: the live bytes of the CUDA caching allocator by the
Python stack that allocated them.

    snap = load_snapshot("runs/r1/memory_snapshot.pickle")   # a pickled snapshot's path, or the loaded dict
    memory_stacks(snap)   engine/llm_engine.py:step;engine/model_runner.py:execute;models/qwen3.py:forward 4194304
    memory_summary(snap)  {"allocated": ..., "reserved": ..., "active": ..., "segments": ..., ...}

The format is what ``torch.cuda.memory._snapshot()`` returns and ``_dump_snapshot`` pickles (documented at
https://pytorch.org/docs/stable/torch_cuda_memory.html and in ``torch.cuda.memory._snapshot``'s docstring;
torch/cuda/_memory_viz.py reads it)::

    {"segments": [                                      # one per cudaMalloc the allocator keeps
        {"address": int, "total_size": int, "stream": int, "segment_type": "small" | "large",
         "allocated_size": int, "active_size": int,
         "blocks": [                                    # the segment, cut in pieces, in address order
            {"size": int, "requested_size": int, "address": int,
             "state": "active_allocated" | "active_awaiting_free" | "inactive",
             "frames": [{"filename": str, "line": int, "name": str}, ...]},   # innermost first
            ...]},
        ...],
     "device_traces": [[{"action": "alloc" | "free_requested" | ..., "addr": int, "size": int,
                         "frames": [...]}, ...], ...]}  # per device, with _record_memory_history

A block's bytes are its ``size`` (the allocator's rounded size: what ``torch.cuda.memory_allocated``
counts). Frames become ``dir/file.py:function`` (the path cut to its last two parts, as the other Python
frames of traceinfer) root first; a frame that is not Python (a C++ frame, with ``context="all"`` and
``stacks="all"``) is marked native (``_[n]``). Snapshots of older torch versions keep a block's frames in
``history[0]``; those are read too. Standard library only (no torch).

Unpickling runs code named in the file; this reader refuses any class or function in it (a snapshot is
plain dicts, lists, strings and numbers), so a hostile file fails instead of running.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

from traceinfer.errors import IngestError
from traceinfer.flamegraphs.folded import Folded, annotate, python_frame

NO_STACK = "(no stack recorded)"
CACHED = "(cached, free)"
AWAITING_FREE = "(awaiting free)"

Snapshot = dict[str, Any]
# what unpickling a damaged file raises (a truncated stream, a bad opcode, a refused class)
_PICKLE_ERRORS = (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError)


class _PlainUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(f"refuses to load {module}.{name}: a memory snapshot holds plain data only")


def load_snapshot(source: str | Path | Snapshot) -> Snapshot:
    """The snapshot as a dict (``source`` itself if it is one); IngestError naming the file when it is not a
    readable pickled snapshot with a ``segments`` list."""
    if isinstance(source, dict):
        data, where = source, "the snapshot given"
    else:
        where = str(source)
        try:
            raw = Path(source).read_bytes()
        except FileNotFoundError:
            raise IngestError(f"{where}: no such memory snapshot") from None
        except OSError as exc:
            raise IngestError(f"{where}: cannot read the memory snapshot ({exc})") from None
        try:
            data = _PlainUnpickler(io.BytesIO(raw)).load()
        except _PICKLE_ERRORS as exc:
            reason = " ".join(str(exc).split()) or type(exc).__name__
            raise IngestError(
                f"{where}: not a readable torch.cuda.memory snapshot (truncated or not a pickle: {reason})"
            ) from None
    if not isinstance(data, dict) or not isinstance(data.get("segments"), list):
        raise IngestError(f"{where}: not a torch.cuda.memory snapshot (no 'segments' list)")
    return data


def _frame(f: dict) -> str:
    filename, name = str(f.get("filename", "?")), str(f.get("name", "?"))
    label = python_frame(filename, name)
    return label if filename.endswith(".py") else annotate(label, "native")


def block_frames(block: dict) -> list[dict]:
    """The frames recorded for a block, innermost first (``frames``, or an older snapshot's history)."""
    if "frames" in block:
        return block["frames"] or []
    history = block.get("history") or []
    return (history[0].get("frames") or []) if history else []


def stack_of(frames: list[dict]) -> tuple[str, ...]:
    """Frames (innermost first, as recorded) -> a folded stack, root first."""
    return tuple(_frame(f) for f in reversed(frames)) or (NO_STACK,)


def _blocks(snapshot: Snapshot):
    for seg in snapshot["segments"]:
        yield from seg.get("blocks") or []


def memory_stacks(snapshot: str | Path | Snapshot, free: bool = False) -> Folded:
    """The live bytes (``active_allocated`` blocks) by allocation stack, root first; blocks without
    frames under "(no stack recorded)". ``free``: the allocator's other bytes too, under
    "(cached, free)_[i]" (inactive blocks) and "(awaiting free)_[i]" (freed, waiting for a stream)."""
    snapshot = load_snapshot(snapshot)
    folded = Folded(unit="bytes")
    for b in _blocks(snapshot):
        state, size = b.get("state"), b.get("size", 0)
        if state == "active_allocated":
            folded.add(stack_of(block_frames(b)), size)
        elif free and state == "inactive":
            folded.add((annotate(CACHED, "idle"),), size)
        elif free and state == "active_awaiting_free":
            folded.add((annotate(AWAITING_FREE, "idle"),) + stack_of(block_frames(b)), size)
    return folded


def memory_summary(snapshot: str | Path | Snapshot) -> dict[str, int]:
    """Totals in bytes: ``allocated`` (live blocks, as torch.cuda.memory_allocated), ``requested`` (what
    their callers asked for, before rounding), ``active`` (live or awaiting free), ``reserved`` (every
    segment, as torch.cuda.memory_reserved), ``inactive`` (cached, free); and counts of ``segments`` and
    live ``blocks``."""
    snapshot = load_snapshot(snapshot)
    out = dict.fromkeys(("allocated", "requested", "active", "reserved", "inactive", "segments", "blocks"), 0)
    for seg in snapshot["segments"]:
        out["segments"] += 1
        out["reserved"] += seg.get("total_size", 0)
        for b in seg.get("blocks") or []:
            state, size = b.get("state"), b.get("size", 0)
            if state == "active_allocated":
                out["allocated"] += size
                out["requested"] += b.get("requested_size", size)
                out["blocks"] += 1
            if state in ("active_allocated", "active_awaiting_free"):
                out["active"] += size
            elif state == "inactive":
                out["inactive"] += size
    return out
