"""Two runs side by side: every report figure of B against A with the change, each run's findings, and the
differential CPU flame graph (py-spy samples, or else the thread probe's) when both runs have one.

    traceinfer diff RUN_A RUN_B [--out DIR]          # writes RUN_B/diff.md (and flamegraphs/diff.<kind>.svg)
"""

from __future__ import annotations

import argparse
from pathlib import Path

from traceinfer.errors import TraceinferError

HELP = "compare two run directories: every figure of the report side by side, and a differential flame graph"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_a", metavar="RUN_A", help="the run to compare against")
    parser.add_argument("run_b", metavar="RUN_B", help="the run compared")
    parser.add_argument("--out", metavar="DIR", help="where to write diff.md (default: RUN_B)")


def run(args: argparse.Namespace) -> int:
    from traceinfer.analysis.report import compare, report_of_run
    from traceinfer.cli.flamegraph import FOLDER, load_stacks, write_graph
    from traceinfer.cli.report import return_freed_memory
    from traceinfer.flamegraphs.transforms import differential
    from traceinfer.render.report_diff import render_diff
    from traceinfer.rundir import open_run

    return_freed_memory()
    a, b = open_run(args.run_a), open_run(args.run_b)
    ra, rb = report_of_run(a), report_of_run(b)
    directory = Path(args.out) if args.out else b.path
    graph = None
    for kind in ("cpu", "threads"):
        try:
            sa, sb = load_stacks(a, kind), load_stacks(b, kind)
        except TraceinferError:
            continue
        path = write_graph(differential(sa.whole, sb.whole), directory / FOLDER, f"diff.{kind}", "svg",
                           f"{kind}: {b.path.name} against {a.path.name}",
                           "red: a larger share in B, blue: a smaller one", sb.rate_hz, None)  # fmt: skip
        graph = str(path.relative_to(directory)) if path.is_relative_to(directory) else str(path)
        break
    text = render_diff(ra, rb, compare(ra, rb), a.path.name, b.path.name, graph)
    directory.mkdir(parents=True, exist_ok=True)
    out = directory / "diff.md"
    out.write_text(text, encoding="utf-8")
    print(text)
    print(f"wrote {out}" + (f" and {directory / graph}" if graph else " (no flame graph: neither run has CPU stacks of both)"))
    return 0
