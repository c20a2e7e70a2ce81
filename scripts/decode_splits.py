"""How the split-K decode kernel's launch is chosen and what each choice costs, at Qwen3-0.6B's shapes.

    python scripts/decode_splits.py            (GPU) the kernel alone
    python scripts/decode_splits.py --engine   (GPU) the splits the engine's CUDA graphs were captured with

Without --engine: per batch size, the splits the backend picks and the kernel time (CUDA graph replay, median
of do_bench) for each power-of-two split count, with the context each row holds. With --engine: builds the
engine on synthetic:qwen3-0.6b and prints each decode launch made while its graphs were captured (batch,
block-table width, splits): what each graph replays."""

from __future__ import annotations

import sys

import torch
import triton.testing

from traceinfer.engine.attention import triton_backend as tb


def main() -> None:
    dev = torch.device("cuda")
    hq, hkv, d, bs, width = 16, 8, 128, 16, 512
    blocks = 40_000
    k = torch.randn(blocks, bs, hkv, d, device=dev, dtype=torch.bfloat16)
    v = torch.randn_like(k)
    print(f"SMs {tb._num_sms(dev)}")
    gen = torch.Generator().manual_seed(0)
    for batch, ctx in ((1, 400), (8, 800), (64, 800), (256, 800), (128, 0), (256, 0)):
        q = torch.randn(batch, hq, d, device=dev, dtype=torch.bfloat16)
        out = torch.empty_like(q)
        if ctx:
            lens = torch.full((batch,), ctx, dtype=torch.int32, device=dev)
        else:  # the bench's spread: uniform 100..2,000 tokens (ctx 0 in the table)
            lens = torch.randint(100, 2001, (batch,), generator=gen, dtype=torch.int32).to(dev)
        tables = torch.randint(0, blocks, (batch, width), dtype=torch.int32, device=dev)
        cfg = tb.decode_config(d, q.dtype)
        chosen = tb.decode_num_splits(batch, hkv, width, bs, cfg.block_n, tb._num_sms(dev))
        row = []
        read = int(lens.sum()) * hkv * d * 2 * 2  # K and V bytes
        for splits in (1, 2, 4, 8, 16):
            fn = lambda s=splits: tb.paged_decode(q, k, v, lens, tables, d**-0.5, out, num_splits=s)  # noqa: E731
            ms = triton.testing.do_bench_cudagraph(fn, rep=50)
            row.append(f"{splits}:{ms * 1e3:6.1f}us {read / ms / 1e9:4.2f}TB/s")
        print(f"batch {batch:4d} ctx {ctx:5d} chosen {chosen:2d} | " + "  ".join(row))


def engine_launches() -> None:
    from traceinfer import LLM

    seen = []
    chosen = tb.decode_num_splits

    def logged(num_seqs, num_kv_heads, max_blocks, block_size, block_n, num_sms):
        splits = chosen(num_seqs, num_kv_heads, max_blocks, block_size, block_n, num_sms)
        seen.append((num_seqs, max_blocks, num_sms, splits))
        return splits

    tb.decode_num_splits = logged
    llm = LLM("synthetic:qwen3-0.6b")
    print(f"graphs captured: {sorted(llm.engine.runner.graphs)}")
    for num_seqs, width, sms, splits in sorted(set(seen)):
        print(f"decode launch: batch {num_seqs:4d}  table width {width:4d}  SMs {sms}  splits {splits}")


if __name__ == "__main__":
    engine_launches() if "--engine" in sys.argv[1:] else main()
