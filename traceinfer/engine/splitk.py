"""A linear layer for decode batches (16 to 256 rows) as a split-K Triton GEMM (CUDA only), where it is tuned.

A decode step of the bench multiplies 16-256 rows by each weight matrix. cuBLAS's tiles at those shapes give
few programs: on the H200 its four Qwen3-0.6B projections reach 19-53% of their bytes floor (o_proj 1024 x
2048 at 16 rows: 5.12 us against 1.02; scripts/gemv_bench.py --rows, 2026-12-01), 0.69-0.80 ms a step
against a floor of 0.21-0.29 ms. Here the K dimension is cut into ``splits`` slices as well as M and N into
tiles, so that a 1024-feature projection still spreads over the SMs; each program multiplies its slice with
tl.dot (float32 accumulators) and writes a float32 partial tile; the program that finishes a tile last (an
atomic count per tile) sums the partials in slice order and writes the output. The sum's order is fixed, so
the result does not depend on which program came last: the same inputs give the same bits, run after run.
A row's output does not depend on the rows beside it (CUDA graphs pad the batch).

The model's layers take it when their ``splitk`` is on (default models.common.SPLITK, on), the device is the
one ``TUNED`` was measured on (``TUNED_DEVICE``; elsewhere they stay on cuBLAS until scripts/gemv_bench.py
--splitk has been run there) and ``TUNED`` lists their shape and row count. On the H200 (2026-12-01) it beats
cuBLAS by 1.05-1.33x on the o and down projections at 16 and 64 rows. The bench's first 32 and 64 requests
gained +1.6% and +1.1% (medians of 12 paired rounds, every round ahead, scripts/engine_ab.py splitk); its
256 requests gained +0.11..+0.57% in four paired rounds, inside the passes' +-0.4%: not resolved. A variant with
silu(gate) * up made in the down projection's loads was measured and removed: every output tile recomputed
the activations, 0.63x silu_and_mul + cuBLAS at 16 rows, 0.07x at 256. Launch grids depend on shapes only:
the op can be captured in a CUDA graph. Set TRITON_INTERPRET=1 to run it on CPU tensors (float32).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

MIN_ROWS, MAX_ROWS = 9, 256  # below: gemv or cuBLAS; above: prefill-sized, cuBLAS's tiles fill the GPU


@dataclass(frozen=True)
class Config:
    block_m: int = 16
    block_n: int = 64
    block_k: int = 128
    splits: int = 4
    num_warps: int = 4
    num_stages: int = 3


# (N, K) -> [(most rows, config), ...] ascending: the best of scripts/gemv_bench.py --splitk for each weight
# shape and row count where it beat cuBLAS; the model's layers use the kernel only there. H200, 2026-12-01:
# Qwen3-0.6B's o (1024 x 2048) and down (1024 x 3072) projections at 16 and 64 rows (1.05-1.33x cuBLAS);
# qkv and gate_up at any count, and all four at 256 rows, stay on cuBLAS.
TUNED_DEVICE = "NVIDIA H200"  # the device the configs below were measured on (a prefix of its CUDA name)
TUNED: dict[tuple[int, int], list[tuple[int, Config]]] = {
    (1024, 2048): [(16, Config(16, 32, 128, 8, 4, 3)), (64, Config(64, 32, 128, 4, 4, 3))],
    (1024, 3072): [(16, Config(16, 32, 128, 8, 4, 3)), (64, Config(64, 32, 256, 4, 4, 3))],
}


def config_for(m: int, n: int, k: int) -> Config | None:
    """The tuned config for m rows times an [n, k] weight: the first entry of its shape that holds m rows."""
    for most_rows, cfg in TUNED.get((n, k), ()):
        if m <= most_rows:
            return cfg
    return None


@triton.jit
def _finish(total, b_ptr, y_ptr, m, n, stride_ym, out_mask, n_ok, HAS_BIAS: tl.constexpr):
    if HAS_BIAS:
        total += tl.load(b_ptr + n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(y_ptr + m[:, None] * stride_ym + n[None, :], total.to(y_ptr.dtype.element_ty), mask=out_mask)


@triton.jit
def _splitk_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr, part_ptr, count_ptr, M, N, K, k_per_split, stride_xm, stride_wn, stride_ym,
    SPLITS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    HAS_BIAS: tl.constexpr,
):  # fmt: skip
    # grid (cdiv(N, BLOCK_N), cdiv(M, BLOCK_M), SPLITS): program (n, m, s) multiplies rows m, features n over
    # K slice s = [s * k_per_split, (s + 1) * k_per_split), k_per_split a multiple of BLOCK_K
    pid_n, pid_m, s = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok, n_ok = m < M, n < N
    x_rows = x_ptr + m.to(tl.int64)[:, None] * stride_xm
    w_cols = w_ptr + n.to(tl.int64)[None, :] * stride_wn
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(s * k_per_split, (s + 1) * k_per_split, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        k_ok = k < K
        x = tl.load(x_rows + k[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        w = tl.load(w_cols + k[:, None], mask=k_ok[:, None] & n_ok[None, :], other=0.0, eviction_policy="evict_first")
        acc += tl.dot(x, w)
    out_mask = m_ok[:, None] & n_ok[None, :]
    if SPLITS == 1:
        _finish(acc, b_ptr, y_ptr, m, n, stride_ym, out_mask, n_ok, HAS_BIAS)
    else:
        # partials [SPLITS, M, N] float32; the tile's last program to arrive sums them in slice order
        tile = m[:, None] * N + n[None, :]
        tl.store(part_ptr + s * M * N + tile, acc, mask=out_mask)
        tl.debug_barrier()  # every thread's partial is written before the count says so
        counter = count_ptr + pid_m * tl.num_programs(0) + pid_n
        arrived = tl.atomic_add(counter, 1, sem="acq_rel")
        if arrived == SPLITS - 1:
            total = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
            for i in range(SPLITS):
                total += tl.load(part_ptr + i * M * N + tile, mask=out_mask, other=0.0, cache_modifier=".cg")
            tl.atomic_xchg(counter, 0)  # ready for the next launch (one stream: launches do not overlap)
            _finish(total, b_ptr, y_ptr, m, n, stride_ym, out_mask, n_ok, HAS_BIAS)


_COUNTERS: dict[torch.device, torch.Tensor] = {}
_MAX_TILES = 1 << 14


def _counters(device: torch.device) -> torch.Tensor:
    """One int32 count per output tile, zero between launches (each launch leaves them at zero)."""
    counters = _COUNTERS.get(device)
    if counters is None:
        counters = _COUNTERS[device] = torch.zeros(_MAX_TILES, dtype=torch.int32, device=device)
    return counters


@functools.cache
def tuned_on(device: torch.device) -> bool:
    """Whether ``TUNED``'s configs were measured on this CUDA device (its name starts with TUNED_DEVICE)."""
    return torch.cuda.get_device_name(device).startswith(TUNED_DEVICE)


def takes(x: torch.Tensor, features: int) -> bool:
    """Whether a linear layer can run here on x rather than on cuBLAS: x [M, K] on the CUDA device TUNED was
    measured on, in 16 bits with unit stride along K, MIN_ROWS <= M <= MAX_ROWS, and a tuned config for M
    rows of this weight shape."""
    return (
        x.is_cuda and x.dtype in (torch.bfloat16, torch.float16) and x.dim() == 2 and x.stride(1) == 1
        and MIN_ROWS <= x.shape[0] <= MAX_ROWS and config_for(x.shape[0], features, x.shape[1]) is not None
        and tuned_on(x.device)
    )  # fmt: skip


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, cfg: Config | None = None) -> torch.Tensor:
    """F.linear(x, weight, bias) for x [M, K] and weight [N, K], both with unit stride along K; ``cfg`` in
    place of ``config_for``'s (a sweep)."""
    m, k = x.shape[0], x.shape[-1]
    n = weight.shape[0]
    cfg = cfg or config_for(m, n, k) or Config()
    if x.dim() != 2 or weight.shape[1] != k or x.stride(1) != 1 or weight.stride(1) != 1:
        raise ValueError(
            f"splitk takes x [M, K] and weight [N, K] with unit stride along K; got {tuple(x.shape)} and {tuple(weight.shape)}"
        )
    grid = (triton.cdiv(n, cfg.block_n), triton.cdiv(m, cfg.block_m), cfg.splits)
    if grid[0] * grid[1] > _MAX_TILES:
        raise ValueError(f"splitk takes at most {_MAX_TILES} output tiles, got {grid[0] * grid[1]} for {m} x {n}")
    k_per_split = triton.cdiv(triton.cdiv(k, cfg.splits), cfg.block_k) * cfg.block_k
    y = torch.empty(m, n, dtype=x.dtype, device=x.device)
    part = torch.empty(cfg.splits, m, n, dtype=torch.float32, device=x.device) if cfg.splits > 1 else y
    _splitk_kernel[grid](
        x, weight, bias if bias is not None else weight, y, part, _counters(x.device), m, n, k, k_per_split,
        x.stride(0), weight.stride(0), y.stride(0),
        SPLITS=cfg.splits, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, HAS_BIAS=bias is not None,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )  # fmt: skip
    return y
