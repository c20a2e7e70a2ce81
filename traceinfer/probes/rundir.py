"""The run directory: one folder per profiled run, written as it goes, readable at any moment.

Layout::

    RUN/
      manifest.json        what ran and how: config, packages, device, git commit, clock, timing,
                           probes on and their measured cost, stream files, status
                           ("running" until closed, then "completed", "interrupted" or "failed")
      <stream>.jsonl       one file per event stream in STREAMS (only the streams of probes that ran)
      trace.json           Chrome / Perfetto trace, merged from the streams by traceinfer.reports.perfetto
      memory_snapshot.pickle   optional torch.cuda.memory snapshot (https://pytorch.org/memory_viz)

A stream file is JSON Lines: the first line is a header object, every later line a JSON array of rows
(one flush writes one or more lines), each row an array in the header's column order::

    {"stream": "tokens", "format_version": 1, "columns": ["t_ns", "step", "request_id", "index", "token_id"], "packed": ["request_id", "index", "token_id"]}
    [[81723640311,0,["0","1"],[0,0],[5121,913]]]          a packed row: one token per list element
    [[81724101233,1,"0",1,77]]

Probes only append tuples to a stream's row list. Right after a forward is launched (at most every
0.1 s), or every ``flush_interval_s`` (0.5 s) when no forward comes, the new rows are pickled and handed
to an encoder process (traceinfer.probes.encoder), which JSON-encodes and appends them, so the engine's
process pays for a ``pickle.dumps`` instead of a ``json.dumps``, on a GPU while the GPU computes. A crash or
Ctrl-C loses at most the last half second; the encoder writes all it was sent even when the engine's
process dies, and a torn last line is skipped by ``read_stream`` with a warning. A live reader can
tail the files. Times are ``time.perf_counter_ns()`` of the process that wrote them; the
manifest's ``clock`` pairs ``t0_ns`` with the Unix time, and trace timestamps are relative to ``t0_ns``.
Absent hardware gives ``null`` fields (or no stream, with the reason in the manifest), never zeros.
"""

from __future__ import annotations

import json
import os
import pickle
import threading
import time
import warnings
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from traceinfer.probes import encoder
from traceinfer.probes.base import HelperProcess
from traceinfer.probes.encoder import encode_lines, jsonable

FORMAT = "traceinfer-run"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
TRACE = "trace.json"
MEMORY_SNAPSHOT = "memory_snapshot.pickle"
# Rows are pickled at most SEND_ROWS at a time: frames stay small, and a flusher thread pickling (no
# forwards, or no encoder process) holds the GIL for about half a millisecond at most between pipe writes.
SEND_ROWS = 256
# While forwards run, rows are packed once a forward is launched, at most every PACK_EVERY_S (the
# writer thread flushes them itself when no forward has come for flush_interval_s).
PACK_EVERY_S = 0.1


@dataclass(frozen=True)
class StreamSchema:
    """One event stream: its file and its columns (name -> meaning, with the unit)."""

    name: str
    doc: str
    columns: dict[str, str]
    # columns that may hold a list: such a packed row is one event per element (the other columns shared),
    # so a probe writes one row per step instead of one per token; readers expand it (iter_stream)
    packed: tuple[str, ...] = ()

    @property
    def file(self) -> str:
        return f"{self.name}.jsonl"

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.columns)


_STAGES = ("schedule", "prepare", "forward", "sample", "postprocess")

#: Every event stream a probe can write, with its column schema. Rows are written in this column order.
STREAMS: dict[str, StreamSchema] = {
    s.name: s
    for s in (
        StreamSchema(
            "steps",
            "one row per engine step (probe 'steps')",
            {
                "step": "engine step index",
                "t_ns": "step begin, perf_counter_ns",
                "dur_ns": "host time of the whole step",
                **{
                    col: desc
                    for stage in _STAGES
                    for col, desc in (
                        (f"{stage}_start_ns", f"{stage} begin, perf_counter_ns (null when the step had no {stage})"),
                        (
                            f"{stage}_ns",
                            f"host time in {stage}" + (" (the launch, on CUDA)" if stage == "forward" else ""),
                        ),
                    )
                },
                "other_ns": "host time of the step outside the five stages",
                "handover_start_ns": "once the forward is launched, the engine hands the step's events to the probes "
                "and they do their per-step work (hook point 'overlap'): its begin, perf_counter_ns",
                "handover_ns": "host time of that hand-over (part of other_ns; hidden behind the GPU while shorter "
                "than gpu_forward_ns)",
                "gpu_forward_ns": "GPU time of the forward from CUDA events (null without CUDA)",
                "gpu_gap_ns": "GPU idle between the previous forward's end and this one's start (null without CUDA)",
                "cuda_graph": "forward replayed a CUDA graph (false: eager; null: no forward)",
                "num_seqs": "sequences scheduled",
                "num_prefill_seqs": "of those, prefill chunks",
                "num_decode_seqs": "of those, decodes",
                "num_batched_tokens": "query tokens in the batch",
                "num_prefill_tokens": "prefill query tokens",
                "num_decode_tokens": "decode query tokens",
                "num_cached_tokens": "prompt tokens served from the prefix cache this step",
                "token_budget": "max_num_batched_tokens",
                "num_waiting": "waiting queue length after scheduling",
                "num_running": "running queue length after scheduling",
                "num_preempted": "requests preempted while scheduling",
                "num_free_blocks": "free KV blocks after scheduling",
                "num_outputs": "request outputs the step returned",
            },
        ),
        StreamSchema(
            "requests",
            "request lifecycle events (probe 'requests'); tokens are in the 'tokens' stream",
            {
                "t_ns": "perf_counter_ns",
                "step": "engine step the event fell in (the last started step when between steps)",
                "request_id": "request id",
                "event": "arrival | scheduled | preempted | finished",
                "prompt_len": "arrival: prompt tokens",
                "max_tokens": "arrival: the request's max_tokens",
                "cached_tokens": "scheduled: prompt tokens served from the prefix cache",
                "reason": "finished: length | stop | eos | aborted | error",
                "num_output_tokens": "finished: output tokens",
                "num_computed_tokens": "preempted: computed tokens whose KV was dropped (recomputed later)",
                "error": "finished with an error: the message",
            },
        ),
        StreamSchema(
            "tokens",
            "every output token (probe 'requests')",
            {
                "t_ns": "host time the token was produced, perf_counter_ns",
                "step": "engine step",
                "request_id": "request id",
                "index": "output position, from 0",
                "token_id": "token id",
            },
            packed=("request_id", "index", "token_id"),
        ),
        StreamSchema(
            "kv_events",
            "every KV block operation (probe 'kv'); vllm_event names the matching vLLM KV event",
            {
                "t_ns": "perf_counter_ns",
                "step": "engine step of the op (the last started one when between steps)",
                "op": "snapshot | allocate | append | hit | stored | free | preempt | evict | reset",
                "vllm_event": "BlockStored | BlockRemoved | AllBlocksCleared, or null where vLLM has none",
                "request_id": "request id (null for evict, reset, snapshot)",
                "block_ids": "physical block ids of the op (free/preempt: in release order)",
                "block_hashes": "prefix-cache hash of each block (null: not cached)",
                "parent_block_hashes": "stored: hash of each block's parent (null at the chain root)",
                "ref_counts": "reference count of each block after the op",
                "token_ids": "stored: the tokens of each block",
                "num_free": "free blocks after the op (includes cached evictable ones)",
                "num_used": "blocks held by requests after the op",
                "num_cached": "blocks in the prefix cache after the op",
                "state": "snapshot only: {num_blocks, block_size, free_queue, ref_counts, hashes, parent_hashes, token_ids}",
            },
            # one packed row per hand-over (once per step, during the forward): the ops since the last one
            packed=("t_ns", "step", "op", "vllm_event", "request_id", "block_ids", "block_hashes", "parent_block_hashes",
                    "ref_counts", "token_ids", "num_free", "num_used", "num_cached"),
        ),
        StreamSchema(
            "gc",
            "garbage collections from gc.callbacks (probe 'gc')",
            {
                "t_ns": "collection start, perf_counter_ns",
                "dur_ns": "pause",
                "generation": "0, 1 or 2",
                "collected": "objects collected",
                "uncollectable": "uncollectable objects found",
                "step": "engine step it landed in (the last started one when between steps)",
                "in_step": "true when it ran inside a step",
                "thread": "name of the thread that triggered it",
            },
        ),
        StreamSchema(
            "thread_samples",
            "a stack sample of every thread (probe 'threads'; sys._current_frames)",
            {
                "t_ns": "perf_counter_ns",
                "step": "engine step",
                "thread_id": "threading ident",
                "native_id": "OS thread id",
                "thread_name": "thread name",
                "cpu_ns": "thread CPU time so far (null where the OS gives none)",
                "stack": "folded stack, root first: 'module.py:func;module.py:func'",
            },
        ),
        StreamSchema(
            "host_samples",
            "this process, from psutil (probe 'samplers')",
            {
                "t_ns": "perf_counter_ns",
                "step": "engine step",
                "cpu_percent": "process CPU % since the previous sample (100 = one core)",
                "rss_bytes": "resident set size",
                "num_threads": "OS threads",
                "ctx_switches_voluntary": "cumulative",
                "ctx_switches_involuntary": "cumulative",
                "cpu_user_s": "cumulative user CPU seconds",
                "cpu_system_s": "cumulative system CPU seconds",
            },
        ),
        StreamSchema(
            "gpu_samples",
            "the engine's GPU, from NVML (probe 'samplers'); null where the GPU does not report a field",
            {
                "t_ns": "perf_counter_ns",
                "step": "engine step",
                "gpu_util_pct": "GPU utilization %",
                "mem_util_pct": "memory controller utilization %",
                "mem_used_bytes": "device memory used",
                "power_w": "power draw, W",
                "sm_clock_mhz": "SM clock",
                "mem_clock_mhz": "memory clock",
                "temperature_c": "GPU temperature",
                "pcie_rx_bytes_s": "PCIe receive rate (read at most twice a second, else null)",
                "pcie_tx_bytes_s": "PCIe transmit rate (read at most twice a second, else null)",
            },
        ),
        StreamSchema(
            "cuda_memory",
            "torch CUDA caching allocator once per step, read once its forward is launched (probe 'cuda_memory')",
            {
                "t_ns": "perf_counter_ns",
                "step": "engine step",
                "allocated_bytes": "in tensors",
                "reserved_bytes": "held by the caching allocator",
                "active_bytes": "in active blocks",
                "inactive_split_bytes": "free pieces of split blocks",
                "fragmentation": "1 - allocated / reserved (null when nothing is reserved)",
                "peak_allocated_bytes": "peak allocated since the run began",
                "num_alloc_retries": "cudaMalloc retries after freeing the cache (cumulative)",
                "num_ooms": "out-of-memory errors (cumulative)",
            },
        ),
    )
}


# -- writing -------------------------------------------------------------------------------
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

    def write(self, batch: list) -> None:
        """Encode and append ``batch`` in this process (no encoder process, or it is gone)."""
        self.write_text(encode_lines(batch))

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
    rows (takes and pickles them) right after a forward is launched (``on_overlap``), where its time
    hides behind the GPU, and a writer thread sends the frames to the encoder process; pipe writes hold
    the GIL only between system calls. Pickling on a thread of its own would take the GIL whenever the
    engine thread dropped it in its host-side stages (each torch call does), and every hand-back
    lengthens the step. On a CPU there is nothing to hide behind, so the writer thread packs, woken by
    the same call. When no forward has come for ``flush_interval_s`` it packs and sends by itself. If
    the encoder cannot start or dies, the writer thread encodes the rows itself (slower for the engine,
    same files) and the manifest's ``writer`` says why."""

    def __init__(
        self, path: str | Path, manifest: dict, flush_interval_s: float = 0.5, pack_after_forward: bool = True
    ) -> None:
        self.path = Path(path)
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

    def on_overlap(self, point: str, phase: str, t_ns: int, fields: dict) -> None:
        """Subscribed to the 'overlap' hook (the engine thread, a forward just launched): pack the rows
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
            for i in range(0, len(batch), SEND_ROWS):
                frames.append(encoder.frame(s.schema.file, batch[i : i + SEND_ROWS]))
        return frames

    def _send_frames(self) -> None:
        """Send the packed frames in order (caller holds the lock); if the encoder is gone, write them here."""
        while self._frames:
            data = self._frames.popleft()
            if self.encoder is not None:
                try:
                    self.encoder.send(data)
                    continue
                except OSError as exc:  # it died: what it had not written is lost, the rest is not
                    self._encoder_gone(f"the encoder process died during the run: {exc}")
            self._write_frame(data)

    def _write_frame(self, data: bytes) -> None:
        name, payload = pickle.loads(data[encoder.HEADER :])
        stream = next(s for s in self.streams.values() if s.schema.file == name)
        if isinstance(payload, str):
            stream.write_text(payload)
        else:
            stream.write(payload)

    def flush(self) -> None:
        """Send or write everything taken so far and every stream's new rows."""
        with self._lock:
            self._send_frames()
            self._flush_locked()

    def _flush_locked(self) -> None:
        if self.encoder is None:
            for s in self.streams.values():
                batch = s.take()
                if batch:
                    s.write(batch)
            return
        self._frames.extend(self._pack())
        self._send_frames()

    def _encoder_gone(self, reason: str) -> None:
        proc, self.encoder = self.encoder, None
        error = proc.close(timeout_s=5.0) if proc is not None else None
        self.encoder_error = f"{reason} ({error})" if error else reason

    def info(self) -> dict:
        """What the manifest says about the writer."""
        report = self.encoder.report if self.encoder is not None else {}
        return {
            "encoder": "process" if self.encoder is not None else "flusher thread",
            "error": self.encoder_error,
            "encoder_cpu_s": report.get("cpu_s"),
            "flusher_cpu_s": round(self.flusher_cpu_s, 4),
            "flush_interval_s": self.flush_interval_s,
            "packer": "engine thread after forwards" if self.pack_after_forward else "writer thread",
            "packs_after_forward": self.packs_after_forward,
            "pack_after_forward_s": round(self.pack_ns / 1e9, 4),
        }

    def write_manifest(self) -> None:
        self.manifest["streams"] = {
            name: {"file": s.schema.file, "columns": list(s.schema.names), "rows": s.count + len(s.rows)}
            for name, s in self.streams.items()
        }
        write_json_atomic(self.path / MANIFEST, self.manifest)

    def close(self, status: str) -> dict:
        """Stop the flusher, write what is left, wait for the encoder, write the final manifest; returns it."""
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
        self.flush()
        if self.encoder is not None:
            error = self.encoder.close(timeout_s=120.0)
            if error:
                self.encoder_error = error
        with self._lock:
            for s in self.streams.values():
                s.close()
        self.manifest["writer"] = self.info()
        self.manifest["status"] = status
        self.write_manifest()
        return self.manifest


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


# -- reading -------------------------------------------------------------------------------
def read_manifest(run_dir: str | Path) -> dict:
    path = Path(run_dir) / MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"{run_dir} is not a traceinfer run directory: no {MANIFEST}")
    return json.loads(path.read_text())


def iter_stream(run_dir: str | Path, name: str) -> Iterator[tuple]:
    """Rows of stream ``name`` as tuples in STREAMS[name] column order; nothing if the stream is absent.

    A torn or unreadable line (a crash mid-write) is skipped with a warning; columns missing from an
    older file are filled with None."""
    schema = STREAMS[name]
    path = Path(run_dir) / schema.file
    if not path.exists():
        return
    bad = 0
    with open(path, encoding="utf-8") as fh:
        header_line = fh.readline()
        try:
            columns = json.loads(header_line)["columns"]
        except (ValueError, KeyError, TypeError):
            warnings.warn(f"{path}: no header line; ignored the file")
            return
        index = [columns.index(c) if c in columns else None for c in schema.names]
        identity = index == list(range(len(schema.names))) and len(columns) == len(index)
        packed = [schema.names.index(c) for c in schema.packed]
        for line in fh:
            try:
                batch = json.loads(line)
            except ValueError:
                bad += 1
                continue
            for row in batch:
                row = tuple(row) if identity else tuple(None if i is None else row[i] for i in index)
                if packed and isinstance(row[packed[0]], list):
                    yield from _unpack(row, packed)
                else:
                    yield row
    if bad:
        warnings.warn(f"{path}: ignored {bad} unreadable line(s) (a run that was cut off mid-write)")


def _unpack(row: tuple, packed: list[int]) -> Iterator[tuple]:
    """One packed row -> one row per element of its packed columns."""
    out = list(row)
    for values in zip(*(row[i] for i in packed)):
        for i, v in zip(packed, values):
            out[i] = v
        yield tuple(out)


def read_stream(run_dir: str | Path, name: str) -> list[dict]:
    """Rows of stream ``name`` as dicts (column -> value)."""
    cols = STREAMS[name].names
    return [dict(zip(cols, row)) for row in iter_stream(run_dir, name)]
