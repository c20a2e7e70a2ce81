"""Repetitions of a timed child process, for the scripts that measure time and memory (bench_report.py,
bench_nsys.py): each child is a fresh interpreter running ``code`` and printing one JSON line last, with
at least ``seconds`` and ``peak_rss_bytes``."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys


def run_child(code: str, *args: str, env: dict | None = None) -> dict:
    """``python -c code args...``'s last line as JSON; SystemExit with its stderr when it fails."""
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=False, env=env)
    if out.returncode != 0:
        raise SystemExit(f"the timed process failed (exit {out.returncode}):\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def repeat(once, times: int) -> list[dict]:
    """``once()`` ``times`` times, each run's wall time and peak memory printed as it ends."""
    results = []
    for i in range(times):
        results.append(once())
        print(f"  run {i + 1}: {results[-1]['seconds']:.2f} s, peak RSS {results[-1]['peak_rss_bytes'] / 2**30:.2f} GiB",
              flush=True)  # fmt: skip
    return results


def summary_line(label: str, results: list[dict]) -> str:
    """``label: median S s (+-P%, N runs: ...); peak RSS G GiB``: the spread is half the range over the median."""
    times = [r["seconds"] for r in results]
    median = statistics.median(times)
    spread = 50.0 * (max(times) - min(times)) / median
    peak = max(r["peak_rss_bytes"] for r in results)
    return (f"{label}: median {median:.2f} s (+-{spread:.1f}%, {len(times)} runs: "
            f"{', '.join(f'{t:.2f}' for t in times)}); peak RSS {peak / 2**30:.2f} GiB")  # fmt: skip
