"""engine/splitk on a CUDA device: bf16 and fp16 against the float32 product, the same bits run after run and,
under one config, whatever the row count beside a row, the tile counters back at zero, capture in a CUDA graph,
the layers taking it only on the device it was tuned on, and the model's logits with it as
without it (bf16)."""

from __future__ import annotations

import pytest
import torch

from tests.gpu.linear_cases import SHAPES, linear_cases

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

# The middle one at 2 stages: at 3 its tiles (3 x (64 + 128) x 256 bf16, 288 KiB) overrun the H200's 227 KiB.
CONFIGS = [None, (16, 64, 128, 1, 4, 3), (64, 128, 256, 8, 4, 2), (16, 32, 128, 2, 4, 4)]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("m", [9, 16, 33, 64, 256])
def test_splitk_matches_the_float32_product(dtype, m):
    from traceinfer.engine import splitk

    for x, w, bias, ref, ulp in linear_cases(m, dtype):
        for c in CONFIGS:
            cfg = splitk.Config(*c) if c else None
            ours = splitk.linear(x, w, bias, cfg)
            assert ((ours.float() - ref).abs() <= 2 * ulp).all(), (tuple(w.shape), c)
            assert torch.equal(splitk.linear(x, w, bias, cfg), ours)  # the same bits again
            # Rows are independent under one config; with none given, the tuned one depends on the row count.
            fixed = cfg or splitk.config_for(m, *w.shape) or splitk.Config()
            assert torch.equal(splitk.linear(x[:9], w, bias, fixed), ours[:9])
    torch.cuda.synchronize()
    assert not splitk._counters(torch.device("cuda")).any()


def test_splitk_in_a_cuda_graph():
    from traceinfer.engine import splitk

    x = torch.randn(48, 3072, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(1024, 3072, device="cuda", dtype=torch.bfloat16) / 3072**0.5
    cfg = splitk.Config(splits=8)
    splitk.linear(x, w, None, cfg)  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = splitk.linear(x, w, None, cfg)
    for _ in range(3):
        x.copy_(torch.randn_like(x))
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(y, splitk.linear(x, w, None, cfg))


def test_the_layers_take_it_by_default_only_on_the_device_it_was_tuned_on(monkeypatch):
    from traceinfer.engine import splitk
    from traceinfer.engine.models.common import Linear

    x = torch.randn(16, 2048, device="cuda", dtype=torch.bfloat16)  # o_proj's shape at 16 rows: in TUNED
    assert Linear(2048, 1024).splitk is True
    assert splitk.takes(x, 1024) is torch.cuda.get_device_name().startswith(splitk.TUNED_DEVICE)
    splitk.tuned_on.cache_clear()
    monkeypatch.setattr(splitk, "TUNED_DEVICE", "NVIDIA B999")
    try:
        assert not splitk.takes(x, 1024)
    finally:
        splitk.tuned_on.cache_clear()


def test_the_model_with_splitk_scores_as_it_does_with_cublas(monkeypatch):
    """An eager forward of 64 positions (every projection at 64 rows) with the kernel and without it: the
    logits agree within bf16's drift over 28 layers, and their argmax at nearly every position."""
    from traceinfer import LLM
    from traceinfer.engine import splitk
    from traceinfer.engine.models.common import Linear

    monkeypatch.setattr(splitk, "TUNED", {shape: [(256, splitk.Config())] for shape in SHAPES})
    monkeypatch.setattr(splitk, "tuned_on", lambda device: True)

    llm = LLM("synthetic:qwen3-0.6b", num_kv_blocks=256, dtype="bfloat16")
    prompt = [(37 * j) % 5000 + 1 for j in range(64)]
    logits = {}
    linears = [m for m in llm.engine.runner.model.modules() if isinstance(m, Linear)]
    for enabled in (False, True):
        for layer in linears:
            layer.splitk = enabled
        logits[enabled] = llm.engine.score(prompt)
    off, on = logits[False], logits[True]
    assert on.shape == off.shape == (64, off.shape[1])
    assert (on - off).abs().max() <= 0.05 * off.abs().max()
    assert (on.argmax(-1) == off.argmax(-1)).float().mean() >= 0.9
