"""Paged attention in Triton: a KV-store kernel, a split-K decode kernel and a varlen prefill kernel.

Layouts: q [T, Hq, D]; k, v [T, Hkv, D]; caches [num_blocks, block_size, Hkv, D]. Token n of sequence b
lives in cache block ``block_tables[b, n // block_size]`` at offset ``n % block_size``. Query head h reads
KV head ``h // (Hq // Hkv)``; both kernels handle a whole GQA group in one program, so each K/V tile is
read once per group and the group's heads become the rows of one ``tl.dot``.

Decode (one query per sequence) is flash-decoding: each (sequence, KV head) splits its context over
``num_splits`` programs, each writes a partial output and its log-sum-exp, and a reduce kernel merges them.
The grid depends only on tensor shapes (batch, heads, block-table width), never on sequence lengths, so
the decode path can be captured in a CUDA graph and replayed with new lengths in the same buffers.

Prefill reads its K/V through the block table too, so a chunk over cached context (chunked prefill, a
prefix-cache hit) needs no special case: query j of a sequence with q_len queries and seq_len keys sits at
position seq_len - q_len + j and sees keys 0..that position.

Softmax runs in base 2 (``exp2``) with ``scale * log2(e)`` folded into the scores; accumulators are float32.
Set TRITON_INTERPRET=1 to run these kernels on CPU tensors when debugging without a GPU.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from traceinfer.engine.attention.metadata import AttentionMetadata
from traceinfer.errors import BackendUnavailableError

LOG2E = 1.4426950408889634
# Decode splitting. A (sequence, KV head) program streams its context alone; splitting the context gives
# the GPU more programs but adds partial writes and a reduce kernel. On an H200 (132 SMs; Qwen3-0.6B heads;
# scripts/decode_splits.py, 2026-11-30) the fastest split count kept the grid at or under ~4 programs per SM:
# batch 1 x 400 tokens 8-16 splits (5.5-5.7 us, 1 split 10.9 us), batch 8 x 800 8 splits (11.0 us; 16: 13.5),
# batch 64 x 800 1 split (52.9 us, 3.97 TB/s; 4 splits 61.7 us), batch 256 1 split (4.2-4.4 TB/s). The one
# exception seen: batch 128 x 100..2,000 tokens, 2 splits 4% faster than 1. (An earlier target of 8 per SM
# came from bench forwards that, by a bug fixed the same day, all replayed the 256-row graph.)
MAX_SPLITS = 16  # a power of two
DECODE_TARGET_PROGRAMS_PER_SM = 4


@dataclass(frozen=True)
class KernelConfig:
    block_m: int  # query rows per prefill program (tokens x GQA group); unused by decode
    block_n: int  # keys per inner-loop tile
    num_warps: int
    num_stages: int


def decode_config(head_dim: int, dtype: torch.dtype) -> KernelConfig:
    # one K and one V tile per pipeline stage: 2 * block_n * head_dim * elem bytes
    row_bytes = head_dim * dtype.itemsize
    block_n = 64 if row_bytes <= 256 else 32
    return KernelConfig(block_m=16, block_n=block_n, num_warps=4, num_stages=3 if row_bytes <= 256 else 2)


def prefill_config(head_dim: int, dtype: torch.dtype) -> KernelConfig:
    row_bytes = head_dim * dtype.itemsize
    if row_bytes <= 256:  # bf16/fp16 up to D=128, fp32 up to D=64; the fastest of a sweep on an H100
        return KernelConfig(block_m=64, block_n=64, num_warps=4, num_stages=2)
    return KernelConfig(block_m=64, block_n=32, num_warps=8, num_stages=1)


# -- kernels -------------------------------------------------------------------------------------


@triton.jit
def _store_kv_kernel(
    k_ptr, v_ptr, k_cache_ptr, v_cache_ptr, slot_ptr,
    stride_kt, stride_kh, stride_vt, stride_vh,
    stride_cb, stride_cs, stride_ch,
    NUM_KV_HEADS: tl.constexpr, HEADS_PAD: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_SIZE: tl.constexpr,
):  # fmt: skip
    # one program per token: copies its [Hkv, D] K and V rows into cache slot slot_mapping[t]
    t = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_ptr + t)
    h = tl.arange(0, HEADS_PAD)[:, None]
    d = tl.arange(0, HEAD_DIM)[None, :]
    mask = (h < NUM_KV_HEADS) & (slot >= 0)  # slot < 0: a padding token, nothing stored
    dst = (slot // BLOCK_SIZE) * stride_cb + (slot % BLOCK_SIZE) * stride_cs + h * stride_ch + d
    k = tl.load(k_ptr + t * stride_kt + h * stride_kh + d, mask=mask)
    v = tl.load(v_ptr + t * stride_vt + h * stride_vh + d, mask=mask)
    tl.store(k_cache_ptr + dst, k.to(k_cache_ptr.dtype.element_ty), mask=mask)
    tl.store(v_cache_ptr + dst, v.to(v_cache_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _dot(a, b, IEEE: tl.constexpr):
    # float32 inputs: exact products, not tf32
    if IEEE:
        r = tl.dot(a, b, input_precision="ieee")
    else:
        r = tl.dot(a, b)
    return r


@triton.jit
def _attend_tiles(
    acc, l_i, m_i, q, q_pos, k_cache_ptr, v_cache_ptr, bt_row, kv_head_off, lo, hi,
    stride_cb, stride_cs, qk_scale,
    HEAD_DIM: tl.constexpr, BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr, MASK_KEYS: tl.constexpr,
    CAUSAL: tl.constexpr, IEEE: tl.constexpr,
):  # fmt: skip
    """Online softmax of q [R, D] over keys lo..hi-1 of one sequence, BLOCK_N keys per step.

    With MASK_KEYS, keys past hi are masked (without it, hi - lo must be a multiple of BLOCK_N); with
    CAUSAL, so are keys after each row's own position q_pos [R].
    """
    d = tl.arange(0, HEAD_DIM)
    for n0 in range(lo, hi, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        if MASK_KEYS:
            n_ok = n < hi
            blk = tl.load(bt_row + n // BLOCK_SIZE, mask=n_ok, other=0).to(tl.int64)
        else:
            blk = tl.load(bt_row + n // BLOCK_SIZE).to(tl.int64)
        row = blk * stride_cb + (n % BLOCK_SIZE) * stride_cs + kv_head_off  # [BLOCK_N]
        if MASK_KEYS:
            k = tl.load(k_cache_ptr + row[:, None] + d[None, :], mask=n_ok[:, None], other=0.0)
        else:
            k = tl.load(k_cache_ptr + row[:, None] + d[None, :])
        s = _dot(q, tl.trans(k), IEEE) * qk_scale  # [R, BLOCK_N], log2 domain
        if CAUSAL:
            s = tl.where(n_ok[None, :] & (n[None, :] <= q_pos[:, None]), s, float("-inf"))
        elif MASK_KEYS:
            s = tl.where(n_ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))  # finite: every row has seen key 0 by now
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        if MASK_KEYS:
            v = tl.load(v_cache_ptr + row[:, None] + d[None, :], mask=n_ok[:, None], other=0.0)
        else:
            v = tl.load(v_cache_ptr + row[:, None] + d[None, :])
        acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, IEEE)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _decode_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, out_ptr, part_o_ptr, part_lse_ptr, seq_lens_ptr, block_tables_ptr, order_ptr,
    stride_qt, stride_qh, stride_ot, stride_oh, stride_cb, stride_cs, stride_ch, stride_bt, qk_scale,
    GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_SIZE: tl.constexpr,
    BLOCK_N: tl.constexpr, NUM_SPLITS: tl.constexpr, ORDERED: tl.constexpr, IEEE: tl.constexpr,
):  # fmt: skip
    # grid (Hkv, NUM_SPLITS, B): the KV heads of one sequence run side by side and read neighbouring bytes.
    # ORDERED: the z-th sequence to start is order[z] (the runner lists the longest first)
    kvh = tl.program_id(0)
    split = tl.program_id(1)
    if ORDERED:
        b = tl.load(order_ptr + tl.program_id(2)).to(tl.int64)
    else:
        b = tl.program_id(2).to(tl.int64)  # decode sequence b owns query token b
    num_kv_heads = tl.num_programs(0)
    seq_len = tl.load(seq_lens_ptr + b)
    # this sequence's tiles, dealt out evenly over the splits; later splits may get none (then they
    # write a neutral partial), and a padding row with seq_len 0 gets none at all
    tiles_per_split = tl.cdiv(tl.cdiv(seq_len, BLOCK_N), NUM_SPLITS)
    lo = split * tiles_per_split * BLOCK_N
    hi = tl.minimum(lo + tiles_per_split * BLOCK_N, seq_len)

    g = tl.arange(0, GROUP_PAD)
    d = tl.arange(0, HEAD_DIM)
    g_ok = g < GROUP
    heads = kvh * GROUP + g  # query heads of this group: the rows of the dot
    q = tl.load(q_ptr + b * stride_qt + heads[:, None] * stride_qh + d[None, :], mask=g_ok[:, None], other=0.0)
    acc = tl.zeros([GROUP_PAD, HEAD_DIM], dtype=tl.float32)
    l_i = tl.zeros([GROUP_PAD], dtype=tl.float32)
    m_i = tl.full([GROUP_PAD], float("-inf"), dtype=tl.float32)
    acc, l_i, m_i = _attend_tiles(
        acc, l_i, m_i, q, g, k_cache_ptr, v_cache_ptr, block_tables_ptr + b * stride_bt, kvh * stride_ch,
        lo, hi, stride_cb, stride_cs, qk_scale,
        HEAD_DIM=HEAD_DIM, BLOCK_SIZE=BLOCK_SIZE, BLOCK_N=BLOCK_N, MASK_KEYS=True, CAUSAL=False, IEEE=IEEE,
    )  # fmt: skip
    has_keys = l_i > 0.0
    o = acc / tl.where(has_keys, l_i, 1.0)[:, None]  # no keys: zeros, not 0/0
    if NUM_SPLITS == 1:
        out = out_ptr + b * stride_ot + heads[:, None] * stride_oh + d[None, :]
        tl.store(out, o.to(out_ptr.dtype.element_ty), mask=g_ok[:, None])
    else:
        # partials: o [B, Hq, NUM_SPLITS, D] float32 and lse [B, Hq, NUM_SPLITS] (log2 domain)
        row = (b * num_kv_heads * GROUP + heads) * NUM_SPLITS + split
        lse = tl.where(has_keys, m_i + tl.log2(tl.where(has_keys, l_i, 1.0)), float("-inf"))
        tl.store(part_o_ptr + row[:, None] * HEAD_DIM + d[None, :], o, mask=g_ok[:, None])
        tl.store(part_lse_ptr + row, lse, mask=g_ok)


@triton.jit
def _decode_reduce_kernel(
    part_o_ptr, part_lse_ptr, out_ptr, stride_ot, stride_oh,
    HEAD_DIM: tl.constexpr, NUM_SPLITS: tl.constexpr,
):  # fmt: skip
    # grid (Hq, B): merge the splits of one (sequence, query head), weighting each by exp2(lse - max)
    h = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    s = tl.arange(0, NUM_SPLITS)
    d = tl.arange(0, HEAD_DIM)
    row = (b * tl.num_programs(0) + h) * NUM_SPLITS + s
    lse = tl.load(part_lse_ptr + row)
    m = tl.max(lse, 0)
    w = tl.exp2(lse - tl.where(m == float("-inf"), 0.0, m))  # empty splits weigh 0
    o = tl.load(part_o_ptr + row[:, None] * HEAD_DIM + d[None, :])
    total = tl.sum(w, 0)
    o = tl.sum(w[:, None] * o, 0) / tl.where(total > 0.0, total, 1.0)  # seq_len 0: zeros
    tl.store(out_ptr + b * stride_ot + h * stride_oh + d, o.to(out_ptr.dtype.element_ty))


@triton.jit
def _prefill_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, out_ptr, query_start_loc_ptr, seq_lens_ptr, block_tables_ptr, first_seq,
    stride_qt, stride_qh, stride_ot, stride_oh, stride_cb, stride_cs, stride_ch, stride_bt, qk_scale,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_SIZE: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, IEEE: tl.constexpr,
):  # fmt: skip
    # grid (query tiles, Hkv, prefill seqs). A program takes BLOCK_Q query tokens x the GROUP heads that
    # share one KV head: row r is token r // GROUP, head r % GROUP.
    BLOCK_Q: tl.constexpr = BLOCK_M // GROUP
    tile = tl.num_programs(0) - 1 - tl.program_id(0)  # the last tiles attend to the most keys: start them first
    kvh = tl.program_id(1)
    seq = first_seq + tl.program_id(2)
    q_start = tl.load(query_start_loc_ptr + seq)
    q_len = tl.load(query_start_loc_ptr + seq + 1) - q_start
    t0 = tile * BLOCK_Q
    if t0 >= q_len:
        return
    seq_len = tl.load(seq_lens_ptr + seq)
    context = seq_len - q_len  # keys already cached before this chunk

    r = tl.arange(0, BLOCK_M)
    d = tl.arange(0, HEAD_DIM)
    t = t0 + r // GROUP
    heads = kvh * GROUP + r % GROUP
    r_ok = (r < BLOCK_Q * GROUP) & (t < q_len)
    tok = (q_start + t).to(tl.int64)
    q = tl.load(
        q_ptr + tok[:, None] * stride_qt + heads[:, None] * stride_qh + d[None, :], mask=r_ok[:, None], other=0.0
    )
    q_pos = context + t

    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    bt_row = block_tables_ptr + seq.to(tl.int64) * stride_bt
    # keys 0..context+t0 are visible to every row: whole tiles of them need no causal mask
    unmasked_end = (context + t0 + 1) // BLOCK_N * BLOCK_N
    hi = context + tl.minimum(t0 + BLOCK_Q, q_len)
    acc, l_i, m_i = _attend_tiles(
        acc, l_i, m_i, q, q_pos, k_cache_ptr, v_cache_ptr, bt_row, kvh * stride_ch, 0, unmasked_end,
        stride_cb, stride_cs, qk_scale,
        HEAD_DIM=HEAD_DIM, BLOCK_SIZE=BLOCK_SIZE, BLOCK_N=BLOCK_N, MASK_KEYS=False, CAUSAL=False, IEEE=IEEE,
    )  # fmt: skip
    acc, l_i, m_i = _attend_tiles(
        acc, l_i, m_i, q, q_pos, k_cache_ptr, v_cache_ptr, bt_row, kvh * stride_ch, unmasked_end, hi,
        stride_cb, stride_cs, qk_scale,
        HEAD_DIM=HEAD_DIM, BLOCK_SIZE=BLOCK_SIZE, BLOCK_N=BLOCK_N, MASK_KEYS=True, CAUSAL=True, IEEE=IEEE,
    )  # fmt: skip
    o = acc / tl.where(l_i > 0.0, l_i, 1.0)[:, None]
    out = out_ptr + tok[:, None] * stride_ot + heads[:, None] * stride_oh + d[None, :]
    tl.store(out, o.to(out_ptr.dtype.element_ty), mask=r_ok[:, None])


# -- launchers -----------------------------------------------------------------------------------


def _check_layout(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor) -> None:
    head_dim = q.shape[-1]
    if head_dim < 16 or head_dim & (head_dim - 1):
        raise BackendUnavailableError(
            f"the triton attention backend needs a power-of-two head_dim >= 16, got {head_dim}; "
            "use attention_backend='torch'"
        )
    block_size = k_cache.shape[1]
    if block_size & (block_size - 1):
        raise BackendUnavailableError(f"the triton attention backend needs a power-of-two block_size, got {block_size}")
    if q.shape[1] % k_cache.shape[2]:
        raise ValueError(f"{q.shape[1]} query heads are not a multiple of {k_cache.shape[2]} KV heads")
    if k_cache.stride() != v_cache.stride() or k_cache.stride(-1) != 1:
        raise ValueError(
            "k_cache and v_cache need one layout with a contiguous last dim, "
            f"got strides {k_cache.stride()} and {v_cache.stride()}"
        )


def _unit_last_stride(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


@functools.cache
def _num_sms(device: torch.device) -> int:
    if device.type != "cuda":  # TRITON_INTERPRET=1 on CPU tensors: any plausible figure
        return 132
    return torch.cuda.get_device_properties(device).multi_processor_count


def store_kv(
    k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    """Write k, v [T, Hkv, D] into cache slots slot_mapping [T] (int64); slots < 0 are skipped."""
    num_tokens, num_kv_heads, head_dim = k.shape
    if num_tokens == 0:
        return
    k, v = _unit_last_stride(k), _unit_last_stride(v)
    _store_kv_kernel[(num_tokens,)](
        k, v, k_cache, v_cache, slot_mapping,
        k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        NUM_KV_HEADS=num_kv_heads, HEADS_PAD=triton.next_power_of_2(num_kv_heads), HEAD_DIM=head_dim,
        BLOCK_SIZE=k_cache.shape[1], num_warps=4,
    )  # fmt: skip


def decode_num_splits(
    num_seqs: int, num_kv_heads: int, max_blocks: int, block_size: int, block_n: int, num_sms: int
) -> int:
    """Splits per (sequence, KV head): the most (a power of two) that keep the grid within the target programs
    per SM, from shapes only. max_blocks is the block-table width, which the runner keeps fixed under CUDA graphs.
    """
    programs = max(1, num_seqs * num_kv_heads)
    budget = DECODE_TARGET_PROGRAMS_PER_SM * num_sms
    most_useful = triton.cdiv(max_blocks * block_size, block_n)  # one tile per split at the widest table
    limit = max(1, min(most_useful, MAX_SPLITS))
    splits = 1
    while splits * 2 <= limit and programs * splits * 2 <= budget:
        splits *= 2
    return splits


def paged_decode(
    q: torch.Tensor,  # [B, Hq, D], one query per sequence
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    seq_lens: torch.Tensor,  # [B] int32, 0 for a padding row
    block_tables: torch.Tensor,  # [B, M] int32
    scale: float,
    out: torch.Tensor,  # [B, Hq, D], written
    config: KernelConfig | None = None,
    num_splits: int | None = None,
    order: torch.Tensor | None = None,  # [B] integer: a permutation of the rows, the order they start in
) -> torch.Tensor:
    """Flash-decoding over the paged cache. Launch shapes depend on tensor shapes only (CUDA-graph safe).

    Programs start roughly in grid order, so with rows of uneven context a long row started last finishes
    alone; ``order`` listing the longest first lets the short rows fill the tail (see DECODE_LONGEST_FIRST).
    """
    num_seqs, num_heads, head_dim = q.shape
    num_kv_heads, block_size = k_cache.shape[2], k_cache.shape[1]
    group = num_heads // num_kv_heads
    cfg = config or decode_config(head_dim, q.dtype)
    if num_splits is None:
        num_splits = decode_num_splits(
            num_seqs, num_kv_heads, block_tables.shape[1], block_size, cfg.block_n, _num_sms(q.device)
        )
    q = _unit_last_stride(q)
    if num_splits > 1:
        part_o = torch.empty(num_seqs, num_heads, num_splits, head_dim, dtype=torch.float32, device=q.device)
        part_lse = torch.empty(num_seqs, num_heads, num_splits, dtype=torch.float32, device=q.device)
    else:
        part_o = part_lse = out  # unused: the kernel writes out directly
    _decode_kernel[(num_kv_heads, num_splits, num_seqs)](
        q, k_cache, v_cache, out, part_o, part_lse, seq_lens, block_tables, seq_lens if order is None else order,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), block_tables.stride(0), scale * LOG2E,
        GROUP=group, GROUP_PAD=max(16, triton.next_power_of_2(group)), HEAD_DIM=head_dim, BLOCK_SIZE=block_size,
        BLOCK_N=cfg.block_n, NUM_SPLITS=num_splits, ORDERED=order is not None, IEEE=q.dtype == torch.float32,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )  # fmt: skip
    if num_splits > 1:
        _decode_reduce_kernel[(num_heads, num_seqs)](
            part_o, part_lse, out, out.stride(0), out.stride(1), HEAD_DIM=head_dim, NUM_SPLITS=num_splits, num_warps=4
        )
    return out


def paged_prefill(
    q: torch.Tensor,  # [T, Hq, D], the whole step's queries
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    query_start_loc: torch.Tensor,  # [B + 1] int32
    seq_lens: torch.Tensor,  # [B] int32
    block_tables: torch.Tensor,  # [B, M] int32
    first_seq: int,  # sequences first_seq..B-1 are computed
    max_query_len: int,
    scale: float,
    out: torch.Tensor,  # [T, Hq, D], rows of those sequences written
    config: KernelConfig | None = None,
) -> torch.Tensor:
    """Causal varlen attention of sequences first_seq.. over their cached context and themselves."""
    num_prefill = seq_lens.shape[0] - first_seq
    if num_prefill <= 0 or max_query_len <= 0:
        return out
    num_heads, head_dim = q.shape[1], q.shape[2]
    num_kv_heads, block_size = k_cache.shape[2], k_cache.shape[1]
    group = num_heads // num_kv_heads
    cfg = config or prefill_config(head_dim, q.dtype)
    block_m = max(cfg.block_m, triton.next_power_of_2(group))
    block_q = block_m // group
    q = _unit_last_stride(q)
    _prefill_kernel[(triton.cdiv(max_query_len, block_q), num_kv_heads, num_prefill)](
        q, k_cache, v_cache, out, query_start_loc, seq_lens, block_tables, first_seq,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), block_tables.stride(0), scale * LOG2E,
        GROUP=group, HEAD_DIM=head_dim, BLOCK_SIZE=block_size, BLOCK_M=block_m, BLOCK_N=cfg.block_n,
        IEEE=q.dtype == torch.float32, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )  # fmt: skip
    return out


class TritonAttention:
    name = "triton"

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
        _check_layout(q, k_cache, v_cache)
        if not kv_stored:
            store_kv(k, v, k_cache, v_cache, meta.slot_mapping)
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
        nd = meta.num_decode_seqs
        if nd > 0:
            order = meta.decode_order
            paged_decode(q[:nd], k_cache, v_cache, meta.seq_lens[:nd], meta.block_tables[:nd], scale, out[:nd],
                         order=None if order is None else order[:nd])  # fmt: skip
        if meta.seq_lens.shape[0] > nd:  # shapes, not host lists: a captured decode graph never takes this
            paged_prefill(
                q, k_cache, v_cache, meta.query_start_loc, meta.seq_lens, meta.block_tables, nd,
                meta.max_query_len, scale, out,
            )  # fmt: skip
        return out
