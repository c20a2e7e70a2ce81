"""Is the probes' hand-over hidden behind the GPU? Reads a run directory's steps stream.

    python3 scripts/handover_summary.py RUN_DIR

Prints traceinfer.reports.step_analysis.handover_summary of the run: the hand-over's median, p99 and
maximum, the forward's median GPU time, and the steps where the hand-over was longer than the forward
(there it is not hidden). A measuring tool for docs/benchmarks.md.
"""

from __future__ import annotations

import json
import sys

from traceinfer.reports.frames import load_frame
from traceinfer.reports.step_analysis import describe_handover, handover_summary


def main(run_dir: str) -> int:
    summary = handover_summary(load_frame(run_dir, "steps"))
    if summary is None:
        print(f"{run_dir}: no step has a hand-over (the steps probe was off, or no step ran a forward)")
        return 1
    print(describe_handover(summary))
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
