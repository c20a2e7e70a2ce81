"""Why some bench passes are slower than others: each pass with the step trace on, its host time by stage,
its GPU time and idle, and what the OS says about the engine's process over it (GPU).

    python scripts/pass_variance.py [--passes 12] [--probes steps] [--pin CPU] [--model M --num-requests N]

Builds the bench's engine (synthetic:qwen3-0.6b), warms it up as bench does, then runs ``--passes`` timed
passes of the bench workload, each with the probe set ``--probes`` writing a run directory. Per pass it
prints the throughput and where the wall time went: the steps' host stages, the time between steps, the
forwards' GPU time and the GPU idle gaps before them (CUDA events; all steps, and the decode-only steps
that replay a graph), the slowest step, the core the process was on at the end, the process's
context switches (voluntary, involuntary), CPU time and page faults (getrusage), the share of the pass
the GPU's clocks were held back (NVML), and the caching allocator's calls to the driver (cudaMalloc, cudaFree,
retries after a failed allocation: torch.cuda.memory_stats). A slow pass whose extra time sits in one column names the cause."""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time

import psutil

from traceinfer import LLM, workloads
from traceinfer.config import WorkloadConfig
from traceinfer.engine.device import freeze_gc
from traceinfer.passes.engine import timed_pass, warm_up
from traceinfer.passes.gpu_counters import GpuCounters, between
from traceinfer.probes import attach
from traceinfer.rundir.reader import open_run
from traceinfer.rundir.schema import STAGES

COLUMNS = ("core", "tok/s", "wall s", *(f"{s} s" for s in STAGES), "between s", "gpu s", "graph gpu s", "gap s", "graph gap s", "eager prepare s", "eager forward s", "max step ms",
           "ivcsw", "vcsw", "cpu s", "minflt", "held %", "cudaMalloc", "cudaFree", "alloc retries")  # fmt: skip


def one_pass(llm, workload, probes: str, counters: GpuCounters) -> dict:
    llm.engine.block_manager.reset_prefix_cache()
    with tempfile.TemporaryDirectory(prefix="traceinfer-variance-") as path:
        session = attach(llm.engine, probes, path)
        try:
            before, ru0, mem0 = counters.read(), resource.getrusage(resource.RUSAGE_SELF), _allocator(llm)
            result = timed_pass(llm, workload)
            ru1, gpu = resource.getrusage(resource.RUSAGE_SELF), between(before, counters.read(), result.output_tokens)
            mem1 = _allocator(llm)
        finally:
            session.close()
        steps = open_run(path).frame("steps")
    cpu = psutil.Process().cpu_num()
    row = {"core": cpu, "tok/s": result.output_tok_s, "wall s": result.seconds}
    for stage in STAGES:
        row[f"{stage} s"] = steps[f"{stage}_ns"].sum() / 1e9
    row["between s"] = result.seconds - steps["dur_ns"].sum() / 1e9
    row["gpu s"] = steps["gpu_forward_ns"].sum() / 1e9
    graph = steps["cuda_graph"].astype(bool)
    row["graph gpu s"] = steps.loc[graph, "gpu_forward_ns"].sum() / 1e9
    row["gap s"] = steps["gpu_gap_ns"].sum() / 1e9
    row["graph gap s"] = steps.loc[graph, "gpu_gap_ns"].sum() / 1e9
    row["eager prepare s"] = steps.loc[~graph, "prepare_ns"].sum() / 1e9  # host time of the eager steps: set
    row["eager forward s"] = steps.loc[~graph, "forward_ns"].sum() / 1e9  # against their GPU time (gpu - graph)
    row["max step ms"] = steps["dur_ns"].max() / 1e6
    row["ivcsw"] = ru1.ru_nivcsw - ru0.ru_nivcsw
    row["vcsw"] = ru1.ru_nvcsw - ru0.ru_nvcsw
    row["cpu s"] = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
    row["minflt"] = ru1.ru_minflt - ru0.ru_minflt
    held = (gpu or {}).get("limited_share", {}).get("any")
    row["held %"] = 100 * held if held is not None else float("nan")
    # the caching allocator going to the driver mid-pass (a cudaFree waits for the whole device)
    for col, key in (("cudaMalloc", "num_device_alloc"), ("cudaFree", "num_device_free"), ("alloc retries", "num_alloc_retries")):
        row[col] = mem1.get(key, 0) - mem0.get(key, 0)
    return row


def _allocator(llm) -> dict:
    import torch

    device = llm.engine.device
    return torch.cuda.memory_stats(device) if device.type == "cuda" else {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passes", type=int, default=12)
    parser.add_argument("--probes", default="steps")
    parser.add_argument("--model", default="synthetic:qwen3-0.6b")
    parser.add_argument("--num-requests", type=int, default=256)
    parser.add_argument("--pin", type=int, help="run the process on this one CPU (its threads inherit it)")
    args = parser.parse_args()
    if args.pin is not None:
        os.sched_setaffinity(0, {args.pin})
    llm = LLM(args.model)
    wl = workloads.make(WorkloadConfig(name="bench", num_requests=args.num_requests), llm.engine.device.type == "cuda")
    freeze_gc()
    warm_up(llm, wl, full=True)
    counters = GpuCounters(llm.engine.device)
    rows = []
    t0 = time.perf_counter()
    print("  ".join(f"{c:>11}" for c in ("pass", *COLUMNS)), flush=True)
    for i in range(args.passes):
        rows.append(one_pass(llm, wl, args.probes, counters))
        print(_line(i, rows[-1]), f" at {time.perf_counter() - t0:.0f} s", flush=True)
    counters.close()
    print("slowest first:")
    for row in sorted(rows, key=lambda r: r["tok/s"]):
        print(_line(rows.index(row), row))


def _line(i: int, row: dict) -> str:
    return "  ".join(f"{v:>11,.3f}" if isinstance(v, float) else f"{v:>11,}" for v in (i, *row.values()))

if __name__ == "__main__":
    main()
