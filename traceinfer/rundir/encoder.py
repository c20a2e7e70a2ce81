"""The stream encoder: JSON-encodes rows and appends them to a run directory's stream files.

Encoding is the costly part of writing a stream (``json.dumps`` of 2,048 KV-event rows holds the GIL
for over ten milliseconds), and any time a probe thread holds the GIL the engine thread waits for it,
often for longer than the work itself (each torch call releases the GIL and has to win it back). So
the run writer hands its row batches, pickled (about four times cheaper than JSON), through a pipe to this module running as a child process, which does the encoding and the writes on
another core. Stdlib only, so the child starts in milliseconds without importing torch.

Pipe protocol: frames of a 4-byte big-endian length and ``pickle.dumps((file_name, payload))``; the
payload is a list of rows, or a str already encoded (rows pickle cannot carry). Not ``marshal``,
though it is faster still: it writes any object with a buffer, numpy scalars included, as raw bytes.
Once started it prints ``{"ready": true}``; at end of input it writes what it has, prints one JSON
object (frames, rows, its CPU seconds, a write error) on stdout and exits; a write that fails (a full disk)
ends it early, its report naming the file and the error. It ignores SIGINT and SIGTERM: after a Ctrl-C or
a SIGTERM to the process group the parent still closes the run and the child writes every frame it was
sent; if the parent dies, the pipe's end of file tells the child to finish.

    python encoder.py RUN_DIR        (started by traceinfer.rundir.writer.RunWriter)
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import sys
from typing import Any, BinaryIO

ROWS_PER_LINE = 2048  # rows per JSON line: keeps a line, and so what a torn write can lose, bounded
HEADER = 4


def jsonable(value: Any) -> Any:
    """numpy / torch scalars and other odd values: as plain numbers, else as their str()."""
    item = getattr(value, "item", None)
    if callable(item):
        return item()
    return str(value)


def encode_lines(rows: list) -> str:
    """Rows -> JSON Lines text: one array of at most ROWS_PER_LINE rows per line."""
    return "".join(
        json.dumps(rows[i : i + ROWS_PER_LINE], separators=(",", ":"), default=jsonable) + "\n"
        for i in range(0, len(rows), ROWS_PER_LINE)
    )


def frame(file_name: str, rows: list) -> bytes:
    """One pipe frame for ``rows`` of ``file_name``; rows pickle cannot carry are encoded here."""
    try:
        body = pickle.dumps((file_name, rows), protocol=pickle.HIGHEST_PROTOCOL)
    except (pickle.PicklingError, TypeError, AttributeError):  # e.g. a lambda: JSON with jsonable's str()
        body = pickle.dumps((file_name, encode_lines(rows)), protocol=pickle.HIGHEST_PROTOCOL)
    return len(body).to_bytes(HEADER, "big") + body


def _read_exact(stream: BinaryIO, n: int) -> bytes | None:
    data = stream.read(n)
    return data if data is not None and len(data) == n else None


def serve(run_dir: str, stream: BinaryIO) -> dict:
    """Read frames from ``stream`` until its end, appending each to its file in ``run_dir``. A write that
    fails (a full disk) ends the serving: the report's ``write_error`` names the file and the error."""
    files: dict = {}
    frames = rows = 0
    error = None
    while (head := _read_exact(stream, HEADER)) is not None:
        body = _read_exact(stream, int.from_bytes(head, "big"))
        if body is None:  # the parent died mid-frame: the frame is lost, the file stays whole
            break
        name, payload = pickle.loads(body)
        path = os.path.join(run_dir, name)
        try:
            fh = files.get(name)
            if fh is None:
                fh = files[name] = open(path, "a", encoding="utf-8")
            text = payload if isinstance(payload, str) else encode_lines(payload)
            fh.write(text)
            fh.flush()  # a reader (or a crash) sees whole lines as soon as they are written
        except OSError as exc:
            error = f"writing {path} failed: {exc}"
            break
        rows += payload.count("\n") if isinstance(payload, str) else len(payload)  # lines, for pre-encoded frames
        frames += 1
    for fh in files.values():
        try:
            fh.close()
        except OSError as exc:  # what could not be flushed is lost; say so
            error = error or f"closing {fh.name} failed: {exc}"
    t = os.times()
    return {"frames": frames, "rows": rows, "cpu_s": round(t.user + t.system, 4), "write_error": error}


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python encoder.py RUN_DIR", file=sys.stderr)
        return 2
    for sig in (signal.SIGINT, signal.SIGTERM):  # the parent decides when the run ends; end of input ends us
        signal.signal(sig, signal.SIG_IGN)
    print(json.dumps({"ready": True}), flush=True)  # started: the parent need not bill our start-up to its run
    report = serve(argv[1], sys.stdin.buffer)
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
