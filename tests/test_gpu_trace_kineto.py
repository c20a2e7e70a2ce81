"""nsys's tables from a torch.profiler trace, when nsys is not there: ``ingest.kineto.capture_of_trace`` reads a
Kineto trace into the GpuCapture that ``read_nsys`` makes of an export, and analysis.gpu_trace computes the same
reports from it. Checked against the trace itself: a real torch_profiler-probe trace of an H200 run
(tests/data/torch_trace.json.gz: graph replays with their kernels listed one by one, an eager forward,
memcpys) and the probe's trace of a real CPU run here (ranges, no GPU work)."""

from __future__ import annotations

import gzip
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

import traceinfer
from traceinfer import SamplingParams
from traceinfer.analysis import gpu_trace
from traceinfer.config import ProbesConfig
from traceinfer.flamegraphs.folded import annotate, kind_of
from traceinfer.ingest import capture_of_trace, gpu_stacks, load_trace
from traceinfer.ingest.capture import GPU_COLUMNS, LAUNCH_COLUMNS, RANGE_COLUMNS
from traceinfer.ingest.nsys import pid_of
from traceinfer.probes import attach
from traceinfer.rundir.schema import TORCH_TRACE

H200_TRACE = Path(__file__).parent / "data" / "torch_trace.json.gz"


def _events(trace: dict, *cats: str) -> list[dict]:
    return [e for e in trace["traceEvents"] if e.get("ph") == "X" and e.get("cat") in cats]


def _ns(e: dict) -> int:
    return round(e["dur"] * 1000)


@pytest.fixture(scope="module")
def h200():
    trace = json.loads(gzip.decompress(H200_TRACE.read_bytes()))
    return trace, capture_of_trace(H200_TRACE)


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory):
    """The torch_profiler probe's trace of synthetic:tiny generating on this CPU: (trace, its capture, steps)."""
    torch.set_flush_denormal(True)  # random weights drift into denormals: 50x slower matmuls
    try:
        llm = traceinfer.LLM("synthetic:tiny", device="cpu", num_kv_blocks=64)
        greedy = SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True)
        g = torch.Generator().manual_seed(0)
        prompts = [torch.randint(0, 10000, (16,), generator=g).tolist() for _ in range(3)]
        llm.generate(prompts[:1], greedy)  # warm-up, outside the window
        run = tmp_path_factory.mktemp("kineto-capture") / "run"
        first = llm.engine.step_index
        with attach(llm.engine, "torch_profiler", run, ProbesConfig(nvtx_layers=True)):
            llm.generate(prompts, greedy)
        trace = load_trace(run / TORCH_TRACE)
        return trace, capture_of_trace(run / TORCH_TRACE), llm.engine.step_index - first
    finally:
        torch.set_flush_denormal(False)


def test_the_tables_are_well_formed(h200):
    trace, cap = h200
    assert cap.source == str(H200_TRACE) and not cap.warnings and cap.meta["gpus"] == ["NVIDIA H200"]
    for table, columns in ((cap.ranges, RANGE_COLUMNS), (cap.launches, LAUNCH_COLUMNS), (cap.gpu, GPU_COLUMNS)):
        assert tuple(table.columns) == columns
        assert all(table[c].dtype == np.int64 for c in ("start", "end", "tid" if "tid" in columns else "device"))
        assert (table["end"] >= table["start"]).all()
    r, la, g = cap.ranges, cap.launches, cap.gpu
    assert len(r) == len(_events(trace, "user_annotation")) and (r["style"] == "PushPop").all()
    assert (r["name"] == r["text"]).all() and r["payload"].isna().all()
    assert r["start"].is_monotonic_increasing and g["start"].is_monotonic_increasing
    assert (pid_of(r["tid"]) == r["pid"]).all() and (pid_of(la["tid"]) == la["pid"]).all()  # as nsys's globalTid
    assert set(r["pid"]) == {499} and cap.threads[int(r["tid"].iat[0])] == "thread 499 (python3)"
    assert len(la) == len(_events(trace, "cuda_runtime", "cuda_driver")) and la["correlation"].is_unique
    assert len(g) == len(_events(trace, "kernel", "gpu_memcpy", "gpu_memset"))
    assert set(g["kind"].astype(str)) == {"kernel", "memcpy"} and g["graph_node"].isna().all()
    assert set(g["device"]) == {0} and set(g["stream"]) == {7}
    assert (g["pid"] == 499).all() and set(g["correlation"]) <= set(la["correlation"])  # every launch is there
    # Kineto lists a graph replay's kernels one by one, with the cudaGraphLaunch's correlation
    assert cap.graph_trace == "node"
    graph_calls = set(la.loc[la["name"].astype(str).str.startswith("cudaGraphLaunch"), "correlation"])
    assert len(graph_calls) == 10 and (g[g["correlation"].isin(graph_calls)].groupby("correlation").size() > 40).all()
    # times are the trace's us * 1000, durations exactly its
    first = min(_events(trace, "kernel"), key=lambda e: e["ts"])
    assert abs(int(g.loc[g["kind"] == "kernel", "start"].iat[0]) - first["ts"] * 1000) <= 1
    assert sorted((g["end"] - g["start"]).tolist()) == sorted(_ns(e) for e in _events(trace, "kernel", "gpu_memcpy"))


def test_nvtx_sum_counts_every_range_of_the_trace(h200):
    trace, cap = h200
    got = gpu_trace.nvtx_sum(cap).set_index("range")
    ranges = _events(trace, "user_annotation")
    assert got["instances"].to_dict() == dict(Counter(e["name"] for e in ranges))
    for name in got.index:
        assert got.at[name, "total_ns"] == sum(_ns(e) for e in ranges if e["name"] == name), name
    assert got["time_pct"].sum() == pytest.approx(100.0)


def test_cuda_gpu_kern_sum_adds_up_the_kernels(h200):
    trace, cap = h200
    got = gpu_trace.cuda_gpu_kern_sum(cap)
    kernels = _events(trace, "kernel")
    assert got["total_ns"].sum() == sum(_ns(e) for e in kernels)
    assert got.set_index("name")["instances"].to_dict() == dict(Counter(e["name"] for e in kernels))
    assert got["total_ns"].is_monotonic_decreasing


def test_the_gpu_flame_graph_is_gpu_stacks_one(h200):
    """The same GPU ns on the same range paths as ingest.kineto.gpu_stacks (which marks memcpy leaves as
    kernels: gpu_folded names them bare, as nsys's)."""
    trace, cap = h200
    folded, stacks = gpu_trace.gpu_folded(cap), gpu_stacks(trace)
    assert folded.total == stacks.total == sum(_ns(e) for e in _events(trace, "kernel", "gpu_memcpy"))
    marked = {(*s[:-1], s[-1] if kind_of(s[-1])[1] == "kernel" else annotate(s[-1], "kernel")): ns
              for s, ns in folded.counts.items()}  # fmt: skip
    assert marked == dict(stacks.counts)
    assert any(s[:2] == ("step_[r]", "forward (graph)_[r]") for s in folded.counts)


def test_the_gpu_projection_nests(h200):
    """Each range's GPU ops and projected span lie within its parent's; a graph replay counts once."""
    trace, cap = h200
    nesting = gpu_trace.nest(cap.ranges)
    p = gpu_trace.projection(cap, nesting).set_index("row")
    for row, parent in ((int(r), int(nesting.parent[r])) for r in p.index if nesting.parent[r] >= 0):
        assert parent in p.index
        assert p.at[row, "ops"] <= p.at[parent, "ops"]
        assert p.at[parent, "proj_start"] <= p.at[row, "proj_start"] <= p.at[row, "proj_end"] <= p.at[parent, "proj_end"]
    table = gpu_trace.nvtx_gpu_proj_sum(cap).set_index("range")
    # a range's ops, counted from the trace itself: the runtime calls made while an instance of it was open
    # that started GPU work, once per call (the 47 kernels of a graph replay are one op: its cudaGraphLaunch)
    work = Counter(e["args"]["correlation"] for e in _events(trace, "kernel", "gpu_memcpy", "gpu_memset"))
    calls = [e for e in _events(trace, "cuda_runtime", "cuda_driver") if e["args"].get("correlation") in work]
    ranges = _events(trace, "user_annotation")
    for name in table.index:
        spans = [(e["ts"], e["ts"] + e["dur"]) for e in ranges if e["name"] == name]
        inside = [c for c in calls for a, b in spans if a <= c["ts"] <= b]
        assert table.at[name, "total_gpu_ops"] == len(inside), name
        if name == "forward (graph)":  # ten replays, each one op for its 40-odd kernels
            replays = [work[c["args"]["correlation"]] for c in inside if c["name"].startswith("cudaGraphLaunch")]
            assert len(replays) == 10 and min(replays) > 40
    instances = gpu_trace.nvtx_sum(cap).set_index("range").loc[table.index, "instances"]
    assert (table["proj_min_ns"] >= 0).all() and (table["range_instances"] <= instances).all()


def test_a_cpu_run_gives_ranges_and_no_gpu_work(cpu_run):
    trace, cap, steps = cpu_run
    assert steps > 0 and cap.gpu.empty and cap.launches.empty and cap.graph_trace is None
    assert any("no GPU work" in w for w in cap.warnings)
    counts = Counter(e["name"] for e in _events(trace, "user_annotation"))
    got = gpu_trace.nvtx_sum(cap).set_index("range")["instances"].to_dict()
    assert got == dict(counts) and got["step"] == steps and got["forward (eager)"] == steps
    nesting = gpu_trace.nest(cap.ranges)
    stages = cap.ranges["text"].isin(["schedule", "prepare", "forward (eager)", "sample", "postprocess"]).to_numpy()
    assert (cap.ranges["text"].to_numpy()[nesting.parent[stages]] == "step").all()  # every stage inside its step
    assert gpu_trace.cuda_gpu_kern_sum(cap).empty and gpu_trace.nvtx_gpu_proj_sum(cap).empty
    assert len(gpu_trace.gpu_folded(cap)) == 0 == len(gpu_stacks(trace))
    assert gpu_trace.gpu_gaps(cap).totals["busy_ns"] == 0


def test_a_capture_without_ranges_puts_its_gpu_work_under_no_range():
    """nsys run without NVTX ranges (the nvtx package missing, or -t cuda only): GPU work, no range."""
    cpu, gpu = {"pid": 100, "tid": 100}, {"pid": 0, "tid": 7}
    trace = {"traceEvents": [
        {"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "ts": 1010.0, "dur": 5.0, **cpu,
         "args": {"correlation": 11}},
        {"ph": "X", "cat": "kernel", "name": "k", "ts": 1050.0, "dur": 2.5, **gpu, "args": {"correlation": 11}},
        {"ph": "X", "cat": "kernel", "name": "k", "ts": 1060.0, "dur": 1.0, **gpu, "args": {"correlation": 12}},
    ]}  # fmt: skip
    cap = capture_of_trace(trace)
    assert cap.ranges.empty
    assert gpu_trace.gpu_folded(cap).counts == {("(no range)", "k_[k]"): 3500.0}
    assert gpu_trace.gpu_gaps(cap).totals["busy_ns"] == 3500


def test_gpu_work_without_its_launch_and_bad_events_are_kept_apart():
    cpu, gpu = {"pid": 100, "tid": 100}, {"pid": 0, "tid": 7}
    trace = {"traceEvents": [
        {"ph": "X", "cat": "user_annotation", "name": "step", "ts": 1000.0, "dur": 100.0, **cpu},
        {"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "ts": 1010.0, "dur": 5.0, **cpu,
         "args": {"correlation": 11}},
        {"ph": "X", "cat": "kernel", "name": "k", "ts": 1050.0, "dur": 2.5, **gpu, "args": {"correlation": 11}},
        {"ph": "X", "cat": "kernel", "name": "orphan", "ts": 1060.0, "dur": 1.0, **gpu, "args": {"correlation": 99}},
        {"ph": "X", "cat": "gpu_memset", "name": "Memset (Device)", "ts": 1070.0, "dur": 1.0, **gpu, "args": {}},
        {"ph": "X", "cat": "kernel", "name": "no time", "dur": 1.0, **gpu},
    ]}  # fmt: skip
    cap = capture_of_trace(trace)
    assert cap.source == "the trace given" and any("ignored 1 trace event" in w for w in cap.warnings)
    assert cap.gpu["pid"].tolist() == [100, -1, -1] and cap.gpu["correlation"].tolist() == [11, 99, -1]
    assert cap.gpu["kind"].astype(str).tolist() == ["kernel", "kernel", "memset"] and cap.graph_trace is None
    folded = gpu_trace.gpu_folded(cap)
    assert folded.counts == {("step_[r]", "k_[k]"): 2500.0, ("(no range)", "orphan_[k]"): 1000.0,
                             ("(no range)", "Memset (Device)"): 1000.0}  # fmt: skip
    assert gpu_trace.nvtx_gpu_proj_sum(cap).set_index("range").at["step", "total_gpu_ops"] == 1
