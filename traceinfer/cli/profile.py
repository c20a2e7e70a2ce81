"""Run a workload on the engine with probes on and write a run directory.

    traceinfer profile --workload chatbot [--probes off|default|all|LIST] [--out DIR] [engine options]

Stages: check the run directory can be written -> measure the device's rates -> load the model -> warm
up (the workload once, unless --no-warmup) -> attach the probes -> run the workload as it arrives ->
close the probes (final manifest, Parquet) -> trace.json -> the summary -> interleaved unprobed and
probed passes that measure the probes' cost (--overhead-passes) -> where everything is. Ctrl-C or
SIGTERM during the profiled run still leaves a readable run directory, marked "interrupted" or
"terminated" (exit 130 or 143); a failed write (a full disk) stops the run, marked "failed" (exit 2).
"""

from __future__ import annotations

import argparse
import dataclasses
import signal
import time
import warnings
from pathlib import Path

from traceinfer.cli import nsys_capture, options
from traceinfer.cli.report import parse_formats
from traceinfer.errors import ConfigError, TraceinferError

HELP = "run a workload with probes and write a run directory"


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like Ctrl-C's KeyboardInterrupt, so it unwinds the same way."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from traceinfer.probes import PRESETS, PROBES
    from traceinfer.workloads import WORKLOADS

    options.add_config_file(parser)
    options.add_section(parser, "workload", choices={"name": WORKLOADS})
    probes = f"{' | '.join(PRESETS)} | a comma list of: {', '.join(PROBES)}"
    options.add_section(parser, "probes", helps={"select": probes})
    options.add_section(parser, "output")
    options.add_section(parser, "report")
    options.add_section(parser, "engine")
    options.add_section(parser, "telemetry")


def default_run_dir(root: str | Path, workload: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = Path(root) / f"{stamp}-{workload}"
    n = 1
    while path.exists():
        n += 1
        path = Path(root) / f"{stamp}-{workload}-{n}"
    return path


def _on_sigterm(signum, frame) -> None:
    raise Terminated()


def run(args: argparse.Namespace) -> int:
    """Run ``traceinfer profile``; returns the exit status (130 after Ctrl-C, 143 after SIGTERM)."""
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return _profile(args)
    except Terminated:
        print("traceinfer profile: terminated (SIGTERM) before the profiled run began; nothing was written")
        return 143
    finally:
        signal.signal(signal.SIGTERM, previous)


def _profile(args: argparse.Namespace) -> int:
    from traceinfer import workloads
    from traceinfer.cli.progress import Display
    from traceinfer.engine import device as dev
    from traceinfer.engine.llm_engine import LLM
    from traceinfer.engine.sampling_params import SamplingParams
    from traceinfer.passes.engine import PassStopped, run_workload, warm_up
    from traceinfer.probes import attach, resolve_probes
    from traceinfer.rundir.writer import check_new_run_dir
    from traceinfer.telemetry import open_endpoint

    config = options.load(args)
    names = resolve_probes(config.probes.selection)  # bad input fails before the model loads
    formats = parse_formats(config.report.formats, "--report-formats", allow_none=True)
    device = dev.resolve_device(config.engine.device)
    on_cuda = device.type == "cuda"
    engine_config = dataclasses.replace(config.engine, device=str(device), model=dev.resolve_model(config.engine.model, device))
    workloads.validate(config.workload, on_cuda)
    name = config.workload.name or ("file" if config.workload.file else "chatbot")
    out = Path(config.output.run_dir) if config.output.run_dir else default_run_dir(config.output.root, name)
    try:
        check_new_run_dir(out)
    except TraceinferError as exc:
        raise ConfigError(f"--out: {exc}") from None
    if config.probes.nsys_capture:  # this same profile, relaunched under nsys (where nsys_capture is off)
        if not on_cuda:
            raise ConfigError(f"--nsys: Nsight Systems traces CUDA work; this run is on {device} (--device cuda)")
        return nsys_capture.relaunch(args.argv, out, config.probes.nsys, formats)
    display = Display(live=None if config.output.progress else False)
    endpoint = open_endpoint(config.telemetry)  # binds now: a port in use fails before the model loads

    display.phase(f"measuring {dev.device_name(device)}'s copy and matmul rates, for the run's floor")
    rates = {"bandwidth_bytes_per_s": dev.measure_bandwidth(device),  # before the engine takes the memory
             "matmul_flops_per_s": dev.measure_matmul(device, dev.resolve_dtype(engine_config.dtype, device))}  # fmt: skip
    dev.release_memory(device)
    display.phase(f"loading {engine_config.model} on {device}")
    llm = LLM(config=engine_config)
    dev.freeze_gc()
    engine = llm.engine
    workload = workloads.make(config.workload, on_cuda, vocab_size=engine.vocab_size, tokenize=engine.tokenizer.encode)
    _check_fits(workload, engine.max_model_len)
    display.done()
    arrival = ("offline: every request at t=0" if workload.offline else
               f"{workload.arrival}" + (f", at most {workload.max_concurrency} in flight" if workload.max_concurrency else ""))  # fmt: skip
    print(f"traceinfer profile: {workload.name} workload, {workload.num_requests} requests "
          f"({workload.prompt_tokens:,} prompt tokens, up to {workload.max_output_tokens:,} output tokens; {arrival})")  # fmt: skip
    if not on_cuda and workload.name != "file":
        print("  on a CPU: the CPU size of the workload, smaller than on a GPU, same shape (`traceinfer workloads`)")
    print(f"model {engine.model_label} on {engine.device} ({str(engine.dtype).removeprefix('torch.')}, "
          f"attention {engine.attention_backend}); probes: {', '.join(names) or 'off'}")  # fmt: skip

    if config.workload.warmup:
        # the workload, unprobed and untimed: on a GPU Triton compiles every kernel variant the run meets here,
        # and the first full pass (slower than later ones on the H100, docs/benchmarks.md) is not the profiled
        # one. At 4 tokens a request, then on a GPU whole, as an offline batch (the overhead passes' shapes)
        # and as it arrives: single-request prefills and small mixed batches select other kernel variants (a
        # 1.9 s first step on the H200 without it). A CPU compiles nothing: the short pass grows the allocator.
        display.phase("warm-up: the workload, probes off")
        warm_up(llm, workload, full=on_cuda)
        if on_cuda and not workload.offline:
            run_workload(llm, workload)
            engine.block_manager.reset_prefix_cache()
    else:
        llm.generate([[1, 2, 3, 4, 5, 6, 7, 8]], SamplingParams(max_tokens=8, ignore_eos=True))  # CUDA init
    display.done()

    manifest = {
        "command": args.argv,
        "workload": {"name": workload.name, **workload.spec, "prompt_tokens": workload.prompt_tokens,
                     "max_output_tokens": workload.max_output_tokens, "arrival": workload.arrival,
                     "max_concurrency": workload.max_concurrency},
        "warmup": "workload" if config.workload.warmup else "one request",
        "device_rates": {**rates, "method": "engine.device.measure_bandwidth / measure_matmul, best of 10"},
    }  # fmt: skip
    engine.block_manager.reset_prefix_cache()  # every pass starts from an empty prefix cache
    session = attach(engine, endpoint.selection(config.probes.selection), out, config.probes, manifest)
    if line := endpoint.serve(session):
        print(line)
    status, error, result = "completed", None, None
    display.phase("profiled run")
    try:
        result = run_workload(llm, workload, progress=display if config.output.progress else None,
                              stop=lambda: session.writer.write_error)  # fmt: skip
    except Terminated:
        status = "terminated"
    except KeyboardInterrupt:
        status = "interrupted"
    except PassStopped as exc:
        status, error = "failed", str(exc)
    except BaseException as exc:
        display.done("profiled run: failed")
        session.close("failed", error=f"{type(exc).__name__}: {exc}")
        endpoint.close(linger=False)
        raise
    display.done(f"profiled run: {status}" if status != "completed" else None)
    final = session.close(status, error=error, results=_results(result) if result else None)
    endpoint.close()  # after --telemetry-linger seconds of the final figures
    return _finish(args, config, llm, workload, names, out, final, result, status, display)


def _finish(args, config, llm, workload, names, out: Path, final: dict, result, status: str, display) -> int:
    """After the profiled run: the trace, the summary, the probes' cost, where everything is."""
    from traceinfer.analysis.overhead import describe_overhead, interleaved_overhead
    from traceinfer.analysis.summary import run_summary
    from traceinfer.passes.engine import probed_passes
    from traceinfer.probes.environment import describe_host_load
    from traceinfer.render.perfetto import build_trace, write_trace
    from traceinfer.render.summary_text import format_summary
    from traceinfer.rundir import open_run
    from traceinfer.rundir.schema import TRACE
    from traceinfer.rundir.writer import update_manifest

    print(f"\nrun directory: {out} ({status})")
    write_error = final.get("writer", {}).get("write_error")
    run_dir = open_run(out)
    trace = None
    if config.output.perfetto and write_error is None:
        try:
            trace = write_trace(build_trace(run_dir), out / TRACE)
        except Exception as exc:  # a partial run still has its streams; say why the trace is missing
            warnings.warn(f"could not write the Perfetto trace: {type(exc).__name__}: {exc}", stacklevel=1)
    warning = describe_host_load(final.get("host_load") or {})
    if write_error is not None:
        _print_files(out, final, trace)
        raise TraceinferError(f"{write_error}; the run stopped, and {out} keeps what was written before (status failed)")
    if status != "completed":
        _print_files(out, final, trace)
        if warning:
            print(warning)
        return 143 if status == "terminated" else 130

    summary = run_summary(final, {name: run_dir.frame(name) for name in run_dir.streams})
    if summary.handover is not None and "handover" not in final:
        update_manifest(out, handover=summary.handover)
    print("\n".join(format_summary(summary)))
    rounds = config.probes.overhead_passes
    if rounds is None:
        rounds = 2 if llm.engine.device.type == "cuda" else 0
        if names and not rounds:
            print("probe cost not measured: on a CPU the probes' helper processes share the cores with the engine, so "
                  "it says little about a GPU run (--overhead-passes 3 measures it here)")  # fmt: skip
    if rounds and names:
        display.phase(f"the probes' cost: {rounds} round{'s' if rounds > 1 else ''} of one unprobed and one probed "
                      "pass, the workload as an offline batch")  # fmt: skip
        try:
            passes = probed_passes(llm, workload, ("off", config.probes.selection), rounds, config.probes)
        except KeyboardInterrupt as exc:  # Terminated too
            display.done("the probes' cost: interrupted")
            update_manifest(out, overhead={"status": "interrupted before the overhead passes finished"})
            _print_files(out, final, trace)
            return 143 if isinstance(exc, Terminated) else 130
        display.done()
        overhead = interleaved_overhead([r.output_tok_s for r in passes[config.probes.selection]],
                                        [r.output_tok_s for r in passes["off"]])  # fmt: skip
        overhead["method"] = (f"{rounds} rounds of one unprobed and one probed pass (probes {config.probes.selection}, "
                              "a temporary run directory each), rotated each round, on the same warm engine, the "
                              "workload as an offline batch; cost = 1 - median(probed) / median(unprobed)")  # fmt: skip
        update_manifest(out, overhead=overhead)
        print(describe_overhead(overhead))
    graphs = _flamegraphs(run_dir)
    reports = []
    report_formats = parse_formats(config.report.formats, "--report-formats", allow_none=True)  # checked at the start
    if report_formats:
        from traceinfer.cli.report import print_findings, write_reports

        report, reports = write_reports(open_run(out), report_formats, out)  # the manifest has grown
        print()
        print_findings(report)
    if warning:
        print(warning)
    _print_files(out, final, trace, graphs, reports)
    return 0


def _flamegraphs(run_dir) -> list[Path]:
    """The flame graphs the run's probes give (py-spy, thread samples, torch.profiler, a memory snapshot),
    whole and per engine phase, as SVG in RUN/flamegraphs/; py-spy's phase shares beside the step trace's."""
    from traceinfer.analysis.phases import phase_shares
    from traceinfer.analysis.summary import step_split
    from traceinfer.cli.flamegraph import FOLDER, load_stacks, write_phases

    details = run_dir.manifest.get("probes", {}).get("details", {})
    kinds = [kind for kind, probe in (("cpu", "pyspy"), ("threads", "threads"), ("gpu", "torch_profiler"),
                                      ("ops", "torch_profiler")) if details.get(probe, {}).get("available")]  # fmt: skip
    if details.get("cuda_memory", {}).get("memory_snapshot"):
        kinds.append("memory")
    paths: list[Path] = []
    for kind in kinds:
        try:
            stacks = load_stacks(run_dir, kind)
        except TraceinferError as exc:  # e.g. no GPU kernels on a CPU run: the others still come
            print(f"flame graph {kind}: {exc}")
            continue
        paths += write_phases(run_dir, stacks, kind, "svg", run_dir.path / FOLDER)
        if kind == "cpu" and stacks.phases and "steps" in run_dir.streams:
            shares = phase_shares(stacks.phases)
            steps = {s.name: s.share for s in step_split(run_dir.frame("steps"), run_dir.manifest["results"]["seconds"] * 1e9)}
            print("py-spy samples of the engine thread by phase (step trace's share of the run beside it):")
            print("  " + ", ".join(f"{p} {100 * shares[p]:.1f}% ({100 * steps.get(p, 0):.1f}%)" for p in shares if shares[p] or steps.get(p)))
            if stacks.note:
                print(f"  {stacks.note}")
    return paths


def _check_fits(workload, max_model_len: int) -> None:
    """Every prompt leaves room for a token within max_model_len (the engine would fail the request alone;
    a workload that cannot run as asked is refused before it starts)."""
    for i, prompt in enumerate(workload.prompts):
        if len(prompt) >= max_model_len:
            raise ConfigError(f"workload {workload.name}: request {i} has {len(prompt)} prompt tokens; "
                              f"max_model_len={max_model_len} allows at most {max_model_len - 1}")  # fmt: skip


def _results(result) -> dict:
    """What the manifest records of the profiled pass."""
    return {
        "seconds": result.seconds,
        "requests": result.num_requests,
        "failed_requests": result.details["failed_requests"],
        "prompt_tokens": result.prompt_tokens,
        "output_tokens": result.output_tokens,
        "output_tok_s": result.output_tok_s,
        "total_tok_s": result.total_tok_s,
        "engine_steps": result.details["engine_steps"],
        "graph_steps": result.details["cuda_graph_steps"],
        "finish_reasons": result.details["finish_reasons"],
        "arrival": result.details["arrival"],
    }


def _print_files(out: Path, manifest: dict, trace: Path | None, graphs: list[Path] = (), reports: list[Path] = ()) -> None:
    """Every artifact of the run and how to open it."""
    streams = manifest.get("streams", {})
    cpu = manifest.get("engine", {}).get("device") == "cpu"
    for name, d in manifest.get("probes", {}).get("details", {}).items():
        if d.get("reason") and not d["available"] and not (cpu and name == "nvtx"):  # NVTX marks GPU timelines
            print(f"probe {name} absent: {d['reason']}")
    if reports:
        html = next((p for p in reports if p.suffix == ".html"), reports[0])
        print(f"\nreport     {', '.join(str(p) for p in reports)}")
        print(f"           start here: {'open file://' + str(html.resolve()) + ' in a browser' if html.suffix == '.html' else html}")
    print(f"\nmanifest   {out / 'manifest.json'}")
    if streams:
        parquet = all(s.get("parquet") for s in streams.values())
        counts = ", ".join(f"{name} ({s['rows']:,})" for name, s in streams.items())
        print(f"streams    {counts}: {'<stream>.parquet and ' if parquet else ''}<stream>.jsonl in {out}")
        print(f"           in Python: traceinfer.open_run({str(out)!r}).frame('steps'); any Parquet reader opens "
              "the .parquet files")  # fmt: skip
    if trace is not None:
        print(f"trace      {trace}\n           open https://ui.perfetto.dev and drag the file in (or chrome://tracing -> Load)")
    if graphs:
        from traceinfer.cli.flamegraph import how_to_open

        folder = graphs[0].parent
        print(f"flame graphs {folder}: {', '.join(p.name for p in graphs)}")
        print(f"           {how_to_open(graphs[0])}")
