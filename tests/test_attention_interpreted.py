"""The attention path's Triton kernels on CPU under TRITON_INTERPRET=1, float32 and small heads; the bf16 checks
at the models' shapes are on the GPU (tests/gpu/test_triton_attention.py, test_fused_ops.py):

- the decode kernel against the torch reference: every split count, in row order and in a given start order
  (the runner's longest-first order), with a padding row;
- qk_norm_rope storing the step's K/V (KVStore): the cache it writes is the one the backends' store_kv writes
  from its outputs, and a padding slot (-1) stays untouched."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.interpreted import run_interpreted


def interpreted_decode_checks() -> None:
    """Run with TRITON_INTERPRET=1 set before triton is imported (test_decode_interpreted does)."""
    from traceinfer.engine.attention.metadata import AttentionMetadata
    from traceinfer.engine.attention.torch_backend import paged_attention_reference
    from traceinfer.engine.attention.triton_backend import paged_decode
    from traceinfer.engine.model_runner import decode_order

    g = torch.Generator().manual_seed(0)
    heads, kv_heads, dim, block = 4, 2, 16, 4
    lens = [9, 1, 70, 0, 17, 33]  # 0: a padding row
    tables, free = [], torch.randperm(64, generator=g).tolist()
    for n in lens:
        nb = -(-n // block)
        tables.append(free[:nb] + [0] * (18 - nb))
        free = free[nb:]
    k_cache = torch.randn(64, block, kv_heads, dim, generator=g)
    v_cache = torch.randn(64, block, kv_heads, dim, generator=g)
    q = torch.randn(len(lens), heads, dim, generator=g)
    seq_lens = torch.tensor(lens, dtype=torch.int32)
    block_tables = torch.tensor(tables, dtype=torch.int32)
    real = [i for i, n in enumerate(lens) if n]
    meta = AttentionMetadata(
        slot_mapping=torch.zeros(len(real), dtype=torch.int64),
        query_start_loc=torch.arange(len(real) + 1, dtype=torch.int32),
        seq_lens=seq_lens[real],
        block_tables=block_tables[real],
        num_decode_seqs=0,
        max_query_len=1,
        max_seq_len=max(lens),
        query_start_loc_cpu=list(range(len(real) + 1)),
        seq_lens_cpu=[lens[i] for i in real],
    )
    want = paged_attention_reference(q[real], k_cache, v_cache, meta, dim**-0.5)
    longest_first = torch.from_numpy(decode_order(np.array(lens)))
    assert longest_first.tolist() == [2, 5, 4, 0, 1, 3]
    for order in (None, longest_first, torch.arange(len(lens)).flip(0)):
        for splits in (1, 2, 4):
            out = torch.full_like(q, float("nan"))
            paged_decode(q, k_cache, v_cache, seq_lens, block_tables, dim**-0.5, out, num_splits=splits, order=order)
            torch.testing.assert_close(out[real], want, rtol=1e-4, atol=1e-4)
            assert (out[3] == 0).all(), "a padding row (seq_len 0) comes out as zeros"


def interpreted_rope_store_checks() -> None:
    from traceinfer.engine import fused_ops
    from traceinfer.engine.attention.torch_backend import store_kv

    g = torch.Generator().manual_seed(1)
    tokens, heads, kv_heads, dim, block = 5, 4, 2, 16, 4
    qkv = torch.randn(tokens, (heads + 2 * kv_heads) * dim, generator=g)
    q, k, v = (t.view(tokens, -1, dim) for t in qkv.split([heads * dim, kv_heads * dim, kv_heads * dim], dim=-1))
    w = 0.5 + torch.rand(dim, generator=g)
    angles = torch.arange(64.0)[:, None] * torch.rand(dim // 2, generator=g)[None, :]
    cos, sin = torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)
    positions = torch.tensor([3, 0, 63, 7, 7])
    slots = torch.tensor([9, 0, -1, 31, 12])  # token 2 is padding
    for norms in ((w, w), (None, None)):
        cache = [torch.full((8, block, kv_heads, dim), float("nan")) for _ in range(2)]
        q_out, k_out = fused_ops.qk_norm_rope(q, k, *norms, 1e-6, cos, sin, positions,
                                              fused_ops.KVStore(v, *cache, slots))  # fmt: skip
        q_ref, k_ref = fused_ops.qk_norm_rope(q, k, *norms, 1e-6, cos, sin, positions)
        assert torch.equal(q_out, q_ref) and torch.equal(k_out, k_ref)
        want = [torch.full_like(cache[0], float("nan")) for _ in range(2)]
        store_kv(k_ref, v, *want, slots)
        for got, ref in zip(cache, want):
            torch.testing.assert_close(got, ref, rtol=0, atol=0, equal_nan=True)
    bad = fused_ops.KVStore(v, torch.zeros(8, 3, kv_heads, dim), torch.zeros(8, 3, kv_heads, dim), slots)
    with pytest.raises(ValueError, match="power-of-two block_size"):
        fused_ops.qk_norm_rope(q, k, None, None, 0.0, cos, sin, positions, bad)


def test_kernels_interpreted():
    run_interpreted("tests.test_attention_interpreted", "interpreted_decode_checks", "interpreted_rope_store_checks")


def test_decode_order_is_longest_first_and_stable():
    from traceinfer.engine.model_runner import decode_order

    assert decode_order(np.array([5, 9, 5, 0, 9])).tolist() == [1, 4, 0, 2, 3]
    assert decode_order(np.array([7])).tolist() == [0]


def test_the_torch_rope_path_stores_a_kv_store_too():
    """On CPU the models' RoPE runs in torch; given a KVStore it writes the cache as store_kv does."""
    from types import SimpleNamespace

    pytest.importorskip("triton")  # fused_ops, where KVStore lives, imports it

    from traceinfer.engine.attention.torch_backend import store_kv
    from traceinfer.engine.fused_ops import KVStore
    from traceinfer.engine.models.common import RotaryEmbedding

    g = torch.Generator().manual_seed(2)
    rotary = RotaryEmbedding(SimpleNamespace(rope_theta=10000.0), head_dim=16, max_positions=32)
    q, k, v = (torch.randn(3, h, 16, generator=g) for h in (4, 2, 2))
    positions, slots = torch.tensor([0, 5, 31]), torch.tensor([2, -1, 7])
    cache = [torch.zeros(2, 4, 2, 16) for _ in range(2)]
    q_out, k_out = rotary(positions, q, k, kv_store=KVStore(v, *cache, slots))
    want = [torch.zeros(2, 4, 2, 16) for _ in range(2)]
    store_kv(k_out, v, *want, slots)
    assert torch.equal(cache[0], want[0]) and torch.equal(cache[1], want[1]) and cache[0].abs().sum() > 0
