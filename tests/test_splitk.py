"""engine/splitk: the split-K decode-batch linear layer's Triton kernel against F.linear, on CPU under
TRITON_INTERPRET=1 (float32). Its bf16 checks and timings against cuBLAS are for the GPU (scripts/gemv_bench.py
--splitk); the layers take it by default (models.common.SPLITK) on the device it was tuned on."""

from __future__ import annotations

import pytest
import torch

from tests.interpreted import run_interpreted


def interpreted_kernel_checks() -> None:
    """Run with TRITON_INTERPRET=1 set before triton is imported (test_splitk_interpreted does)."""
    import torch.nn.functional as F

    from traceinfer.engine import splitk
    from traceinfer.engine.splitk import Config

    g = torch.Generator().manual_seed(0)
    cases = ((16, 64, 256, False), (19, 70, 300, True), (40, 128, 128, True), (33, 96, 520, False))
    configs = (Config(), Config(splits=1), Config(block_m=32, block_n=32, block_k=64, splits=3), Config(splits=8, block_k=32))
    for m, n, k, bias in cases:
        x, w = torch.randn(m, k, generator=g), torch.randn(n, k, generator=g)
        b = torch.randn(n, generator=g) if bias else None
        want = F.linear(x, w, b)
        for cfg in configs:
            y = splitk.linear(x, w, b, cfg)
            assert y.shape == (m, n) and y.dtype == x.dtype
            torch.testing.assert_close(y, want, rtol=1e-4, atol=1e-3)
            # the same bits again: the counters were left at zero and the partials are summed in slice order
            assert torch.equal(splitk.linear(x, w, b, cfg), y)
        assert not splitk._counters(x.device).any()
        # a row's output does not depend on the rows beside it (CUDA graphs pad the batch)
        assert torch.equal(splitk.linear(x[:9], w, b), splitk.linear(x, w, b)[:9])
    with pytest.raises(ValueError, match="unit stride"):
        splitk.linear(torch.randn(16, 64), torch.randn(64, 24).t())


def test_splitk_interpreted():
    run_interpreted("tests.test_splitk", "interpreted_kernel_checks")


def test_config_for_takes_the_first_tuned_entry_that_holds_the_rows(monkeypatch):
    from traceinfer.engine import splitk
    from traceinfer.engine.splitk import Config

    small, large = Config(splits=8), Config(block_m=64, splits=2)
    monkeypatch.setattr(splitk, "TUNED", {(1024, 2048): [(32, small), (256, large)]})
    assert splitk.config_for(16, 1024, 2048) == splitk.config_for(32, 1024, 2048) == small
    assert splitk.config_for(33, 1024, 2048) == splitk.config_for(256, 1024, 2048) == large
    assert splitk.config_for(300, 1024, 2048) is None and splitk.config_for(16, 1024, 3072) is None


def test_splitk_is_on_by_default_and_never_takes_cpu_tensors():
    from traceinfer.engine import splitk
    from traceinfer.engine.models.common import SPLITK, Linear

    assert SPLITK is True and Linear(64, 32).splitk is True
    assert not splitk.takes(torch.randn(16, 64, dtype=torch.bfloat16), 1024)
