"""nsys's summary tables and the GPU's idle gaps from an Nsight Systems SQLite export, without nsys.

    traceinfer nsys-stats FILE.sqlite [--report NAME[,NAME]] [--json] [--run RUN]
    traceinfer nsys-stats RUN                  # a run profiled with --nsys: its nsys.sqlite, joined to its streams
    traceinfer nsys-stats TRACE.json.gz        # without nsys: a torch.profiler trace (the torch_profiler probe's)

Reports: nvtx_sum, nvtx_gpu_proj_sum and cuda_gpu_kern_sum give the figures ``nsys stats -r NAME`` gives
for the same file; gpu_gaps is the GPU's busy share and every idle gap between its work split over the
host phase running then (the NVTX stage ranges; with a run directory also GC pauses and the probes'
per-step work). ``--json`` prints the tables as numbers, times in integer nanoseconds. Make an export
with ``nsys export -t sqlite -o X.sqlite X.nsys-rep``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from traceinfer.errors import ConfigError
from traceinfer.rundir.schema import NSYS_SQLITE, TORCH_TRACE

HELP = "nsys's tables (nvtx_sum, nvtx_gpu_proj_sum, cuda_gpu_kern_sum) and GPU idle gaps from an nsys SQLite export"

#: the tables this command prints, each a function of traceinfer.analysis.gpu_trace
REPORTS = ("nvtx_sum", "nvtx_gpu_proj_sum", "cuda_gpu_kern_sum", "gpu_gaps")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="FILE", help="an nsys SQLite export, a torch.profiler trace (.json[.gz]), or a "
                                                       "run directory profiled with --nsys or the torch_profiler probe")
    parser.add_argument("--report", default=",".join(REPORTS), metavar="NAME[,NAME]",
                        help=f"one or more of: {', '.join(REPORTS)} (default: all)")  # fmt: skip
    parser.add_argument("--json", action="store_true", help="the tables as JSON (times in integer nanoseconds)")
    parser.add_argument("--run", dest="run_dir", metavar="RUN", help="a run directory to join (GC pauses and probe work in the gaps)")
    parser.add_argument("--top", type=int, default=0, metavar="N", help="only the first N rows of each table")


def parse_reports(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in REPORTS]
    if bad or not names:
        raise ConfigError(f"--report: unknown report {', '.join(bad) or '(none)'}; choose from {', '.join(REPORTS)}")
    return names


def resolve(source: str, run: str | None) -> tuple[Path, Path | None]:
    """(the export, the run directory to join or None) from the command's arguments."""
    path = Path(source)
    if path.is_dir():
        export = next((path / name for name in (NSYS_SQLITE, TORCH_TRACE) if (path / name).exists()), None)
        if export is None:
            raise ConfigError(f"{path} holds neither {NSYS_SQLITE} (profile it with --nsys) nor {TORCH_TRACE} "
                              "(--probes default,torch_profiler)")  # fmt: skip
        return export, Path(run) if run else path
    return path, Path(run) if run else None


def is_kineto(path: Path) -> bool:
    return path.name.endswith((".json", ".json.gz"))


def read_capture(path: Path):
    """An nsys SQLite export, or a torch.profiler (Kineto) trace (``.json`` / ``.json.gz``), as a GpuCapture."""
    if is_kineto(path):
        from traceinfer.ingest.kineto import capture_of_trace

        return capture_of_trace(path)
    from traceinfer.ingest.nsys import read_nsys

    return read_nsys(path)


def run_frames(run_dir: Path | None):
    """The steps and gc frames of the run at ``run_dir`` (None where there is no run or no such stream)."""
    if run_dir is None:
        return None, None
    from traceinfer.rundir import open_run

    return stream_frames(open_run(run_dir))


def stream_frames(run):
    """An opened run's steps and gc frames, each None where the run has no such stream."""
    return tuple(run.frame(name) if name in run.streams else None for name in ("steps", "gc"))


def tables(cap, names: list[str], steps=None, gc=None, top: int = 0) -> dict:
    """{report name: DataFrame} (gpu_gaps: its GpuGaps)."""
    from traceinfer.analysis import gpu_trace

    out = {}
    for name in names:
        if name == "gpu_gaps":
            out[name] = gpu_trace.gpu_gaps(cap, steps, gc)
        else:
            df = getattr(gpu_trace, name)(cap)
            out[name] = df.head(top) if top else df
    return out


def run(args: argparse.Namespace) -> int:
    from traceinfer.analysis.gpu_trace import NSYS_HEADERS, records
    from traceinfer.render.nsys_text import table_text

    names = parse_reports(args.report)
    export, run_dir = resolve(args.source, args.run_dir)
    cap = read_capture(export)
    steps, gc = run_frames(run_dir)
    result = tables(cap, names, steps, gc, args.top)
    if args.json:
        doc: dict = {"source": str(export), "graph_trace": cap.graph_trace, "schema_version": cap.meta.get("schema_version"),
                     "warnings": cap.warnings}  # fmt: skip
        for name, value in result.items():
            if name == "gpu_gaps":
                gaps = value.gaps.head(args.top) if args.top else value.gaps
                doc[name] = {"totals": value.totals, "by_phase": records(value.by_phase), "gaps": records(gaps)}
            else:
                doc[name] = records(value)
        print(json.dumps(doc, indent=1))
        return 0
    for line in cap.warnings:
        print(f"warning: {line}")
    for name, value in result.items():
        print(f"\n** {name} ({export.name}{', graph nodes traced' if cap.graph_trace == 'node' else ''}):\n")
        if name != "gpu_gaps":
            print(table_text(value, NSYS_HEADERS[name]) if len(value) else "  (no rows)")
            continue
        t = value.totals
        if not t["span_ns"]:
            print("  (no GPU work in the capture)")
            continue
        print(f"GPU busy {t['busy_pct']:.1f}% of {t['span_ns'] / 1e6:,.1f} ms from its first work to its last; idle "
              f"{t['idle_ns'] / 1e6:,.1f} ms in {t['gaps']:,} gaps, by the host phase running then:\n")  # fmt: skip
        print(table_text(value.by_phase))
        if t.get("run_offset_ns") is None and run_dir is None:
            print("\n(GC pauses and probe work are placed when a run directory is joined: --run RUN)")
        elif t.get("run_join"):
            print(f"\n({t['run_join']})")
        longest = value.gaps.nlargest(args.top or 10, "dur_ns")
        print("\nlongest gaps:\n")
        print(table_text(longest))
    return 0


def ingest_run(out: Path, report_formats: list[str] | tuple[str, ...] = ()) -> dict:
    """Read the run's nsys export into it: its tables as nsys_stats.json (joined to the run's steps and gc
    streams), the GPU flame graph by NVTX path (flamegraphs/gpu.svg), and the report rewritten with them."""
    from traceinfer.analysis.gpu_trace import gpu_folded, summary
    from traceinfer.cli.flamegraph import FOLDER, Stacks, write_phases
    from traceinfer.ingest.nsys import read_nsys
    from traceinfer.rundir import open_run
    from traceinfer.rundir.schema import NSYS_STATS

    cap = read_nsys(out / NSYS_SQLITE)  # read once: the tables and the flame graph come from it
    run = open_run(out)
    steps, gc = stream_frames(run)
    doc = summary(cap, steps, gc)
    (out / NSYS_STATS).write_text(json.dumps(doc, indent=1), encoding="utf-8")
    folded = gpu_folded(cap)
    if folded.counts:
        graphs = write_phases(run, Stacks(folded, None, "nsys"), "gpu", "svg", out / FOLDER)
    else:  # as `traceinfer flamegraph RUN --kind gpu` says it
        print(f"flame graph gpu: {out / NSYS_SQLITE} holds no GPU work")
        graphs = []
    t = doc["gpu_gaps"]["totals"]
    print(f"\nnsys       {out / NSYS_SQLITE}: {doc['counts']['kernels']:,} kernels, {doc['counts']['ranges']:,} NVTX ranges "
          f"(graph replays traced: {doc['graph_trace'] or 'none launched'})")  # fmt: skip
    for line in cap.warnings:
        print(f"           warning: {line}")
    if t.get("span_ns"):
        top = doc["gpu_gaps"]["by_phase"][:3]
        phases = ", ".join(f"{r['phase']} {r['idle_pct']:.0f}%" for r in top)
        print(f"           GPU busy {t['busy_pct']:.1f}% of its span; idle time by host phase: {phases}")
    print(f"           tables: traceinfer nsys-stats {out}   ({out / NSYS_STATS})")
    for g in graphs:
        print(f"           flame graph {g}")
    if report_formats:
        from traceinfer.cli.report import write_reports

        _, paths = write_reports(run, list(report_formats), out)
        print(f"report     {', '.join(str(p) for p in paths)} (with the capture's GPU time)")
    return doc
