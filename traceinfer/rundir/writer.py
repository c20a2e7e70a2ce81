"""Writing a run directory as the run goes: the manifest and one journal per stream, then Parquet at close.

Probes only append tuples to a stream's row list (``writer.stream(name).rows.append``). Right after a
forward is launched (at most every 0.1 s), or every ``flush_interval_s`` (0.5 s) when no forward comes,
the new rows are pickled and handed to an encoder process (traceinfer.rundir.encoder), which
JSON-encodes and appends them, so the engine's process pays for a ``pickle.dumps`` instead of a
``json.dumps``, on a GPU while the GPU computes. A crash or Ctrl-C loses at most the last half second;
the encoder writes all it was sent even when the engine's process dies. When the run closes, every
journal is also written as a typed Parquet file (traceinfer.rundir.columnar) and the manifest names it.

A journal is JSON Lines: a header object, then JSON arrays of rows (one flush writes one or more
lines), each row an array in the header's column order; a packed row holds one event per element of
its packed columns::

    {"stream": "tokens", "format_version": 1, "columns": ["t_ns", "step", "request_id", "index", "token_id"], "packed": ["request_id", "index", "token_id"]}
    [[81723640311,0,["0","1"],[0,0],[5121,913]]]          a packed row: one token per list element
    [[81724101233,1,"0",1,77]]

Times are ``time.perf_counter_ns()`` of the process that wrote them; the manifest's ``clock`` pairs
``t0_ns`` with the Unix time. Standard library only at import (pyarrow is imported at close).
"""

from __future__ import annotations

import json
import os
import pickle
import tempfile
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

from traceinfer.errors import RunDirError
from traceinfer.rundir import encoder
from traceinfer.rundir.encoder import encode_lines, jsonable
from traceinfer.rundir.helper_process import HelperProcess
from traceinfer.rundir.reader import iter_stream, read_manifest
from traceinfer.rundir.schema import FORMAT, FORMAT_VERSION, MANIFEST, STREAMS, StreamSchema

# Rows are pickled at most SEND_ROWS at a time: frames stay small, and a flusher thread pickling (no
# forwards, or no encoder process) holds the GIL for about half a millisecond at most between pipe writes.
SEND_ROWS = 256
# While forwards run, rows are packed once a forward is launched, at most every PACK_EVERY_S (the
# writer thread flushes them itself when no forward has come for flush_interval_s).
PACK_EVERY_S = 0.1



class StreamWriter:
    """Rows of one stream, appended by probes (``rows.append(tuple)``), handed on by the flusher."""

    __slots__ = ("_fh", "count", "path", "rows", "schema")

    def __init__(self, schema: StreamSchema, path: Path) -> None:
        self.schema = schema
        self.rows: list = []
        self.path = path
        self.count = 0  # events handed to the encoder (packed rows count one per element)
        self._fh = None  # this process's append handle, opened only when it encodes itself
        header = {"stream": schema.name, "format_version": FORMAT_VERSION, "columns": list(schema.names)}
        if schema.packed:
            header["packed"] = list(schema.packed)
        path.write_text(json.dumps(header) + "\n", encoding="utf-8")

    def take(self) -> list:
        """The rows appended so far (rows appended meanwhile stay for the next call)."""
        rows = self.rows
        n = len(rows)
        if not n:
            return []
        batch = rows[:n]
        del rows[:n]
        if self.schema.packed:  # count events, not rows
            first = self.schema.names.index(self.schema.packed[0])
            self.count += sum(len(r[first]) if isinstance(r[first], list) else 1 for r in batch)
        else:
            self.count += n
        return batch

    def write_text(self, lines: str) -> None:
        """Append JSON Lines already encoded."""
        if self._fh is None:
            self._fh = open(self.path, "a", encoding="utf-8")
        self._fh.write(lines)
        self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


class RunWriter:
    """Owns a run directory: the manifest and one StreamWriter per stream.

    While a GPU engine runs forwards (``pack_after_forward``), the engine thread packs the streams' new
    rows (takes and pickles them) right after a forward is launched (``on_handover``), where its time
    hides behind the GPU, and a writer thread sends the frames to the encoder process; pipe writes hold
    the GIL only between system calls. Pickling on a thread of its own would take the GIL whenever the
    engine thread dropped it in its host-side stages (each torch call does), and every hand-back
    lengthens the step. On a CPU there is nothing to hide behind, so the writer thread packs, woken by
    the same call. When no forward has come for ``flush_interval_s`` it packs and sends by itself. If
    the encoder cannot start or dies, the writer thread encodes the rows itself (slower for the engine,
    same files) and the manifest's ``writer`` says why."""

    def __init__(
        self,
        path: str | Path,
        manifest: dict,
        flush_interval_s: float = 0.5,
        pack_after_forward: bool = True,
        parquet: bool = True,
    ) -> None:
        self.path = Path(path)
        self.parquet = parquet  # write each stream as Parquet at close (a temporary run skips it)
        self.path.mkdir(parents=True, exist_ok=True)
        if (self.path / MANIFEST).exists():
            raise FileExistsError(f"{self.path} already holds a run ({MANIFEST}); choose another directory")
        self.manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "status": "running", **manifest}
        self.streams: dict[str, StreamWriter] = {}
        self.flush_interval_s = flush_interval_s
        self.pack_after_forward = pack_after_forward
        self.flusher_cpu_s = 0.0
        self.encoder: HelperProcess | None = None
        self.encoder_error: str | None = None
        # a write failed (a full disk): the files keep what was written before it, and nothing more is
        # written; rows are dropped as they are taken, so memory stays flat while the run is stopped
        self.write_error: str | None = None
        self._lock = threading.Lock()  # one packer at a time, and frames queued in the order rows were taken
        self._frames: deque[bytes] = deque()  # packed on the engine thread, sent by the writer thread
        self._stopping = False
        self._wake = threading.Event()  # frames to send, a flush due without an encoder, or closing
        self._due_ns = 0
        self.packs_after_forward = 0
        self.pack_ns = 0  # engine-thread time spent packing after forwards
        self._thread: threading.Thread | None = None
        self.write_manifest()

    def stream(self, name: str) -> StreamWriter:
        """The writer of stream ``name`` (one of STREAMS), created on first use."""
        with self._lock:
            if name not in self.streams:
                self.streams[name] = StreamWriter(STREAMS[name], self.path / STREAMS[name].file)
            return self.streams[name]

    def start(self, use_encoder: bool = True) -> None:
        """Start the encoder process (unless ``use_encoder`` is False) and the writer thread."""
        if use_encoder:
            try:
                self.encoder = HelperProcess("encoder process", encoder.__file__, [str(self.path)])
            except OSError as exc:
                self.encoder_error = f"the encoder process did not start: {exc}"
        self._thread = threading.Thread(target=self._run, name="traceinfer-flusher", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopping:
            woken = self._wake.wait(self.flush_interval_s)
            self._wake.clear()
            if self._stopping:
                break
            with self._lock:
                self._send_frames()
                if not woken or self.encoder is None or not self.pack_after_forward:
                    self._flush_locked()  # nothing packed for a whole interval, or this thread packs
        self.flusher_cpu_s = time.thread_time()

    def on_handover(self, point: str, phase: str, t_ns: int, fields: dict) -> None:
        """Subscribed to the 'handover' hook (the engine thread, a forward just launched): pack the rows
        when due, at most every PACK_EVERY_S. Never waits: if the writer thread is packing by itself,
        the rows wait for the next forward. On a CPU, or without an encoder process, it wakes the
        writer thread to pack (or encode) instead."""
        if t_ns < self._due_ns:
            return
        if self.pack_after_forward and self.encoder is not None:
            if not self._lock.acquire(blocking=False):
                return
            try:
                t = time.perf_counter_ns()
                self._frames.extend(self._pack())
                self.pack_ns += time.perf_counter_ns() - t
                self.packs_after_forward += 1
            finally:
                self._lock.release()
        self._due_ns = t_ns + int(min(PACK_EVERY_S, self.flush_interval_s) * 1e9)
        self._wake.set()

    def _pack(self) -> list[bytes]:
        """Every stream's new rows as encoder frames (caller holds the lock)."""
        frames = []
        for s in self.streams.values():
            batch = s.take()
            if self.write_error is not None:
                continue
            for i in range(0, len(batch), SEND_ROWS):
                frames.append(encoder.frame(s.schema.file, batch[i : i + SEND_ROWS]))
        return frames

    def _send_frames(self) -> None:
        """Send the packed frames in order (caller holds the lock); if the encoder is gone, write them here."""
        while self._frames:
            if self.write_error is not None:
                self._frames.clear()
                return
            data = self._frames.popleft()
            if self.encoder is not None:
                try:
                    self.encoder.send(data)
                    continue
                except OSError as exc:  # it died: what it had not written is lost, the rest is not
                    self._encoder_gone(f"the encoder process died during the run: {exc}")
                    if self.write_error is not None:  # it died of a failed write: writing here would fail too
                        continue
            self._write_frame(data)

    def _write_frame(self, data: bytes) -> None:
        name, payload = pickle.loads(data[encoder.HEADER :])
        stream = next(s for s in self.streams.values() if s.schema.file == name)
        self._write(stream, payload if isinstance(payload, str) else encode_lines(payload))

    def _write(self, stream: StreamWriter, lines: str) -> None:
        """Append encoded lines in this process; a failed write stops all writing (write_error)."""
        try:
            stream.write_text(lines)
        except OSError as exc:
            self.write_error = f"writing {stream.path} failed: {exc}"

    def flush(self) -> None:
        """Send or write everything taken so far and every stream's new rows."""
        with self._lock:
            self._send_frames()
            self._flush_locked()

    def _flush_locked(self) -> None:
        if self.encoder is None:
            for s in self.streams.values():
                batch = s.take()
                if batch and self.write_error is None:
                    self._write(s, encode_lines(batch))
            return
        self._frames.extend(self._pack())
        self._send_frames()

    def _encoder_gone(self, reason: str) -> None:
        proc, self.encoder = self.encoder, None
        error = proc.close(timeout_s=5.0) if proc is not None else None
        self.encoder_error = f"{reason} ({error})" if error else reason
        if proc is not None and proc.report.get("write_error"):
            self.write_error = proc.report["write_error"]

    def info(self) -> dict:
        """What the manifest says about the writer."""
        report = self.encoder.report if self.encoder is not None else {}
        return {
            "encoder": "process" if self.encoder is not None else "flusher thread",
            "error": self.encoder_error,
            "write_error": self.write_error,
            "encoder_cpu_s": report.get("cpu_s"),
            "flusher_cpu_s": round(self.flusher_cpu_s, 4),
            "flush_interval_s": self.flush_interval_s,
            "packer": "engine thread after forwards" if self.pack_after_forward else "writer thread",
            "packs_after_forward": self.packs_after_forward,
            "pack_after_forward_s": round(self.pack_ns / 1e9, 4),
        }

    def write_manifest(self) -> None:
        """The manifest with every stream's row count so far, written where it can be."""
        streams = self.manifest.setdefault("streams", {})
        for name, s in self.streams.items():
            streams.setdefault(name, {}).update(file=s.schema.file, columns=list(s.schema.names), rows=s.count + len(s.rows))
        self._save_manifest()

    def _save_manifest(self) -> None:
        """Write the manifest as it is; a failure (a full disk) becomes write_error, not an exception."""
        try:
            write_json_atomic(self.path / MANIFEST, self.manifest)
        except OSError as exc:
            self.write_error = self.write_error or f"writing {self.path / MANIFEST} failed: {exc}"

    def close(self, status: str) -> dict:
        """Stop the flusher, write what is left, wait for the encoder, write each stream as Parquet, write
        the final manifest; returns it. Call it once every process writing a journal has ended (the
        sampler process writes its own streams)."""
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
        self.flush()
        if self.encoder is not None:
            error = self.encoder.close(timeout_s=120.0)
            if error:
                self.encoder_error = error
            self.write_error = self.write_error or self.encoder.report.get("write_error")
        with self._lock:
            for s in self.streams.values():
                s.close()
        self.manifest["writer"] = self.info()
        self.manifest["status"] = status
        self.write_manifest()
        if self.parquet and self.write_error is None:  # after a failed write the journals are the record
            self._write_parquet()
        return self.manifest

    def _write_parquet(self) -> None:
        """Each journal as a Parquet file, named in the manifest with its row count (the journal's truth). A
        stream that cannot be converted keeps its journal, and the manifest says why."""
        from traceinfer.rundir import columnar

        t = time.perf_counter()
        for name, entry in self.manifest["streams"].items():
            schema = STREAMS[name]
            try:
                entry["rows"] = columnar.write_parquet(schema, iter_stream(self.path, name), self.path / schema.parquet_file)
                entry["parquet"] = schema.parquet_file
            except Exception as exc:  # e.g. a full disk: the journal stays the record
                entry["parquet_error"] = f"{type(exc).__name__}: {exc}"
        self.manifest["writer"]["parquet_s"] = round(time.perf_counter() - t, 4)
        self._save_manifest()


def check_new_run_dir(path: str | Path) -> None:
    """Can a new run directory be written at ``path``? RunDirError, one line, if not: a file is in the way,
    it holds a run, it is a non-empty directory that is not a run (a run never writes among a user's
    files), or it cannot be created or written (permissions, a read-only filesystem). Checked by creating
    what is missing and a scratch file, then removing both: a command checks before loading a model."""
    path = Path(path)
    if path.exists():
        if not path.is_dir():
            raise RunDirError(f"{path} is a file, not a directory for a run")
        if (path / MANIFEST).exists():
            raise RunDirError(f"{path} already holds a run ({MANIFEST}); choose another directory")
        if any(path.iterdir()):
            raise RunDirError(f"{path} is not empty and holds no run: a run directory must be new or empty")
    missing = []
    parent = path
    while not parent.exists():
        missing.append(parent)
        parent = parent.parent
    if not parent.is_dir():
        raise RunDirError(f"cannot create {path}: {parent} is a file")
    created: list[Path] = []
    try:
        for d in reversed(missing):  # top down
            d.mkdir()
            created.append(d)
        fd, scratch = tempfile.mkstemp(dir=path, prefix=".traceinfer-check-")
        os.close(fd)
        os.unlink(scratch)
    except OSError as exc:
        raise RunDirError(f"cannot write a run directory at {path}: {exc.strerror or exc}") from None
    finally:
        for d in reversed(created):  # bottom up
            d.rmdir()


def write_json_atomic(path: Path, obj: dict) -> None:
    """Write through a temporary file and rename, so a reader never sees half a manifest."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=jsonable) + "\n")
    os.replace(tmp, path)


def update_manifest(run_dir: str | Path, **fields: Any) -> dict:
    """Merge top-level ``fields`` into a closed run's manifest (e.g. an overhead measured afterwards)."""
    manifest = read_manifest(run_dir)
    manifest.update(fields)
    write_json_atomic(Path(run_dir) / MANIFEST, manifest)
    return manifest


