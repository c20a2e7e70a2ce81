"""A linear layer for one row and few output features (decode at batch 1) as a Triton GEMV (CUDA only).

At batch 1 a decode step multiplies each weight matrix by one row: a projection is a stream of its
weights through the SMs. For a matrix with few output features and a long K (Qwen3-0.6B's o_proj, 1024 x
2048, and down_proj, 1024 x 3072) cuBLAS picks tiles that leave few programs to read the whole matrix:
12.4 and 7.7 us on an H200 (0.34 and 0.82 TB/s; scripts/gemv_bench.py, 2026-12-01). Here a program owns
BLOCK_N = 2 output features and walks K, so there are N / 2 programs (512 for 1024 features), each reading
its weight rows once with coalesced loads along K, the row of x coming from L2: 4.2 and 5.5 us. Where
cuBLAS's tiles give enough programs (more output features: qkv, gate_up) it is as fast as the best
configuration of this kernel, so ``takes`` leaves those to cuBLAS.

Numerics: products and sums in float32, one rounding to the output dtype at the end, bias added in
float32 before it (as cuBLAS's epilogue does). The order of the float32 sum differs from cuBLAS's, so a
value can differ from F.linear's by an ulp of the output dtype. The kernel takes up to 8 rows; the
configuration does not depend on M, and a row's output does not depend on the rows beside it (checked on
the H200 for 1 to 8 rows).

Launch grids depend on shapes only: the op can be captured in a CUDA graph. Set TRITON_INTERPRET=1 to run
it on CPU tensors (float32; the interpreter truncates casts to bf16).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

MAX_ROWS = 1  # batch 1 only: at 2, 4 and 8 rows cuBLAS was faster on 3 of the 4 projections
MAX_FEATURES = 2048  # above this cuBLAS's tiles give enough programs (qkv 4096 and gate_up 6144: 1.6-2.1 TB/s)
BLOCK_N, BLOCK_K, NUM_WARPS = 2, 128, 8  # the best of a sweep at 1 row for o_proj and down_proj (gemv_bench.py)


@triton.jit
def _gemv_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr, M, N, K, stride_xm, stride_wn, stride_ym,
    M_PAD: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, HAS_BIAS: tl.constexpr,
):  # fmt: skip
    # grid (cdiv(N, BLOCK_N),): program p computes y[:, p * BLOCK_N : (p + 1) * BLOCK_N]
    n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    m = tl.arange(0, M_PAD)
    n_ok = n < N
    m_ok = m < M
    w_rows = w_ptr + n.to(tl.int64)[:, None] * stride_wn
    x_rows = x_ptr + m[:, None] * stride_xm
    # products summed lane by lane across the K loop, reduced along K once at the end
    acc = tl.zeros([M_PAD, BLOCK_N, BLOCK_K], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        k_ok = k < K
        w = tl.load(w_rows + k[None, :], mask=n_ok[:, None] & k_ok[None, :], other=0.0, eviction_policy="evict_first")
        x = tl.load(x_rows + k[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        acc += x.to(tl.float32)[:, None, :] * w.to(tl.float32)[None, :, :]
    y = tl.sum(acc, axis=2)
    if HAS_BIAS:
        y += tl.load(b_ptr + n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(
        y_ptr + m[:, None] * stride_ym + n[None, :], y.to(y_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :]
    )


def takes(x: torch.Tensor, features: int) -> bool:
    """Whether a linear layer of ``features`` outputs runs here on x rather than on cuBLAS: x [M, K] on CUDA
    in 16 bits with unit stride along K, M <= MAX_ROWS, features <= MAX_FEATURES."""
    return (
        x.is_cuda and x.dtype in (torch.bfloat16, torch.float16) and x.dim() == 2 and x.stride(1) == 1
        and x.shape[0] <= MAX_ROWS and features <= MAX_FEATURES
    )  # fmt: skip


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, cfg=None) -> torch.Tensor:
    """F.linear(x, weight, bias) for x [M, K] with M <= 8; weight [N, K] with contiguous rows.
    ``cfg``: (BLOCK_N, BLOCK_K, num_warps) in place of the measured default (for a sweep)."""
    m, k = x.shape
    n = weight.shape[0]
    if m > 8 or weight.shape[1] != k or x.stride(1) != 1 or weight.stride(1) != 1:
        raise ValueError(
            f"gemv takes x [M <= 8, K] and weight [N, K] with unit stride along K; got {tuple(x.shape)} and "
            f"{tuple(weight.shape)}"
        )
    block_n, block_k, warps = cfg or (BLOCK_N, BLOCK_K, NUM_WARPS)
    y = torch.empty(m, n, dtype=x.dtype, device=x.device)
    _gemv_kernel[(triton.cdiv(n, block_n),)](
        x, weight, bias if bias is not None else weight, y, m, n, k, x.stride(0), weight.stride(0), y.stride(0),
        M_PAD=triton.next_power_of_2(m), BLOCK_N=block_n, BLOCK_K=block_k, HAS_BIAS=bias is not None,
        num_warps=warps,
    )  # fmt: skip
    return y
