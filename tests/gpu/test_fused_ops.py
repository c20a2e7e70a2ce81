"""The fused Triton kernels of fused_ops against the torch path of models/common.py, on fresh random inputs.

The ops allocate their outputs; each call here runs with torch.empty poisoned to NaN, so an element a
kernel fails to write reads NaN and fails the comparison. q and k are views of one qkv tensor, as the
models pass them.

What must match, and how closely:
- bit-exact, every dtype: the residual sum, RoPE without the per-head norm, SiLU-and-mul. Each rounds to
  the input dtype exactly where torch rounds, and products of two bf16 values are exact in float32.
- RMSNorm (add_rms_norm; qk_norm_rope with weights): float32 within 1e-5 relative. In bf16 the sum of
  squares is added in another order than torch's reduction, which can move the float32 rstd by an ulp
  and flip the rounding of a normalised value by one bf16 ulp; the weight multiply can stretch that to 2
  ulps of the output, and RoPE, a difference of two rounded products, to a fraction of the head's largest
  value (not of each output, which may cancel to near zero). Such elements must be rare: at most 0.1% of
  the output, plus 2.
"""

from __future__ import annotations

import math

import pytest
import torch

from traceinfer.engine.models.common import apply_rope, rms_norm, silu_and_mul

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
fused_ops = pytest.importorskip("traceinfer.engine.fused_ops")  # imports triton

DEVICE = "cuda"
EPS = 1e-6
TOKENS = (1, 7, 256, 8192)
DTYPES = (torch.bfloat16, torch.float32)
ROPE_POSITIONS = 40960  # Qwen3's max_position_embeddings


@pytest.fixture
def poisoned(monkeypatch):
    """Run fn(*args) with every torch.empty filled with NaN."""
    real_empty = torch.empty

    def call(fn, *args):
        with monkeypatch.context() as m:
            m.setattr(torch, "empty", lambda *a, **k: real_empty(*a, **k).fill_(math.nan))
            return fn(*args)

    return call


def ordered_bits(x: torch.Tensor) -> torch.Tensor:
    """bf16/fp16 values as integers whose differences count ulps (+0 and -0 both map to 0)."""
    bits = x.view(torch.int16).to(torch.int32)
    return torch.where(bits < 0, -(bits & 0x7FFF), bits)


def assert_matches(out: torch.Tensor, ref: torch.Tensor, exact: bool, per_head: bool = False) -> None:
    """exact: bit for bit. Otherwise float32 within 1e-5 relative; bf16 differing in at most 0.1% of the
    elements (plus 2), each by at most 2 ulps, or with per_head by at most 2^-4 of its head's largest |value|."""
    assert out.shape == ref.shape and out.dtype == ref.dtype
    assert not out.isnan().any(), "an output element was left unwritten (NaN)"
    if exact:
        assert torch.equal(out, ref), f"max |diff| {(out.float() - ref.float()).abs().max().item()}"
        return
    if out.dtype == torch.float32:
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())
        return
    ulps = (ordered_bits(out) - ordered_bits(ref)).abs()
    mismatched = int((ulps > 0).sum())
    assert mismatched <= 1e-3 * out.numel() + 2, f"{mismatched} of {out.numel()} elements differ"
    if per_head:
        diff = (out.float() - ref.float()).abs()
        assert (diff <= 2**-4 * ref.float().abs().amax(-1, keepdim=True)).all(), f"max |diff| {diff.max().item()}"
    else:
        assert ulps.max().item() <= 2, f"{ulps.max().item()} ulps apart"


def rope_tables(head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 [P, D] cos/sin built as RotaryEmbedding builds them (theta 1e6, as Qwen3)."""
    inv_freq = 1.0 / (1e6 ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=DEVICE) / head_dim))
    freqs = torch.arange(ROPE_POSITIONS, dtype=torch.float32, device=DEVICE)[:, None] * inv_freq[None, :]
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos(), emb.sin()


# -- residual add + RMSNorm ----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("hidden", [64, 1000, 1024, 2048, 4096])
@pytest.mark.parametrize("num_tokens", TOKENS)
@pytest.mark.parametrize("with_residual", [True, False], ids=["add", "first"])
def test_add_rms_norm_matches_torch(num_tokens, hidden, dtype, with_residual, poisoned):
    torch.manual_seed(num_tokens * hidden)
    x = torch.randn(num_tokens, hidden, device=DEVICE).to(dtype)
    residual = (4 * torch.randn(num_tokens, hidden, device=DEVICE)).to(dtype) if with_residual else None
    weight = (0.5 + torch.rand(hidden, device=DEVICE)).to(dtype)
    out, new_residual = poisoned(fused_ops.add_rms_norm, x, residual, weight, EPS)
    total = x + residual if with_residual else x
    assert_matches(new_residual, total, exact=True)
    if not with_residual:
        assert new_residual is x
    assert_matches(out, rms_norm(total, weight, EPS), exact=False)


def test_add_rms_norm_reads_strided_rows():
    x = torch.randn(9, 2 * 1024, device=DEVICE, dtype=torch.bfloat16)[:, :1024]  # row stride 2048
    residual = torch.randn(9, 1024, device=DEVICE, dtype=torch.bfloat16)
    weight = torch.rand(1024, device=DEVICE, dtype=torch.bfloat16)
    out, new_residual = fused_ops.add_rms_norm(x, residual, weight, EPS)
    assert_matches(new_residual, x + residual, exact=True)
    assert_matches(out, rms_norm(x + residual, weight, EPS), exact=False)


# -- per-head RMSNorm + RoPE ---------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("qk_norm", [True, False], ids=["qwen3", "llama"])
@pytest.mark.parametrize(
    "heads", [(16, 8, 128), (4, 2, 64), (4, 2, 16), (32, 8, 128)], ids=lambda h: "q{}-kv{}-d{}".format(*h)
)
@pytest.mark.parametrize("num_tokens", TOKENS)
def test_qk_norm_rope_matches_torch(num_tokens, heads, qk_norm, dtype, poisoned):
    num_heads, num_kv_heads, head_dim = heads
    torch.manual_seed(num_tokens + head_dim)
    qkv = torch.randn(num_tokens, (num_heads + 2 * num_kv_heads) * head_dim, device=DEVICE).to(dtype)
    q = qkv[:, : num_heads * head_dim].view(num_tokens, num_heads, head_dim)
    k = qkv[:, num_heads * head_dim : (num_heads + num_kv_heads) * head_dim].view(num_tokens, num_kv_heads, head_dim)
    q_weight = (0.5 + torch.rand(head_dim, device=DEVICE)).to(dtype) if qk_norm else None
    k_weight = (0.5 + torch.rand(head_dim, device=DEVICE)).to(dtype) if qk_norm else None
    cos, sin = rope_tables(head_dim)
    positions = torch.randint(0, ROPE_POSITIONS, (num_tokens,), device=DEVICE)
    positions[0] = ROPE_POSITIONS - 1  # the table's last row
    q_out, k_out = poisoned(fused_ops.qk_norm_rope, q, k, q_weight, k_weight, EPS, cos, sin, positions)

    # the torch path, as RotaryEmbedding.forward runs it on CPU
    q_ref, k_ref = (rms_norm(q, q_weight, EPS), rms_norm(k, k_weight, EPS)) if qk_norm else (q, k)
    c = cos[positions].unsqueeze(1).to(dtype)
    s = sin[positions].unsqueeze(1).to(dtype)
    for out, ref in ((q_out, apply_rope(q_ref, c, s)), (k_out, apply_rope(k_ref, c, s))):
        assert out.is_contiguous()
        # with the norm, a flipped normalised element moves both outputs of its pair by about its own ulp,
        # which can be many ulps of an output that cancels to near zero: bounded by the head's scale
        assert_matches(out, ref, exact=not qk_norm, per_head=True)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("num_tokens", TOKENS)
def test_qk_norm_rope_stores_the_kv_cache_as_store_kv_does(num_tokens, dtype):
    """With a KVStore the kernel also writes the rotated k and the step's v to their cache slots: the same
    bytes as the backends' store_kv of its outputs; padding slots (-1) and every other slot stay untouched."""
    from traceinfer.engine.attention.triton_backend import store_kv

    torch.manual_seed(num_tokens)
    num_heads, num_kv_heads, head_dim, block = 16, 8, 128, 16
    qkv = torch.randn(num_tokens, (num_heads + 2 * num_kv_heads) * head_dim, device=DEVICE).to(dtype)
    q, k, v = (t.view(num_tokens, -1, head_dim) for t in qkv.split(
        [num_heads * head_dim, num_kv_heads * head_dim, num_kv_heads * head_dim], dim=-1))  # fmt: skip
    w = (0.5 + torch.rand(head_dim, device=DEVICE)).to(dtype)
    cos, sin = rope_tables(head_dim)
    positions = torch.randint(0, ROPE_POSITIONS, (num_tokens,), device=DEVICE)
    num_blocks = num_tokens // block + 4
    slots = torch.randperm(num_blocks * block, device=DEVICE)[:num_tokens]
    slots[::3] = -1  # padding tokens
    caches = [torch.full((num_blocks, block, num_kv_heads, head_dim), float("nan"), device=DEVICE, dtype=dtype)
              for _ in range(2)]  # fmt: skip
    q_out, k_out = fused_ops.qk_norm_rope(q, k, w, w, EPS, cos, sin, positions, fused_ops.KVStore(v, *caches, slots))
    want = [torch.full_like(caches[0], float("nan")) for _ in range(2)]
    store_kv(k_out, v, *want, slots)
    for got, ref in zip(caches, want):
        torch.testing.assert_close(got, ref, rtol=0, atol=0, equal_nan=True)
    assert torch.equal(q_out, fused_ops.qk_norm_rope(q, k, w, w, EPS, cos, sin, positions)[0])


# -- SiLU(gate) * up -----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("intermediate", [64, 1000, 3072, 6144])
@pytest.mark.parametrize("num_tokens", TOKENS)
def test_silu_and_mul_matches_torch(num_tokens, intermediate, dtype, poisoned):
    torch.manual_seed(num_tokens + intermediate)
    gate_up = (3 * torch.randn(num_tokens, 2 * intermediate, device=DEVICE)).to(dtype)
    out = poisoned(fused_ops.silu_and_mul, gate_up)
    assert_matches(out, silu_and_mul(gate_up), exact=True)


def test_silu_and_mul_extreme_inputs():
    gate = torch.tensor([-1e4, -100.0, -88.0, -20.0, -1e-30, 0.0, 1e-30, 20.0, 88.0, 100.0, 1e4], device=DEVICE)
    gate_up = torch.cat([gate, torch.full_like(gate, 1.5)])[None]
    for dtype in (torch.float32, torch.bfloat16):
        x = gate_up.to(dtype)
        assert_matches(fused_ops.silu_and_mul(x), silu_and_mul(x), exact=True)


# -- CUDA graphs ---------------------------------------------------------------------------------


def test_ops_replay_in_a_cuda_graph():
    """Captured once, replayed on new inputs in the same buffers: the results follow the inputs."""
    torch.manual_seed(0)
    T, H, heads, D, inter = 1, 1024, (16, 8), 128, 3072
    x = torch.empty(T, H, device=DEVICE, dtype=torch.bfloat16)
    residual = torch.empty_like(x)
    weight = torch.rand(H, device=DEVICE, dtype=torch.bfloat16)
    qkv = torch.empty(T, (heads[0] + heads[1]) * D, device=DEVICE, dtype=torch.bfloat16)
    q, k = qkv[:, : heads[0] * D].view(T, heads[0], D), qkv[:, heads[0] * D :].view(T, heads[1], D)
    norm_w = torch.rand(D, device=DEVICE, dtype=torch.bfloat16)
    cos, sin = rope_tables(D)
    positions = torch.zeros(T, dtype=torch.int64, device=DEVICE)
    gate_up = torch.empty(T, 2 * inter, device=DEVICE, dtype=torch.bfloat16)

    def step():
        return (
            *fused_ops.add_rms_norm(x, residual, weight, EPS),
            *fused_ops.qk_norm_rope(q, k, norm_w, norm_w, EPS, cos, sin, positions),
            fused_ops.silu_and_mul(gate_up),
        )

    def fill(seed):
        g = torch.Generator(device=DEVICE).manual_seed(seed)
        for t in (x, residual, qkv, gate_up):
            t.copy_(torch.randn(t.shape, device=DEVICE, generator=g))
        positions.fill_(seed * 1000 + 7)

    fill(1)
    step()  # compile outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = step()
    for seed in (2, 3):
        fill(seed)
        graph.replay()
        for got, want in zip(captured, step()):
            assert torch.equal(got, want)
