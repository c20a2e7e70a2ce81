"""The Triton attention backend against the torch reference, on fresh random inputs.

Every case poisons what the kernels must not read or must overwrite: cache slots outside any sequence's
context are NaN (a kernel reading past a sequence's length, or through a padded block-table entry into a
foreign block, turns its output NaN), the new tokens' slots are NaN until the store kernel writes them,
and output buffers start NaN. Block tables are random permutations, so no sequence's blocks are contiguous.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

if not torch.cuda.is_available():
    pytest.skip("needs a CUDA device", allow_module_level=True)

from traceinfer.engine.attention.flash_attn_backend import FlashAttention, flash_attn_available  # noqa: E402
from traceinfer.engine.attention.metadata import AttentionMetadata  # noqa: E402
from traceinfer.engine.attention.torch_backend import paged_attention_reference, store_kv  # noqa: E402
from traceinfer.engine.attention.triton_backend import (  # noqa: E402
    TritonAttention,
    paged_decode,
    paged_prefill,
)
from traceinfer.engine.model_runner import decode_order  # noqa: E402
from traceinfer.errors import BackendUnavailableError  # noqa: E402

pytestmark = pytest.mark.gpu

DEVICE = "cuda"
QWEN3 = dict(num_heads=16, num_kv_heads=8, head_dim=128)  # Qwen3-0.6B's attention
TOLERANCE = {torch.bfloat16: 2e-2, torch.float16: 5e-3, torch.float32: 1e-4}  # x max(1, max |ref|)
EDGE_LENGTHS = (1, 15, 16, 17, 100, 1000, 4000)


@dataclass
class Case:
    q: torch.Tensor  # [T, Hq, D], a non-contiguous view of one qkv tensor, as the models pass it
    k: torch.Tensor
    v: torch.Tensor
    k_cache: torch.Tensor  # [num_blocks, block_size, Hkv, D]
    v_cache: torch.Tensor
    meta: AttentionMetadata
    scale: float
    q_lens: list[int]
    seq_lens: list[int]  # 0 marks a padding decode row (query token with slot -1)


def make_case(
    q_lens: list[int],
    seq_lens: list[int],
    num_decode: int,
    num_heads: int = 16,
    num_kv_heads: int = 8,
    head_dim: int = 128,
    dtype: torch.dtype = torch.bfloat16,
    block_size: int = 16,
    seed: int = 0,
    table_width: int | None = None,
    pad_tokens: int = 0,
) -> Case:
    """One step: sequence i brings q_lens[i] new tokens and has seq_lens[i] keys after the step."""
    g = torch.Generator().manual_seed(seed)
    blocks_per_seq = [-(-n // block_size) for n in seq_lens]
    num_blocks = sum(blocks_per_seq) + 3  # spare blocks stay NaN
    physical = torch.randperm(num_blocks, generator=g).tolist()
    width = max(1, max(blocks_per_seq), table_width or 0)
    tables, slots, context_slots = [], [], []
    for q_len, seq_len, nb in zip(q_lens, seq_lens, blocks_per_seq):
        table, physical = physical[:nb], physical[nb:]
        tables.append(table + [0] * (width - nb))  # padded with 0: some other sequence's block (or a spare)
        slot = [table[p // block_size] * block_size + p % block_size for p in range(seq_len)]
        context_slots += slot[: seq_len - q_len] if seq_len else []
        slots += slot[seq_len - q_len :] if seq_len else [-1] * q_len
    slots += [-1] * pad_tokens
    num_tokens = len(slots)

    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    k_cache = torch.full(shape, float("nan"), dtype=dtype)
    v_cache = torch.full(shape, float("nan"), dtype=dtype)
    ctx = torch.tensor(context_slots, dtype=torch.int64)
    k_cache.view(-1, num_kv_heads, head_dim)[ctx] = torch.randn(len(ctx), num_kv_heads, head_dim, generator=g).to(dtype)
    v_cache.view(-1, num_kv_heads, head_dim)[ctx] = torch.randn(len(ctx), num_kv_heads, head_dim, generator=g).to(dtype)
    dev = torch.device(DEVICE)
    qkv = torch.randn(num_tokens, (num_heads + 2 * num_kv_heads) * head_dim, generator=g).to(dtype).to(dev)
    q, k, v = qkv.split([num_heads * head_dim, num_kv_heads * head_dim, num_kv_heads * head_dim], dim=-1)

    query_start_loc = [0]
    for n in q_lens:
        query_start_loc.append(query_start_loc[-1] + n)
    meta = AttentionMetadata(
        slot_mapping=torch.tensor(slots, dtype=torch.int64, device=dev),
        query_start_loc=torch.tensor(query_start_loc, dtype=torch.int32, device=dev),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=dev),
        block_tables=torch.tensor(tables, dtype=torch.int32, device=dev),
        num_decode_seqs=num_decode,
        max_query_len=max(q_lens),
        max_seq_len=max(seq_lens),
        query_start_loc_cpu=query_start_loc,
        seq_lens_cpu=list(seq_lens),
        decode_order=longest_first(seq_lens[:num_decode], dev) if num_decode > 1 else None,  # as the runner does
    )
    return Case(
        q=q.view(num_tokens, num_heads, head_dim),
        k=k.view(num_tokens, num_kv_heads, head_dim),
        v=v.view(num_tokens, num_kv_heads, head_dim),
        k_cache=k_cache.to(dev),
        v_cache=v_cache.to(dev),
        meta=meta,
        scale=head_dim**-0.5,
        q_lens=list(q_lens),
        seq_lens=list(seq_lens),
    )


def longest_first(seq_lens: list[int], dev: torch.device) -> torch.Tensor:
    return torch.from_numpy(decode_order(np.array(seq_lens))).to(dev)


def decode_case(seq_lens: list[int], **kw) -> Case:
    return make_case([1] * len(seq_lens), seq_lens, len(seq_lens), **kw)


def real_rows(case: Case) -> tuple[list[int], list[int]]:
    """Token rows of real sequences, and of padding decode rows (seq_len 0)."""
    real, padding = [], []
    qsl = case.meta.query_start_loc_cpu
    for i, seq_len in enumerate(case.seq_lens):
        (real if seq_len else padding).extend(range(qsl[i], qsl[i + 1]))
    return real, padding


def reference(case: Case) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(out, k_cache, v_cache) from the torch backend, on copies; padding rows are left out of out."""
    k_cache, v_cache = case.k_cache.clone(), case.v_cache.clone()
    store_kv(case.k, case.v, k_cache, v_cache, case.meta.slot_mapping)
    keep = [i for i, n in enumerate(case.seq_lens) if n]
    qsl = case.meta.query_start_loc_cpu
    rows = [r for i in keep for r in range(qsl[i], qsl[i + 1])]
    sub_qsl = [0]
    for i in keep:
        sub_qsl.append(sub_qsl[-1] + qsl[i + 1] - qsl[i])
    dev = case.q.device
    meta = AttentionMetadata(
        slot_mapping=case.meta.slot_mapping[rows],
        query_start_loc=torch.tensor(sub_qsl, dtype=torch.int32, device=dev),
        seq_lens=case.meta.seq_lens[keep],
        block_tables=case.meta.block_tables[keep],
        num_decode_seqs=0,
        max_query_len=max(case.q_lens),
        max_seq_len=max(case.seq_lens),
        query_start_loc_cpu=sub_qsl,
        seq_lens_cpu=[case.seq_lens[i] for i in keep],
    )
    out = torch.full_like(case.q, float("nan"))
    out[rows] = paged_attention_reference(case.q[rows], k_cache, v_cache, meta, case.scale)
    return out, k_cache, v_cache


def assert_close_attention(out: torch.Tensor, ref: torch.Tensor, case: Case) -> None:
    real, padding = real_rows(case)
    got, want = out[real].float(), ref[real].float()
    assert not got.isnan().any(), f"{got.isnan().sum()} NaN values in the output"
    err = (got - want).abs().max().item()
    bound = TOLERANCE[out.dtype] * max(1.0, want.abs().max().item())
    assert err <= bound, f"max abs error {err:.3g} > {bound:.3g}"
    if padding:
        assert (out[padding] == 0).all(), "padding decode rows (seq_len 0) must come out as zeros"


def run_forward(case: Case, backend=None) -> None:
    """The backend's forward, checked: caches after the store, then the attention output."""
    ref, k_ref, v_ref = reference(case)
    backend = backend or TritonAttention()
    out = backend.forward(case.q, case.k, case.v, case.k_cache, case.v_cache, case.meta, case.scale)
    torch.testing.assert_close(case.k_cache, k_ref, rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(case.v_cache, v_ref, rtol=0, atol=0, equal_nan=True)
    assert_close_attention(out, ref, case)


def cycle_lengths(batch: int, lengths, seed: int) -> list[int]:
    """batch lengths: the given edge lengths first, then random ones up to the largest."""
    g = torch.Generator().manual_seed(seed)
    top = max(lengths)
    extra = torch.randint(1, top + 1, (max(0, batch - len(lengths)),), generator=g).tolist()
    return (list(lengths) + extra)[:batch]


# -- store ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("block_size", [16, 1, 256])
def test_store_kv_writes_slots_and_skips_padding(block_size):
    case = make_case([1, 1, 7, 40], [30, 0, 7, 90], num_decode=2, block_size=block_size, pad_tokens=3)
    k_ref, v_ref = case.k_cache.clone(), case.v_cache.clone()
    store_kv(case.k, case.v, k_ref, v_ref, case.meta.slot_mapping)
    from traceinfer.engine.attention.triton_backend import store_kv as triton_store_kv

    triton_store_kv(case.k, case.v, case.k_cache, case.v_cache, case.meta.slot_mapping)
    torch.testing.assert_close(case.k_cache, k_ref, rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(case.v_cache, v_ref, rtol=0, atol=0, equal_nan=True)


# -- decode --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "batch,max_len",
    [
        (1, 1),
        (1, 15),
        (1, 17),
        (2, 16),
        (3, 100),
        (1, 4000),
        (7, 1000),
        (33, 4000),
        (64, 1000),
        (128, 2000),
        (256, 2000),
    ],
)
def test_decode_matches_reference(batch, max_len):
    lengths = [n for n in EDGE_LENGTHS if n <= max_len]
    seq_lens = cycle_lengths(batch, lengths[::-1], seed=batch)
    run_forward(decode_case(seq_lens, seed=batch, **QWEN3))


@pytest.mark.parametrize("ordered", [False, True])
@pytest.mark.parametrize("num_splits", [1, 2, 8, 32])
@pytest.mark.parametrize("batch", [1, 5, 256])
def test_decode_every_split_count_into_poisoned_output(batch, num_splits, ordered):
    case = decode_case(cycle_lengths(batch, EDGE_LENGTHS[:6], seed=7), seed=batch, **QWEN3)
    ref, _, _ = reference(case)
    store_kv(case.k, case.v, case.k_cache, case.v_cache, case.meta.slot_mapping)
    out = torch.full_like(case.q, float("nan"))
    m = case.meta
    order = m.decode_order if ordered else None
    paged_decode(case.q, case.k_cache, case.v_cache, m.seq_lens, m.block_tables, case.scale, out, num_splits=num_splits,
                 order=order)  # fmt: skip
    assert_close_attention(out, ref, case)


HEAD_LAYOUTS = [(8, 8), (16, 8), (16, 4), (32, 4), (14, 2)]  # (Hq, Hkv): GQA groups 1, 2, 4, 8 and 7


@pytest.mark.parametrize(
    "num_heads,num_kv_heads,head_dim,dtype",
    [(hq, hkv, d, torch.bfloat16) for hq, hkv in HEAD_LAYOUTS for d in (64, 128)]
    + [(hq, hkv, d, dt) for hq, hkv in [(16, 8), (14, 2)] for d in (64, 128) for dt in (torch.float16, torch.float32)],
)
def test_gqa_head_dim_dtype_mixed_batch(num_heads, num_kv_heads, head_dim, dtype):
    # 4 decode rows, then a fresh prompt, a chunk over a cached prefix and a one-token chunk
    q_lens = [1, 1, 1, 1, 37, 20, 1]
    seq_lens = [1, 17, 100, 300, 37, 70, 16]
    case = make_case(q_lens, seq_lens, 4, num_heads, num_kv_heads, head_dim, dtype, seed=num_heads + head_dim)
    run_forward(case)


@pytest.mark.parametrize("head_dim", [16, 32, 256])
def test_other_power_of_two_head_dims(head_dim):
    run_forward(make_case([1, 1, 1, 50, 9], [1, 40, 1000, 50, 200], 3, head_dim=head_dim, seed=head_dim))


@pytest.mark.parametrize("block_size", [1, 8, 32, 64, 256])
def test_block_sizes(block_size):
    q_lens = [1, 1, 1, 100, 33, 1]
    seq_lens = [1, 255, 1000, 100, 300, 257]
    run_forward(make_case(q_lens, seq_lens, 3, block_size=block_size, seed=block_size, **QWEN3))


# -- prefill -------------------------------------------------------------------------------------


def test_prefill_fresh_prompts():
    lengths = list(EDGE_LENGTHS)
    run_forward(make_case(lengths, lengths, 0, seed=1, **QWEN3))


@pytest.mark.parametrize(
    "chunks",
    [
        [(16, 16), (17, 32), (1, 15), (100, 101), (5, 1000), (300, 1000), (64, 128), (1, 4000), (1000, 4000)],
        [(128, 4000), (127, 129), (129, 129), (2, 18), (63, 63)],
    ],
)
def test_prefill_over_cached_prefix(chunks):
    q_lens, seq_lens = map(list, zip(*chunks))
    run_forward(make_case(q_lens, seq_lens, 0, seed=len(chunks), **QWEN3))


def test_mixed_batch_with_padding_rows_and_tokens():
    # decode rows with seq_len 0 among real ones (a CUDA-graph batch padded up), then prefill chunks,
    # then tokens that belong to no sequence (slot -1)
    q_lens = [1, 1, 1, 1, 1, 50, 200]
    seq_lens = [10, 0, 1000, 0, 16, 50, 260]
    run_forward(make_case(q_lens, seq_lens, 5, pad_tokens=5, seed=3, **QWEN3))


def test_prefill_into_poisoned_output():
    q_lens, seq_lens = [1, 1, 90, 7], [5, 33, 300, 7]
    case = make_case(q_lens, seq_lens, 2, seed=4, **QWEN3)
    ref, _, _ = reference(case)
    store_kv(case.k, case.v, case.k_cache, case.v_cache, case.meta.slot_mapping)
    out = torch.full_like(case.q, float("nan"))
    m = case.meta
    paged_decode(case.q[:2], case.k_cache, case.v_cache, m.seq_lens[:2], m.block_tables[:2], case.scale, out[:2])
    paged_prefill(
        case.q, case.k_cache, case.v_cache, m.query_start_loc, m.seq_lens, m.block_tables, 2, m.max_query_len,
        case.scale, out,
    )  # fmt: skip
    assert_close_attention(out, ref, case)


def test_chunked_prefill_matches_one_shot():
    """A 300-token prompt in chunks of 37, 128 and 135 gives what one 300-token prefill gives."""
    whole = make_case([300], [300], 0, seed=5, **QWEN3)
    ref, _, _ = reference(whole)
    backend, got, done = TritonAttention(), [], 0
    k_cache, v_cache = whole.k_cache.clone(), whole.v_cache.clone()
    for n in (37, 128, 135):
        rows = slice(done, done + n)
        meta = AttentionMetadata(
            slot_mapping=whole.meta.slot_mapping[rows],
            query_start_loc=torch.tensor([0, n], dtype=torch.int32, device=whole.q.device),
            seq_lens=torch.tensor([done + n], dtype=torch.int32, device=whole.q.device),
            block_tables=whole.meta.block_tables,
            num_decode_seqs=0,
            max_query_len=n,
            max_seq_len=done + n,
            query_start_loc_cpu=[0, n],
            seq_lens_cpu=[done + n],
        )
        got.append(backend.forward(whole.q[rows], whole.k[rows], whole.v[rows], k_cache, v_cache, meta, whole.scale))
        done += n
    assert_close_attention(torch.cat(got), ref, whole)


def test_unsupported_shapes_are_refused_by_name():
    case = make_case([1, 3], [5, 3], 1, head_dim=80)
    with pytest.raises(BackendUnavailableError, match="head_dim"):
        run_forward(case)


# -- flash-attn ----------------------------------------------------------------------------------


def test_flash_attn_backend_matches_reference_or_says_why_not():
    """flash-attn is not installed on every GPU machine; where it is, it reads a cache paged in 256s."""
    if not flash_attn_available():
        with pytest.raises(BackendUnavailableError, match="flash-attn"):
            FlashAttention()
        return
    with pytest.raises(BackendUnavailableError, match="256"):
        FlashAttention(block_size=16)
    q_lens, seq_lens = [1, 1, 1, 300, 20], [1, 700, 300, 300, 1000]
    run_forward(make_case(q_lens, seq_lens, 3, block_size=256, seed=6, **QWEN3), FlashAttention(block_size=256))


# -- CUDA graphs ---------------------------------------------------------------------------------


@pytest.mark.parametrize("batch", [3, 64])
def test_decode_cuda_graph_replays_with_new_lengths(batch):
    """Capture decode once with short contexts; replay with new data, longer contexts and padding rows."""
    width = 4000 // 16 + 1  # the runner pads block tables to a fixed width under CUDA graphs
    capture = decode_case([5] * batch, table_width=width, seed=10, **QWEN3)
    shape = (batch * width + 3, 16, QWEN3["num_kv_heads"], QWEN3["head_dim"])
    k_cache = torch.full(shape, float("nan"), dtype=torch.bfloat16, device=DEVICE)
    v_cache = torch.full_like(k_cache, float("nan"))
    q, k, v, m = capture.q.clone(), capture.k.clone(), capture.v.clone(), capture.meta
    backend = TritonAttention()

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        backend.forward(q, k, v, k_cache, v_cache, m, capture.scale)  # compiles the kernels outside the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = backend.forward(q, k, v, k_cache, v_cache, m, capture.scale)

    for seed, lengths in [(11, [4000, 1, 0, 17, 999]), (12, [16, 0, 2500, 64])]:
        new = decode_case(cycle_lengths(batch, lengths, seed), table_width=width, seed=seed, **QWEN3)
        ref, k_ref, _ = reference(new)
        # same buffers, new contents
        used = new.k_cache.shape[0]
        k_cache.fill_(float("nan"))
        v_cache.fill_(float("nan"))
        k_cache[:used].copy_(new.k_cache)
        v_cache[:used].copy_(new.v_cache)
        q.copy_(new.q)
        k.copy_(new.k)
        v.copy_(new.v)
        for name in ("slot_mapping", "seq_lens", "block_tables", "query_start_loc"):
            getattr(m, name).copy_(getattr(new.meta, name))
        out.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        torch.testing.assert_close(k_cache[:used], k_ref, rtol=0, atol=0, equal_nan=True)
        assert_close_attention(out, ref, new)
