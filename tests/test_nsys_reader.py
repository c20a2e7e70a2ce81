"""The nsys reader against nsys itself: two real SQLite exports of a short engine run on an H200 (one with
CUDA graph nodes traced, one with each graph replay as one item; scripts/capture_nsys.sh made them), and
the figures `nsys stats --format csv` printed for each (tests/data/nsys/). Every figure of nvtx_sum,
nvtx_gpu_proj_sum and cuda_gpu_kern_sum must equal nsys's to the digit nsys prints. Then the GPU's idle
gaps: they add up with the busy time to the span, and each is split over the host phase running then,
GC pauses and probe work placed from the run directory's own streams."""

from __future__ import annotations

import lzma
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from traceinfer import open_run
from traceinfer.analysis import gpu_trace
from traceinfer.flamegraphs.folded import kind_of
from traceinfer.ingest import read_nsys

DATA = Path(__file__).parent / "data" / "nsys"
MODES = ("node", "graph")
HEADERS = gpu_trace.NSYS_HEADERS


def export(tmp_path_factory, mode: str) -> Path:
    path = tmp_path_factory.getbasetemp() / f"{mode}.sqlite"
    if not path.exists():
        path.write_bytes(lzma.decompress((DATA / f"{mode}.sqlite.xz").read_bytes()))
    return path


@pytest.fixture(scope="module", params=MODES)
def capture(request, tmp_path_factory):
    return request.param, read_nsys(export(tmp_path_factory, request.param))


def test_the_exports_are_what_they_claim(capture):
    mode, cap = capture
    assert cap.graph_trace == mode and cap.meta["schema_major"] == 3 and not cap.warnings
    assert cap.meta["gpus"] == ["NVIDIA H200"]
    kinds = set(cap.gpu["kind"].astype(str))
    if mode == "node":  # graph replays' kernels one by one, each with its node
        assert "graph" not in kinds and cap.gpu["graph_node"].notna().sum() > 1000
    else:  # one row per replay
        assert "graph" in kinds and cap.gpu["graph_node"].isna().all()
    assert {"traceinfer:step", "traceinfer:forward (graph)"} <= set(cap.ranges["name"])


@pytest.mark.parametrize("report", list(HEADERS))
def test_each_figure_equals_nsys_stats(capture, report):
    mode, cap = capture
    want = pd.read_csv(DATA / f"{mode}_{report}.csv")
    got = getattr(gpu_trace, report)(cap).rename(columns=HEADERS[report])[list(want.columns)]
    key = "Name" if report == "cuda_gpu_kern_sum" else "Range"
    assert got[key].tolist() == want[key].tolist() or report == "nvtx_gpu_proj_sum"  # nsys's order (ties aside)
    got, want = got.set_index(key).sort_index(), want.set_index(key).sort_index()
    assert got.index.tolist() == want.index.tolist()
    for column in want.columns:
        if not pd.api.types.is_numeric_dtype(want[column]):
            assert got[column].tolist() == want[column].tolist(), column
        elif pd.api.types.is_integer_dtype(want[column]):
            assert got[column].astype("int64").tolist() == want[column].tolist(), column
        else:  # nsys prints one decimal
            assert np.round(got[column].astype(float).to_numpy(), 1) == pytest.approx(want[column].to_numpy(), abs=0.051), column


def test_graph_replays_project_only_when_their_nodes_were_traced(tmp_path_factory):
    node = gpu_trace.nvtx_gpu_proj_sum(read_nsys(export(tmp_path_factory, "node"))).set_index("range")
    graph = gpu_trace.nvtx_gpu_proj_sum(read_nsys(export(tmp_path_factory, "graph"))).set_index("range")
    # with nodes traced a forward's projection covers the replay (~140 us here); whole, only what follows it
    assert node.at["traceinfer:forward (graph)", "proj_med_ns"] > 10 * graph.at["traceinfer:forward (graph)", "proj_med_ns"]


def test_gaps_and_busy_time_add_up_to_the_span_and_every_gap_has_a_phase(capture):
    mode, cap = capture
    run = open_run(DATA / f"{mode}.run")
    gaps = gpu_trace.gpu_gaps(cap, run.frame("steps"), run.frame("gc"))
    t = gaps.totals
    assert t["busy_ns"] + t["idle_ns"] == t["span_ns"] > 0
    assert t["busy_ns"] == int(gaps.busy["ns"].sum()) and len(gaps.gaps) == len(gaps.busy) - 1 == t["gaps"]
    assert (gaps.gaps["dur_ns"] > 0).all() and gaps.gaps["phase"].notna().all()
    assert gaps.by_phase["idle_ns"].sum() == t["idle_ns"]  # the split loses no nanosecond
    assert gaps.by_phase["idle_ns"].is_monotonic_decreasing
    phases = set(gaps.by_phase["phase"])
    assert {"prepare", "sample", "forward launch", gpu_trace.GC_PAUSE, gpu_trace.PROBE_WORK} <= phases
    # with nodes traced, the gaps between one replay's kernels are the GPU's own, not a host phase's
    inside = gaps.gaps[gaps.gaps["phase"] == gpu_trace.INSIDE_LAUNCH]
    if mode == "node":
        replays = len(cap.ranges[cap.ranges["text"] == "forward (graph)"])
        assert len(inside) > 10 * replays and inside["dur_ns"].median() < 2_000
    else:
        assert inside.empty
    # the run's clock placed on the capture's by the step ranges: every step starts within 50 us of its range
    assert t["run_offset_ns"] is not None
    steps = run.frame("steps").set_index("step")["t_ns"] - t["run_offset_ns"]
    sr = cap.ranges[cap.ranges["text"] == "step"]
    assert (sr["start"].to_numpy() - steps.loc[sr["payload"].astype(int)].to_numpy()).__abs__().max() < 50_000
    # a GC pause's idle time is no more than the pauses the run recorded
    gc_idle = gaps.by_phase.set_index("phase").at[gpu_trace.GC_PAUSE, "idle_ns"]
    assert 0 < gc_idle <= run.frame("gc")["dur_ns"].sum()


def test_without_the_run_directory_gaps_come_from_the_ranges_alone(capture):
    _, cap = capture
    gaps = gpu_trace.gpu_gaps(cap)
    assert gaps.totals["run_offset_ns"] is None and gpu_trace.GC_PAUSE not in set(gaps.by_phase["phase"])
    assert gaps.by_phase["idle_ns"].sum() == gaps.totals["idle_ns"]


def test_the_gpu_flame_graph_holds_every_gpu_nanosecond_under_its_range_path(capture):
    mode, cap = capture
    folded = gpu_trace.gpu_folded(cap)
    work = cap.gpu if mode == "graph" else cap.gpu[cap.gpu["kind"] != "graph"]
    assert folded.unit == "ns" and folded.total == float((work["end"] - work["start"]).sum())
    roots = {stack[0] for stack in folded.counts}
    assert "step_[r]" in roots
    leaves = {kind_of(stack[-1])[1] for stack in folded.counts}
    assert "kernel" in leaves
    graph_path = [s for s in folded.counts if s[:2] == ("step_[r]", "forward (graph)_[r]")]
    assert graph_path, "the replays sit under step;forward (graph)"
    if mode == "node":  # the replay's own kernels, by name
        assert len({s[-1] for s in graph_path}) > 5


def test_a_copy_of_an_export_reads_the_same(tmp_path, tmp_path_factory):
    copy = tmp_path / "copy.sqlite"
    shutil.copy(export(tmp_path_factory, "node"), copy)
    a, b = read_nsys(copy), read_nsys(export(tmp_path_factory, "node"))
    assert a.gpu.equals(b.gpu) and a.ranges.equals(b.ranges)
