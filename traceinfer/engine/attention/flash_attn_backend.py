"""Attention through flash-attn 2 (https://github.com/Dao-AILab/flash-attention) over the paged KV cache.

Decode calls ``flash_attn_with_kvcache`` with one query per sequence; prefill calls
``flash_attn_varlen_func`` with ``block_table``, so chunks over cached context read the cache like ours.
Both align the causal mask to the bottom right (query j of q_len sits at position seq_len - q_len + j),
which is the engine's convention. New K/V go into the cache through the Triton store kernel.

Upstream flash-attn 2 reads a paged cache only in blocks of a multiple of 256 tokens ("Paged KV cache
block size must be divisible by 256" in csrc/flash_attn/flash_api.cpp); the engine's default is 16.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from traceinfer.engine.attention.metadata import AttentionMetadata
from traceinfer.errors import BackendUnavailableError

PAGED_BLOCK_MULTIPLE = 256


def flash_attn_available(block_size: int | None = None) -> bool:
    """Whether flash-attn 2 imports here and, given a KV block size, can read a cache paged in it."""
    try:
        from flash_attn import flash_attn_varlen_func, flash_attn_with_kvcache  # noqa: F401
    except ImportError:
        return False
    return block_size is None or block_size % PAGED_BLOCK_MULTIPLE == 0


def check_block_size(block_size: int) -> None:
    if block_size % PAGED_BLOCK_MULTIPLE:
        raise BackendUnavailableError(
            f"attention_backend='flash_attn' reads the paged KV cache only in blocks of a multiple of "
            f"{PAGED_BLOCK_MULTIPLE} tokens, but block_size is {block_size}; set block_size="
            f"{PAGED_BLOCK_MULTIPLE} or use attention_backend='triton'"
        )


class FlashAttention:
    name = "flash_attn"

    def __init__(self, block_size: int | None = None) -> None:
        try:
            from flash_attn import flash_attn_varlen_func, flash_attn_with_kvcache
        except ImportError as e:
            raise BackendUnavailableError(
                f"attention_backend='flash_attn' needs the flash-attn package ({e}); "
                "pip install flash-attn, or use attention_backend='triton'"
            ) from e
        if block_size is not None:
            check_block_size(block_size)
        self._varlen = flash_attn_varlen_func
        self._with_kvcache = flash_attn_with_kvcache

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
        from traceinfer.engine.attention.triton_backend import store_kv

        check_block_size(k_cache.shape[1])
        if not kv_stored:
            store_kv(k, v, k_cache, v_cache, meta.slot_mapping)
        out = torch.empty_like(q)
        nd = meta.num_decode_seqs
        if nd > 0:
            # q [nd, 1, Hq, D] -> out [nd, 1, Hq, D]; cache_seqlens = keys per sequence, this step's included
            out[:nd] = self._with_kvcache(
                q[:nd].unsqueeze(1), k_cache, v_cache,
                cache_seqlens=meta.seq_lens[:nd], block_table=meta.block_tables[:nd],
                softmax_scale=scale, causal=True,
            ).squeeze(1)  # fmt: skip
        if meta.seq_lens.shape[0] > nd:
            start, end = meta.query_start_loc_cpu[nd], meta.query_start_loc_cpu[-1]
            cu_seqlens_q = meta.query_start_loc[nd:] - start
            cu_seqlens_k = F.pad(meta.seq_lens[nd:].cumsum(0, dtype=torch.int32), (1, 0))
            out[start:end] = self._varlen(
                q[start:end], k_cache, v_cache, cu_seqlens_q, cu_seqlens_k,
                meta.max_query_len, meta.max_seq_len,
                softmax_scale=scale, causal=True, block_table=meta.block_tables[nd:],
            )  # fmt: skip
        return out
