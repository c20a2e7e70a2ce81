"""Inputs for the linear-layer kernels' GPU tests (engine/gemv, engine/splitk): Qwen3-0.6B's projections."""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F

SHAPES = [(4096, 1024), (1024, 2048), (6144, 1024), (1024, 3072)]  # [N, K]: qkv, o, gate_up, down


def linear_cases(m: int, dtype: torch.dtype) -> Iterator[tuple]:
    """(x [m, K], w [N, K], bias or None, the float32 product, an ulp of dtype at the product's size) for each
    shape, without and with a bias; seeded by m."""
    g = torch.Generator(device="cuda").manual_seed(m)
    for n, k in SHAPES:
        x = torch.randn(m, k, device="cuda", dtype=dtype, generator=g)
        w = torch.randn(n, k, device="cuda", dtype=dtype, generator=g) / k**0.5
        b = torch.randn(n, device="cuda", dtype=dtype, generator=g)
        for bias in (None, b):
            ref = F.linear(x.float(), w.float(), None if bias is None else bias.float())
            yield x, w, bias, ref, torch.finfo(dtype).eps * ref.abs().clamp_min(1.0)
