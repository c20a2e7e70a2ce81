"""Run a workload on the engine with probes on and write a run directory.

    traceinfer profile --workload chatbot|bench [--probes off|default|all|LIST] [--out DIR] [engine options]

Stages: build the engine and warm it up (the workload once, unless --no-warmup) -> attach the probes
-> run the workload -> close the probes (final manifest, Parquet) -> write trace.json -> run the same
workload again with probes off, on the same warm engine, and record the measured overhead in the
manifest. Ctrl-C at any point of the probed run still leaves a readable run directory, marked
"interrupted" (during the warm-up there is no run directory yet: it exits with 130).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
import warnings
from pathlib import Path

from traceinfer.cli import options
from traceinfer.errors import TraceinferError

HELP = "run a workload with probes and write a run directory"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from traceinfer.probes import PRESETS, PROBES
    from traceinfer.workloads import WORKLOADS

    options.add_config_file(parser)
    options.add_section(parser, "workload", choices={"name": WORKLOADS})
    probes = f"{' | '.join(PRESETS)} | a comma list of: {', '.join(PROBES)}"
    options.add_section(parser, "probes", helps={"select": probes})
    options.add_section(parser, "output")
    options.add_section(parser, "engine")


def default_run_dir(root: str | Path, workload: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = Path(root) / f"{stamp}-{workload}"
    n = 1
    while path.exists():
        n += 1
        path = Path(root) / f"{stamp}-{workload}-{n}"
    return path


def run(args: argparse.Namespace) -> int:
    """Run ``traceinfer profile``; returns the exit status (130 after Ctrl-C)."""
    from traceinfer import workloads
    from traceinfer.analysis.overhead import one_pair_overhead
    from traceinfer.analysis.steps import describe_handover, handover_summary
    from traceinfer.engine import device as dev
    from traceinfer.engine.llm_engine import LLM
    from traceinfer.engine.sampling_params import SamplingParams
    from traceinfer.passes.engine import timed_pass, warm_up
    from traceinfer.probes import attach, resolve_probes
    from traceinfer.render.perfetto import build_trace, write_trace
    from traceinfer.rundir import open_run
    from traceinfer.rundir.schema import TRACE
    from traceinfer.rundir.writer import update_manifest

    config = options.load(args)
    names = resolve_probes(config.probes.select)  # bad names fail before the model loads
    device = dev.resolve_device(config.engine.device)
    engine_config = dataclasses.replace(config.engine, device=str(device), model=dev.resolve_model(config.engine.model, device))
    workload = workloads.make(config.workload, device.type == "cuda")
    out = Path(config.output.run_dir) if config.output.run_dir else default_run_dir(config.output.root, workload.name)
    if (out / "manifest.json").exists():
        raise TraceinferError(f"{out} already holds a run; pass another --out")

    # the device's rates, for the run's physical floor (analysis.floor.run_floor); before the engine takes
    # the memory its KV cache is sized from
    rates = {"bandwidth_bytes_per_s": dev.measure_bandwidth(device),
             "matmul_flops_per_s": dev.measure_matmul(device, dev.resolve_dtype(engine_config.dtype, device))}  # fmt: skip
    dev.release_memory(device)
    llm = LLM(config=engine_config)
    dev.freeze_gc()
    engine = llm.engine
    print(f"traceinfer profile: {workload.name} workload, {len(workload.prompts)} requests "
          f"({workload.prompt_tokens:,} prompt tokens, up to {workload.max_output_tokens:,} output tokens)")  # fmt: skip
    print(f"model {engine.model_label} on {engine.device} ({str(engine.dtype).removeprefix('torch.')}, "
          f"attention {engine.attention_backend}); probes: {', '.join(names) or 'off'}")  # fmt: skip
    if config.workload.warmup:
        # the workload, unprobed and untimed: Triton compiles every prefill shape here, and the first full
        # pass (slower than later ones on the H100, docs/benchmarks.md) is not the profiled one
        print("warm-up: the workload once, probes off")
        warm_up(llm, workload, full=True)
    else:
        llm.generate([[1, 2, 3, 4, 5, 6, 7, 8]], SamplingParams(max_tokens=8, ignore_eos=True))  # CUDA init

    manifest = {"command": args.argv, "workload": {"name": workload.name, **workload.spec,
                "prompt_tokens": workload.prompt_tokens, "max_output_tokens": workload.max_output_tokens},
                "warmup": "workload" if config.workload.warmup else "one request",
                "device_rates": {**rates, "method": "engine.device.measure_bandwidth / measure_matmul, best of 10"}}  # fmt: skip
    engine.block_manager.reset_prefix_cache()  # the probed and the baseline pass do the same work
    session = attach(engine, config.probes.select, out, config.probes, manifest)
    status, result = "completed", None
    try:
        result = timed_pass(llm, workload)
    except KeyboardInterrupt:
        status = "interrupted"
    except BaseException as exc:
        session.close("failed", error=f"{type(exc).__name__}: {exc}")
        raise
    final = session.close(status, results=_results(result) if result else None)
    print(f"\nrun directory: {out} ({status})")
    run_dir = open_run(out)
    trace = None
    if config.output.perfetto:
        try:
            trace = write_trace(build_trace(run_dir), out / TRACE)
        except Exception as exc:  # a partial run still has its streams; say why the trace is missing
            warnings.warn(f"could not write the Perfetto trace: {type(exc).__name__}: {exc}", stacklevel=1)
    if status != "completed":
        _print_files(out, final, trace)
        return 130

    print(f"{result.num_requests} requests, {result.output_tokens:,} output tokens in {result.seconds:.2f} s: "
          f"{result.output_tok_s:,.1f} output tok/s ({result.details['engine_steps']} steps)")  # fmt: skip
    handover = handover_summary(run_dir.frame("steps")) if "steps" in names else None
    if handover is not None:  # the probes' own share of each step, measured
        update_manifest(out, handover=handover)
        print(describe_handover(handover))
    if config.probes.baseline and names:
        try:
            engine.block_manager.reset_prefix_cache()
            baseline = timed_pass(llm, workload)
        except KeyboardInterrupt:
            update_manifest(out, overhead={"status": "interrupted before the baseline finished"})
            _print_files(out, final, trace)
            return 130
        overhead = one_pair_overhead(result.output_tok_s, baseline.output_tok_s, result.seconds, baseline.seconds)
        update_manifest(out, overhead=overhead)
        print(f"probes cost {overhead['cost_pct']:.1f}% of throughput ({result.output_tok_s:,.1f} tok/s probed, "
              f"{baseline.output_tok_s:,.1f} tok/s with probes off; one run each, which drift by a few %: "
              f"`traceinfer bench --probes off,{config.probes.select.replace(',', '+')} --repeat 7` measures it closer)")  # fmt: skip
    _print_files(out, final, trace)
    return 0


def _results(result) -> dict:
    """What the manifest records of the profiled pass."""
    return {
        "seconds": result.seconds,
        "requests": result.num_requests,
        "prompt_tokens": result.prompt_tokens,
        "output_tokens": result.output_tokens,
        "output_tok_s": result.output_tok_s,
        "total_tok_s": result.total_tok_s,
        "engine_steps": result.details["engine_steps"],
        "graph_steps": result.details["cuda_graph_steps"],
        "finish_reasons": result.details["finish_reasons"],
    }


def _print_files(out: Path, manifest: dict, trace: Path | None) -> None:
    streams = manifest.get("streams", {})
    if streams:
        print("streams: " + ", ".join(f"{name} ({s['rows']:,} rows)" for name, s in streams.items()))
    for name, d in manifest.get("probes", {}).get("details", {}).items():
        if d.get("reason"):
            print(f"probe {name}{'' if d['available'] else ' absent'}: {d['reason']}")
    print(f"manifest: {out / 'manifest.json'}")
    print(f"read it in Python: traceinfer.open_run({str(out)!r}).frame('steps')  (Parquet: {out}/<stream>.parquet)")
    if trace is not None:
        print(f"trace: {trace}\n  open https://ui.perfetto.dev and drag the file in (or chrome://tracing -> Load)")
