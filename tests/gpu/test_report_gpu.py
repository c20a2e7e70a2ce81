"""The report on a CUDA device: a run with ``enforce_eager`` puts the eager-decode finding first, the same
run with CUDA graphs does not find it (nor any other planted problem), and the memory-pool deep dive reads
the CUDA caching allocator's figures (reserved vs allocated, segments) from the run."""

from __future__ import annotations

import json

import pytest
import torch

from traceinfer.cli import main

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

PLANTED = {"gc_pauses", "kv_preemptions", "eager_decode", "host_stage_schedule"}


def profile(out, *extra: str) -> dict:
    args = ["profile", "--workload", "chatbot", "--model", "synthetic:qwen3-0.6b", "--num-requests", "12",
            "--output-len", "96", "--overhead-passes", "0", "--report-formats", "json,md", "--out", str(out), *extra]  # fmt: skip
    assert main(args) == 0
    return json.loads((out / "report.json").read_text())


def test_enforce_eager_is_the_first_finding_and_graphs_are_clean(tmp_path):
    eager = profile(tmp_path / "eager", "--enforce-eager")
    first = eager["findings"][0]
    assert first["id"] == "eager_decode", [(f["id"], f["explains_s"]) for f in eager["findings"]]
    assert first["evidence"]["enforce_eager"] and first["evidence"]["eager_decode_steps"] > 0

    graphs = profile(tmp_path / "graphs", "--probes", "all", "--memory-snapshot")
    ids = [f["id"] for f in graphs["findings"]]
    assert "eager_decode" not in ids and ids[0] not in PLANTED, [(f["id"], f["explains_s"]) for f in graphs["findings"]]

    assert main(["report", str(tmp_path / "graphs"), "--topic", "memory-pool"]) == 0
    text = next((tmp_path / "graphs").glob("*memory-pool*.md")).read_text()
    allocator = text.split("The CUDA caching allocator", 1)[1].split("\n## ", 1)[0]
    assert "reserved up to" in allocator, allocator  # measured, not "not measured"
    assert "segments (" in text.split("Memory snapshot", 1)[1]
