"""The report's commands: ``profile`` writes the report and names its first findings, ``traceinfer report``
rewrites it (formats, --out, --topic), ``traceinfer diff`` puts two runs side by side with a differential
flame graph, and bad input is one line before any work."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from traceinfer.cli import main
from traceinfer.rundir import open_run

SMALL = ["profile", "--workload", "chatbot", "--num-requests", "4", "--output-len", "24", "--overhead-passes", "0",
         "--no-warmup", "--device", "cpu"]  # fmt: skip


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two small CPU runs, the second with py-spy when it is installed (for the differential graph)."""
    base = tmp_path_factory.mktemp("report-cli")
    a, b = base / "a", base / "b"
    assert main([*SMALL, "--out", str(a), "--probes", "all"]) == 0
    assert main([*SMALL, "--out", str(b), "--probes", "all", "--num-kv-blocks", "24", "--block-size", "4"]) == 0
    return a, b


def test_profile_writes_the_report_and_names_its_first_findings(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*SMALL, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    for ext in ("md", "html", "json"):
        assert (out / f"report.{ext}").stat().st_size > 0, ext
    data = json.loads((out / "report.json").read_text())
    first = data["findings"][0]["title"] if data["findings"] else None
    assert "findings" in printed and (first is None or first in printed)
    assert f"open file://{(out / 'report.html').resolve()}" in printed
    assert open_run(out).manifest["status"] == "completed"  # the report is read from the closed run


def test_report_formats_none_writes_no_report(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*SMALL, "--out", str(out), "--report-formats", "none"]) == 0
    assert not list(out.glob("report.*"))


def test_a_bad_report_format_is_refused_before_the_model_loads(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*SMALL, "--out", str(out), "--report-formats", "md,pdf"]) == 2
    err = capsys.readouterr().err
    assert "--report-formats 'md,pdf'" in err and "md, html, json" in err and "Traceback" not in err
    assert not out.exists()


def test_report_command_writes_the_formats_asked_where_asked(runs, tmp_path, capsys):
    a, _ = runs
    out = tmp_path / "elsewhere"
    assert main(["report", str(a), "--format", "json,md", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["report.json", "report.md"]
    assert f"wrote {out / 'report.json'}" in printed and "findings" in printed
    md = (out / "report.md").read_text()
    for heading in ("Findings", "USE", "Step anatomy", "KV cache", "GC and threads", "Methodology"):
        assert heading in md, heading


@pytest.mark.parametrize("topic", ["kv-cache", "token-generation", "memory-pool", "batch-processing"])
def test_report_topic_writes_its_deep_dive(runs, tmp_path, capsys, topic):
    a, _ = runs
    assert main(["report", str(a), "--topic", topic, "--out", str(tmp_path)]) == 0
    text = (tmp_path / f"report.{topic}.md").read_text()
    assert text.startswith("# ") and "traceinfer/engine/" in text  # the engine's own source, by file:line


def test_report_refuses_bad_input_in_one_line(runs, tmp_path):
    a, _ = runs
    for argv, words in ((["report", str(tmp_path / "nope")], "nope"),
                        (["report", str(a), "--format", "pdf"], "--format 'pdf'"),
                        (["report", str(a), "--topic", "everything"], "invalid choice")):  # fmt: skip
        done = subprocess.run([sys.executable, "-m", "traceinfer.cli", *argv], capture_output=True, text=True, timeout=120)
        assert done.returncode == 2, (argv, done.stderr)
        assert words in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_diff_puts_the_runs_side_by_side_with_their_deltas(runs, tmp_path, capsys):
    a, b = runs
    assert main(["diff", str(a), str(b), "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    text = (tmp_path / "diff.md").read_text()
    assert text in printed and a.name in text and b.name in text
    assert "output tok/s" in text and "TTFT" in text and "preemptions" in text.lower()
    graph = tmp_path / "flamegraphs" / "diff.threads.svg"
    cpu = tmp_path / "flamegraphs" / "diff.cpu.svg"
    assert graph.exists() or cpu.exists(), sorted(p.name for p in tmp_path.rglob("*"))
    svg = (cpu if cpu.exists() else graph).read_text()
    assert svg.lstrip().startswith("<?xml") and "against" in svg
