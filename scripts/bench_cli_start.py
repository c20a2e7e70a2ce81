"""How long ``traceinfer --help`` and ``--version`` take, from a fresh interpreter (the console script's
path: ``python -m traceinfer.cli``), median and spread of N runs each.

    python scripts/bench_cli_start.py [--repeat 10]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args()
    for argv in (["--version"], ["--help"], ["profile", "--help"]):
        times = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "traceinfer.cli", *argv], capture_output=True, check=True)
            times.append(time.perf_counter() - start)
        median = statistics.median(times)
        print(f"traceinfer {' '.join(argv):16s} median {median:.3f} s (min {min(times):.3f}, max {max(times):.3f}, "
              f"{args.repeat} runs)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
