"""Where the probes' throughput cost comes from: the bench workload under probe variants, in one process.

    python3 scripts/probe_cost.py [--rounds 3] [--num-requests 256] VARIANT ...

A variant is a probe selection with optional settings after '@', e.g.

    off  default  all  steps  kv  default@flush=60  default@switch=0.0005

flush=S sets ProbesConfig.flush_interval_s (60: nothing is written during the timed run), switch=S
sets sys.setswitchinterval for the run (the GIL switch interval, 0.005 by default). Variants run in
rotated order each round on one engine (prefix cache emptied before each run); the table gives each
variant's median output tok/s, its cost against the median of 'off', and the CPU seconds of the main
thread and of the probes' own threads. A second table pairs steps: every run schedules the same steps,
so the median over steps of (step time - off's step time) measures a variant's cost per step without
the run-to-run drift of whole-run throughput. It also splits each step into the host's critical path
and the GPU wait: from the handover the runner calls once the forward is launched ('handover') to the
end of sampling (the host waits there for the GPU), the rest of the step is host time that the GPU
waits for. That split (same subscriber in every variant, so 'off' has two) does not move with the GPU's
clocks, so its delta against 'off' is the probes' cost with the least noise. Not a test: a measuring
tool for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time

from traceinfer import workloads
from traceinfer.config import ProbesConfig, WorkloadConfig
from traceinfer.engine.device import freeze_gc, synchronize
from traceinfer.engine.llm_engine import LLM
from traceinfer.passes.engine import warm_up
from traceinfer.probes import attach


def parse_variant(text: str) -> tuple[str, dict, float | None]:
    probes, *settings = text.split("@")
    options: dict = {}
    switch = None
    for item in settings:
        key, _, value = item.partition("=")
        if key == "flush":
            options["flush_interval_s"] = float(value)
        elif key == "switch":
            switch = float(value)
        else:
            raise SystemExit(f"unknown variant setting {key!r} in {text!r} (flush=S, switch=S)")
    return probes, options, switch


STAGES = ("schedule", "prepare", "forward", "handover", "sample", "postprocess", "other")


def timed_step(engine, out: list[int], waits: list[int], stages: list[tuple]):
    """engine.step, recording each step's wall time in ns into ``out``, the time from the handover
    ('handover') to the end of sampling into ``waits`` and the time of each of STAGES into ``stages``
    (the handover: from the forward's launch to 'handover'); returns (step function, unsubscribe)."""
    step, clock = type(engine).step.__get__(engine), time.perf_counter_ns
    marks: dict = {}

    def on_point(point: str, phase: str, t: int, fields: dict) -> None:
        marks[point, phase] = t

    def run():
        marks.clear()
        t = clock()
        result = step()
        dur = clock() - t
        out.append(dur)
        spans = [marks[p, "E"] - marks[p, "B"] if (p, "E") in marks else 0 for p in STAGES[:3]]
        handover = marks.get(("handover", "i"))
        handover_ns = handover - marks["forward", "E"] if handover else 0
        tail = [marks[p, "E"] - marks[p, "B"] if (p, "E") in marks else 0 for p in STAGES[4:6]]
        stages.append((*spans, handover_ns, *tail, dur - sum(spans) - handover_ns - sum(tail)))
        waits.append(marks["sample", "E"] - handover if handover and ("sample", "E") in marks else 0)
        return result

    return run, engine.hooks.subscribe(on_point, STAGES[:3] + ("handover", "sample", "postprocess"))


def keep_off(core: int, cores: set[int]) -> None:
    """Move this process's other threads and its child processes off ``core`` and its SMT siblings."""
    import psutil

    path = f"/sys/devices/system/cpu/cpu{core}/topology/thread_siblings_list"
    siblings = {core}
    if os.path.exists(path):
        for part in open(path).read().strip().split(","):
            lo, _, hi = part.partition("-")
            siblings.update(range(int(lo), int(hi or lo) + 1))
    others = cores - siblings or cores
    me = threading.get_native_id()
    for t in psutil.Process().threads():
        if t.id != me:
            os.sched_setaffinity(t.id, others)
    for child in psutil.Process().children(recursive=True):
        os.sched_setaffinity(child.pid, others)


def per_step_median(runs: list[dict], key: str = "step_ns") -> list[float]:
    return [statistics.median(column) for column in zip(*(r[key] for r in runs))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variants", nargs="+")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--num-requests", type=int, default=256)
    parser.add_argument("--model", default="auto", help="default: auto (synthetic:qwen3-0.6b on CUDA)")
    parser.add_argument("--json", metavar="PATH")
    parser.add_argument("--full-warmup", action="store_true", help="one untimed run of the whole workload first")
    parser.add_argument("--pin", action="store_true", help="pin the engine thread to one core during timed runs, "
                        "and the other threads and child processes off that physical core")
    args = parser.parse_args()

    llm = LLM(args.model)
    freeze_gc()  # as the commands do
    engine = llm.engine
    workload = workloads.make(WorkloadConfig(name="bench", num_requests=args.num_requests), engine.device.type == "cuda")
    prompts, params = workload.prompts, workload.params
    warm_up(llm, workload, full=args.full_warmup)
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    main_thread = threading.main_thread()
    assert threading.current_thread() is main_thread

    results: dict[str, list[dict]] = {v: [] for v in args.variants}
    n = len(args.variants)
    for r in range(args.rounds):
        for i in range(n):
            variant = args.variants[(i + r) % n]
            probes, options, switch = parse_variant(variant)
            engine.block_manager.reset_prefix_cache()
            old_switch = sys.getswitchinterval()
            if switch is not None:
                sys.setswitchinterval(switch)
            session = attach(engine, probes, None, ProbesConfig(**options))
            steps0 = engine.step_index
            step_ns: list[int] = []
            wait_ns: list[int] = []
            stage_ns: list[tuple] = []
            engine.step, untime = timed_step(engine, step_ns, wait_ns, stage_ns)
            if args.pin and cores:  # this thread on one core; the probes' threads and processes off its physical core
                os.sched_setaffinity(0, {cores[-1]})
                keep_off(cores[-1], set(cores))
            try:
                synchronize(engine.device)
                cpu0, start = time.thread_time(), time.perf_counter()
                outputs = llm.generate(prompts, params)
                synchronize(engine.device)
                seconds, main_cpu = time.perf_counter() - start, time.thread_time() - cpu0
            finally:
                if args.pin and cores:
                    os.sched_setaffinity(0, set(cores))
                del engine.step
                untime()
                manifest = session.close()
                sys.setswitchinterval(old_switch)
            tokens = sum(len(o.token_ids) for o in outputs)
            cost = manifest["probes"].get("cost", {})
            results[variant].append({
                "tok_s": tokens / seconds, "seconds": seconds, "steps": engine.step_index - steps0,
                "main_cpu_s": main_cpu, "flusher_cpu_s": cost.get("flusher_cpu_s", 0.0),
                "probe_threads_cpu_s": cost.get("probe_threads_cpu_s", 0.0), "step_ns": step_ns,
                "host_ns": [a - b for a, b in zip(step_ns, wait_ns)],
                "stage_us": [sum(column) / len(column) / 1e3 for column in zip(*stage_ns)], "stage_ns": stage_ns,
            })  # fmt: skip
            print(f"round {r} {variant:28s} {tokens / seconds:10,.1f} tok/s  {seconds:6.2f} s", flush=True)

    base = statistics.median(x["tok_s"] for x in results["off"]) if "off" in results else None
    print(f"\n{'variant':28s} {'median tok/s':>12s} {'cost %':>7s} {'main cpu s':>10s} {'flusher s':>9s} "
          f"{'threads s':>9s}  runs")  # fmt: skip
    for variant, runs in results.items():
        med = statistics.median(x["tok_s"] for x in runs)
        cost = f"{100 * (1 - med / base):+.2f}" if base else "-"
        row = {k: statistics.median(x[k] for x in runs) for k in ("main_cpu_s", "flusher_cpu_s", "probe_threads_cpu_s")}
        print(f"{variant:28s} {med:12,.1f} {cost:>7s} {row['main_cpu_s']:10.3f} {row['flusher_cpu_s']:9.3f} "
              f"{row['probe_threads_cpu_s']:9.3f}  " + ", ".join(f"{x['tok_s']:,.0f}" for x in runs))  # fmt: skip
    if "off" in results:
        # the schedule is the same in every run, so step i of one run is step i of another: the median over
        # steps of (this variant's step time - off's), both medians over rounds, is robust to run-to-run drift
        off_steps = per_step_median(results["off"])
        off_host = per_step_median(results["off"], "host_ns")
        print(f"\n{'variant':28s} {'median step delta us':>20s} {'sum of deltas % of off':>22s} "
              f"{'host us/step':>12s} {'host delta % of off step':>24s}")  # fmt: skip
        for variant, runs in results.items():
            steps = per_step_median(runs)
            host = per_step_median(runs, "host_ns")
            deltas = [a - b for a, b in zip(steps, off_steps)]
            host_deltas = [a - b for a, b in zip(host, off_host)]
            print(f"{variant:28s} {statistics.median(deltas) / 1e3:20.1f} {100 * sum(deltas) / sum(off_steps):22.2f} "
                  f"{sum(host) / len(host) / 1e3:12.1f} {100 * sum(host_deltas) / sum(off_steps):24.2f}")  # fmt: skip
    print(f"\n{'variant':28s} " + " ".join(f"{s[:11]:>11s}" for s in STAGES) + "   (mean us per step, median of runs)")
    for variant, runs in results.items():
        print(f"{variant:28s} " + " ".join(f"{statistics.median(c):11.1f}" for c in zip(*(r["stage_us"] for r in runs))))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"device": str(engine.device), "rounds": args.rounds, "results": results}, fh, separators=(",", ":"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
