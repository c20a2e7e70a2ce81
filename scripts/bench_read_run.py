"""How long opening a run directory's streams as DataFrames takes, from a fresh interpreter.

    OMP_NUM_THREADS=1 python scripts/bench_read_run.py RUN_DIR [--repeat 5]

Each repetition is a new process that imports traceinfer, opens the run and reads every stream it has
with ``run.frame(name)``: what a report command pays. It times both sources a frame can come from: the
Parquet files a closed run has, and the JSON Lines journals alone (a copy of the run without its
Parquet files, as a crashed run leaves it). Prints the median and the spread of the repetitions.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import traceinfer
run = traceinfer.open_run(sys.argv[1])
rows = {name: len(run.frame(name)) for name in run.streams}
seconds = time.perf_counter() - t0
assert "torch" not in sys.modules
print(json.dumps({"seconds": seconds, "rows": rows}))
"""


def time_reads(run_dir: Path, repeat: int) -> tuple[list[float], dict]:
    times, rows = [], {}
    for _ in range(repeat):
        out = subprocess.run([sys.executable, "-c", CHILD, str(run_dir)], capture_output=True, text=True, check=True)
        result = json.loads(out.stdout.strip().splitlines()[-1])
        times.append(result["seconds"])
        rows = result["rows"]
    return times, rows


def journal_only(run_dir: Path, into: Path) -> Path:
    """A copy of the run without Parquet files (and without the manifest naming them)."""
    copy = into / run_dir.name
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("*.parquet", "trace.json"))
    manifest = json.loads((copy / "manifest.json").read_text())
    for entry in manifest.get("streams", {}).values():
        entry.pop("parquet", None)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        sources = {"parquet": args.run_dir} if any(args.run_dir.glob("*.parquet")) else {}
        sources["journal"] = journal_only(args.run_dir, Path(tmp))
        for source, path in sources.items():
            times, rows = time_reads(path, args.repeat)
            median = statistics.median(times)
            spread = 50.0 * (max(times) - min(times)) / median
            print(f"{source:8s} median {median:.3f} s (+-{spread:.1f}%, {args.repeat} runs: "
                  f"{', '.join(f'{t:.3f}' for t in times)}); events: {sum(rows.values()):,} "
                  f"({', '.join(f'{k} {v:,}' for k, v in rows.items())})")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
