"""The Triton decode kernel on CPU under TRITON_INTERPRET=1, against the torch reference: every split count,
in row order and in a given start order (the runner's longest-first order), with a padding row. float32, small
heads; the bf16 checks at the models' shapes are on the GPU (tests/gpu/test_triton_attention.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


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


def test_decode_interpreted():
    """In a fresh process: triton reads TRITON_INTERPRET when the kernels are defined."""
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    code = "import tests.test_attention_interpreted as t; t.interpreted_decode_checks()"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]


def test_decode_order_is_longest_first_and_stable():
    from traceinfer.engine.model_runner import decode_order

    assert decode_order(np.array([5, 9, 5, 0, 9])).tolist() == [1, 4, 0, 2, 3]
    assert decode_order(np.array([7])).tolist() == [0]
