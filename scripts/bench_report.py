"""How long a report of a run takes and how much memory it needs, each repetition in a fresh process.

    OMP_NUM_THREADS=1 python scripts/bench_report.py RUN [--repeat 3] [--what auto|report|analyzers]

Each repetition is a new interpreter that imports traceinfer, opens the run and computes what a report
computes, then prints its wall time and its peak resident memory (``resource.getrusage`` ru_maxrss of
that process). What it computes (``--what``):

    report     traceinfer.analysis.report.report_of_run(run) (every stream read and analyzed)
    analyzers  every stream read (``run.frame``), then run_summary over them, request_metrics,
               inter_token_latencies, and the KV series prefix_hits, utilization, block_lives,
               reuse_gaps and internal_fragmentation; each part timed on its own
    auto       report when traceinfer.analysis.report imports, else analyzers (the default)

``--lists arrow`` (analyzers only) reads the list columns (kv_events' block ids, hashes, counts, tokens) as
Arrow-backed pandas columns instead of the Python lists ``run.frame`` makes: what reading would cost if the
reader kept them in Arrow (the KV analyzers take either).

Prints the median and spread of the repetitions, the largest peak memory, and for analyzers the median
of each part. Make a big run to time with scripts/make_big_run.py.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from timed_runs import repeat, run_child, summary_line

CHILD = r"""
import json, resource, sys, time
t0 = time.perf_counter()
parts = {}
def timed(name, fn, *args):
    t = time.perf_counter()
    out = fn(*args)
    parts[name] = parts.get(name, 0.0) + time.perf_counter() - t
    return out

import traceinfer
what = sys.argv[2]
if what == "auto":
    try:
        import traceinfer.analysis.report
        what = "report"
    except ImportError:
        what = "analyzers"
run = traceinfer.open_run(sys.argv[1])

def arrow_lists_frame(name):
    import pandas as pd
    from traceinfer.rundir import STREAMS, columnar
    entry = run.manifest.get("streams", {}).get(name) or {}
    if not entry.get("parquet"):
        return run.frame(name)
    schema = STREAMS[name]
    table = columnar.read_parquet(run.path / entry["parquet"])
    lists = [c.name for c in schema.columns if c.type.startswith("list") and c.name in table.column_names]
    frame = columnar.to_frame(schema, table.drop_columns(lists))
    for c in lists:
        frame[c] = pd.Series(pd.arrays.ArrowExtensionArray(table.column(c)), index=frame.index)
    return frame[table.column_names]

read = arrow_lists_frame if sys.argv[3] == "arrow" else run.frame
if what == "report":
    from traceinfer.analysis.report import report_of_run
    timed("report_of_run", report_of_run, run)
else:
    from traceinfer.analysis import kv, requests
    from traceinfer.analysis.summary import run_summary
    frames = {name: timed("read " + name, read, name) for name in run.streams}
    req, tok, events = frames.get("requests"), frames.get("tokens"), frames.get("kv_events")
    timed("run_summary", run_summary, run.manifest, frames)
    if req is not None and tok is not None:
        timed("request_metrics", requests.request_metrics, req, tok)
        timed("inter_token_latencies", requests.inter_token_latencies, tok)
        timed("kv.prefix_hits", kv.prefix_hits, req, tok)
    if events is not None:
        timed("kv.utilization", kv.utilization, events)
        timed("kv.block_lives", kv.block_lives, events)
        timed("kv.reuse_gaps", kv.reuse_gaps, events)
        if req is not None and tok is not None:
            timed("kv.internal_fragmentation", kv.internal_fragmentation, events, req, tok)
seconds = time.perf_counter() - t0
assert "torch" not in sys.modules
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
print(json.dumps({"what": what, "seconds": seconds, "peak_rss_bytes": peak, "parts": parts,
                  "traceinfer": traceinfer.__file__}))
"""


def time_once(run_dir: Path, what: str, lists: str) -> dict:
    return run_child(CHILD, str(run_dir), what, lists)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--what", choices=("auto", "report", "analyzers"), default="auto")
    parser.add_argument(
        "--lists",
        choices=("python", "arrow"),
        default="python",
        help="how the analyzers path reads list columns (python: as run.frame does)",
    )
    args = parser.parse_args()
    if args.lists == "arrow" and args.what != "analyzers":
        parser.error("--lists arrow times the analyzers path only (--what analyzers)")
    results = repeat(lambda: time_once(args.run_dir, args.what, args.lists), args.repeat)
    label = results[0]["what"] + (", list columns in Arrow" if args.lists == "arrow" else "")
    print(f"traceinfer from {results[0]['traceinfer']}")
    print(summary_line(label, results))
    for name in results[0]["parts"]:
        print(f"  {name:28s} {statistics.median(r['parts'][name] for r in results):8.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
