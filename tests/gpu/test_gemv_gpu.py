"""engine/gemv on a CUDA device: bf16 and fp16 against F.linear (an ulp of the output dtype apart at most
in a few values), rows independent of the batch, and capture in a CUDA graph."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.gpu.linear_cases import linear_cases

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("m", [1, 2, 3, 4, 8])
def test_gemv_matches_f_linear(dtype, m):
    from traceinfer.engine import gemv

    for x, w, bias, ref, ulp in linear_cases(m, dtype):
        ours, theirs = gemv.linear(x, w, bias), F.linear(x, w, bias)
        # both within a rounding of the float32 product; each other within two ulps
        assert ((ours.float() - ref).abs() <= ulp).float().mean() > 0.999
        assert ((ours.float() - theirs.float()).abs() <= 2 * ulp).all()
        rows = torch.cat([gemv.linear(x[i : i + 1], w, bias) for i in range(m)])  # one row at a time
        assert torch.equal(rows, gemv.linear(x, w, bias))


def test_gemv_in_a_cuda_graph():
    from traceinfer.engine import gemv

    x = torch.randn(2, 1024, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(6144, 1024, device="cuda", dtype=torch.bfloat16)
    gemv.linear(x, w)  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = gemv.linear(x, w)
    x.copy_(torch.randn_like(x))
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(y, gemv.linear(x, w))


def test_the_model_layers_take_the_kernel_only_where_it_was_measured_faster():
    from traceinfer.engine import gemv
    from traceinfer.engine.models.common import Linear

    o_proj = Linear(2048, 1024, bias=False).to("cuda", torch.bfloat16)
    qkv = Linear(1024, 4096, bias=False).to("cuda", torch.bfloat16)
    x1 = torch.randn(1, 2048, device="cuda", dtype=torch.bfloat16)
    h1 = torch.randn(1, 1024, device="cuda", dtype=torch.bfloat16)
    assert torch.equal(o_proj(x1), gemv.linear(x1, o_proj.weight))
    assert torch.equal(qkv(h1), F.linear(h1, qkv.weight))
    x2 = torch.randn(2, 2048, device="cuda", dtype=torch.bfloat16)
    assert torch.equal(o_proj(x2), F.linear(x2, o_proj.weight))  # 2 rows: cuBLAS
    assert not gemv.takes(x1.float(), 1024)
