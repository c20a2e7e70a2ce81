"""Is the probes' hand-over hidden behind the GPU? Reads a run directory's steps stream.

    python3 scripts/handover_summary.py RUN_DIR

For the steps with a forward and CUDA-event timing: the median and p99 hand-over (host time handing
the step's events to the probes after the forward's launch) and forward GPU time, and how many steps
had a hand-over longer than their forward's GPU time (there it is not hidden). A measuring tool for
docs/benchmarks.md.
"""

from __future__ import annotations

import sys

from traceinfer.probes import read_stream


def _us(ordered: list[int], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1e3


def main(run_dir: str) -> int:
    rows = [r for r in read_stream(run_dir, "steps") if r["handover_ns"] is not None and r["gpu_forward_ns"]]
    if not rows:
        print(f"{run_dir}: no steps with a hand-over and a GPU forward time (a CPU run, or the steps probe was off)")
        return 1
    hand = sorted(r["handover_ns"] for r in rows)
    gpu = sorted(r["gpu_forward_ns"] for r in rows)
    exposed = [r for r in rows if r["handover_ns"] > r["gpu_forward_ns"]]
    print(f"steps {len(rows)}: hand-over median {_us(hand, 0.5):.1f} us, p99 {_us(hand, 0.99):.1f} us, "
          f"max {hand[-1] / 1e3:.1f} us; forward GPU median {_us(gpu, 0.5):.1f} us, p1 {_us(gpu, 0.01):.1f} us; "
          f"hand-over longer than the forward in {len(exposed)} steps "
          f"({sum(r['handover_ns'] - r['gpu_forward_ns'] for r in exposed) / 1e3:.1f} us exposed in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
