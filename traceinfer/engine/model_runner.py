"""Runs one scheduled step: flatten it into tensors, run the model over the paged KV cache, sample.

On CUDA, decode-only steps replay a CUDA graph captured at a padded batch size (1, 2, 4, 8, then
steps of 16 up to max_num_seqs); mixed prefill+decode steps run eager. Graph inputs live in static
buffers; padding rows have slot -1 (nothing stored) and sequence length 0 (nothing read).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from traceinfer.engine.attention import AttentionMetadata
from traceinfer.engine.hooks import Hooks
from traceinfer.engine.models import CausalLM
from traceinfer.engine.sampler import sample
from traceinfer.engine.sampling_params import SamplingParams
from traceinfer.engine.scheduler import ScheduledSeq, SchedulerOutput
from traceinfer.engine.sequence import Sequence
from traceinfer.errors import ConfigError


@dataclass
class RunnerStats:
    """Which steps replayed a graph (the probes report graph coverage from these)."""

    graph_steps: int = 0
    eager_decode_steps: int = 0  # decode-only steps that could not use a graph


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
        if use_cuda_graphs and device.type == "cuda":
            self.capture_cuda_graphs()

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
        input_ids, positions, meta, rows = self.prepare(out)
        hidden = self.model(input_ids, positions, meta)
        self.model.compute_logits(hidden[rows]).float()

    # -- inputs ----------------------------------------------------------------------------
    def prepare(self, out: SchedulerOutput) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata, list[int]]:
        """-> input_ids [T], positions [T], attention metadata, rows of the tokens to sample from."""
        bs = self.block_size
        input_ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        query_start_loc = [0]
        seq_lens: list[int] = []
        sample_rows: list[int] = []
        for s in out.scheduled:
            seq, start = s.seq, s.seq.num_computed_tokens
            end = start + s.num_new_tokens
            table = seq.block_table
            input_ids.extend(seq.token_ids[start:end])
            positions.extend(range(start, end))
            slots.extend(table[p // bs] * bs + p % bs for p in range(start, end))
            query_start_loc.append(query_start_loc[-1] + s.num_new_tokens)
            seq_lens.append(end)
            if s.samples:
                sample_rows.append(query_start_loc[-1] - 1)
        tables = [s.seq.block_table for s in out.scheduled]
        meta = AttentionMetadata(
            slot_mapping=self._to_device(slots, torch.int64),
            query_start_loc=self._to_device(query_start_loc, torch.int32),
            seq_lens=self._to_device(seq_lens, torch.int32),
            block_tables=self._to_device(block_table_array(tables, max(map(len, tables))), torch.int32),
            num_decode_seqs=out.num_decode_seqs,
            max_query_len=max(s.num_new_tokens for s in out.scheduled),
            max_seq_len=max(seq_lens),
            query_start_loc_cpu=query_start_loc,
            seq_lens_cpu=seq_lens,
        )
        return self._to_device(input_ids, torch.int64), self._to_device(positions, torch.int64), meta, sample_rows

    def _to_device(self, values, dtype: torch.dtype) -> torch.Tensor:
        t = torch.from_numpy(values) if isinstance(values, np.ndarray) else torch.tensor(values, dtype=dtype)
        if self.device.type == "cuda":
            return t.pin_memory().to(self.device, non_blocking=True)
        return t

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
        self.g_tables = torch.zeros(max_bs, width, dtype=torch.int32, device=dev)
        self.g_qsl = torch.arange(max_bs + 1, dtype=torch.int32, device=dev)
        self.g_hidden = torch.zeros(max_bs, hidden_size, dtype=self.dtype, device=dev)
        # pinned host mirrors of the inputs, filled in place each step: [ids, positions, slots, seq_lens]
        self.h_inputs = torch.zeros(4, max_bs, dtype=torch.int64).pin_memory()
        self.h_tables = torch.zeros(max_bs, width, dtype=torch.int32).pin_memory()
        self._h_inputs_np = self.h_inputs.numpy()
        self._h_tables_np = self.h_tables.numpy()
        self._h_rows: list[int] = []  # block_table_version of the table each staging row holds
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
        torch.cuda.synchronize(dev)

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
        )

    def _graph_size(self, out: SchedulerOutput) -> int | None:
        if not self.graphs or out.num_decode_seqs != len(out.scheduled):
            return None
        return next((b for b in self.graphs if b >= len(out.scheduled)), None)

    def _fill_graph_inputs(self, out: SchedulerOutput, b: int) -> list[int] | None:
        """Copy a decode-only batch into the static buffers of the graph of size b.

        -> rows to sample, or None when every row samples. Block-table rows are rewritten only where
        the table in that row changed since the last step (block_table_version is unique per change).
        """
        bs = self.block_size
        n = len(out.scheduled)
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
        staged = self.h_inputs.to(self.device, non_blocking=True)  # 8 KB: the whole buffer, one copy
        self.g_input_ids[:b].copy_(staged[0])
        self.g_positions[:b].copy_(staged[1])
        self.g_slots[:b].copy_(staged[2])
        self.g_seq_lens[:b].copy_(staged[3])
        self.g_tables[:n, :width].copy_(self.h_tables[:n, :width], non_blocking=True)
        return rows

    # -- one step --------------------------------------------------------------------------
    @torch.inference_mode()
    def forward_logits(self, out: SchedulerOutput, all_rows: bool = False) -> torch.Tensor:
        """Logits of the sampling rows (or of every row): [R, V] float32."""
        hooks = self.hooks
        graph_size = None if all_rows else self._graph_size(out)
        decode_only = out.num_decode_seqs == len(out.scheduled)
        if graph_size is not None:
            self.stats.graph_steps += 1
            with hooks.prepare.span(num_seqs=len(out.scheduled), num_tokens=out.num_batched_tokens):
                rows = self._fill_graph_inputs(out, graph_size)
            with hooks.forward.span(num_tokens=len(out.scheduled), num_decode_seqs=out.num_decode_seqs, cuda_graph=True):
                self.graphs[graph_size].replay()
                hidden = self.g_hidden[: len(out.scheduled)]
                if rows is not None:  # a one-token prefill chunk that does not sample sits in the batch
                    hidden = hidden[torch.tensor(rows, device=self.device)]
                return self.model.compute_logits(hidden).float()
        if decode_only:
            self.stats.eager_decode_steps += 1
        with hooks.prepare.span(num_seqs=len(out.scheduled), num_tokens=out.num_batched_tokens):
            input_ids, positions, meta, rows = self.prepare(out)
        with hooks.forward.span(num_tokens=len(input_ids), num_decode_seqs=out.num_decode_seqs, cuda_graph=False):
            hidden = self.model(input_ids, positions, meta)
            if not all_rows:
                hidden = hidden[rows]
            return self.model.compute_logits(hidden).float()

    @torch.inference_mode()
    def execute(self, out: SchedulerOutput, handover: Callable[[], None] | None = None) -> tuple[list[Sequence], list[int]]:
        """Run the step; returns the sequences whose chunk samples and their sampled tokens.

        ``handover`` is called once the forward is launched, before the host waits for the device:
        host work done there runs while the GPU computes (on CPU it simply runs in line)."""
        logits = self.forward_logits(out)
        if handover is not None:
            handover()
        sampling = [s.seq for s in out.scheduled if s.samples]
        if not sampling:
            return sampling, []
        with self.hooks.sample.span(num_seqs=len(sampling)):
            tokens = sample(logits, [s.params for s in sampling], [s.generator for s in sampling])
            return sampling, tokens.tolist()
