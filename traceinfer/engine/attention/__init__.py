"""Attention backends behind one interface.

A backend has a ``name`` and ``forward(q, k, v, k_cache, v_cache, meta, scale, kv_stored=False) -> out``:
it stores the step's new K/V into the paged cache through ``meta.slot_mapping`` (unless ``kv_stored``: the
caller wrote them, e.g. fused into RoPE) and returns causal attention of every query over its sequence's
cached K/V, which every backend reads from the cache alone. Shapes: q [T, Hq, D], k/v [T, Hkv, D],
caches [num_blocks, block_size, Hkv, D].
"""

from __future__ import annotations

import torch

from traceinfer.engine.attention.metadata import AttentionMetadata
from traceinfer.engine.attention.torch_backend import TorchAttention
from traceinfer.errors import BackendUnavailableError

BACKENDS = ("auto", "torch", "triton", "flash_attn")


def select_backend(name: str, device: torch.device, block_size: int = 16):
    """The backend for ``name`` on ``device``; 'auto' prefers flash-attn when it imports and supports block_size."""
    if name not in BACKENDS:
        raise BackendUnavailableError(f"attention_backend={name!r} is unknown; choose one of {', '.join(BACKENDS)}")
    if name == "auto":
        if device.type != "cuda":
            name = "torch"
        else:
            from traceinfer.engine.attention.flash_attn_backend import flash_attn_available

            name = "flash_attn" if flash_attn_available(block_size) else "triton"
    if name == "torch":
        return TorchAttention()
    if device.type != "cuda":
        raise BackendUnavailableError(
            f"attention_backend={name!r} needs a CUDA device, but the engine runs on {device.type!r}"
            f" (torch.cuda.is_available()={torch.cuda.is_available()}); use attention_backend='torch'"
        )
    if name == "triton":
        from traceinfer.engine.attention.triton_backend import TritonAttention

        return TritonAttention()
    from traceinfer.engine.attention.flash_attn_backend import FlashAttention

    return FlashAttention(block_size)


__all__ = ["AttentionMetadata", "TorchAttention", "select_backend", "BACKENDS"]
