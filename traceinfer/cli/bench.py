"""nano-vLLM's offline throughput benchmark on our engine, optionally against HF transformers' continuous
batching on the same weights, with the physical floor of the run.

    traceinfer bench [--compare hf] [--probes off,default,all --repeat 7] [--json PATH] [engine options]

Every request is added at time 0 (an offline batch), so time to first token includes queueing. Stages:
measure the device's rates (before the engine takes its memory) -> build and warm up the engine ->
timed passes under each probe set (traceinfer.passes.engine) -> the floor (traceinfer.analysis.floor)
-> HF's pass (traceinfer.passes.hf) -> the table (traceinfer.render.bench_text) and the JSON result.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
from pathlib import Path

from traceinfer.cli import options
from traceinfer.errors import ConfigError

HELP = "nano-vLLM's throughput benchmark, optionally against HF, with the physical floor"
BENCHMARK = "nano-vLLM offline throughput (bench.py workload)"
WORKLOAD_FIELDS = ("num_requests", "seed", "temperature", "min_input_len", "max_input_len", "min_output_len",
                   "max_output_len")  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser) -> None:
    b = parser.add_argument_group("bench")
    b.add_argument("--compare", choices=["hf"], help="also run HF transformers continuous batching on the same weights")
    b.add_argument("--json", metavar="PATH", help="write the result as JSON")
    b.add_argument("--probes", default="off", metavar="SETS",
                   help="probe sets to time one after another on one engine, e.g. off,default,all (default: off); "
                        "the first set's pass is the headline result")  # fmt: skip
    b.add_argument("--repeat", type=int, default=1, metavar="N",
                   help="rounds over the probe sets, in rotated order; each set reports its median (default 1)")  # fmt: skip
    b.add_argument("--bandwidth", type=float, metavar="GB/S", help="copy bandwidth for the floor (default: measured)")
    b.add_argument("--matmul-tflops", type=float, help="matmul rate for the floor (default: measured)")
    options.add_config_file(parser)
    options.add_section(parser, "workload", only=WORKLOAD_FIELDS)
    options.add_section(parser, "engine")


def parse_probe_sets(spec: str) -> tuple[str, ...]:
    """'off,default,all' -> ('off', 'default', 'all'); each set is checked by the probe registry."""
    from traceinfer.probes import resolve_probes

    sets = tuple(p.strip() for p in spec.split(",") if p.strip())
    for s in sets:
        resolve_probes(s)
    if len(set(sets)) != len(sets):
        raise ConfigError(f"--probes lists a set twice: {spec!r}")
    return sets


def pass_json(result) -> dict:
    """A PassResult as the JSON result shows it: its figures and its latency summary."""
    from traceinfer.analysis.latency import token_latency_summary

    return {
        "system": result.system, "num_requests": result.num_requests, "prompt_tokens": result.prompt_tokens,
        "output_tokens": result.output_tokens, "seconds": result.seconds, "output_tok_s": result.output_tok_s,
        "total_tok_s": result.total_tok_s,
        "latency": token_latency_summary(result.timings) if result.timings else {},
        "details": result.details,
    }  # fmt: skip


def run_benchmark(args: argparse.Namespace, display=None) -> dict:
    """Measure the device, run our engine (and HF), compute the floor; returns the JSON-ready result.
    ``display``: a cli.progress.Display that says each stage and each pass as it ends (none: silent)."""
    from traceinfer import workloads
    from traceinfer.analysis.floor import ModelCost, physical_floor
    from traceinfer.analysis.overhead import paired_cost, probe_costs, spread_pct
    from traceinfer.cli.progress import Display
    from traceinfer.engine import device as dev
    from traceinfer.engine.llm_engine import LLM
    from traceinfer.passes.engine import median_pass, probed_passes, warm_up
    from traceinfer.passes.gpu_counters import GpuCounters, between

    if args.repeat < 1:
        raise ConfigError(f"--repeat must be >= 1, got {args.repeat}")
    probe_sets = parse_probe_sets(args.probes)
    config = options.load(args, workload={"name": "bench"})
    device = dev.resolve_device(config.engine.device)
    dtype = dev.resolve_dtype(config.engine.dtype, device)
    engine_config = dataclasses.replace(config.engine, device=str(device), model=dev.resolve_model(config.engine.model, device))
    workload = workloads.make(config.workload, device.type == "cuda")
    spec = {k: v for k, v in workload.spec.items() if k != "kind"}
    display = display or Display(live=False, quiet=True)

    # rates first, while the device is empty: the engine sizes its KV cache from free memory
    display.phase(f"measuring {dev.device_name(device)}'s copy and matmul rates, for the run's floor")
    bandwidth = args.bandwidth * 1e9 if args.bandwidth else dev.measure_bandwidth(device)
    flops = args.matmul_tflops * 1e12 if args.matmul_tflops else dev.measure_matmul(device, dtype)
    dev.release_memory(device)

    counters = GpuCounters(device)  # read around each pass, ours and HF's
    display.phase(f"loading {engine_config.model} on {device}")
    llm = LLM(config=engine_config)
    dev.freeze_gc()
    engine = llm.engine
    full = len(probe_sets) * args.repeat > 1  # passes to compare: a full warm-up so the first does not lag
    display.phase("warm-up: the workload once" + (", then a full pass" if full else ""))
    warm_up(llm, workload, full=full)
    display.phase(f"timed passes: {args.repeat} round{'s' if args.repeat > 1 else ''} of {', '.join(probe_sets)}")

    def said(i: int, count: int, result) -> None:
        display.say(f"  pass {i + 1}/{count} ({result.details['probes']}): {result.output_tok_s:,.1f} output tok/s "
                    f"in {result.seconds:.2f} s")  # fmt: skip

    passes = probed_passes(llm, workload, probe_sets, args.repeat, config.probes, counters, on_pass=said)  # [probes] apply
    medians = {spec_name: median_pass(results) for spec_name, results in passes.items()}
    ours = medians[probe_sets[0]]
    cost = ModelCost.from_shapes(engine.model.shapes())
    output_lens = [p.max_tokens for p in workload.params]
    floor = physical_floor(cost, list(map(len, workload.prompts)), output_lens, ours.details["steps"]["model_steps"],
                           bandwidth, flops)  # fmt: skip
    engine_json = {**dataclasses.asdict(engine.config), "resolved_dtype": str(engine.dtype).removeprefix("torch.")}
    kernels = engine.runner.kernel_choices()
    label, synthetic = engine.model_label, engine.synthetic

    hf = None
    if args.compare == "hf":
        from traceinfer.engine.synthetic import is_synthetic
        from traceinfer.passes.hf import build_hf_model, hf_state_dict, run_hf

        weights = hf_state_dict(engine.model) if is_synthetic(engine.config.model) else None  # a directory: HF loads it
        hf_config = engine.hf_config
        del llm, engine
        gc.unfreeze()  # what freeze_gc froze with the engine is garbage now; HF sizes its cache from what is free
        memory = dev.release_memory(device)  # (free, total) bytes on CUDA
        display.phase("HF transformers: loading the same weights")
        hf_model = build_hf_model(engine_config.model, hf_config, weights, device, dtype)
        del weights
        display.phase("HF transformers' continuous batching on the same weights, one pass")
        before = counters.read()
        hf = run_hf(hf_model, device, workload.prompts, workload.params, spec["seed"])
        hf.details["gpu"] = between(before, counters.read(), hf.output_tokens)
        if memory is not None:
            hf.details["device_free_gb_at_load"], hf.details["device_total_gb"] = (round(b / 1e9, 2) for b in memory)
        del hf_model
        dev.release_memory(device)
    display.done()
    counters_note = counters.reason or "NVML: energy and clock limiters over each pass (details.gpu)"
    counters.close()

    import torch

    return {
        "benchmark": BENCHMARK,
        "model": label,
        "synthetic": synthetic,
        "device": dev.device_name(device),
        "torch": torch.__version__,
        "engine_config": engine_json,
        "kernels": kernels,
        "workload": {
            **spec,
            "ignore_eos": True,
            "prompt_tokens": workload.prompt_tokens,
            "expected_output_tokens": sum(output_lens),
            "arrivals": "all requests at t=0 (offline batch): TTFT includes queueing",
        },
        "gpu_counters": counters_note,
        "device_rates": {
            "bandwidth_bytes_per_s": bandwidth,
            "bandwidth_measured": not args.bandwidth,
            "matmul_flops_per_s": flops,
            "matmul_measured": not args.matmul_tflops,
            "matmul_dtype": str(dtype).removeprefix("torch."),
        },
        "model_cost": {**dataclasses.asdict(cost), "kv_bytes_per_token": cost.kv_bytes_per_token},
        "traceinfer": pass_json(ours),
        "hf": pass_json(hf) if hf else None,
        "ratio_traceinfer_over_hf": ours.output_tok_s / hf.output_tok_s if hf else None,
        "floor": dataclasses.asdict(floor),
        "fraction_of_floor": ours.output_tok_s / floor.output_tok_s,
        "probe_runs": {s: pass_json(r) for s, r in medians.items()},
        "probe_cost_pct": probe_costs({s: r.output_tok_s for s, r in medians.items()}),
        "probe_off_spread_pct": spread_pct(medians["off"].details["output_tok_s_runs"]) if "off" in medians else None,
        # each set against off round by round (the passes of a round run side by side): None under 6 rounds
        "probe_cost_paired": {s: paired_cost(r.details["output_tok_s_runs"], medians["off"].details["output_tok_s_runs"])
                              for s, r in medians.items() if s != "off"} if "off" in medians else None,
    }


def run(args: argparse.Namespace) -> int:
    """Run the benchmark, print the table, write --json; returns the exit status."""
    from traceinfer.cli.progress import Display
    from traceinfer.render.bench_text import format_report

    display = Display(live=None)
    try:
        result = run_benchmark(args, display)
    except BaseException:  # an error or Ctrl-C within a stage: end its line (a terminal's cursor comes back)
        if display.phase_name:
            display.done(f"{display.phase_name}: stopped")
        raise
    print(format_report(result))
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nwrote {path} (read it with: python -m json.tool {path})")
    return 0
