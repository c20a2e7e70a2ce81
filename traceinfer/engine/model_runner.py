"""Runs one scheduled step: flatten it into tensors, run the model over the paged KV cache, sample.

On CUDA, decode-only steps replay a CUDA graph captured at a padded batch size (1, 2, 4, 8, then
steps of 16 up to max_num_seqs); mixed prefill+decode steps run eager. Graph inputs live in static
buffers; padding rows have slot -1 (nothing stored) and sequence length 0 (nothing read).

``execute`` launches a step and returns at once with a ``Launched``: the sampled tokens stay on the
device, and their copy to the host lands later (``wait_tokens``). The engine can therefore schedule
and launch the next step before this one's tokens are known (async scheduling): an input token the
host does not know yet is a placeholder ``-(row + 1)`` in ``Sequence.token_ids``, and the next step's
inputs take row ``row`` of the launched step's device tokens in its place (``fill_placeholders``).
"""

from __future__ import annotations

import bisect
import itertools
from dataclasses import dataclass, field

import numpy as np
import torch

from traceinfer.engine.attention import AttentionMetadata
from traceinfer.engine.device import to_device
from traceinfer.engine.hooks import Hooks
from traceinfer.engine.models import CausalLM
from traceinfer.engine.piecewise import PiecewiseForward, piecewise_sizes
from traceinfer.engine.sampler import draw_seed, sample
from traceinfer.engine.sampling_params import SamplingParams
from traceinfer.engine.scheduler import ScheduledSeq, SchedulerOutput
from traceinfer.engine.sequence import Sequence
from traceinfer.errors import ConfigError

# Decode rows start their attention longest context first. The decode kernel's programs start in grid order
# and a wave ends when its longest program does; listing the longest first lets the short ones fill the tail.
# On the H200, the bench's decode steps rebuilt from its lengths (scripts/decode_splits.py --bench-steps,
# 2026-12-01): 3.726 s of decode kernel in row order, 3.519 s longest first (92.1% -> 97.5% of 4.2 TB/s).
# The default of each runner's ``decode_longest_first``, read when the runner is built.
DECODE_LONGEST_FIRST = True


@dataclass
class RunnerStats:
    """Which steps replayed a graph (the probes report graph coverage from these)."""

    graph_steps: int = 0
    eager_decode_steps: int = 0  # decode-only steps that could not use a graph
    piecewise_steps: int = 0  # eager steps that replayed piecewise graphs (engine/piecewise)
    graph_replays: dict[int, int] = field(default_factory=dict)  # graph batch size -> replays


@dataclass
class Launched:
    """A step whose forward and sampling are launched: what the engine needs to finish it later."""

    step: int
    scheduled: list[ScheduledSeq]
    seqs: list[Sequence]  # the sequences that sample this step, in the rows of ``tokens``
    tokens: torch.Tensor | None  # [R] int64 on the device: the next step's placeholders read it
    host: torch.Tensor | None  # [R] int64 on the host (pinned on CUDA), valid once ``ready`` has passed
    ready: torch.cuda.Event | None  # recorded after the copy to ``host``; None on CPU (already valid)
    positions: list[int] = field(default_factory=list)  # index of each row's token in its seq.token_ids
    retired: set[str] = field(default_factory=set)  # request ids taken out of the scheduler at launch


def fill_placeholders(input_ids: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """input_ids [T] int64 where a placeholder -(row + 1) stands for ``tokens[row]`` -> the real ids."""
    rows = (-1 - input_ids).clamp_(min=0)  # a real id maps to row 0, which the where() drops
    return torch.where(input_ids < 0, tokens[rows], input_ids)


def block_table_array(tables: list[list[int]], width: int) -> np.ndarray:
    """Block tables as one [B, width] int32 array padded with 0 (4x faster than torch.tensor on nested lists)."""
    out = np.zeros((len(tables), width), dtype=np.int32)
    for i, table in enumerate(tables):
        out[i, : len(table)] = table
    return out


def host_memory_available() -> int:
    """Bytes the host can hand out without swapping (psutil's ``available``)."""
    import psutil

    return psutil.virtual_memory().available


def fitting_graph(sizes: list[int], batch: int) -> int | None:
    """The smallest of the captured graph sizes (ascending) that holds ``batch`` rows, or None."""
    i = bisect.bisect_left(sizes, batch)
    return sizes[i] if i < len(sizes) else None


def decode_order(seq_lens: np.ndarray) -> np.ndarray:
    """The decode rows longest context first (ties in row order): the order their attention programs start."""
    return np.argsort(-seq_lens, kind="stable")


def graph_batch_sizes(max_num_seqs: int) -> list[int]:
    sizes = [b for b in (1, 2, 4, 8) if b <= max_num_seqs] + list(range(16, max_num_seqs + 1, 16))
    if sizes[-1] < max_num_seqs:
        sizes.append(max_num_seqs)
    return sizes


class ModelRunner:
    def __init__(
        self,
        model: CausalLM,
        device: torch.device,
        dtype: torch.dtype,
        hooks: Hooks,
        block_size: int,
        max_model_len: int,
        max_num_seqs: int,
        max_num_batched_tokens: int,
        num_kv_blocks: int | None = None,
        cpu_kv_cache_gib: float = 1.0,
        gpu_memory_utilization: float = 0.9,
        use_cuda_graphs: bool = False,
        piecewise_graphs: bool = False,  # eager steps through engine/piecewise too (needs use_cuda_graphs)
        seed: int = 0,
    ) -> None:
        self.model = model
        self.device = device
        self.dtype = dtype
        self.hooks = hooks
        self.block_size = block_size
        self.max_model_len = max_model_len
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.stats = RunnerStats()
        self.decode_longest_first = DECODE_LONGEST_FIRST
        self._rng = torch.Generator().manual_seed(seed)  # the seeds of unseeded requests' sampling
        # sampled tokens come back through two pinned buffers in turn: at most two steps are in flight
        self._host_tokens = (
            [torch.empty(max_num_seqs, dtype=torch.int64).pin_memory() for _ in range(2)] if device.type == "cuda" else []
        )
        self._next_host = 0
        if num_kv_blocks is not None:
            self._check_kv_cache_fits(num_kv_blocks, f"engine.num_kv_blocks={num_kv_blocks}")
        elif device.type == "cuda":
            num_kv_blocks = self._blocks_from_gpu_memory(gpu_memory_utilization)
        else:
            num_kv_blocks = max(1, int(cpu_kv_cache_gib * 2**30) // self.kv_bytes_per_block())
            self._check_kv_cache_fits(num_kv_blocks, f"engine.cpu_kv_cache_gib={cpu_kv_cache_gib:g}")
        self.num_blocks = num_kv_blocks
        self.kv_cache = self._allocate_kv_cache(num_kv_blocks)
        self._bind_kv_cache(self.kv_cache)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.graph_sizes: list[int] = []  # the keys of graphs, ascending
        self.piecewise: dict[int, PiecewiseForward] = {}  # padded token count -> its pieces
        self.piecewise_sizes: list[int] = []  # the keys of piecewise, ascending
        if use_cuda_graphs and device.type == "cuda":
            self.capture_cuda_graphs()
            if piecewise_graphs:
                self.capture_piecewise_graphs()

    def kernel_choices(self) -> dict:
        """What this runner and its model were built to run (a run's manifest and the bench record it)."""
        cuda = self.device.type == "cuda"
        return {
            "fuse_kv_store": cuda and self.model.model.layers[0].self_attn.fuse_kv_store,
            "splitk": cuda and any(getattr(m, "splitk", False) for m in self.model.modules()),
            "decode_longest_first": self.decode_longest_first,
            "cuda_graph_batch_sizes": list(self.graph_sizes),
            "piecewise_graph_tokens": list(self.piecewise_sizes),
        }

    # -- KV cache --------------------------------------------------------------------------
    def kv_bytes_per_block(self) -> int:
        attn = self.model.model.layers[0].self_attn
        elem = torch.tensor([], dtype=self.dtype).element_size()
        return 2 * len(self.model.model.layers) * self.block_size * attn.num_kv_heads * attn.head_dim * elem

    def _check_kv_cache_fits(self, num_blocks: int, asked_by: str) -> None:
        """A ConfigError before allocating a cache the device cannot hold (rather than the allocator's traceback).

        On CUDA the free memory counts the blocks torch's allocator holds unused (it frees them to retry)."""
        need = num_blocks * self.kv_bytes_per_block()
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            free += torch.cuda.memory_reserved(self.device) - torch.cuda.memory_allocated(self.device)
            has = f"{self.device} has {free / 2**30:.1f} GiB free"
        else:
            free = host_memory_available()
            has = f"this machine has {free / 2**30:.1f} GiB available"
        if need > free:
            raise ConfigError(f"{asked_by} asks for {need / 2**30:.1f} GiB of KV cache; {has}")

    def _allocate_kv_cache(self, num_blocks: int) -> torch.Tensor:
        attn = self.model.model.layers[0].self_attn
        shape = (2, len(self.model.model.layers), num_blocks, self.block_size, attn.num_kv_heads, attn.head_dim)
        # [2, layers, num_blocks, block_size, Hkv, D], one allocation; each layer gets views
        return torch.zeros(shape, dtype=self.dtype, device=self.device)

    def _bind_kv_cache(self, kv_cache: torch.Tensor) -> None:
        for i, layer in enumerate(self.model.model.layers):
            layer.self_attn.k_cache = kv_cache[0, i]
            layer.self_attn.v_cache = kv_cache[1, i]

    def _blocks_from_gpu_memory(self, utilization: float) -> int:
        """Size the cache after a warm-up forward of a full token budget, as vLLM does."""
        torch.cuda.synchronize(self.device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(self.device)
        lengths = self._warmup_lengths()
        warmup_blocks = sum(-(-n // self.block_size) for n in lengths)
        scratch = self._allocate_kv_cache(warmup_blocks)
        self._bind_kv_cache(scratch)
        self._warmup_forward(lengths)
        torch.cuda.synchronize(self.device)
        peak = torch.cuda.max_memory_allocated(self.device) - scratch.numel() * scratch.element_size()
        del scratch
        torch.cuda.empty_cache()
        free, total = torch.cuda.mem_get_info(self.device)
        non_torch = total - free - torch.cuda.memory_reserved(self.device)
        budget = int(total * utilization) - peak - non_torch
        per_block = self.kv_bytes_per_block()
        if budget < per_block * -(-self.max_model_len // self.block_size):
            raise ConfigError(
                f"out of memory sizing the KV cache: gpu_memory_utilization={utilization} of {total / 2**30:.1f} GiB "
                f"leaves {max(budget, 0) / 2**30:.2f} GiB after weights and activations ({peak / 2**30:.2f} GiB) and "
                f"other processes ({non_torch / 2**30:.2f} GiB); one max_model_len={self.max_model_len} sequence asks "
                f"for {per_block * -(-self.max_model_len // self.block_size) / 2**30:.2f} GiB"
            )
        return budget // per_block

    def _warmup_lengths(self) -> list[int]:
        """Sequences that fill the token budget, none longer than max_model_len, at most max_num_seqs."""
        total = min(self.max_num_batched_tokens, self.max_model_len * self.max_num_seqs)
        n = max(-(-total // self.max_model_len), min(self.max_num_seqs, total))
        base, extra = divmod(total, n)
        return [base + (i < extra) for i in range(n)]

    @torch.inference_mode()
    def _warmup_forward(self, lengths: list[int]) -> None:
        """One forward of dummy sequences (token 0) on consecutive blocks, through the normal input path."""
        seqs, offset = [], 0
        for i, n in enumerate(sorted(lengths)):  # ascending: any one-token sequences (decodes) come first
            seq = Sequence(f"warmup-{i}", [0] * n, SamplingParams(max_tokens=1))
            seq.block_table = list(range(offset, offset + -(-n // self.block_size)))
            offset += len(seq.block_table)
            seqs.append(ScheduledSeq(seq, n))
        out = SchedulerOutput(seqs, sum(1 for n in lengths if n == 1), sum(lengths))
        input_ids, positions, meta, rows, _ = self.prepare(out)
        hidden = self.model(input_ids, positions, meta)
        self.model.compute_logits(hidden[rows]).float()

    # -- inputs ----------------------------------------------------------------------------
    def prepare(self, out: SchedulerOutput) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata, list[int], bool]:
        """-> input_ids [T], positions [T], attention metadata, rows of the tokens to sample from, and
        whether an input is a placeholder (only a decode's can be: a prefill chunk's tokens are known).

        Per sequence in Python, per token in numpy: built token by token in Python lists, an 8192-token
        prefill step took 2.8 ms of host time, 0.35 ms this way (scripts/prepare_cost.py, CPU)."""
        bs, scheduled = self.block_size, out.scheduled
        n = len(scheduled)
        starts = np.fromiter((s.seq.num_computed_tokens for s in scheduled), np.int64, n)
        counts = np.fromiter((s.num_new_tokens for s in scheduled), np.int64, n)
        ends = starts + counts
        query_start_loc = np.zeros(n + 1, np.int64)
        np.cumsum(counts, out=query_start_loc[1:])
        tables = [s.seq.block_table for s in scheduled]
        block_tables = block_table_array(tables, max(map(len, tables)))
        # token t of sequence i sits at position starts[i] + (t - query_start_loc[i])
        row = np.repeat(np.arange(n), counts)
        positions = np.arange(query_start_loc[-1]) + np.repeat(starts - query_start_loc[:-1], counts)
        slots = block_tables[row, positions // bs].astype(np.int64) * bs + positions % bs
        input_ids = np.fromiter(
            itertools.chain.from_iterable(s.seq.token_ids[a:b] for s, a, b in zip(scheduled, starts.tolist(), ends.tolist())),
            np.int64, int(query_start_loc[-1]),
        )  # fmt: skip
        seq_lens = ends.tolist()
        qsl = query_start_loc.tolist()
        sample_rows = [qsl[i + 1] - 1 for i, s in enumerate(scheduled) if s.samples]
        nd = out.num_decode_seqs
        order = decode_order(ends[:nd]) if self.decode_longest_first and nd > 1 else None
        meta = AttentionMetadata(
            slot_mapping=self._to_device(slots, torch.int64),
            query_start_loc=self._to_device(query_start_loc, torch.int32),
            seq_lens=self._to_device(ends, torch.int32),
            block_tables=self._to_device(block_tables, torch.int32),
            num_decode_seqs=nd,
            max_query_len=int(counts.max()),
            max_seq_len=max(seq_lens),
            query_start_loc_cpu=qsl,
            seq_lens_cpu=seq_lens,
            decode_order=None if order is None else self._to_device(order, torch.int64),
        )
        placeholders = nd > 0 and int(input_ids[:nd].min()) < 0  # decodes come first
        return self._to_device(input_ids, torch.int64), self._to_device(positions, torch.int64), meta, sample_rows, placeholders

    def _to_device(self, values, dtype: torch.dtype) -> torch.Tensor:
        return to_device(values, dtype, self.device)

    # -- CUDA graphs -----------------------------------------------------------------------
    @torch.inference_mode()
    def capture_cuda_graphs(self) -> None:
        max_bs = graph_batch_sizes(self.max_num_seqs)[-1]
        width = -(-self.max_model_len // self.block_size)
        dev = self.device
        hidden_size = self.model.config.hidden_size
        self.g_input_ids = torch.zeros(max_bs, dtype=torch.int64, device=dev)
        self.g_positions = torch.zeros(max_bs, dtype=torch.int64, device=dev)
        self.g_slots = torch.full((max_bs,), -1, dtype=torch.int64, device=dev)
        self.g_seq_lens = torch.zeros(max_bs, dtype=torch.int32, device=dev)
        self.g_order = torch.arange(max_bs, dtype=torch.int64, device=dev)
        self.g_tables = torch.zeros(max_bs, width, dtype=torch.int32, device=dev)
        self.g_qsl = torch.arange(max_bs + 1, dtype=torch.int32, device=dev)
        self.g_hidden = torch.zeros(max_bs, hidden_size, dtype=self.dtype, device=dev)
        # pinned host mirrors of these inputs, one row each, filled in place each step and copied in one go
        self._g_staged = (self.g_input_ids, self.g_positions, self.g_slots, self.g_seq_lens, self.g_order)
        self.h_inputs = torch.zeros(len(self._g_staged), max_bs, dtype=torch.int64).pin_memory()
        self.h_tables = torch.zeros(max_bs, width, dtype=torch.int32).pin_memory()
        self._h_inputs_np = self.h_inputs.numpy()
        self._h_tables_np = self.h_tables.numpy()
        self._h_rows: list[int] = []  # block_table_version of the table each staging row holds
        self._h_copied = torch.cuda.Event()  # recorded after each copy out of the staging buffers
        pool = None
        for b in reversed(graph_batch_sizes(self.max_num_seqs)):
            meta = self._graph_meta(b)
            self.model(self.g_input_ids[:b], self.g_positions[:b], meta)  # warm-up (Triton autotune, lazy init)
            torch.cuda.synchronize(dev)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self.g_hidden[:b] = self.model(self.g_input_ids[:b], self.g_positions[:b], meta)
            pool = graph.pool() if pool is None else pool
            self.graphs[b] = graph
        self.graph_sizes = sorted(self.graphs)
        torch.cuda.synchronize(dev)

    @torch.inference_mode()
    def capture_piecewise_graphs(self) -> None:
        """Piecewise graphs of the eager forward at each of piecewise_sizes, largest first, in one pool."""
        pool = None
        for t in reversed(piecewise_sizes(self.max_num_batched_tokens)):
            self.piecewise[t] = forward = PiecewiseForward(self.model, t, pool)
            pool = forward.pool
        self.piecewise_sizes = sorted(self.piecewise)
        torch.cuda.synchronize(self.device)

    def _graph_meta(self, b: int) -> AttentionMetadata:
        return AttentionMetadata(
            slot_mapping=self.g_slots[:b],
            query_start_loc=self.g_qsl[: b + 1],
            seq_lens=self.g_seq_lens[:b],
            block_tables=self.g_tables[:b],
            num_decode_seqs=b,
            max_query_len=1,
            max_seq_len=self.max_model_len,
            query_start_loc_cpu=list(range(b + 1)),
            seq_lens_cpu=[],  # host copies do not exist under a graph: backends must not loop on them
            decode_order=self.g_order[:b] if self.decode_longest_first else None,
        )

    def _graph_size(self, out: SchedulerOutput) -> int | None:
        if not self.graphs or out.num_decode_seqs != len(out.scheduled):
            return None
        return fitting_graph(self.graph_sizes, len(out.scheduled))

    def _fill_graph_inputs(self, out: SchedulerOutput, b: int) -> tuple[list[int] | None, bool]:
        """Copy a decode-only batch into the static buffers of the graph of size b.

        -> (rows to sample, or None when every row samples; whether an input is a placeholder). Block-table
        rows are rewritten only where the table in that row changed since the last step (block_table_version
        is unique per change).
        """
        bs = self.block_size
        n = len(out.scheduled)
        self._h_copied.synchronize()  # with a step in flight, its copy out of the buffers may not have run yet
        inputs, tables, held = self._h_inputs_np, self._h_tables_np, self._h_rows
        ids, pos, slots, lens = [], [], [], []
        rows: list[int] | None = None
        width = 0
        for i, s in enumerate(out.scheduled):
            seq = s.seq
            p = seq.num_computed_tokens
            table = seq.block_table
            ids.append(seq.token_ids[p])
            pos.append(p)
            slots.append(table[p // bs] * bs + p % bs)
            lens.append(p + 1)
            key = seq.block_table_version
            if i >= len(held):
                held.append(key)
                tables[i, : len(table)] = table
            elif held[i] != key:
                held[i] = key
                tables[i, : len(table)] = table
            width = max(width, len(table))
            if not s.samples:
                rows = rows if rows is not None else list(range(i))
            elif rows is not None:
                rows.append(i)
        inputs[0, :n], inputs[1, :n], inputs[2, :n], inputs[3, :n] = ids, pos, slots, lens
        inputs[:, n:b] = 0
        inputs[2, n:b] = -1  # padding rows store nothing and read nothing (seq_len 0)
        if self.decode_longest_first:
            inputs[4, :b] = decode_order(inputs[3, :b])  # padding rows (seq_len 0) last
        staged = self.h_inputs.to(self.device, non_blocking=True)  # 10 KB, one copy; b columns used
        for row, buffer in zip(staged, self._g_staged):
            buffer[:b].copy_(row[:b])
        self.g_tables[:n, :width].copy_(self.h_tables[:n, :width], non_blocking=True)
        self._h_copied.record()
        return rows, min(ids) < 0

    # -- one step --------------------------------------------------------------------------
    @torch.inference_mode()
    def forward_logits(
        self, out: SchedulerOutput, all_rows: bool = False, prev_tokens: torch.Tensor | None = None, then=None
    ):
        """Logits of the sampling rows (or of every row): [R, V] in the model's dtype, or what ``then(logits)``
        returns, launched inside the forward span. ``prev_tokens``: the device tokens that the placeholders
        among the inputs stand for (the last launched step's)."""
        hooks = self.hooks
        graph_size = None if all_rows else self._graph_size(out)
        decode_only = out.num_decode_seqs == len(out.scheduled)
        if graph_size is not None:
            self.stats.graph_steps += 1
            self.stats.graph_replays[graph_size] = self.stats.graph_replays.get(graph_size, 0) + 1
            with hooks.prepare.span(num_seqs=len(out.scheduled), num_tokens=out.num_batched_tokens):
                rows, placeholders = self._fill_graph_inputs(out, graph_size)
                if placeholders:
                    ids = self.g_input_ids[:graph_size]
                    ids.copy_(fill_placeholders(ids, self._placeholder_source(prev_tokens)))
            with hooks.forward.span(num_tokens=len(out.scheduled), num_decode_seqs=out.num_decode_seqs, cuda_graph=True):
                self.graphs[graph_size].replay()
                hidden = self.g_hidden[: len(out.scheduled)]
                if rows is not None:  # a one-token prefill chunk that does not sample sits in the batch
                    hidden = hidden[self._to_device(rows, torch.int64)]
                logits = self.model.compute_logits(hidden)
                return logits if then is None else then(logits)
        if decode_only:
            self.stats.eager_decode_steps += 1
        with hooks.prepare.span(num_seqs=len(out.scheduled), num_tokens=out.num_batched_tokens):
            input_ids, positions, meta, rows, placeholders = self.prepare(out)
            if placeholders:
                input_ids = fill_placeholders(input_ids, self._placeholder_source(prev_tokens))
        pieces = self.piecewise.get(fitting_graph(self.piecewise_sizes, len(input_ids))) if self.piecewise else None
        with hooks.forward.span(num_tokens=len(input_ids), num_decode_seqs=out.num_decode_seqs, cuda_graph=False):
            if pieces is not None:
                self.stats.piecewise_steps += 1
                hidden = pieces.run(input_ids, positions, meta)
            else:
                hidden = self.model(input_ids, positions, meta)
            if not all_rows:
                # rows through pinned memory: indexing with the list itself copies it from pageable memory,
                # which waits for the whole forward (mixed steps' host time was their GPU time on the H200)
                hidden = hidden[self._to_device(rows, torch.int64)]
            logits = self.model.compute_logits(hidden)
            return logits if then is None else then(logits)

    @staticmethod
    def _placeholder_source(prev_tokens: torch.Tensor | None) -> torch.Tensor:
        if prev_tokens is None:
            raise RuntimeError("an input token is a placeholder but no launched step's tokens were given")
        return prev_tokens

    @torch.inference_mode()
    def execute(self, out: SchedulerOutput, step: int, prev: Launched | None = None) -> Launched:
        """Launch the step's forward and sampling; returns without waiting for the device.

        ``prev`` is the step launched before, whose tokens are still on their way to the host: inputs
        that are its placeholders read them on the device. The sampler runs inside the forward span."""
        scheduled = out.scheduled
        sampling = [s.seq for s in scheduled if s.samples]
        if not sampling:
            self.forward_logits(out, prev_tokens=prev.tokens if prev else None)
            return Launched(step, scheduled, [], None, None, None)
        params = [q.params for q in sampling]
        base = draw_seed(self._rng)  # unseeded rows: one draw a step, a stream per row
        seeds = [draw_seed(q.generator) if q.generator is not None else base + i for i, q in enumerate(sampling)]

        def launch_sampler(logits: torch.Tensor) -> torch.Tensor:
            return sample(logits, params, seeds)

        tokens = self.forward_logits(out, prev_tokens=prev.tokens if prev else None, then=launch_sampler)
        if self.device.type != "cuda":
            return Launched(step, scheduled, sampling, tokens, tokens, None)
        host = self._host_tokens[self._next_host][: len(sampling)]
        self._next_host ^= 1
        host.copy_(tokens, non_blocking=True)
        ready = torch.cuda.Event()
        ready.record()
        return Launched(step, scheduled, sampling, tokens, host, ready)

    def wait_tokens(self, launched: Launched) -> list[int]:
        """The launched step's sampled tokens on the host: waits for the device to finish that step."""
        with self.hooks.sample.span(num_seqs=len(launched.seqs)):
            if launched.ready is not None:
                launched.ready.synchronize()
            return launched.host.tolist() if launched.host is not None else []
