"""`traceinfer nsys-stats` as a user runs it: tables as text and as JSON (times in integer ns) equal to the
analyzers' on the real H200 export; and bad input (a missing file, a text file, a truncated export, an
SQLite file that is no nsys export, a newer schema, a capture without NVTX ranges or without kernels):
each a one-line message or a warning with the tables that can still be made, never a traceback."""

from __future__ import annotations

import json
import lzma
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from traceinfer.analysis import gpu_trace
from traceinfer.cli import main
from traceinfer.ingest import read_nsys

DATA = Path(__file__).parent / "data" / "nsys"


@pytest.fixture(scope="module")
def node(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("nsys") / "node.sqlite"
    path.write_bytes(lzma.decompress((DATA / "node.sqlite.xz").read_bytes()))
    return path


def edited(node: Path, tmp_path: Path, *sql: str) -> Path:
    copy = tmp_path / "edited.sqlite"
    shutil.copy(node, copy)
    con = sqlite3.connect(copy)
    for statement in sql:
        con.execute(statement)
    con.commit()
    con.close()
    return copy


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "traceinfer.cli", "nsys-stats", *map(str, args)],
                          capture_output=True, text=True, timeout=120)  # fmt: skip


def test_json_figures_are_the_analyzers_with_times_in_integer_ns(node, capsys):
    assert main(["nsys-stats", str(node), "--json", "--run", str(DATA / "node.run")]) == 0
    doc = json.loads(capsys.readouterr().out)
    cap = read_nsys(node)
    assert doc["graph_trace"] == "node" and doc["schema_version"] == "3.20.3" and doc["warnings"] == []
    kern = gpu_trace.cuda_gpu_kern_sum(cap)
    assert [r["name"] for r in doc["cuda_gpu_kern_sum"]] == kern["name"].tolist()
    assert [r["total_ns"] for r in doc["cuda_gpu_kern_sum"]] == kern["total_ns"].tolist()
    for table in ("nvtx_sum", "nvtx_gpu_proj_sum", "cuda_gpu_kern_sum"):
        for row in doc[table]:
            assert all(isinstance(v, int) for k, v in row.items() if k.endswith("_ns"))
    gaps = doc["gpu_gaps"]
    assert gaps["totals"]["busy_ns"] + gaps["totals"]["idle_ns"] == gaps["totals"]["span_ns"]
    assert gaps["totals"]["run_offset_ns"] is not None  # the run directory was joined
    assert sum(r["idle_ns"] for r in gaps["by_phase"]) == gaps["totals"]["idle_ns"]
    assert len(gaps["gaps"]) == gaps["totals"]["gaps"]


def test_text_tables_as_nsys_titles_them(node):
    out = cli(node, "--report", "cuda_gpu_kern_sum,nvtx_gpu_proj_sum", "--top", "3")
    assert out.returncode == 0, out.stderr
    assert "Total Proj Time (ns)" in out.stdout and "StdDev (ns)" in out.stdout and "_decode_kernel" in out.stdout


@pytest.mark.parametrize("make, message", [
    (lambda node, tmp: tmp / "missing.sqlite", "no such file"),
    (lambda node, tmp: (tmp / "notes.sqlite").write_text("hello") and tmp / "notes.sqlite", "not an SQLite database"),
    (lambda node, tmp: (tmp / "cut.sqlite").write_bytes(node.read_bytes()[:200_000]) and tmp / "cut.sqlite",
     "truncated or corrupt"),
    (lambda node, tmp: _other_sqlite(tmp), "not an nsys export"),
    (lambda node, tmp: edited(node, tmp, "update META_DATA_EXPORT set value = '4' where name = 'EXPORT_SCHEMA_VERSION_MAJOR'",
                              "update META_DATA_EXPORT set value = '4.1.0' where name = 'EXPORT_SCHEMA_VERSION'"),
     "nsys export schema 4.1.0"),
])  # fmt: skip
def test_bad_files_get_one_line(node, tmp_path, make, message):
    out = cli(make(node, tmp_path), "--report", "nvtx_sum")
    assert out.returncode == 2, out.stdout
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in out.stderr, out.stderr


def _other_sqlite(tmp: Path) -> Path:
    path = tmp / "other.sqlite"
    con = sqlite3.connect(path)
    con.execute("create table t (a int)")
    con.commit()
    con.close()
    return path


def test_a_newer_minor_schema_is_read_with_a_warning(node, tmp_path):
    path = edited(node, tmp_path, "update META_DATA_EXPORT set value = '99' where name = 'EXPORT_SCHEMA_VERSION_MINOR'")
    out = cli(path, "--report", "cuda_gpu_kern_sum")
    assert out.returncode == 0 and "warning: export schema" in out.stdout and "_decode_kernel" in out.stdout


def test_a_capture_without_nvtx_still_gives_kernels_and_gaps(node, tmp_path):
    path = edited(node, tmp_path, "drop table NVTX_EVENTS")
    out = cli(path)
    assert out.returncode == 0, out.stderr
    assert "warning: no NVTX_EVENTS table" in out.stdout and "_decode_kernel" in out.stdout
    assert "between steps" in out.stdout  # every gap, with no range to name its phase
    assert "Traceback" not in out.stderr


def test_a_capture_without_kernels_still_gives_its_ranges(node, tmp_path):
    path = edited(node, tmp_path, "drop table CUPTI_ACTIVITY_KIND_KERNEL", "drop table CUPTI_ACTIVITY_KIND_MEMCPY")
    out = cli(path)
    assert out.returncode == 0, out.stderr
    assert "warning: no CUPTI_ACTIVITY_KIND_KERNEL table" in out.stdout and "traceinfer:step" in out.stdout
    assert "(no GPU work in the capture)" in out.stdout and "Traceback" not in out.stderr


def test_an_unknown_report_is_named(node):
    out = cli(node, "--report", "nvtx_sum,flops")
    assert out.returncode == 2 and "unknown report flops" in out.stderr and "Traceback" not in out.stderr


def test_a_runs_capture_is_read_into_it_and_its_report_shows_the_gpu_time(node, tmp_path, capsys):
    """What `profile --nsys` does once nsys has exported: nsys_stats.json, the GPU flame graph, and the
    report rewritten with a section of the capture's figures and the USE table's GPU cells from it."""
    from traceinfer.cli.nsys_stats import ingest_run

    run = tmp_path / "run"
    shutil.copytree(DATA / "node.run", run)
    shutil.copy(node, run / "nsys.sqlite")
    doc = ingest_run(run, ["md", "json", "html"])
    stats = json.loads((run / "nsys_stats.json").read_text())
    assert stats == json.loads(json.dumps(doc)) and stats["graph_trace"] == "node"
    assert (run / "flamegraphs" / "gpu.svg").exists()
    report = json.loads((run / "report.json").read_text())
    assert report["gpu_trace"]["gpu_gaps"]["totals"] == stats["gpu_gaps"]["totals"]
    gpu = report["use"][0]
    assert gpu["utilization"]["value"] == pytest.approx(stats["gpu_gaps"]["totals"]["busy_pct"] / 100)
    assert "nsys" in gpu["utilization"]["text"] and stats["gpu_gaps"]["by_phase"][0]["phase"] in gpu["saturation"]["text"]
    md = (run / "report.md").read_text()
    section = md.split("GPU time, kernel by kernel (nsys)", 2)[2]
    assert "host phase while the GPU idled" in section and "_decode_kernel" in section and "traceinfer:forward (graph)" in section
    assert "gpu: the whole run" in md  # the flame graph, embedded
    out = capsys.readouterr().out
    assert "GPU busy" in out and "nsys-stats" in out


def test_the_relaunched_profile_runs_the_workload_instead_of_relaunching(tmp_path, monkeypatch):
    from traceinfer.cli import build_parser, options
    from traceinfer.cli.nsys_capture import CHILD_ENV, child_argv

    argv = ["traceinfer", "profile", "--nsys", "--out-root", "runs", "--workload", "chatbot", "--out=old"]
    assert child_argv(argv, tmp_path / "run") == ["profile", "--workload", "chatbot", "--out", str(tmp_path / "run")]
    (tmp_path / "traceinfer.toml").write_text("[probes]\nnsys_capture = true\n")
    monkeypatch.chdir(tmp_path)
    for key, value in CHILD_ENV.items():
        monkeypatch.setenv(key, value)
    args = build_parser().parse_args(child_argv(argv, tmp_path / "run"))
    assert options.load(args).probes.nsys_capture is False


def test_a_torch_profiler_trace_gives_the_same_tables_without_nsys(capsys):
    trace = Path(__file__).parent / "data" / "torch_trace.json.gz"
    assert main(["nsys-stats", str(trace), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert {r["range"] for r in doc["nvtx_sum"]} >= {"step", "prepare", "sample"}
    assert doc["cuda_gpu_kern_sum"] and doc["nvtx_gpu_proj_sum"]
    t = doc["gpu_gaps"]["totals"]
    assert t["busy_ns"] + t["idle_ns"] == t["span_ns"] > 0
