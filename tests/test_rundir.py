"""The run directory as a contract: Parquet beside every journal at close, typed as the schema says; the
same frames from either; a cut-off run still opens; bad paths get one-line errors; docs/ agrees with the code."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from traceinfer import open_run
from traceinfer.cli import main
from traceinfer.errors import RunDirError
from traceinfer.rundir import STREAMS, schema
from traceinfer.rundir.columnar import arrow_schema
from traceinfer.rundir.writer import RunWriter

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A CPU profile with every probe: each stream a CPU run can have."""
    torch.set_flush_denormal(True)
    out = tmp_path_factory.mktemp("rundir") / "run"
    try:
        assert main(["profile", "--workload", "chatbot", "--probes", "all", "--out", str(out), "--device", "cpu",
                     "--num-kv-blocks", "24", "--block-size", "4", "--sample-hz", "100", "--overhead-passes", "0"]) == 0  # fmt: skip
    finally:
        torch.set_flush_denormal(False)
    return out


def journal_only(run: Path, into: Path) -> Path:
    """The run as a crash leaves it: journals, no Parquet, a manifest that names none."""
    copy = into / "journal-only"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("*.parquet"))
    manifest = json.loads((copy / "manifest.json").read_text())
    for entry in manifest["streams"].values():
        entry.pop("parquet")
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


def test_parquet_is_written_at_close_typed_as_the_schema_says(run_dir):
    run = open_run(run_dir)
    assert run.status == "completed"
    assert set(run.streams) >= {"steps", "requests", "tokens", "kv_events", "gc", "thread_samples", "host_samples"}
    for name in run.streams:
        entry = run.manifest["streams"][name]
        table = pq.read_table(run_dir / entry["parquet"])
        assert table.schema.equals(arrow_schema(STREAMS[name]), check_metadata=False), name
        assert table.num_rows == entry["rows"] == len(run.frame(name)), name  # one row per event
        units = {f.name: f.metadata[b"unit"].decode() for f in table.schema}
        assert units == {c.name: c.unit for c in STREAMS[name].columns}
    # plain pandas opens a stream with no traceinfer code, one row per token
    tokens = pd.read_parquet(run_dir / "tokens.parquet")
    assert len(tokens) == run.manifest["results"]["output_tokens"]
    assert tokens["token_id"].dtype == "int64" and tokens["t_ns"].is_monotonic_increasing


def test_frames_are_the_same_from_parquet_and_from_the_journal(run_dir, tmp_path):
    run, journal = open_run(run_dir), open_run(journal_only(run_dir, tmp_path))
    assert journal.streams == run.streams
    for name in run.streams:
        pd.testing.assert_frame_equal(run.frame(name), journal.frame(name), check_exact=True, obj=name)
    kv = run.frame("kv_events")
    assert kv.iloc[0]["op"] == "snapshot" and isinstance(kv.iloc[0]["state"], dict)
    stored = kv[kv["op"] == "stored"].iloc[0]
    assert isinstance(stored["token_ids"], list) and isinstance(stored["block_hashes"][0], int)
    some = run.frame("steps", columns=["step", "dur_ns"])
    assert list(some.columns) == ["step", "dur_ns"] and some.equals(run.frame("steps")[["step", "dur_ns"]])


def test_list_columns_can_stay_in_arrow_with_the_same_values(run_dir, tmp_path):
    for run in (open_run(run_dir), open_run(journal_only(run_dir, tmp_path))):
        python, arrow = run.frame("kv_events"), run.frame("kv_events", lists="arrow")
        for column in ("block_ids", "block_hashes", "parent_block_hashes", "ref_counts", "token_ids"):
            assert isinstance(arrow[column].dtype, pd.ArrowDtype), column
            as_lists = [None if v is pd.NA else v for v in arrow[column].tolist()]
            assert as_lists == python[column].tolist(), column  # exact 64-bit hashes, nulls where they were
        assert arrow["state"].equals(python["state"])  # json columns are parsed either way
        pd.testing.assert_frame_equal(python[["t_ns", "step", "op", "num_used"]], arrow[["t_ns", "step", "op", "num_used"]])
        cat = run.frame("tokens", categorical=("request_id",))
        assert isinstance(cat["request_id"].dtype, pd.CategoricalDtype)
        assert cat["request_id"].astype(str).tolist() == run.frame("tokens")["request_id"].tolist()
    with pytest.raises(ValueError, match="lists='rows'"):
        open_run(run_dir).frame("kv_events", lists="rows")
    with pytest.raises(ValueError, match="only text"):
        open_run(run_dir).frame("tokens", categorical=("step",))


def test_a_run_cut_off_mid_write_still_opens(run_dir, tmp_path):
    copy = journal_only(run_dir, tmp_path)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["status"] = "running"  # what a killed process leaves
    (copy / "manifest.json").write_text(json.dumps(manifest))
    tokens = copy / "tokens.jsonl"
    whole = open_run(copy).frame("tokens")
    lines = tokens.read_text().splitlines(keepends=True)
    tokens.write_text("".join(lines) + lines[-1][: len(lines[-1]) // 2])  # a torn last line
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again = open_run(copy).frame("tokens")
    assert [str(w.message) for w in caught] == [f"{tokens}: ignored 1 unreadable line(s) (a run that was cut off mid-write)"]
    pd.testing.assert_frame_equal(again, whole)
    assert open_run(copy).status == "running"


def test_an_empty_stream_and_an_absent_stream_give_empty_frames_with_the_columns(tmp_path):
    writer = RunWriter(tmp_path / "run", {})
    writer.stream("gc")
    writer.close("completed")
    run = open_run(tmp_path / "run")
    assert run.streams == ("gc",)
    for name in ("gc", "steps"):
        frame = run.frame(name)
        assert frame.empty and list(frame.columns) == list(STREAMS[name].names)


def test_bad_paths_and_names_get_one_line_errors(tmp_path, run_dir):
    (tmp_path / "empty").mkdir()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "manifest.json").write_text("{not json")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "manifest.json").write_text('{"format": "something-else"}')
    cases = [
        (tmp_path / "missing", "is not a directory"),
        (tmp_path / "empty", "is not a traceinfer run directory: no manifest.json"),
        (tmp_path / "broken", "manifest.json is not valid JSON"),
        (tmp_path / "other", "is not a traceinfer run manifest (format 'something-else', expected 'traceinfer-run')"),
    ]
    for path, message in cases:
        with pytest.raises(RunDirError) as err:
            open_run(path)
        assert message in str(err.value) and "\n" not in str(err.value)
    run = open_run(run_dir)
    with pytest.raises(KeyError, match="unknown stream 'stepz'; streams: steps, requests"):
        run.frame("stepz")
    with pytest.raises(RunDirError, match="stream steps has no column bogus; columns: step, t_ns"):
        run.frame("steps", columns=["bogus"])


def test_docs_describe_every_stream_as_the_code_does():
    assert (REPO / "docs" / "run-directory.md").read_text() == schema.markdown(), (
        "docs/run-directory.md is stale: python scripts/run_directory_doc.py > docs/run-directory.md"
    )
