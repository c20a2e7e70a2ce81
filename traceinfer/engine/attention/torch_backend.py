"""Reference attention over the paged KV cache, in plain torch.

Slow (one loop iteration per sequence) and exact: computes in float32 and is the oracle the
Triton and flash-attn backends are tested against. Works on CPU and CUDA.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from traceinfer.engine.attention.metadata import AttentionMetadata


def store_kv(
    k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    """Write new K/V rows into their cache slots; slots < 0 are padding and skipped.

    k, v: [T, Hkv, D]; k_cache, v_cache: [num_blocks, block_size, Hkv, D]; slot_mapping: [T]
    """
    valid = slot_mapping >= 0
    slots = slot_mapping[valid]
    k_cache.view(-1, *k_cache.shape[2:])[slots] = k[valid]
    v_cache.view(-1, *v_cache.shape[2:])[slots] = v[valid]


def gather_kv(cache: torch.Tensor, block_table: torch.Tensor, length: int) -> torch.Tensor:
    """The first ``length`` K or V rows of one sequence: [length, Hkv, D]."""
    block_size = cache.shape[1]
    num_blocks = (length + block_size - 1) // block_size
    return cache[block_table[:num_blocks].long()].flatten(0, 1)[:length]


class TorchAttention:
    name = "torch"

    def forward(
        self,
        q: torch.Tensor,  # [T, Hq, D]
        k: torch.Tensor,  # [T, Hkv, D]
        v: torch.Tensor,  # [T, Hkv, D]
        k_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, D]
        v_cache: torch.Tensor,
        meta: AttentionMetadata,
        scale: float,
        kv_stored: bool = False,  # the step's K/V are in the cache already (fused_ops.qk_norm_rope's KVStore)
    ) -> torch.Tensor:  # [T, Hq, D]
        if not kv_stored:
            store_kv(k, v, k_cache, v_cache, meta.slot_mapping)
        return paged_attention_reference(q, k_cache, v_cache, meta, scale)


def paged_attention_reference(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, meta: AttentionMetadata, scale: float
) -> torch.Tensor:
    """Causal attention of each sequence's queries over its cached K/V (float32 inside)."""
    out = torch.empty_like(q)
    group = q.shape[1] // k_cache.shape[2]
    qsl = meta.query_start_loc_cpu
    for i, ctx_len in enumerate(meta.seq_lens_cpu):
        start, end = qsl[i], qsl[i + 1]
        q_len = end - start
        if q_len == 0:
            continue
        keys = gather_kv(k_cache, meta.block_tables[i], ctx_len).float()  # [S, Hkv, D]
        vals = gather_kv(v_cache, meta.block_tables[i], ctx_len).float()
        keys = keys.repeat_interleave(group, dim=1).transpose(0, 1)  # [Hq, S, D]
        vals = vals.repeat_interleave(group, dim=1).transpose(0, 1)
        query = q[start:end].float().transpose(0, 1)  # [Hq, L, D]
        # query j sits at position ctx_len - q_len + j and sees keys at positions <= its own
        q_pos = torch.arange(ctx_len - q_len, ctx_len, device=q.device)[:, None]
        mask = torch.arange(ctx_len, device=q.device)[None, :] <= q_pos  # [L, S]
        o = F.scaled_dot_product_attention(query, keys, vals, attn_mask=mask, scale=scale)
        out[start:end] = o.transpose(0, 1).to(q.dtype)
    return out
