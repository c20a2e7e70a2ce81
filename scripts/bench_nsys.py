"""How long reading an nsys export into a GpuCapture and computing its tables takes, and the memory it needs.

    OMP_NUM_THREADS=1 python scripts/bench_nsys.py BIG.sqlite [--repeat 3]

Each repetition is a new interpreter (as scripts/bench_report.py) that imports traceinfer, then times
``ingest.read_nsys`` and, on its GpuCapture, ``analysis.gpu_trace``'s nvtx_sum, nvtx_gpu_proj_sum,
cuda_gpu_kern_sum, gpu_gaps (without a run directory) and gpu_folded, each on its own; it prints its
wall time (imports included) and its peak resident memory (``resource.getrusage`` ru_maxrss), and the
peak as it stood after each part (where the peak was reached). Prints the median and spread of the
repetitions, the largest peak and the median of each part. Make an export of a one-minute bench's size
with scripts/make_big_nsys.py (issue 12: under 30 s and 2 GB on the 2-core machine).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

from timed_runs import repeat, run_child, summary_line

CHILD = r"""
import json, resource, sys, time
t0 = time.perf_counter()
parts, peaks = {}, {}
def peak():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
def timed(name, fn, *args):
    t = time.perf_counter()
    out = fn(*args)
    parts[name] = time.perf_counter() - t
    peaks[name] = peak()
    return out

import traceinfer
from traceinfer.analysis import gpu_trace
from traceinfer.ingest import read_nsys
cap = timed("read_nsys", read_nsys, sys.argv[1])
rows = {"ranges": len(cap.ranges), "launches": len(cap.launches), "gpu": len(cap.gpu),
        "kernels": int((cap.gpu["kind"] == "kernel").sum())}
for name in ("nvtx_sum", "nvtx_gpu_proj_sum", "cuda_gpu_kern_sum", "gpu_gaps", "gpu_folded"):
    timed(name, getattr(gpu_trace, name), cap)
seconds = time.perf_counter() - t0
assert "torch" not in sys.modules
print(json.dumps({"seconds": seconds, "peak_rss_bytes": peak(), "parts": parts, "peaks": peaks, "rows": rows,
                  "traceinfer": traceinfer.__file__}))
"""


def time_once(export: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    return run_child(CHILD, str(export), env=env)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("export", type=Path)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    results = repeat(lambda: time_once(args.export), args.repeat)
    rows = results[0]["rows"]
    print(f"traceinfer from {results[0]['traceinfer']}; {args.export}: " + ", ".join(f"{n:,d} {k}" for k, n in rows.items()))
    print(summary_line("read_nsys + tables", results))
    print(f"  {'part':20s} {'median s':>9s} {'peak RSS after, GiB':>20s}")
    for name in results[0]["parts"]:
        secs = statistics.median(r["parts"][name] for r in results)
        print(f"  {name:20s} {secs:9.3f} {max(r['peaks'][name] for r in results) / 2**30:20.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
