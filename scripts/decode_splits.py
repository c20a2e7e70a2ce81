"""How the split-K decode kernel's launch is chosen and what each choice costs, at Qwen3-0.6B's shapes.

    python scripts/decode_splits.py            (GPU) the kernel alone
    python scripts/decode_splits.py --engine   (GPU) the splits the engine's CUDA graphs were captured with
    python scripts/decode_splits.py --bench-steps  (GPU) the decode steps of `traceinfer bench`, replayed

Without --engine: per batch size, the splits the backend picks and the kernel time (CUDA graph replay, median
of do_bench) for each power-of-two split count, with the context each row holds. With --engine: builds the
engine on synthetic:qwen3-0.6b and prints each decode launch made while its graphs were captured (batch,
block-table width, splits): what each graph replays. With --bench-steps: the bench workload's decode steps
rebuilt from its lengths (every 64th step: its running requests, their contexts, padded to the engine's graph
size), each timed with launch variants (kernel config, split count, longest sequences first), and the decode
time of the whole bench estimated from them (sample x 64 steps x 28 layers).
The order's effect on whole bench passes: scripts/engine_ab.py decode-order."""

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


def bench_steps() -> None:
    from traceinfer import workloads
    from traceinfer.config import WorkloadConfig
    from traceinfer.engine.model_runner import fitting_graph, graph_batch_sizes

    dev = torch.device("cuda")
    hq, hkv, d, bs, width, layers, every = 16, 8, 128, 16, 512, 28, 64
    wl = workloads.make(WorkloadConfig(name="bench"), True)
    prompt = [len(p) for p in wl.prompts]
    outs = [p.max_tokens for p in wl.params]
    need = [triton.cdiv(p + o, bs) for p, o in zip(prompt, outs)]
    blocks = sum(need) + 64
    k = torch.randn(blocks, bs, hkv, d, device=dev, dtype=torch.bfloat16)
    v = torch.randn_like(k)
    perm = torch.randperm(blocks, generator=torch.Generator().manual_seed(0)).to(torch.int32)
    tables_all = torch.zeros(len(prompt), width, dtype=torch.int32)
    at = 0
    for i, n in enumerate(need):
        tables_all[i, :n] = perm[at : at + n]
        at += n
    sizes = graph_batch_sizes(256)
    sms = tb._num_sms(dev)
    variants = {  # name -> (config, splits rule, longest first)
        "engine": (None, None, False),
        "sorted": (None, None, True),
        "x2 splits": (None, 2, False),
        "n64 s4": (tb.KernelConfig(16, 64, 4, 4), None, False),
        "n64 s2": (tb.KernelConfig(16, 64, 4, 2), None, False),
        "n128 s2 w8": (tb.KernelConfig(16, 128, 8, 2), None, False),
        "n128 s3 w8": (tb.KernelConfig(16, 128, 8, 3), None, False),
        "n32 s4": (tb.KernelConfig(16, 32, 4, 4), None, False),
        "n64 s3 w8": (tb.KernelConfig(16, 64, 8, 3), None, False),
    }
    totals = dict.fromkeys(variants, 0.0)
    floor_s = 0.0
    print(f"SMs {sms}; bench: {len(prompt)} requests, {sum(prompt):,} prompt, {sum(outs):,} output tokens")
    print("step  batch graph  KV MB  " + "  ".join(f"{n:>12}" for n in variants))
    for t in range(0, max(outs), every):
        run = [i for i in range(len(prompt)) if outs[i] > t]
        lens = [prompt[i] + t + 1 for i in run]
        b = fitting_graph(sizes, len(run))
        kv = sum(lens) * hkv * d * 2 * 2
        floor_s += kv / 4.2e12 * layers * every
        row = []
        for name, (cfg, mult, longest_first) in variants.items():
            order = sorted(range(len(run)), key=lambda j: -lens[j]) if longest_first else list(range(len(run)))
            lens_b = torch.zeros(b, dtype=torch.int32)
            lens_b[: len(run)] = torch.tensor([lens[j] for j in order], dtype=torch.int32)
            tables = torch.zeros(b, width, dtype=torch.int32)
            tables[: len(run)] = tables_all[[run[j] for j in order]]
            lens_b, tables = lens_b.to(dev), tables.to(dev)
            q = torch.randn(b, hq, d, device=dev, dtype=torch.bfloat16)
            out = torch.empty_like(q)
            c = cfg or tb.decode_config(d, q.dtype)
            splits = tb.decode_num_splits(b, hkv, width, bs, c.block_n, sms) * (mult or 1)
            fn = lambda: tb.paged_decode(q, k, v, lens_b, tables, d**-0.5, out, config=c, num_splits=splits)  # noqa: E731
            ms = triton.testing.do_bench_cudagraph(fn, rep=30)
            totals[name] += ms / 1e3 * layers * every
            row.append(f"{ms * 1e3:6.1f}us {kv / ms / 1e9:4.2f}")
        print(f"{t:4d} {len(run):6d} {b:5d} {kv / 1e6:6.0f}  " + "  ".join(f"{r:>12}" for r in row))
    print(f"estimated decode-kernel time of the bench (KV floor at 4.2 TB/s {floor_s:.3f} s):")
    for name, s in totals.items():
        print(f"  {name:>12}: {s:.3f} s ({floor_s / s:.1%} of the floor's rate)")


if __name__ == "__main__":
    if "--engine" in sys.argv[1:]:
        engine_launches()
    elif "--bench-steps" in sys.argv[1:]:
        bench_steps()
    else:
        main()
