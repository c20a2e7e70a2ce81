"""Time the Triton attention kernels at Qwen3-0.6B's shapes on one GPU.

Decode: batch 256 (the serving benchmark's concurrency), contexts of ~1000 tokens, 16 query heads, 8 KV heads,
head_dim 128, bf16, block size 16; reported against the time to read that K/V once at the copy bandwidth
measured here. Prefill: fresh prompts, against torch's SDPA (flash) on contiguous tensors.

    python3 scripts/bench_attention.py [--sweep]

GPU times come from CUDA events around each call, after warm-up; the table gives median and spread.
"""

from __future__ import annotations

import argparse
import statistics

import torch
import torch.nn.functional as F

from traceinfer.engine.attention.triton_backend import (
    KernelConfig,
    decode_config,
    decode_num_splits,
    paged_decode,
    paged_prefill,
    prefill_config,
    store_kv,
)
from traceinfer.engine.device import measure_bandwidth

HQ, HKV, D, BLOCK = 16, 8, 128, 16
DTYPE = torch.bfloat16


def time_cuda(fn, warmup: int = 10, iters: int = 30, reps: int = 5) -> list[float]:
    """GPU time per call in microseconds, one figure per group of reps back-to-back calls (hides launch gaps)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1000 / reps)
    return times


def spread(times: list[float]) -> str:
    qs = statistics.quantiles(times, n=10)
    return f"median {statistics.median(times):8.1f} us  (p10 {qs[0]:.1f}, p90 {qs[-1]:.1f})"


def paged_cache(seq_lens: list[int], g: torch.Generator, width: int | None = None):
    """Caches holding the given contexts in randomly placed blocks, and the padded block tables."""
    blocks = [-(-n // BLOCK) for n in seq_lens]
    num_blocks = sum(blocks)
    ids = torch.randperm(num_blocks, generator=g).tolist()
    width = width or max(blocks)
    tables = []
    for nb in blocks:
        tables.append(ids[:nb] + [0] * (width - nb))
        ids = ids[nb:]
    k_cache = torch.randn(num_blocks, BLOCK, HKV, D, device="cuda", dtype=DTYPE)
    v_cache = torch.randn_like(k_cache)
    return k_cache, v_cache, torch.tensor(tables, dtype=torch.int32, device="cuda")


def graph_of(fn) -> torch.cuda.CUDAGraph:
    """fn captured in a CUDA graph (after one eager call that compiles it): GPU time without launch gaps."""
    fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph


def decode_inputs(seq_lens: list[int], g: torch.Generator, width: int | None = None):
    k_cache, v_cache, tables = paged_cache(seq_lens, g, width)
    lens = torch.tensor(seq_lens, dtype=torch.int32, device="cuda")
    q = torch.randn(len(seq_lens), HQ, D, device="cuda", dtype=DTYPE)
    kv_bytes = 2 * sum(seq_lens) * HKV * D * k_cache.element_size()
    return q, k_cache, v_cache, lens, tables, kv_bytes


def bench_decode(seq_lens: list[int], label: str, bandwidth: float, configs, g) -> None:
    q, k_cache, v_cache, lens, tables, kv_bytes = decode_inputs(seq_lens, g)
    out = torch.empty_like(q)
    floor_us = kv_bytes / bandwidth * 1e6
    print(f"\ndecode {label}: batch {len(seq_lens)}, {sum(seq_lens)} keys, K+V {kv_bytes / 1e9:.3f} GB, "
          f"read once at {bandwidth / 1e12:.2f} TB/s = {floor_us:.1f} us; times in CUDA graphs")  # fmt: skip
    for cfg in configs:
        try:
            graph = graph_of(lambda: paged_decode(q, k_cache, v_cache, lens, tables, D**-0.5, out, cfg))
        except Exception as e:  # a config that does not fit (shared memory, registers) is reported, not fatal
            print(f"  {cfg}: failed: {type(e).__name__}: {str(e)[:120]}")
            continue
        times = time_cuda(graph.replay)
        med = statistics.median(times)
        print(f"  bn={cfg.block_n:3d} w={cfg.num_warps} st={cfg.num_stages}: {spread(times)}"
              f"  {kv_bytes / (med * 1e-6) / 1e12:.2f} TB/s = {floor_us / med:.0%} of the copy rate")  # fmt: skip
    times = time_cuda(lambda: paged_decode(q, k_cache, v_cache, lens, tables, D**-0.5, out))
    print(f"  default config, eager (launch gaps included): {spread(times)}")


def bench_decode_splits(batches, context: int, width: int, bandwidth: float, g) -> None:
    """Graph time per split count at smaller batches; the runner's tables are max_model_len wide."""
    print(f"\ndecode splits, context {context}, block tables {width} wide (times in CUDA graphs, us):")
    for batch in batches:
        q, k_cache, v_cache, lens, tables, kv_bytes = decode_inputs([context] * batch, g, width)
        out = torch.empty_like(q)
        sms = torch.cuda.get_device_properties(0).multi_processor_count
        chosen = decode_num_splits(batch, HKV, width, BLOCK, decode_config(D, DTYPE).block_n, sms)
        row = []
        for splits in (1, 2, 4, 8, 16, 32):
            graph = graph_of(lambda: paged_decode(q, k_cache, v_cache, lens, tables, D**-0.5, out, num_splits=splits))
            row.append(f"{splits}: {statistics.median(time_cuda(graph.replay)):6.1f}")
        print(
            f"  batch {batch:3d} (floor {kv_bytes / bandwidth * 1e6:6.1f}, default splits {chosen}): " + "  ".join(row)
        )


def bench_store(num_tokens: int) -> None:
    k_cache = torch.zeros(num_tokens // BLOCK + 1, BLOCK, HKV, D, device="cuda", dtype=DTYPE)
    v_cache = torch.zeros_like(k_cache)
    qkv = torch.randn(num_tokens, (HQ + 2 * HKV) * D, device="cuda", dtype=DTYPE)
    k = qkv[:, HQ * D : (HQ + HKV) * D].view(num_tokens, HKV, D)
    v = qkv[:, (HQ + HKV) * D :].view(num_tokens, HKV, D)
    slots = torch.randperm(k_cache.shape[0] * BLOCK, device="cuda")[:num_tokens]
    times = time_cuda(lambda: store_kv(k, v, k_cache, v_cache, slots))
    moved = 4 * num_tokens * HKV * D * k.element_size()  # read k, v; write them
    print(f"\nstore {num_tokens} tokens: {spread(times)}  {moved / (statistics.median(times) * 1e-6) / 1e12:.2f} TB/s")


def bench_prefill(q_lens: list[int], seq_lens: list[int], label: str, configs, g) -> None:
    k_cache, v_cache, tables = paged_cache(seq_lens, g)
    qsl = torch.tensor([0] + torch.tensor(q_lens).cumsum(0).tolist(), dtype=torch.int32, device="cuda")
    lens = torch.tensor(seq_lens, dtype=torch.int32, device="cuda")
    q = torch.randn(sum(q_lens), HQ, D, device="cuda", dtype=DTYPE)
    out = torch.empty_like(q)
    # QK^T and PV over the causal part: query j of a chunk sees context + j + 1 keys
    flops = sum(4 * HQ * D * (n * (s - n) + n * (n + 1) / 2) for n, s in zip(q_lens, seq_lens))
    print(f"\nprefill {label}: {sum(q_lens)} query tokens, {flops / 1e12:.3f} TFLOP")
    for cfg in configs:
        try:
            times = time_cuda(
                lambda: paged_prefill(q, k_cache, v_cache, qsl, lens, tables, 0, max(q_lens), D**-0.5, out, cfg)
            )
        except Exception as e:
            print(f"  {cfg}: failed: {type(e).__name__}: {str(e)[:120]}")
            continue
        med = statistics.median(times)
        print(f"  bm={cfg.block_m:3d} bn={cfg.block_n:3d} w={cfg.num_warps} st={cfg.num_stages}: {spread(times)}"
              f"  {flops / (med * 1e-6) / 1e12:.0f} TFLOP/s")  # fmt: skip
    if len(set(q_lens)) == 1 and q_lens == seq_lens:
        n = q_lens[0]
        qs = torch.randn(len(q_lens), HQ, n, D, device="cuda", dtype=DTYPE)
        ks = torch.randn(len(q_lens), HKV, n, D, device="cuda", dtype=DTYPE)
        vs = torch.randn_like(ks)
        times = time_cuda(lambda: F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, enable_gqa=True))
        print(f"  torch SDPA, contiguous, same shapes: {spread(times)}  "
              f"{flops / (statistics.median(times) * 1e-6) / 1e12:.0f} TFLOP/s")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", action="store_true", help="also time other block sizes, warps and stages")
    args = parser.parse_args()
    g = torch.Generator().manual_seed(0)
    bandwidth = measure_bandwidth(torch.device("cuda"))
    print(f"{torch.cuda.get_device_name()}: device-to-device copy {bandwidth / 1e12:.2f} TB/s (read + written)")

    default = decode_config(D, DTYPE)
    decode_configs = [default]
    if args.sweep:
        decode_configs += [
            KernelConfig(16, bn, w, st) for bn, w, st in [(64, 2, 4), (128, 4, 3), (32, 2, 3), (128, 8, 4)]
        ]
    bench_decode([1000] * 256, "batch 256 x 1000", bandwidth, decode_configs, g)
    mixed = torch.randint(100, 2001, (256,), generator=g).tolist()
    bench_decode(mixed, "batch 256 x U(100, 2000)", bandwidth, [default], g)
    if args.sweep:
        bench_decode_splits((1, 8, 16, 32, 64, 128), 1000, 4096 // BLOCK, bandwidth, g)
    bench_store(256)
    bench_store(8192)

    prefill_configs = [prefill_config(D, DTYPE)]
    if args.sweep:
        prefill_configs += [
            KernelConfig(bm, bn, w, st)
            for bm, bn, w, st in [
                (128, 64, 8, 2), (64, 64, 4, 2), (64, 64, 4, 3), (64, 32, 4, 2), (64, 64, 8, 2),
                (128, 64, 4, 2), (128, 64, 4, 3), (128, 128, 8, 3), (32, 64, 4, 2), (64, 128, 8, 2),
            ]
            if KernelConfig(bm, bn, w, st) != prefill_configs[0]
        ]  # fmt: skip
    bench_prefill([1024] * 8, [1024] * 8, "8 x 1024 fresh", prefill_configs, g)
    prompts = torch.randint(100, 1025, (32,), generator=g).tolist()
    bench_prefill(prompts, prompts, "32 x U(100, 1024) fresh", prefill_configs, g)
    bench_prefill([512] * 4, [2048] * 4, "4 x 512 over 1536 cached", prefill_configs, g)


if __name__ == "__main__":
    main()
