"""Summarise py-spy raw (folded) output: samples per thread, and the probe-code share of each.

    python3 scripts/folded_summary.py pyspy.txt

Folded lines are ``frame;frame;... count`` with py-spy's thread frame first when --threads is used.
"""

from __future__ import annotations

import collections
import sys


def main(path: str) -> None:
    threads: collections.Counter = collections.Counter()
    probes: collections.Counter = collections.Counter()
    hot: collections.Counter = collections.Counter()
    total = 0
    for line in open(path, encoding="utf-8", errors="replace"):
        stack, _, count = line.rstrip("\n").rpartition(" ")
        if not stack:
            continue
        n = int(float(count))
        total += n
        frames = stack.split(";")
        thread = frames[0]
        threads[thread] += n
        if "traceinfer/probes/" in stack or "traceinfer/reports/" in stack:
            probes[thread] += n
            leaf_probe = next(f for f in reversed(frames) if "traceinfer/probes/" in f or "traceinfer/reports/" in f)
            hot[leaf_probe] += n
    print(f"{total} samples")
    for thread, n in threads.most_common(8):
        print(f"{100 * n / total:6.2f}%  {thread[:90]}  (probe code: {100 * probes[thread] / total:.2f}% of all)")
    print("deepest probe frames:")
    for frame, n in hot.most_common(12):
        print(f"{100 * n / total:6.2f}%  {frame[:140]}")


if __name__ == "__main__":
    main(sys.argv[1])
