"""A performance report of a run directory: what limits it, with the evidence, and what to change.

    traceinfer report RUN [--format md,html,json] [--out DIR]
    traceinfer report RUN --topic kv-cache|token-generation|memory-pool|batch-processing

Writes RUN/report.md, report.html and report.json (or into --out); ``profile`` writes them at the end of
every run. A topic is a deep dive: a write-up of one part of the engine, its own source code with the
lines behind each measurement, and the run's figures at those points (RUN/report.<topic>.md).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from traceinfer.errors import ConfigError

HELP = "a performance report of a run directory (markdown, HTML, JSON), or a deep dive on one topic"
TOPIC_NAMES = ("kv-cache", "token-generation", "memory-pool", "batch-processing")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN", help="a run directory")
    parser.add_argument("--format", default="md,html,json", metavar="LIST",
                        help="comma list of md, html, json (default: all three)")  # fmt: skip
    parser.add_argument("--topic", choices=TOPIC_NAMES, help="a deep dive instead of the report")
    parser.add_argument("--out", metavar="DIR", help="where to write (default: the run directory)")


def write_reports(run, formats: list[str], directory: Path):
    """Render the run's report in each format into ``directory``; returns the report and the paths."""
    from traceinfer.analysis.report import report_of_run
    from traceinfer.render.report import REPORT_FORMATS, renderer_for

    report = report_of_run(run)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        renderer = renderer_for(fmt, report, run.path, out_dir=directory, formats=formats)
        path = directory / f"report.{REPORT_FORMATS[fmt].extension}"
        path.write_text(renderer.render(report), encoding="utf-8")
        paths.append(path)
    return report, paths


def print_findings(report, limit: int = 3) -> None:
    """The report's first findings, one line each: what a reader should look at first."""
    if not report.findings:
        print("findings   none: no rule found a problem that explains a measurable share of the run")
        return
    for rank, f in enumerate(report.findings[:limit], 1):
        label = "findings" if rank == 1 else ""
        print(f"{label:<10} {rank}. [{f.severity}] {f.title} (explains {f.explains_s:.2f} s)")
    if len(report.findings) > limit:
        print(f"{'':<10} ... {len(report.findings) - limit} more in the report")


def parse_formats(text: str, flag: str = "--format", allow_none: bool = False) -> list[str]:
    """``md,html,json`` as a list; ``none`` (where ``allow_none``) as no report."""
    from traceinfer.render.report import REPORT_FORMATS

    if allow_none and text.strip() in ("", "none"):
        return []
    formats = [f.strip() for f in text.split(",") if f.strip()]
    unknown = [f for f in formats if f not in REPORT_FORMATS]
    if unknown or not formats:
        accepted = ", ".join(REPORT_FORMATS) + (" or none" if allow_none else "")
        raise ConfigError(f"{flag} {text!r}: formats are a comma list of {accepted}")
    return formats


def return_freed_memory() -> None:
    """glibc's malloc for a process that builds large tables in two threads: one arena for both (a table
    one thread frees is memory the other can reuse, not a second heap), and every allocation of 16 MiB or
    more mapped on its own and given back when freed (by default that threshold rises to the size of each
    large block freed, after which such blocks stay in the heap). A 10M-token run's report peaked ~0.15 GB
    lower, in about the same time (docs/benchmarks.md). A no-op where the C library is not glibc."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return
    mallopt(-8, 1)  # M_ARENA_MAX
    mallopt(-3, 16 * 2**20)  # M_MMAP_THRESHOLD


def run(args: argparse.Namespace) -> int:
    from traceinfer.rundir import open_run

    return_freed_memory()
    run_dir = open_run(args.run_dir)
    directory = Path(args.out) if args.out else run_dir.path
    if args.topic:
        from traceinfer.analysis.deep_dives import TOPICS
        from traceinfer.render.deep_dive_text import render_deep_dive

        frames = {name: run_dir.frame(name) for name in run_dir.streams}
        dive = TOPICS[args.topic](run_dir.manifest, frames, run_dir.path)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"report.{args.topic}.md"
        path.write_text(render_deep_dive(dive), encoding="utf-8")
        print(f"wrote {path}")
        return 0
    report, paths = write_reports(run_dir, parse_formats(args.format), directory)
    print_findings(report)
    for path in paths:
        print(f"wrote {path}")
    html = next((p for p in paths if p.suffix == ".html"), None)
    if html is not None:
        print(f"open file://{html.resolve()} in a browser (one self-contained file: charts, flame graphs)")
    return 0
