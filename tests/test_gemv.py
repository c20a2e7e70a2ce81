"""engine/gemv: the few-row linear layer's Triton kernel against F.linear, on CPU under TRITON_INTERPRET=1
(float32: the interpreter truncates casts to bf16). The bf16 checks and the timings are on the GPU
(tests/gpu/test_gemv_gpu.py, scripts/gemv_bench.py)."""

from __future__ import annotations

import pytest
import torch

from tests.interpreted import run_interpreted


def interpreted_kernel_checks() -> None:
    """Run with TRITON_INTERPRET=1 set before triton is imported (test_gemv_interpreted does)."""
    import torch.nn.functional as F

    from traceinfer.engine import gemv

    g = torch.Generator().manual_seed(0)
    for m, n, k, bias in ((1, 40, 70, False), (3, 33, 129, True), (8, 16, 64, True), (5, 100, 300, False)):
        x, w = torch.randn(m, k, generator=g), torch.randn(n, k, generator=g)
        b = torch.randn(n, generator=g) if bias else None
        for cfg in (None, (2, 32, 1), (32, 128, 4)):
            y = gemv.linear(x, w, b, cfg)
            assert y.shape == (m, n) and y.dtype == x.dtype
            torch.testing.assert_close(y, F.linear(x, w, b), rtol=1e-5, atol=1e-4)
        # a row's output does not depend on the rows beside it (CUDA graphs pad the batch)
        assert torch.equal(gemv.linear(x[:1], w, b), gemv.linear(x, w, b)[:1])
    # strided rows of x (a view) are fine; a weight whose K is not contiguous is refused
    x = torch.randn(4, 2 * 64, generator=g)[:, ::1][:, :64]
    w = torch.randn(24, 64, generator=g)
    torch.testing.assert_close(gemv.linear(x, w), F.linear(x, w), rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError, match="M <= 8"):
        gemv.linear(torch.randn(9, 64), w)
    with pytest.raises(ValueError, match="unit stride"):
        gemv.linear(torch.randn(2, 64), torch.randn(64, 24).t())


def test_gemv_interpreted():
    run_interpreted("tests.test_gemv", "interpreted_kernel_checks")


def test_a_linear_layer_keeps_torch_on_cpu():
    """The model's Linear dispatches to the kernel only for CUDA 16-bit inputs of few rows; on CPU it is
    nn.Linear."""
    from traceinfer.engine.models.common import Linear

    layer = Linear(16, 8)
    x = torch.randn(2, 16)
    assert torch.equal(layer(x), torch.nn.functional.linear(x, layer.weight, layer.bias))
