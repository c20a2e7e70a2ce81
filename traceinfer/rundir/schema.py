"""What a run directory holds: its files and the column schema of every event stream, in one place.

Each column has a name, a type, a unit and a meaning. Types:

    int          64-bit signed integer (times are ``time.perf_counter_ns()`` of the engine's process)
    float        64-bit float
    bool         true / false
    str          text
    list<int>    a list of 64-bit integers, an element may be null (block hashes)
    list<list<int>>  a list of lists of integers (the tokens of each stored block)
    json         any JSON value (a snapshot's state); a JSON string in Parquet

Every column may be null: null means "absent" or "not measured", never zero. The same table is written
to docs/run-directory.md (``python scripts/run_directory_doc.py > docs/run-directory.md``; a test checks
that the two agree). Standard library only: readers import this without pandas, pyarrow or torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

FORMAT = "traceinfer-run"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
TRACE = "trace.json"
MEMORY_SNAPSHOT = "memory_snapshot.pickle"
TORCH_TRACE = "torch_trace.json.gz"  # probe 'torch_profiler': its Chrome trace (traceinfer.ingest.kineto reads it)
PYSPY_TRACE = "pyspy.json"  # py-spy samples as a Chrome trace (probe pyspy)
PYSPY_LOG = "pyspy.log"  # what py-spy printed
NSYS_REP = "nsys.nsys-rep"  # profile --nsys: Nsight Systems' capture of the run
NSYS_SQLITE = "nsys.sqlite"  # ... exported to SQLite (traceinfer.ingest.nsys reads it)
NSYS_STATS = "nsys_stats.json"  # ... its tables (traceinfer.analysis.gpu_trace.summary), for the report

ColumnType = Literal["int", "float", "bool", "str", "list<int>", "list<list<int>>", "json"]


@dataclass(frozen=True)
class Column:
    name: str
    type: ColumnType
    unit: str  # "ns", "bytes", "count", "%", ... ; "" where none applies
    meaning: str


@dataclass(frozen=True)
class StreamSchema:
    """One event stream: its files and its columns, in the order rows are written."""

    name: str
    doc: str
    columns: tuple[Column, ...]
    # columns that may hold a list: such a packed row is one event per element (the other columns shared),
    # so a probe writes one row per step instead of one per token; readers expand it
    packed: tuple[str, ...] = ()

    @property
    def file(self) -> str:
        """The JSON Lines journal, written as the run goes."""
        return f"{self.name}.jsonl"

    @property
    def parquet_file(self) -> str:
        """The typed columnar copy, written when the run closes."""
        return f"{self.name}.parquet"

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    def column(self, name: str) -> Column:
        return next(c for c in self.columns if c.name == name)


def _cols(*specs: tuple[str, str, str, str]) -> tuple[Column, ...]:
    return tuple(Column(*s) for s in specs)


STAGES = ("schedule", "prepare", "forward", "sample", "postprocess")
#: where the engine thread can be at any instant: a stage, the probes' handover, the rest of a step, or idle
PHASES = (*STAGES, "handover", "other", "between steps")
_T = ("t_ns", "int", "ns", "perf_counter_ns")
_STEP = ("step", "int", "", "engine step")

_STAGE_NOTES = {
    "forward": " (the model and the sampler; on CUDA their launch)",
    "sample": " (waiting for sampled tokens to reach the host; with async scheduling, the last step's)",
    "postprocess": " (the tokens put in place, the launched step's sequences moved on)",
}
_STEP_STAGES = tuple(
    spec
    for stage in STAGES
    for spec in (
        (f"{stage}_start_ns", "int", "ns", f"{stage} begin, perf_counter_ns (null when the step had no {stage})"),
        (f"{stage}_ns", "int", "ns", f"host time in {stage}" + _STAGE_NOTES.get(stage, "")),
    )
)

#: Every event stream a probe can write, with its column schema. Rows are written in this column order.
STREAMS: dict[str, StreamSchema] = {
    s.name: s
    for s in (
        StreamSchema(
            "steps",
            "one row per engine step (probe 'steps')",
            _cols(
                ("step", "int", "", "engine step index"),
                ("t_ns", "int", "ns", "step begin, perf_counter_ns"),
                ("dur_ns", "int", "ns", "host time of the whole step"),
                *_STEP_STAGES,
                ("other_ns", "int", "ns", "host time of the step outside the five stages"),
                ("handover_start_ns", "int", "ns", "once the forward is launched, the engine hands the step's events "
                 "to the probes and they do their per-step work (hook point 'handover'): its begin, perf_counter_ns"),
                ("handover_ns", "int", "ns", "host time of that handover (part of other_ns; hidden behind the GPU "
                 "while shorter than gpu_forward_ns)"),
                ("gpu_forward_ns", "int", "ns", "GPU time of the forward and the sampler from CUDA events (null "
                 "without CUDA)"),
                ("gpu_gap_ns", "int", "ns", "GPU idle between the previous forward's end and this one's start "
                 "(null without CUDA)"),
                ("cuda_graph", "bool", "", "forward replayed a CUDA graph (false: eager; null: no forward)"),
                ("num_seqs", "int", "count", "sequences scheduled"),
                ("num_prefill_seqs", "int", "count", "of those, prefill chunks"),
                ("num_decode_seqs", "int", "count", "of those, decodes"),
                ("num_batched_tokens", "int", "tokens", "query tokens in the batch"),
                ("num_prefill_tokens", "int", "tokens", "prefill query tokens"),
                ("num_decode_tokens", "int", "tokens", "decode query tokens"),
                ("num_cached_tokens", "int", "tokens", "prompt tokens served from the prefix cache this step"),
                ("token_budget", "int", "tokens", "max_num_batched_tokens"),
                ("num_waiting", "int", "count", "waiting queue length after scheduling"),
                ("num_running", "int", "count", "running queue length after scheduling"),
                ("num_preempted", "int", "count", "requests preempted while scheduling"),
                ("num_free_blocks", "int", "blocks", "free KV blocks after scheduling"),
                ("num_outputs", "int", "count", "request outputs the step returned"),
            ),
        ),
        StreamSchema(
            "requests",
            "request lifecycle events (probe 'requests'); tokens are in the 'tokens' stream",
            _cols(
                _T,
                ("step", "int", "", "engine step the event fell in (the last started step when between steps)"),
                ("request_id", "str", "", "request id"),
                ("event", "str", "", "arrival | scheduled | preempted | finished"),
                ("prompt_len", "int", "tokens", "arrival: prompt tokens"),
                ("max_tokens", "int", "tokens", "arrival: the request's max_tokens"),
                ("cached_tokens", "int", "tokens", "scheduled: prompt tokens served from the prefix cache"),
                ("reason", "str", "", "finished: length | stop | eos | aborted | error"),
                ("num_output_tokens", "int", "tokens", "finished: output tokens"),
                ("num_computed_tokens", "int", "tokens",
                 "preempted: computed tokens whose KV was dropped (recomputed later)"),
                ("error", "str", "", "finished with an error: the message"),
            ),
        ),
        StreamSchema(
            "tokens",
            "every output token (probe 'requests')",
            _cols(
                ("t_ns", "int", "ns", "host time the token was produced, perf_counter_ns"),
                _STEP,
                ("request_id", "str", "", "request id"),
                ("index", "int", "", "output position, from 0"),
                ("token_id", "int", "", "token id"),
            ),
            packed=("request_id", "index", "token_id"),
        ),
        StreamSchema(
            "kv_events",
            "every KV block operation (probe 'kv'); vllm_event names the matching vLLM KV event",
            _cols(
                _T,
                ("step", "int", "", "engine step of the op (the last started one when between steps)"),
                ("op", "str", "", "snapshot | allocate | append | hit | stored | free | preempt | evict | reset"),
                ("vllm_event", "str", "", "BlockStored | BlockRemoved | AllBlocksCleared, or null where vLLM has none"),
                ("request_id", "str", "", "request id (null for evict, reset, snapshot)"),
                ("block_ids", "list<int>", "", "physical block ids of the op (free/preempt: in release order)"),
                ("block_hashes", "list<int>", "", "prefix-cache hash of each block (null: not cached)"),
                ("parent_block_hashes", "list<int>", "", "stored: hash of each block's parent (null at the chain root)"),
                ("ref_counts", "list<int>", "count", "reference count of each block after the op"),
                ("token_ids", "list<list<int>>", "", "stored: the tokens of each block"),
                ("num_free", "int", "blocks", "free blocks after the op (includes cached evictable ones)"),
                ("num_used", "int", "blocks", "blocks held by requests after the op"),
                ("num_cached", "int", "blocks", "blocks in the prefix cache after the op"),
                ("state", "json", "", "snapshot only: {num_blocks, block_size, enable_prefix_caching, free_runs: "
                 "[[first block id, count], ...] in free-queue order, blocks: [[id, ref_count, hash, parent_hash, "
                 "token_ids], ...] of the blocks holding a reference or a hash}"),
            ),
            # one packed row per handover (once per step, during the forward): the ops since the last one
            packed=("t_ns", "step", "op", "vllm_event", "request_id", "block_ids", "block_hashes",
                    "parent_block_hashes", "ref_counts", "token_ids", "num_free", "num_used", "num_cached"),
        ),  # fmt: skip
        StreamSchema(
            "gc",
            "garbage collections from gc.callbacks (probe 'gc')",
            _cols(
                ("t_ns", "int", "ns", "collection start, perf_counter_ns"),
                ("dur_ns", "int", "ns", "pause"),
                ("generation", "int", "", "0, 1 or 2"),
                ("collected", "int", "objects", "objects collected"),
                ("uncollectable", "int", "objects", "uncollectable objects found"),
                ("step", "int", "", "engine step it landed in (the last started one when between steps)"),
                ("in_step", "bool", "", "true when it ran inside a step"),
                ("thread", "str", "", "name of the thread that triggered it"),
            ),
        ),
        StreamSchema(
            "thread_samples",
            "a stack sample of every thread (probe 'threads'; sys._current_frames)",
            _cols(
                _T,
                _STEP,
                ("thread_id", "int", "", "threading ident"),
                ("native_id", "int", "", "OS thread id"),
                ("thread_name", "str", "", "thread name"),
                ("cpu_ns", "int", "ns", "thread CPU time so far (null where the OS gives none)"),
                ("stack", "str", "", "folded stack, root first: 'module.py:func;module.py:func'"),
            ),
        ),
        StreamSchema(
            "host_samples",
            "this process, from psutil (probe 'samplers')",
            _cols(
                _T,
                _STEP,
                ("cpu_percent", "float", "%", "process CPU since the previous sample (100 = one core)"),
                ("rss_bytes", "int", "bytes", "resident set size"),
                ("num_threads", "int", "count", "OS threads"),
                ("ctx_switches_voluntary", "int", "count", "cumulative"),
                ("ctx_switches_involuntary", "int", "count", "cumulative"),
                ("cpu_user_s", "float", "s", "cumulative user CPU seconds"),
                ("cpu_system_s", "float", "s", "cumulative system CPU seconds"),
            ),
        ),
        StreamSchema(
            "gpu_samples",
            "the engine's GPU, from NVML (probe 'samplers'); null where the GPU does not report a field",
            _cols(
                _T,
                _STEP,
                ("gpu_util_pct", "float", "%", "GPU utilization"),
                ("mem_util_pct", "float", "%", "memory controller utilization"),
                ("mem_used_bytes", "int", "bytes", "device memory used"),
                ("power_w", "float", "W", "power draw"),
                ("sm_clock_mhz", "float", "MHz", "SM clock"),
                ("mem_clock_mhz", "float", "MHz", "memory clock"),
                ("temperature_c", "float", "C", "GPU temperature"),
                ("pcie_rx_bytes_s", "float", "bytes/s", "PCIe receive rate (read at most twice a second, else null)"),
                ("pcie_tx_bytes_s", "float", "bytes/s", "PCIe transmit rate (read at most twice a second, else null)"),
            ),
        ),
        StreamSchema(
            "cuda_memory",
            "torch CUDA caching allocator once per step that launches a forward, read then (probe 'cuda_memory')",
            _cols(
                _T,
                _STEP,
                ("allocated_bytes", "int", "bytes", "in tensors"),
                ("reserved_bytes", "int", "bytes", "held by the caching allocator"),
                ("active_bytes", "int", "bytes", "in active blocks"),
                ("inactive_split_bytes", "int", "bytes", "free pieces of split blocks"),
                ("fragmentation", "float", "fraction", "1 - allocated / reserved (null when nothing is reserved)"),
                ("peak_allocated_bytes", "int", "bytes", "peak allocated since the run began"),
                ("num_alloc_retries", "int", "count", "cudaMalloc retries after freeing the cache (cumulative)"),
                ("num_ooms", "int", "count", "out-of-memory errors (cumulative)"),
            ),
        ),
    )
}


def stream(name: str) -> StreamSchema:
    """The schema of stream ``name``; a KeyError naming the known streams otherwise."""
    try:
        return STREAMS[name]
    except KeyError:
        raise KeyError(f"unknown stream {name!r}; streams: {', '.join(STREAMS)}") from None


def markdown() -> str:
    """The run directory's layout and every stream's schema as markdown (docs/run-directory.md)."""
    lines = [
        "# The run directory",
        "",
        "Generated from `traceinfer/rundir/schema.py` by `python scripts/run_directory_doc.py`; do not edit by hand.",
        "",
        "| file | what |",
        "| --- | --- |",
        f"| `{MANIFEST}` | what ran and how: command, config, packages, device, git commit, clock, timing, probes "
        "and their measured cost, streams, status (`running` until closed, then `completed`, `interrupted` "
        "or `failed`) |",
        "| `<stream>.jsonl` | the journal of one stream, appended as the run goes (a header line, then JSON arrays "
        "of rows in column order; a packed row holds one event per element of its packed columns) |",
        "| `<stream>.parquet` | the same stream as typed columns, one row per event, written when the run closes |",
        f"| `{TRACE}` | a Chrome / Perfetto trace of the streams |",
        f"| `{PYSPY_TRACE}`, `{PYSPY_LOG}` | py-spy's samples as a Chrome trace, and what it printed (probe pyspy, "
        "`--pyspy`) |",
        f"| `{TORCH_TRACE}` | a torch.profiler (Kineto) trace with a range per engine stage (probe torch_profiler) |",
        f"| `{NSYS_REP}`, `{NSYS_SQLITE}`, `{NSYS_STATS}` | `profile --nsys`: Nsight Systems' capture, its SQLite "
        "export, and the tables read from it (nsys's nvtx_sum, nvtx_gpu_proj_sum, cuda_gpu_kern_sum; the GPU's idle "
        "gaps by host phase); `traceinfer nsys-stats RUN` prints them |",
        "| `flamegraphs/` | flame graphs (`cpu.svg`, `cpu.<phase>.svg`, `threads.svg`, `gpu.svg`, `memory.svg`, ...) "
        "written by `profile` and `traceinfer flamegraph` |",
        f"| `{MEMORY_SNAPSHOT}` | optional `torch.cuda.memory` snapshot (https://pytorch.org/memory_viz) |",
        "| `report.md`, `report.html`, `report.json` | the performance report, written by `profile` and `traceinfer "
        "report` (`report.<topic>.md`: a deep dive; `diff.md`: `traceinfer diff` against another run) |",
        "",
        "Read a run with `traceinfer.open_run(path)`: `.manifest`, `.streams`, `.frame(name)` (a pandas "
        "DataFrame, one row per event, from the Parquet file when the run closed, else from the journal). "
        "Every column may be null: null means absent or not measured, never zero. Times (`_ns`) are "
        "`time.perf_counter_ns()` of the engine's process; the manifest's `clock` pairs `t0_ns` with Unix time.",
        "",
        "Types: int (64-bit), float (64-bit), bool, str, list<int>, list<list<int>>, json (a JSON string in Parquet).",
    ]
    for s in STREAMS.values():
        lines += ["", f"## {s.name}", "", s.doc + ".", ""]
        if s.packed:
            lines += [f"Packed in the journal: {', '.join(s.packed)}.", ""]
        lines += ["| column | type | unit | meaning |", "| --- | --- | --- | --- |"]
        lines += [f"| `{c.name}` | {c.type} | {c.unit} | {c.meaning} |" for c in s.columns]
    return "\n".join(lines) + "\n"
