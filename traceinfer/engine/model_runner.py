"""Runs one scheduled step: flatten it into tensors, run the model over the paged KV cache, sample."""

from __future__ import annotations

import torch

from traceinfer.engine.attention import AttentionMetadata
from traceinfer.engine.hooks import Hooks
from traceinfer.engine.models import CausalLM
from traceinfer.engine.sampler import sample
from traceinfer.engine.scheduler import SchedulerOutput


class ModelRunner:
    def __init__(self, model: CausalLM, num_blocks: int, block_size: int, device: torch.device, dtype: torch.dtype, hooks: Hooks):
        self.model = model
        self.device = device
        self.dtype = dtype
        self.block_size = block_size
        self.num_blocks = num_blocks
        self.hooks = hooks
        attn = model.model.layers[0].self_attn
        num_layers = len(model.model.layers)
        # kv_cache: [2, layers, num_blocks, block_size, Hkv, D], one allocation; each layer gets views
        self.kv_cache = torch.zeros(
            2, num_layers, num_blocks, block_size, attn.num_kv_heads, attn.head_dim, dtype=dtype, device=device
        )
        for i, layer in enumerate(model.model.layers):
            layer.self_attn.k_cache = self.kv_cache[0, i]
            layer.self_attn.v_cache = self.kv_cache[1, i]

    @staticmethod
    def kv_bytes_per_block(model: CausalLM, block_size: int, dtype: torch.dtype) -> int:
        attn = model.model.layers[0].self_attn
        elem = torch.tensor([], dtype=dtype).element_size()
        return 2 * len(model.model.layers) * block_size * attn.num_kv_heads * attn.head_dim * elem

    # -- inputs ----------------------------------------------------------------------------
    def prepare_inputs(self, out: SchedulerOutput) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata, list[int]]:
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
        width = max(len(s.seq.block_table) for s in out.scheduled)
        tables = [s.seq.block_table + [0] * (width - len(s.seq.block_table)) for s in out.scheduled]
        meta = AttentionMetadata(
            slot_mapping=self._to_device(slots, torch.int64),
            query_start_loc=self._to_device(query_start_loc, torch.int32),
            seq_lens=self._to_device(seq_lens, torch.int32),
            block_tables=self._to_device(tables, torch.int32),
            num_decode_seqs=out.num_decode_seqs,
            max_query_len=max(s.num_new_tokens for s in out.scheduled),
            max_seq_len=max(seq_lens),
            query_start_loc_cpu=query_start_loc,
            seq_lens_cpu=seq_lens,
        )
        return self._to_device(input_ids, torch.int64), self._to_device(positions, torch.int64), meta, sample_rows

    def _to_device(self, values, dtype: torch.dtype) -> torch.Tensor:
        t = torch.tensor(values, dtype=dtype)
        if self.device.type == "cuda":
            return t.pin_memory().to(self.device, non_blocking=True)
        return t

    # -- one step --------------------------------------------------------------------------
    @torch.inference_mode()
    def forward_logits(self, out: SchedulerOutput, all_rows: bool = False) -> tuple[torch.Tensor, list[int]]:
        """Logits of the sampling rows (or of every row): [R, V] float32."""
        hooks = self.hooks
        with hooks.prepare_inputs.span(num_seqs=len(out.scheduled), num_tokens=out.num_batched_tokens):
            input_ids, positions, meta, rows = self.prepare_inputs(out)
        with hooks.forward.span(num_tokens=len(input_ids), num_decode_seqs=out.num_decode_seqs, cuda_graph=False):
            hidden = self.model(input_ids, positions, meta)
            if not all_rows:
                hidden = hidden[rows]
            logits = self.model.compute_logits(hidden).float()
        return logits, rows

    @torch.inference_mode()
    def execute(self, out: SchedulerOutput) -> list[int]:
        """Run the step; returns one sampled token per scheduled sequence whose chunk samples."""
        logits, _ = self.forward_logits(out)
        sampling = [s.seq for s in out.scheduled if s.samples]
        if not sampling:
            return []
        with self.hooks.sample.span(num_seqs=len(sampling)):
            tokens = sample(logits, [s.params for s in sampling], [s.generator for s in sampling])
            return tokens.tolist()
