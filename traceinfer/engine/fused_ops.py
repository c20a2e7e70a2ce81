"""Fused Triton kernels for the elementwise work between a decoder layer's matmuls (CUDA only).

The torch path in models/common.py spends a dozen small kernels on what happens between two matmuls:
RMSNorm alone is cast, pow, mean, add, rsqrt, mul, cast, mul, and the residual add, the Qwen3 per-head
q/k norm, RoPE (gathers of cos/sin, rotate_half's neg and cat, two muls, an add) and SiLU * up add more.
Under CUDA graphs, where launches cost nothing on the host, these still took 44% of a Qwen3-0.6B decode
step's GPU time (nsys, H100, bf16): each is a 1-4 us kernel that reads and writes whole rows. Here each
op is one kernel that reads its inputs once and writes its outputs once:

- ``add_rms_norm``: residual add + RMSNorm, one program per row.
- ``qk_norm_rope``: per-head RMSNorm of q and k (Qwen3) then neox-style RoPE, one program per token; given
  a ``KVStore`` it also writes the rotated k and the step's v into their KV-cache slots, so the attention
  backend's own store kernel does not run (on the H200 bench that kernel was 1.1% of GPU time, 55 ms).
- ``silu_and_mul``: SiLU(gate) * up over the fused gate_up projection.

Numerics are the torch path's, rounding for rounding. Arithmetic is float32, and every value the torch
path rounds to the input dtype (the residual sum, the normalised row before the weight multiply, each RoPE
product and their sum, SiLU before the multiply by up) is rounded to that dtype here too, round to
nearest even, as PyTorch's elementwise kernels do. Products of two bf16 or fp16 values are exact in float32,
so those steps are bit-exact. Kernels are built with ``enable_fp_fusion=False``: an ``a * b + c`` fused into
one FMA rounds once where torch rounds twice. What remains different is the order of a float32 sum of
squares (RMSNorm's mean): it can move the float32 rstd by an ulp, which flips the rounding of a normalised
bf16 value by one ulp (two after the weight multiply) in a few elements per million: 27 of 8.4M for
8192 x 1024 random rows on an H100. SiLU-and-mul, the residual sum and RoPE alone were bit-exact there.

Launch grids depend on tensor shapes only and nothing waits on the host: the ops can be captured in a CUDA
graph. Outputs are new contiguous tensors (inputs are never written). Set TRITON_INTERPRET=1 to run the
kernels on CPU tensors when debugging without a GPU (float32 only: the interpreter truncates casts to bf16).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

# a * b + c stays two roundings, as in the torch path's separate kernels; libdevice keeps denormals, as
# PyTorch's kernels (built without -ftz) do
_LAUNCH = {"enable_fp_fusion": False, "enable_reflect_ftz": False}


# -- kernels -------------------------------------------------------------------------------------


@triton.jit
def _round(x, DTYPE: tl.constexpr):
    """x float32 rounded to DTYPE and back: where the torch path stores an intermediate in the input dtype."""
    return x.to(DTYPE).to(tl.float32)


@triton.jit
def _normalise(x, mean_sq, w, eps, DTYPE: tl.constexpr):
    """RMSNorm's tail as common.rms_norm rounds it: weight * (x * rsqrt(mean_sq + eps)).to(DTYPE).

    x float32 (broadcasting against mean_sq), w in its own dtype; returns float32 for the caller to round.
    """
    normed = _round(x * tl.math.rsqrt(mean_sq + eps), DTYPE)
    return w.to(tl.float32) * normed


@triton.jit
def _add_rms_norm_kernel(
    x_ptr, res_ptr, w_ptr, out_ptr, res_out_ptr,
    stride_x, stride_res, stride_out, stride_res_out, n_cols, inv_n, eps,
    HAS_RESIDUAL: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    # one program per row of n_cols <= BLOCK elements
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    DTYPE = x_ptr.dtype.element_ty
    x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        r = tl.load(res_ptr + row * stride_res + cols, mask=mask, other=0.0).to(tl.float32)
        x = _round(x + r, DTYPE)  # the new residual: torch's x + residual, in the input dtype
        tl.store(res_out_ptr + row * stride_res_out + cols, x.to(DTYPE), mask=mask)
    mean_sq = tl.sum(x * x, 0) * inv_n  # torch's mean is sum * (1 / n) too
    w = tl.load(w_ptr + cols, mask=mask, other=0.0)
    out = _normalise(x, mean_sq, w, eps, DTYPE)
    tl.store(out_ptr + row * stride_out + cols, out.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _norm_rope_heads(
    x_ptr, out_ptr, w_ptr, stride_h, stride_out_h, cos1, cos2, sin1, sin2, eps, inv_d,
    NUM_HEADS: tl.constexpr, HEADS_PAD: tl.constexpr, HALF: tl.constexpr, HALF_PAD: tl.constexpr,
    HAS_NORM: tl.constexpr,
):  # fmt: skip
    """One token's [NUM_HEADS, 2 * HALF] rows: RMSNorm each head (HAS_NORM), then rotate.

    The two halves of each head are held apart (x1 = [:HALF], x2 = [HALF:]) because rotate_half pairs
    them: out = [x1 * cos1 - x2 * sin1, x2 * cos2 + x1 * sin2], each product and each sum rounded to DTYPE.
    cos*/sin* [1, HALF_PAD] float32, already rounded to DTYPE.
    """
    DTYPE = x_ptr.dtype.element_ty
    h = tl.arange(0, HEADS_PAD)[:, None]
    d = tl.arange(0, HALF_PAD)[None, :]
    mask = (h < NUM_HEADS) & (d < HALF)
    src = x_ptr + h * stride_h + d
    x1 = tl.load(src, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(src + HALF, mask=mask, other=0.0).to(tl.float32)
    if HAS_NORM:
        mean_sq = (tl.sum(x1 * x1, 1) + tl.sum(x2 * x2, 1))[:, None] * inv_d
        w1 = tl.load(w_ptr + d, mask=d < HALF, other=0.0)
        w2 = tl.load(w_ptr + HALF + d, mask=d < HALF, other=0.0)
        x1 = _round(_normalise(x1, mean_sq, w1, eps, DTYPE), DTYPE)
        x2 = _round(_normalise(x2, mean_sq, w2, eps, DTYPE), DTYPE)
    o1 = _round(x1 * cos1, DTYPE) - _round(x2 * sin1, DTYPE)
    o2 = _round(x2 * cos2, DTYPE) + _round(x1 * sin2, DTYPE)
    dst = out_ptr + h * stride_out_h + d
    tl.store(dst, o1.to(DTYPE), mask=mask)
    tl.store(dst + HALF, o2.to(DTYPE), mask=mask)
    return o1, o2, h, d, mask


@triton.jit
def _qk_norm_rope_kernel(
    q_ptr, k_ptr, q_out_ptr, k_out_ptr, q_w_ptr, k_w_ptr, cos_ptr, sin_ptr, pos_ptr,
    v_ptr, k_cache_ptr, v_cache_ptr, slot_ptr,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_oqt, stride_oqh, stride_okt, stride_okh,
    stride_cos, stride_sin, stride_vt, stride_vh, stride_cb, stride_cs, stride_ch, eps, inv_d,
    NUM_Q_HEADS: tl.constexpr, Q_HEADS_PAD: tl.constexpr, NUM_KV_HEADS: tl.constexpr, KV_HEADS_PAD: tl.constexpr,
    HALF: tl.constexpr, HALF_PAD: tl.constexpr, HAS_NORM: tl.constexpr, STORE: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
):  # fmt: skip
    # one program per token: its cos/sin row is read once for all its q and k heads. STORE: the rotated k
    # and the token's v also go to its KV-cache slot (slot < 0: a padding token, nothing stored)
    t = tl.program_id(0).to(tl.int64)
    pos = tl.load(pos_ptr + t).to(tl.int64)
    DTYPE = q_ptr.dtype.element_ty
    d = tl.arange(0, HALF_PAD)[None, :]
    d_ok = d < HALF
    # the tables are float32; torch casts the gathered rows to the input dtype before multiplying
    cos1 = _round(tl.load(cos_ptr + pos * stride_cos + d, mask=d_ok, other=0.0), DTYPE)
    cos2 = _round(tl.load(cos_ptr + pos * stride_cos + HALF + d, mask=d_ok, other=0.0), DTYPE)
    sin1 = _round(tl.load(sin_ptr + pos * stride_sin + d, mask=d_ok, other=0.0), DTYPE)
    sin2 = _round(tl.load(sin_ptr + pos * stride_sin + HALF + d, mask=d_ok, other=0.0), DTYPE)
    _norm_rope_heads(
        q_ptr + t * stride_qt, q_out_ptr + t * stride_oqt, q_w_ptr, stride_qh, stride_oqh,
        cos1, cos2, sin1, sin2, eps, inv_d,
        NUM_HEADS=NUM_Q_HEADS, HEADS_PAD=Q_HEADS_PAD, HALF=HALF, HALF_PAD=HALF_PAD, HAS_NORM=HAS_NORM,
    )  # fmt: skip
    k1, k2, h, d, mask = _norm_rope_heads(
        k_ptr + t * stride_kt, k_out_ptr + t * stride_okt, k_w_ptr, stride_kh, stride_okh,
        cos1, cos2, sin1, sin2, eps, inv_d,
        NUM_HEADS=NUM_KV_HEADS, HEADS_PAD=KV_HEADS_PAD, HALF=HALF, HALF_PAD=HALF_PAD, HAS_NORM=HAS_NORM,
    )  # fmt: skip
    if STORE:
        slot = tl.load(slot_ptr + t)
        mask = mask & (slot >= 0)
        row = (slot // BLOCK_SIZE) * stride_cb + (slot % BLOCK_SIZE) * stride_cs + h * stride_ch + d
        tl.store(k_cache_ptr + row, k1.to(k_cache_ptr.dtype.element_ty), mask=mask)
        tl.store(k_cache_ptr + row + HALF, k2.to(k_cache_ptr.dtype.element_ty), mask=mask)
        src = v_ptr + t * stride_vt + h * stride_vh + d
        tl.store(v_cache_ptr + row, tl.load(src, mask=mask), mask=mask)
        tl.store(v_cache_ptr + row + HALF, tl.load(src + HALF, mask=mask), mask=mask)


@triton.jit
def _silu_and_mul_kernel(x_ptr, out_ptr, stride_x, stride_out, n_cols, BLOCK: tl.constexpr, LIBDEVICE: tl.constexpr):
    # grid (rows, column blocks); row r of x is [gate | up], n_cols each
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < n_cols
    DTYPE = x_ptr.dtype.element_ty
    gate = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(x_ptr + row * stride_x + n_cols + cols, mask=mask, other=0.0).to(tl.float32)
    # F.silu's formula on CUDA, x / (1 + expf(-x)), with a correctly rounded divide and libdevice's expf (the
    # one nvcc links): tl.exp is ex2.approx, a few ulp off. The CPU interpreter has no libdevice.
    if LIBDEVICE:
        e = libdevice.exp(-gate)
    else:
        e = tl.exp(-gate)
    act = _round(tl.math.div_rn(gate, 1.0 + e), DTYPE)
    tl.store(out_ptr + row * stride_out + cols, (act * up).to(DTYPE), mask=mask)


# -- launchers -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class KVStore:
    """Where qk_norm_rope also writes a step's K/V: v [T, Hkv, D], the paged caches [num_blocks, block_size,
    Hkv, D] and each token's slot [T] int64 (block * block_size + offset; < 0 stores nothing)."""

    v: torch.Tensor
    k_cache: torch.Tensor
    v_cache: torch.Tensor
    slot_mapping: torch.Tensor

    def checked(self, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        v, kc, vc = self.v, self.k_cache, self.v_cache
        if v.shape != k.shape or v.dtype != k.dtype:
            raise ValueError(f"v {tuple(v.shape)} {v.dtype} does not match k {tuple(k.shape)} {k.dtype}")
        if kc.shape[2:] != k.shape[1:] or vc.shape != kc.shape or kc.stride() != vc.stride() or kc.stride(-1) != 1:
            raise ValueError(f"caches {tuple(kc.shape)} and {tuple(vc.shape)} need one layout [blocks, block_size, "
                             f"{k.shape[1]}, {k.shape[2]}] with a contiguous last dim")  # fmt: skip
        if kc.shape[1] & (kc.shape[1] - 1) or self.slot_mapping.shape != (k.shape[0],):
            raise ValueError(f"need a power-of-two block_size and one slot per token, got block_size {kc.shape[1]} "
                             f"and slots {tuple(self.slot_mapping.shape)}")  # fmt: skip
        return (v if v.stride(-1) == 1 else v.contiguous()), kc, vc, self.slot_mapping


def _rows(x: torch.Tensor) -> torch.Tensor:
    """x [..., N] as [R, N] with unit stride along N (a view when the layout allows)."""
    x = x if x.stride(-1) == 1 else x.contiguous()
    return x.reshape(-1, x.shape[-1])


def _row_warps(block: int) -> int:
    # about 8 elements (16 bytes of bf16) per thread, 1 to 8 warps
    return max(1, min(8, block // 256))


def add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """x, residual [..., N]; weight [N] -> (RMSNorm(x + residual) * weight, x + residual).

    With residual None the sum is x itself, returned as is. The sum is rounded to x's dtype before it is
    normalised, as in the torch path (common.rms_norm over ``x + residual``).
    """
    n = x.shape[-1]
    if weight.shape != (n,):
        raise ValueError(f"weight has shape {tuple(weight.shape)}, rows have {n} elements")
    weight = weight.contiguous()
    x2 = _rows(x)
    out = torch.empty(x.shape, dtype=torch.promote_types(x.dtype, weight.dtype), device=x.device)
    if residual is None:
        new_residual = x
        res2 = res_out2 = x2  # unused by the kernel
    else:
        if residual.shape != x.shape or residual.dtype != x.dtype:
            raise ValueError(
                f"residual {tuple(residual.shape)} {residual.dtype} does not match x {tuple(x.shape)} {x.dtype}"
            )
        res2 = _rows(residual)
        new_residual = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        res_out2 = new_residual.view(-1, n)
    out2 = out.view(-1, n)
    num_rows = x2.shape[0]
    if num_rows == 0:
        return out, new_residual
    block = triton.next_power_of_2(n)
    _add_rms_norm_kernel[(num_rows,)](
        x2, res2, weight, out2, res_out2,
        x2.stride(0), res2.stride(0), out2.stride(0), res_out2.stride(0), n, 1.0 / n, eps,
        HAS_RESIDUAL=residual is not None, BLOCK=block, num_warps=_row_warps(block), **_LAUNCH,
    )  # fmt: skip
    return out, new_residual


def qk_norm_rope(
    q: torch.Tensor,  # [T, Hq, D]; views into one qkv tensor are fine
    k: torch.Tensor,  # [T, Hkv, D]
    q_weight: torch.Tensor | None,  # [D]: Qwen3's q_norm weight; None (with k_weight None) skips the norm
    k_weight: torch.Tensor | None,
    eps: float,
    cos: torch.Tensor,  # [P, D] float32
    sin: torch.Tensor,  # [P, D] float32
    positions: torch.Tensor,  # [T] integer, each < P (not checked: that would sync with the host)
    kv_store: KVStore | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-head RMSNorm (when weights are given) then neox-style RoPE of q and k -> new contiguous q, k.

    Same values as common.rms_norm per head followed by RotaryEmbedding's rotate_half formula. With
    ``kv_store``, the rotated k and the step's v are also written to their KV-cache slots, as the attention
    backends' store_kv writes them: one kernel, and one launch, fewer a layer.
    """
    num_tokens, num_q_heads, head_dim = q.shape
    num_kv_heads = k.shape[1]
    if k.shape != (num_tokens, num_kv_heads, head_dim) or k.dtype != q.dtype:
        raise ValueError(f"k {tuple(k.shape)} {k.dtype} does not match q {tuple(q.shape)} {q.dtype}")
    if head_dim % 2 or cos.shape[-1] != head_dim or sin.shape != cos.shape:
        raise ValueError(f"RoPE needs an even head_dim and [P, {head_dim}] tables, got {tuple(cos.shape)}")
    has_norm = q_weight is not None
    if has_norm != (k_weight is not None):
        raise ValueError("give both q_weight and k_weight, or neither")
    if has_norm and {(tuple(w.shape), w.dtype) for w in (q_weight, k_weight)} != {((head_dim,), q.dtype)}:
        raise ValueError(f"q/k norm weights must be [{head_dim}] in {q.dtype}")
    q_out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    k_out = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    if num_tokens == 0:
        return q_out, k_out
    q = q if q.stride(-1) == 1 else q.contiguous()
    k = k if k.stride(-1) == 1 else k.contiguous()
    cos = cos if cos.stride(-1) == 1 else cos.contiguous()
    sin = sin if sin.stride(-1) == 1 else sin.contiguous()
    q_w = q_weight.contiguous() if has_norm else q  # unused without the norm
    k_w = k_weight.contiguous() if has_norm else k
    half = head_dim // 2
    q_heads_pad, kv_heads_pad, half_pad = map(triton.next_power_of_2, (num_q_heads, num_kv_heads, half))
    if kv_store is not None:
        v, k_cache, v_cache, slots = kv_store.checked(k)
    else:
        v, k_cache, v_cache, slots = k, k, k, positions  # unused by the kernel
    _qk_norm_rope_kernel[(num_tokens,)](
        q, k, q_out, k_out, q_w, k_w, cos, sin, positions, v, k_cache, v_cache, slots,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1),
        q_out.stride(0), q_out.stride(1), k_out.stride(0), k_out.stride(1),
        cos.stride(0), sin.stride(0), v.stride(0), v.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        eps, 1.0 / head_dim,
        NUM_Q_HEADS=num_q_heads, Q_HEADS_PAD=q_heads_pad, NUM_KV_HEADS=num_kv_heads, KV_HEADS_PAD=kv_heads_pad,
        HALF=half, HALF_PAD=half_pad, HAS_NORM=has_norm, STORE=kv_store is not None,
        BLOCK_SIZE=k_cache.shape[1] if kv_store is not None else 1,
        num_warps=_row_warps(q_heads_pad * half_pad), **_LAUNCH,
    )  # fmt: skip
    return q_out, k_out


def silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """gate_up [..., 2I] -> F.silu(gate) * up [..., I], each step rounded as the torch path rounds it."""
    n = gate_up.shape[-1] // 2
    if gate_up.shape[-1] != 2 * n:
        raise ValueError(f"gate_up's last dim must be even, got {gate_up.shape[-1]}")
    x2 = _rows(gate_up)
    out = torch.empty((*gate_up.shape[:-1], n), dtype=gate_up.dtype, device=gate_up.device)
    out2 = out.view(-1, n)
    num_rows = x2.shape[0]
    if num_rows == 0 or n == 0:
        return out
    block = min(1024, triton.next_power_of_2(n))
    _silu_and_mul_kernel[(num_rows, triton.cdiv(n, block))](
        x2, out2, x2.stride(0), out2.stride(0), n,
        BLOCK=block, LIBDEVICE=gate_up.is_cuda, num_warps=_row_warps(block), **_LAUNCH,
    )  # fmt: skip
    return out
