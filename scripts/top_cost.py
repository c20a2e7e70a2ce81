"""What an attached `traceinfer top` costs the engine it watches: interleaved passes of the bench workload on one
warm engine, every pass with the probes PROBES (default: default,telemetry) and the telemetry endpoint serving;
in the 'attached' passes a `traceinfer top --attach URL` process redraws at --refresh-hz (4) for the whole pass.

    python3 scripts/top_cost.py [--rounds 5] [--num-requests 256] [--probes default,telemetry] [--device cuda]

Cost = 1 - median(attached) / median(unattached) output tok/s, resolved only when larger than the passes' spread
(traceinfer.analysis.overhead.interleaved_overhead, as `profile`'s overhead passes). Not a test: a measuring
tool for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from traceinfer import workloads
from traceinfer.analysis.overhead import describe_overhead, describe_paired, interleaved_overhead, paired_cost
from traceinfer.config import EngineConfig, WorkloadConfig
from traceinfer.engine import device as dev
from traceinfer.engine.llm_engine import LLM
from traceinfer.passes.engine import timed_pass, warm_up
from traceinfer.probes import attach
from traceinfer.telemetry import TelemetryServer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--num-requests", type=int)
    p.add_argument("--probes", default="default,telemetry")
    p.add_argument("--device", default="auto")
    p.add_argument("--refresh-hz", type=float, default=4.0)
    a = p.parse_args()
    if "telemetry" not in a.probes:
        raise SystemExit("--probes must include telemetry: the attached top reads its endpoint")
    device = dev.resolve_device(a.device)
    llm = LLM(config=EngineConfig(device=str(device), model=dev.resolve_model("auto", device)))
    dev.freeze_gc()
    workload = workloads.make(WorkloadConfig(name="bench", num_requests=a.num_requests), device.type == "cuda")
    warm_up(llm, workload, full=True)
    server = TelemetryServer(("127.0.0.1", 0))
    runs: dict[str, list[float]] = {"unattached": [], "attached": []}
    try:
        for r in range(a.rounds):
            for kind in (("unattached", "attached") if r % 2 == 0 else ("attached", "unattached")):
                llm.engine.block_manager.reset_prefix_cache()
                session = attach(llm.engine, a.probes, None)
                server.serve(session.probes["telemetry"].telemetry)
                top = None
                if kind == "attached":
                    top = subprocess.Popen([sys.executable, "-m", "traceinfer.cli", "top", "--attach", server.url,
                                            "--refresh-hz", str(a.refresh_hz)], stdin=subprocess.DEVNULL,
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
                    time.sleep(2.0)  # its start-up (imports) before the pass, not during it
                try:
                    result = timed_pass(llm, workload)
                finally:
                    if top is not None:
                        top.terminate()
                        top.wait()
                    session.close()
                runs[kind].append(result.output_tok_s)
                print(f"round {r + 1} {kind}: {result.output_tok_s:.1f} output tok/s", flush=True)
    finally:
        server.close()
    o = interleaved_overhead(runs["attached"], runs["unattached"])
    print(describe_overhead(o).replace("probe cost", "attached top's cost"))
    paired = paired_cost(runs["attached"], runs["unattached"])
    if paired:
        print(f"attached top's cost round by round: {describe_paired(paired)}")
    o["paired"] = paired
    print(json.dumps({**o, "device": dev.device_name(device), "probes": a.probes, "refresh_hz": a.refresh_hz,
                      "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}))  # fmt: skip


if __name__ == "__main__":
    main()
