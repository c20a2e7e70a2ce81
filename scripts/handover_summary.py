"""Is the probes' handover hidden behind the GPU? Reads a run directory's steps stream.

    python3 scripts/handover_summary.py RUN_DIR

Prints traceinfer.analysis.steps.handover_summary of the run: the handover's median, p99 and
maximum, the forward's median GPU time, and the steps where the handover was longer than the forward
(there it is not hidden). A measuring tool for docs/benchmarks.md.
"""

from __future__ import annotations

import json
import sys

from traceinfer import open_run
from traceinfer.analysis.steps import describe_handover, handover_summary


def main(run_dir: str) -> int:
    summary = handover_summary(open_run(run_dir).frame("steps"))
    if summary is None:
        print(f"{run_dir}: no step has a handover (the steps probe was off, or no step ran a forward)")
        return 1
    print(describe_handover(summary))
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
