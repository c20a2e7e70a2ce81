"""Gumbel-max sampling in one pass over the logits: a Triton kernel (CUDA; the CPU interpreter for tests).

For a row b with temperature T > 0 the token is

    argmax_v  logits[b, v] + T * G[b, v],   G = -log(E),  E ~ Exp(1) (a standard Gumbel variable),

which has the argmax of logits / T + G (T > 0 scales without reordering), so it draws from softmax(logits / T):
the Gumbel-max trick, the same law as the torch path's exponential race. Scaling the noise rather than
dividing the logits needs no division and keeps both limits sound: T -> 0 tends to greedy (T = 0 is
greedy exactly: logits + 0 * G, G finite) and a large T to uniform. A greedy row's score is its logit, so
greedy tokens are ``torch.argmax(logits.float(), -1)``, ties to the first index (a NaN counts as the
largest value, as there). The logits are read once, in their own dtype, and nothing [B, V] is written: the
torch path spent ~7 kernels reading and writing a float32 [B, V] copy several times. Device time on an
H200, bf16, V = 151936 (CUDA-graph replays): batch 1, 3.8 us sampled and 3.0 us greedy against the torch
path's 57 us; batch 256, 76 us sampled (Philox bounds it: 55 us without the logs; reading the logits
alone, the greedy time, is 25 us) against 585 us.

Noise. Each row draws from Philox4x32-10 (``tl.randint4x``) keyed by its 64-bit seed (two 32-bit halves):
logit v takes 32-bit word ``(v % _BLOCK) // _QUARTER`` of the counter ``(v // _BLOCK) * _QUARTER + v % _QUARTER``.
The noise is thus a function of (seed, v) alone: neither the batch, the row's position in it, nor the
launch grid changes it. A word r becomes E with care for the small E that decide the winner (a large G):
w = (r + 0.5) 2^-32 ~ U(0, 1) and E = -log(1 - w), as the series w + w^2/2 + ... + w^7/7 for w < 2^-4 (E
to float32 precision down to 2^-33) and otherwise as -log(1 - w) with 1 - w = (2^32 - 1 - r + 0.5) 2^-32
formed directly, never rounded to 0 or 1. G thus lies in [-3.13, 22.87], within 1e-6 of the float64
value on the CPU. (``tl.rand`` would give U = 1 - 2^-24 at most and E = -log U quantised in steps of
2^-24, capping G at 16.6 and lumping the tail.) On CUDA the two logs are lg2.approx (abs error < 2^-22;
the series keeps E >= 0.064 where a log of 1 - w is taken, so G is off by < 1e-5).

Work split: grid (B, NUM_SPLITS) over chunks of the vocabulary, so that batch 1 fills the GPU too; each
program writes its chunk's best score and index; a second kernel, one program per row, picks the best
chunk (first index on ties). Per-row seed and temperature come as one int64 [B, 2] device tensor (the
temperature as float64 bits): ``pack_rows`` fills it from pinned host memory without waiting. Launch
parameters depend on tensor shapes only and nothing waits on the host, so the kernels can be captured in
a CUDA graph. Set TRITON_INTERPRET=1 to run them on CPU float32 tensors (tests/test_sampler.py does).
"""

from __future__ import annotations

import numpy as np
import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

# compile options: the defaults. Greedy scores are the logits themselves (nothing to round), and sampled
# scores have no torch twin to match, so logit + T * G may fuse into one FMA
_LAUNCH: dict = {}
_BLOCK = 2048  # logits per loop step: four quarters, one Philox4x32 call per lane of a quarter
_QUARTER = _BLOCK // 4
_NUM_WARPS = 4
_INT32_MAX = tl.constexpr(2**31 - 1)  # "no index": above any vocabulary index


# -- kernels -------------------------------------------------------------------------------------


@triton.jit
def _log(x, FAST: tl.constexpr):
    # on CUDA lg2.approx (one MUFU op, abs error < 2^-22 in log2): the accurate logf doubled the sampled
    # kernel's time, Philox and two logs per logit being its arithmetic; the CPU interpreter has no libdevice
    if FAST:
        return libdevice.fast_logf(x)
    else:
        return tl.log(x)


@triton.jit
def _gumbel(r, FAST: tl.constexpr):
    """r uint32 random words -> Gumbel(0, 1) float32: -log(E), E = -log(1 - w) ~ Exp(1), w = (r + 0.5) 2^-32."""
    # w < 2^-4 (r < 2^28): E = w + w^2/2 + ... + w^7/7, float32-exact (what is left is below w^8/8)
    w = r.to(tl.float32) * 2.3283064365386963e-10 + 1.1641532182693481e-10
    e_small = 0.16666666666666666 + w * 0.14285714285714285  # Horner, from the w^7/7 term down
    for c in tl.static_range(5):
        e_small = 1.0 / (5 - c) + w * e_small  # 1/5, 1/4, 1/3, 1/2, 1
    e_small = w * e_small
    # otherwise E = -log(1 - w), 1 - w = (2^32 - 1 - r + 0.5) 2^-32 formed directly: in [2^-33, 1 - 2^-4], to float32
    # precision; E >= 0.064 there keeps a fast log's absolute error small beside E
    one_minus_w = (4294967295 - r).to(tl.float32) * 2.3283064365386963e-10 + 1.1641532182693481e-10
    e = tl.where(r < 268435456, e_small, -_log(one_minus_w, FAST))
    return -_log(e, FAST)


@triton.jit
def _take_best(best, best_index, row_ptr, v, vocab, temp, word, SAMPLED: tl.constexpr, FAST: tl.constexpr):
    """Fold logits v (a quarter: [_QUARTER] indices, increasing along each lane) into the running best."""
    x = tl.load(row_ptr + v, mask=v < vocab, other=float("-inf")).to(tl.float32)
    if SAMPLED:
        x = x + temp * _gumbel(word, FAST)
    x = tl.where(x != x, float("inf"), x)  # NaN is the largest, as in torch.argmax
    # strict: along a lane the indices increase, so a tie keeps the first index
    better = x > best
    return tl.where(better, x, best), tl.where(better, v, best_index)


@triton.jit
def _sample_chunk_kernel(
    logits_ptr, rows_ptr, chunk_best_ptr, chunk_index_ptr, stride_row, vocab,
    NUM_SPLITS: tl.constexpr, CHUNK: tl.constexpr, QUARTER: tl.constexpr, SAMPLED: tl.constexpr,
    FAST: tl.constexpr,
):  # fmt: skip
    # grid (B, NUM_SPLITS): program (b, s) scores logits[b, s * CHUNK : (s + 1) * CHUNK], CHUNK a multiple of 4 QUARTER
    row = tl.program_id(0).to(tl.int64)
    split = tl.program_id(1)
    row_ptr = logits_ptr + row * stride_row
    lanes = tl.arange(0, QUARTER)
    start = split * CHUNK
    best = tl.full([QUARTER], float("-inf"), tl.float32)
    best_index = start + lanes  # where a lane's logits are all -inf, its first: the row's first overall
    seed = 0
    temp = 0.0
    if SAMPLED:
        seed = tl.load(rows_ptr + 2 * row)
        temp = tl.load(rows_ptr + 2 * row + 1).to(tl.float64, bitcast=True).to(tl.float32)
    for step in tl.range(0, CHUNK, 4 * QUARTER):  # constexpr bounds (Triton 3.6's interpreter wants them)
        base = start + step
        if SAMPLED:
            w0, w1, w2, w3 = tl.randint4x(seed, base // 4 + lanes)
        else:  # greedy: no noise, the words are unused
            w0 = lanes
            w1 = lanes
            w2 = lanes
            w3 = lanes
        v = base + lanes
        best, best_index = _take_best(best, best_index, row_ptr, v, vocab, temp, w0, SAMPLED, FAST)
        best, best_index = _take_best(best, best_index, row_ptr, v + QUARTER, vocab, temp, w1, SAMPLED, FAST)
        best, best_index = _take_best(best, best_index, row_ptr, v + 2 * QUARTER, vocab, temp, w2, SAMPLED, FAST)
        best, best_index = _take_best(best, best_index, row_ptr, v + 3 * QUARTER, vocab, temp, w3, SAMPLED, FAST)
    top = tl.max(best, 0)
    # the first index among the lanes that hold the top score (each lane holds its own first)
    top_index = tl.min(tl.where(best == top, best_index, _INT32_MAX), 0)
    tl.store(chunk_best_ptr + row * NUM_SPLITS + split, top)
    tl.store(chunk_index_ptr + row * NUM_SPLITS + split, top_index)


@triton.jit
def _sample_pick_kernel(chunk_best_ptr, chunk_index_ptr, out_ptr, NUM_SPLITS: tl.constexpr, SPLITS_PAD: tl.constexpr):
    # one program per row: the best of its NUM_SPLITS chunks, the lowest index on ties (chunks are in order)
    row = tl.program_id(0).to(tl.int64)
    s = tl.arange(0, SPLITS_PAD)
    mask = s < NUM_SPLITS
    best = tl.load(chunk_best_ptr + row * NUM_SPLITS + s, mask=mask, other=float("-inf"))
    index = tl.load(chunk_index_ptr + row * NUM_SPLITS + s, mask=mask, other=_INT32_MAX)
    top = tl.max(best, 0)
    tl.store(out_ptr + row, tl.min(tl.where(best == top, index, _INT32_MAX), 0).to(tl.int64))


# -- launchers -----------------------------------------------------------------------------------


def pack_rows(temperatures: list[float], seeds: list[int], device: torch.device | str) -> torch.Tensor:
    """Per-row (seed, temperature) -> int64 [B, 2] on device: column 0 the seed (0 <= seed < 2**63),
    column 1 the temperature's float64 bits (0 = greedy). On CUDA the copy is from pinned memory and
    does not wait; a row's tokens depend on these two numbers and its logits only."""
    if len(temperatures) != len(seeds):
        raise ValueError(f"{len(temperatures)} temperatures for {len(seeds)} seeds")
    device = torch.device(device)
    host = torch.empty((len(seeds), 2), dtype=torch.int64, pin_memory=device.type == "cuda")
    packed = host.numpy()
    try:
        packed[:, 0] = seeds
    except OverflowError:
        packed[:, 0] = -1  # a seed of 2**63 or more: refused below
    packed[:, 1] = np.asarray(temperatures, dtype=np.float64).view(np.int64)
    if len(seeds) and packed[:, 0].min() < 0:
        raise ValueError(f"seeds must be in [0, 2**63), got {[s for s in seeds if not 0 <= s < 2**63][:3]}")
    return host.to(device, non_blocking=True)


def gumbel_argmax(logits: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
    """logits [B, V] (float32, bf16, fp16); rows int64 [B, 2] from ``pack_rows``, or None when every row is
    greedy -> tokens [B] int64: argmax_v logits[b, v] + T_b * Gumbel(seed_b, v), first index on ties."""
    if logits.dim() != 2 or logits.shape[1] == 0:
        raise ValueError(f"logits must be [B, V] with V > 0, got {tuple(logits.shape)}")
    batch, vocab = logits.shape
    if rows is not None and (rows.shape != (batch, 2) or rows.dtype != torch.int64 or rows.device != logits.device):
        raise ValueError(f"rows must be int64 [{batch}, 2] on {logits.device}, got {rows.dtype} {tuple(rows.shape)}")
    return _launch(logits, rows, _chunk(batch, vocab))


def _chunk(batch: int, vocab: int) -> int:
    """Logits per program: the most (up to 4 loop steps) that still give ~1000 programs or more (H200:
    1 step is best at batch 1 to 8, 4 steps 9% faster than 1 at batch 256, 8 steps slower again)."""
    blocks = triton.cdiv(vocab, _BLOCK)
    steps = 1
    while steps < 4 and batch * triton.cdiv(blocks, 2 * steps) >= 1024:
        steps *= 2
    return steps * _BLOCK


def _launch(logits: torch.Tensor, rows: torch.Tensor | None, chunk: int) -> torch.Tensor:
    """The two kernels, chunk (a multiple of _BLOCK) logits per program; the tokens do not depend on it."""
    batch, vocab = logits.shape
    num_splits = triton.cdiv(vocab, chunk)
    # one allocation (each costs host time): the tokens [B] int64, then each chunk's index and best score
    work = torch.empty(batch * (1 + num_splits), dtype=torch.int64, device=logits.device)
    out = work[:batch]
    if batch == 0:
        return out
    chunks = work[batch:].view(torch.int32)
    chunk_index, chunk_best = chunks[: batch * num_splits], chunks[batch * num_splits :].view(torch.float32)
    logits = logits if logits.stride(-1) == 1 else logits.contiguous()
    _sample_chunk_kernel[(batch, num_splits)](
        logits, logits if rows is None else rows, chunk_best, chunk_index, logits.stride(0), vocab,
        NUM_SPLITS=num_splits, CHUNK=chunk, QUARTER=_QUARTER, SAMPLED=rows is not None, FAST=logits.is_cuda,
        num_warps=_NUM_WARPS, **_LAUNCH,
    )  # fmt: skip
    _sample_pick_kernel[(batch,)](
        chunk_best, chunk_index, out, NUM_SPLITS=num_splits, SPLITS_PAD=triton.next_power_of_2(num_splits),
        num_warps=1,
    )  # fmt: skip
    return out
