"""The few-row linear kernel (engine/gemv) against cuBLAS, at Qwen3-0.6B's projections, and what it does to
batch-1 decode.

    python scripts/gemv_bench.py            (GPU) kernel times: cuBLAS, the default config, the best of a sweep
    python scripts/gemv_bench.py --engine   (GPU) batch-1 ITL of synthetic:qwen3-0.6b with the kernel and
                                            without it (cuBLAS), interleaved, several rounds in one process
    python scripts/gemv_bench.py --rows     (GPU) cuBLAS alone at the decode graphs' batch sizes (16-256 rows):
                                            time, and the share of the bytes / flops floor it reaches
    python scripts/gemv_bench.py --splitk   (GPU) engine/splitk's configs swept at 16, 64 and 256 rows against
                                            cuBLAS, each best checked in bf16 against F.linear and for
                                            the same bits run after run; prints splitk.TUNED

Kernel times are do_bench_cudagraph medians (launch cost out, weights not in L2: each matrix is larger than
the 60 MB L2 only together, so a replay of one kernel finds its weights in L2; the figures are an upper
bound on the rate and are read as a ranking of configs, the engine's ITL is the measure that counts)."""

from __future__ import annotations

import statistics
import sys
import time

import torch
import torch.nn.functional as F
import triton
import triton.testing

from traceinfer.engine import gemv

SHAPES = {"qkv": (4096, 1024), "o": (1024, 2048), "gate_up": (6144, 1024), "down": (1024, 3072)}


def kernels() -> None:
    dev = torch.device("cuda")
    print(f"SMs {torch.cuda.get_device_properties(dev).multi_processor_count}")
    copies = 8  # distinct weight copies, cycled, so that a replay mostly misses L2 (8 x 12 MB > 60 MB)
    for m in (1, 2, 4, 8):
        for name, (n, k) in SHAPES.items():
            x = torch.randn(m, k, device=dev, dtype=torch.bfloat16)
            ws = [torch.randn(n, k, device=dev, dtype=torch.bfloat16) for _ in range(copies)]
            nbytes = n * k * 2 * copies

            def timed(fn):
                return triton.testing.do_bench_cudagraph(lambda: [fn(w) for w in ws], rep=40) * 1e3 / copies

            cublas = timed(lambda w: F.linear(x, w))
            default = (gemv.BLOCK_N, gemv.BLOCK_K, gemv.NUM_WARPS)
            ours = timed(lambda w: gemv.linear(x, w))
            best = (float("inf"), None)
            if m == 1:
                for bn in (2, 4, 8, 16):
                    for bk in (64, 128, 256):
                        for warps in (4, 8):
                            cfg = (bn, bk, warps)
                            us = timed(lambda w, c=cfg: gemv.linear(x, w, cfg=c))
                            best = min(best, (us, cfg))
            per = nbytes / copies
            line = (f"m {m} {name:8s} {n:5d}x{k:5d} cublas {cublas:6.2f}us {per / cublas / 1e6:4.2f}TB/s | "
                    f"default {default} {ours:6.2f}us {per / ours / 1e6:4.2f}TB/s")  # fmt: skip
            if best[1] is not None:
                line += f" | best {best[1]} {best[0]:6.2f}us {per / best[0] / 1e6:4.2f}TB/s"
            print(line, flush=True)


def engine(rounds: int = 3) -> None:
    from traceinfer import LLM, SamplingParams

    prompt = [(7 * j) % 30000 + 100 for j in range(128)]
    params = SamplingParams(temperature=0.0, max_tokens=512, ignore_eos=True)
    results: dict[str, list[float]] = {"gemv": [], "cublas": []}
    tokens = {}
    for r in range(rounds):
        for mode in ("cublas", "gemv") if r % 2 else ("gemv", "cublas"):
            gemv.MAX_ROWS = 1 if mode == "gemv" else 0
            llm = LLM("synthetic:qwen3-0.6b")
            llm.generate([prompt], params)  # warm
            t0 = time.perf_counter()
            out = llm.generate([prompt], params)[0]
            wall = time.perf_counter() - t0
            times = out.token_times_ns
            itl = statistics.median((b - a) / 1e6 for a, b in zip(times, times[1:]))
            results[mode].append(itl)
            tokens[mode] = out.token_ids
            print(f"round {r} {mode:6s} ITL p50 {itl:.4f} ms  wall {wall:.3f} s", flush=True)
            del llm
            torch.cuda.empty_cache()
    for mode, xs in results.items():
        print(f"{mode:6s} ITL p50 median {statistics.median(xs):.4f} ms  range {min(xs):.4f}..{max(xs):.4f}")
    ratio = [c / g for c, g in zip(results["cublas"], results["gemv"])]
    print(f"cublas/gemv per round {[round(x, 3) for x in ratio]}")
    same = sum(a == b for a, b in zip(tokens["gemv"], tokens["cublas"]))
    print(f"greedy tokens equal in {same} of {len(tokens['gemv'])} positions (bf16: a near-tie may flip)")


def rows(copy_tb_s: float = 4.2, matmul_tflop_s: float = 780.0) -> None:
    """cuBLAS at the decode graphs' batch sizes: how far each projection is from max(bytes / copy rate,
    flops / matmul rate), the H200's measured rates (ANCHORS: 4.2 TB/s, 780 TFLOP/s bf16)."""
    dev = torch.device("cuda")
    copies = 8
    total = {}
    for m in (16, 32, 64, 128, 256):
        for name, (n, k) in SHAPES.items():
            x = torch.randn(m, k, device=dev, dtype=torch.bfloat16)
            ws = [torch.randn(n, k, device=dev, dtype=torch.bfloat16) for _ in range(copies)]
            us = triton.testing.do_bench_cudagraph(lambda: [F.linear(x, w) for w in ws], rep=40) * 1e3 / copies
            nbytes = (n * k + m * k + m * n) * 2
            floor_us = max(nbytes / copy_tb_s / 1e6, 2 * m * n * k / matmul_tflop_s / 1e6)
            total[m] = total.get(m, 0.0) + us
            print(f"m {m:3d} {name:8s} {n:5d}x{k:5d} cublas {us:6.2f}us  floor {floor_us:5.2f}us "
                  f"({floor_us / us:5.1%})", flush=True)  # fmt: skip
    for m, us in total.items():
        print(f"m {m:3d}: the four projections {us:6.2f}us a layer, {28 * us / 1e3:.3f} ms a step (28 layers)")


def splitk_sweep(copy_tb_s: float = 4.2) -> None:
    """engine/splitk against cuBLAS: every config of a small grid per projection and row count; the best,
    its error against F.linear (bf16; relative to the output's largest value) and its determinism."""
    import itertools

    from traceinfer.engine import splitk

    dev = torch.device("cuda")
    copies = 8
    grid = [splitk.Config(bm, bn, bk, sp, 4, 3)
            for bm, bn, bk, sp in itertools.product((16, 64), (32, 64, 128), (128, 256), (1, 2, 4, 8, 16))]  # fmt: skip
    tuned: dict[tuple[int, int], list] = {}
    for m in (16, 64, 256):
        for name, (n, k) in SHAPES.items():
            x = torch.randn(m, k, device=dev, dtype=torch.bfloat16)
            ws = [torch.randn(n, k, device=dev, dtype=torch.bfloat16) / k**0.5 for _ in range(copies)]
            cublas = triton.testing.do_bench_cudagraph(lambda: [F.linear(x, w) for w in ws], rep=20) * 1e3 / copies
            timed = []
            for cfg in grid:
                if cfg.block_m > max(16, m):
                    continue
                try:
                    us = triton.testing.do_bench_cudagraph(lambda c=cfg: [splitk.linear(x, w, None, c) for w in ws],
                                                           rep=20) * 1e3 / copies  # fmt: skip
                except Exception as exc:  # a config the compiler refuses (shared memory): skipped, said
                    print(f"  {cfg}: {type(exc).__name__}", flush=True)
                    continue
                timed.append((us, cfg))
            us, best = min(timed, key=lambda t: t[0])
            default = next((t for t, c in timed if c == splitk.Config()), float("nan"))
            want = F.linear(x, ws[0]).float()
            got = [splitk.linear(x, ws[0], None, best) for _ in range(3)]
            err = ((got[0].float() - want).abs().max() / want.abs().max()).item()
            same = all(torch.equal(g, got[0]) for g in got)
            floor_us = (n * k + m * k + m * n) * 2 / copy_tb_s / 1e6
            print(f"m {m:3d} {name:8s} cublas {cublas:6.2f}us  splitk best {us:6.2f}us ({cublas / us:4.2f}x, "
                  f"{floor_us / us:5.1%} of floor) default {default:6.2f}us  rel err {err:.1e} same bits {same}  {best}",
                  flush=True)  # fmt: skip
            if us < cublas:
                tuned.setdefault((n, k), []).append((m, best))
    print("splitk.TUNED for the shapes and row counts where it beat cuBLAS (rows up to the next count measured):")
    print(tuned)


if __name__ == "__main__":
    if "--engine" in sys.argv:
        engine()
    elif "--splitk" in sys.argv:
        splitk_sweep()
    elif "--rows" in sys.argv:
        rows()
    else:
        kernels()
