"""``traceinfer profile``: run a workload on the engine with probes on and write a run directory.

    traceinfer profile --workload chatbot|bench [--model M] [--probes off|default|all|LIST] [--out DIR]

Stages: build the engine and warm it up (the workload once, unless --no-warmup) -> attach the probes
-> run the workload -> close the probes (final manifest) -> merge the streams into trace.json -> run
the same workload again with probes off, on the same warm engine, and record the measured overhead
in the manifest. Ctrl-C at any point of the probed run still leaves a readable run directory, marked
"interrupted" (during the warm-up there is no run directory yet: it exits with 130).
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

from traceinfer.errors import TraceinferError

CUDA_MODEL = "synthetic:qwen3-0.6b"
CPU_MODEL = "synthetic:tiny"


def add_profile_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``traceinfer profile``, engine options included (from traceinfer.cli)."""
    from traceinfer.cli import add_engine_arguments
    from traceinfer.probes import PRESETS, PROBES
    from traceinfer.workloads import WORKLOADS

    p = parser.add_argument_group("profile")
    p.add_argument("--workload", choices=WORKLOADS, default="chatbot",
                   help="chatbot: ~128 prompt / ~256 output tokens per request, shared system prompt (scaled down "
                        "on CPU); bench: nano-vLLM's benchmark (scaled down on CPU)")  # fmt: skip
    p.add_argument("--probes", default="default",
                   help=f"{' | '.join(PRESETS)} | a comma list of: {', '.join(PROBES)} (default: default)")  # fmt: skip
    p.add_argument("--out", metavar="DIR", help="the run directory to create (default: runs/<time>-<workload>)")
    p.add_argument("--num-requests", type=int, help="override the workload's request count")
    p.add_argument("--workload-seed", type=int, help="workload seed (default 0)")
    p.add_argument("--sample-hz", type=float, help="NVML/psutil sampling rate (default 20, 100 with 'all')")
    p.add_argument("--stack-hz", type=float, help="thread stack sampling rate (default 20, 100 with 'all')")
    p.add_argument("--nvtx-layers", action="store_true", help="an NVTX range per decoder layer (eager forwards)")
    p.add_argument("--memory-snapshot", action="store_true", help="write a torch.cuda.memory snapshot (CUDA)")
    p.add_argument("--no-cuda-profiler-range", dest="cuda_profiler_range", action="store_false",
                   help="do not call torch.cuda.profiler.start/stop around the workload")  # fmt: skip
    p.add_argument("--warmup", action=argparse.BooleanOptionalAction, default=True,
                   help="run the workload once, unprobed and untimed, before the profiled run (default); "
                        "--no-warmup profiles a cold engine (Triton compiles, allocator growth)")  # fmt: skip
    p.add_argument("--baseline", action=argparse.BooleanOptionalAction, default=True,
                   help="after the probed run, run the workload again with probes off to measure their overhead")  # fmt: skip
    add_engine_arguments(parser)


def default_run_dir(workload: str, root: str | Path = "runs") -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = Path(root) / f"{stamp}-{workload}"
    n = 1
    while path.exists():
        n += 1
        path = Path(root) / f"{stamp}-{workload}-{n}"
    return path


def _synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_workload(llm, workload) -> dict:
    """Generate the whole workload as one offline batch; returns timing and token counts."""
    engine = llm.engine
    runner = engine.runner.stats
    steps0, graph0 = engine.step_index, runner.graph_steps
    _synchronize(engine.device)
    start = time.perf_counter()
    outputs = llm.generate(workload.prompts, workload.params)
    _synchronize(engine.device)
    seconds = time.perf_counter() - start
    out_tokens = sum(len(o.token_ids) for o in outputs)
    return {
        "seconds": seconds,
        "requests": len(outputs),
        "prompt_tokens": workload.prompt_tokens,
        "output_tokens": out_tokens,
        "output_tok_s": out_tokens / seconds,
        "total_tok_s": (out_tokens + workload.prompt_tokens) / seconds,
        "engine_steps": engine.step_index - steps0,
        "graph_steps": runner.graph_steps - graph0,
        "finish_reasons": sorted({o.finish_reason for o in outputs}),
    }


def overhead_figure(probed: dict, baseline: dict) -> dict:
    ratio = probed["output_tok_s"] / baseline["output_tok_s"]
    return {
        "method": "the same workload on the same warm engine with probes off, right after the probed run "
        "(prefix cache reset before each); one run each, so expect a few % of noise on a shared machine",
        "baseline_output_tok_s": baseline["output_tok_s"],
        "probed_output_tok_s": probed["output_tok_s"],
        "baseline_seconds": baseline["seconds"],
        "probed_seconds": probed["seconds"],
        "throughput_ratio": ratio,
        "cost_pct": (1.0 - ratio) * 100.0,
    }


def _reset_prefix_cache(engine) -> None:
    """Each run starts from an empty prefix cache, so the probed and baseline runs do the same work."""
    engine.block_manager.reset_prefix_cache()


def run_profile(args: argparse.Namespace) -> int:
    """Run ``traceinfer profile`` from parsed arguments; returns the exit status (130 after Ctrl-C)."""
    from traceinfer import workloads
    from traceinfer.cli import engine_options
    from traceinfer.config import load_section
    from traceinfer.engine.llm_engine import LLM, resolve_device
    from traceinfer.engine.sampling_params import SamplingParams
    from traceinfer.probes import ProbeOptions, attach, resolve_probes
    from traceinfer.probes.rundir import update_manifest
    from traceinfer.reports.frames import load_frame
    from traceinfer.reports.perfetto import write_trace
    from traceinfer.reports.step_analysis import describe_handover, handover_summary

    options = ProbeOptions(
        select=args.probes, sample_hz=args.sample_hz, stack_hz=args.stack_hz, nvtx_layers=args.nvtx_layers,
        cuda_profiler_range=args.cuda_profiler_range, memory_snapshot=args.memory_snapshot,
    )  # fmt: skip
    names = resolve_probes(options.select)  # bad names fail before the model loads
    opts = engine_options(args)
    without_model = {k: v for k, v in opts.items() if k != "model"}
    on_cuda = resolve_device(load_section("engine", without_model, args.config).device).type == "cuda"
    opts.setdefault("model", CUDA_MODEL if on_cuda else CPU_MODEL)
    workload = workloads.make(args.workload, on_cuda, args.num_requests, args.workload_seed)
    out = Path(args.out) if args.out else default_run_dir(args.workload)
    if (out / "manifest.json").exists():
        raise TraceinferError(f"{out} already holds a run; pass another --out")

    llm = LLM(config_file=args.config, **opts)
    engine = llm.engine
    print(f"traceinfer profile: {workload.name} workload, {len(workload.prompts)} requests "
          f"({workload.prompt_tokens:,} prompt tokens, up to {workload.max_output_tokens:,} output tokens)")  # fmt: skip
    print(f"model {engine.model_label} on {engine.device} ({str(engine.dtype).removeprefix('torch.')}, "
          f"attention {engine.attention_backend}); probes: {', '.join(names) or 'off'}")  # fmt: skip
    llm.generate([[1, 2, 3, 4, 5, 6, 7, 8]], SamplingParams(max_tokens=8, ignore_eos=True))  # CUDA and allocator init
    if args.warmup:
        # the whole workload once, unprobed and untimed: Triton compiles every prefill shape here, and the first
        # full run (slower than later ones on the H100, docs/benchmarks.md) is not the profiled one
        print("warm-up: the workload once, probes off")
        _reset_prefix_cache(engine)
        run_workload(llm, workload)
    _reset_prefix_cache(engine)

    manifest = {"command": ["traceinfer", "profile", *sys.argv[1:]], "workload": {"name": workload.name, **workload.spec,
                "prompt_tokens": workload.prompt_tokens, "max_output_tokens": workload.max_output_tokens},
                "warmup": "workload" if args.warmup else "one request"}  # fmt: skip
    session = attach(engine, options.select, out, options, manifest)
    status, result = "completed", None
    try:
        result = run_workload(llm, workload)
    except KeyboardInterrupt:
        status = "interrupted"
    except BaseException as exc:
        session.close("failed", error=f"{type(exc).__name__}: {exc}")
        raise
    final = session.close(status, results=result)
    print(f"\nrun directory: {out} ({status})")
    trace = None
    try:
        trace = write_trace(out)
    except Exception as exc:  # a partial run still has its streams; say why the trace is missing
        warnings.warn(f"could not write the Perfetto trace: {type(exc).__name__}: {exc}")
    if status != "completed":
        _print_files(out, final, trace)
        return 130

    print(f"{result['requests']} requests, {result['output_tokens']:,} output tokens in {result['seconds']:.2f} s: "
          f"{result['output_tok_s']:,.1f} output tok/s ({result['engine_steps']} steps)")  # fmt: skip
    handover = handover_summary(load_frame(out, "steps")) if "steps" in names else None
    if handover is not None:  # the probes' own share of each step, measured
        update_manifest(out, handover=handover)
        print(describe_handover(handover))
    if args.baseline and names:
        _reset_prefix_cache(engine)
        try:
            baseline = run_workload(llm, workload)
        except KeyboardInterrupt:
            update_manifest(out, overhead={"status": "interrupted before the baseline finished"})
            _print_files(out, final, trace)
            return 130
        overhead = overhead_figure(result, baseline)
        update_manifest(out, overhead=overhead)
        print(f"probes cost {overhead['cost_pct']:.1f}% of throughput ({result['output_tok_s']:,.1f} tok/s probed, "
              f"{baseline['output_tok_s']:,.1f} tok/s with probes off; one run each, which drift by a few %: "
              f"`traceinfer bench --probes off,{options.select.replace(',', '+')} --repeat 7` measures it closer)")  # fmt: skip
    _print_files(out, final, trace)
    return 0


def _print_files(out: Path, manifest: dict, trace: Path | None) -> None:
    streams = manifest.get("streams", {})
    if streams:
        print("streams: " + ", ".join(f"{s['file']} ({s['rows']:,} rows)" for s in streams.values()))
    for name, d in manifest.get("probes", {}).get("details", {}).items():
        if d.get("reason"):
            print(f"probe {name}{'' if d['available'] else ' absent'}: {d['reason']}")
    print(f"manifest: {out / 'manifest.json'}")
    if trace is not None:
        print(f"trace: {trace}\n  open https://ui.perfetto.dev and drag the file in (or chrome://tracing -> Load)")


def main(argv: list[str] | None = None) -> int:
    """``python -m traceinfer.profile``: the same as ``traceinfer profile``."""
    from traceinfer.cli import main as cli_main

    return cli_main(["profile", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
