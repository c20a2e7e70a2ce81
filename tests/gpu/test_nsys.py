"""`traceinfer profile` under a real `nsys profile --capture-range=cudaProfilerApi`: the NVTX ranges of the
probe reach the report, one per engine step and stage, and the capture holds the workload's kernels.
`nsys stats` is the oracle; the run directory's step stream is what its counts are checked against."""

from __future__ import annotations

import csv
import io
import shutil
import subprocess
import sys

import pytest
import torch

from traceinfer.rundir import read_manifest, read_stream

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.skipif(shutil.which("nsys") is None, reason="needs nsys on PATH"),
]


def nsys_stats(report: str, rep_file) -> list[dict]:
    out = subprocess.run(
        ["nsys", "stats", "-q", "--report", report, "--format", "csv", "--output", "-", str(rep_file)],
        capture_output=True, text=True, timeout=300, check=True,
    ).stdout  # fmt: skip
    lines = [ln for ln in out.splitlines() if ln.strip()]
    start = next(i for i, ln in enumerate(lines) if ln.startswith('"') or "," in ln)
    return list(csv.DictReader(io.StringIO("\n".join(lines[start:]))))


def test_nvtx_ranges_reach_nsys_one_per_step_and_stage(tmp_path):
    run = tmp_path / "run"
    cmd = [
        "nsys", "profile", "-t", "cuda,nvtx", "-s", "none", "--cpuctxsw=none",
        "--capture-range=cudaProfilerApi", "--capture-range-end=stop", "-o", str(tmp_path / "cap"),
        sys.executable, "-m", "traceinfer.cli", "profile", "--workload", "chatbot", "--model", "synthetic:tiny",
        "--num-requests", "8", "--probes", "nvtx,steps", "--overhead-passes", "0", "--out", str(run),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=420, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    nvtx = read_manifest(run)["probes"]["details"]["nvtx"]
    assert nvtx["profiler_attached"] and nvtx["ranges"] and nvtx["cuda_profiler_range"]

    ranges = {row["Range"].split(":", 1)[-1].strip(): int(row["Instances"]) for row in nsys_stats("nvtx_sum", tmp_path / "cap.nsys-rep")}
    steps = read_stream(run, "steps")
    model_steps = [s for s in steps if s["forward_ns"] is not None]
    graph_steps = sum(1 for s in model_steps if s["cuda_graph"])
    assert ranges["step"] == len(steps) and ranges["schedule"] == len(steps)
    assert ranges["prepare"] == ranges["sample"] == len(model_steps)
    assert ranges.get("forward (graph)", 0) == graph_steps > 0
    assert ranges.get("forward (eager)", 0) == len(model_steps) - graph_steps
    assert ranges["block allocate"] >= 8 and ranges["block free"] >= 8  # one per request at least

    kernels = nsys_stats("cuda_gpu_kern_sum", tmp_path / "cap.nsys-rep")
    assert sum(int(k["Instances"]) for k in kernels) > len(model_steps)  # the workload's kernels were captured


def test_profile_nsys_reads_its_own_capture_into_the_run(tmp_path):
    """`traceinfer profile --nsys`: relaunched under nsys with graph nodes traced, exported, read back; the
    run's tables equal `nsys stats` on the same capture, and the report has the kernel-level GPU time."""
    import json

    import pandas as pd

    from traceinfer.analysis import gpu_trace
    from traceinfer.ingest import read_nsys

    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "traceinfer.cli", "profile", "--nsys", "--workload", "chatbot", "--model",
           "synthetic:tiny", "--num-requests", "8", "--overhead-passes", "0", "--out", str(run)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=420, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (run / "nsys.nsys-rep").exists() and (run / "nsys.sqlite").exists() and (run / "nsys_stats.json").exists()
    cap = read_nsys(run / "nsys.sqlite")
    assert cap.graph_trace == "node" and not cap.warnings
    for report in ("nvtx_sum", "cuda_gpu_kern_sum", "nvtx_gpu_proj_sum"):
        want = pd.DataFrame(nsys_stats(report, run / "nsys.nsys-rep"))
        got = getattr(gpu_trace, report)(cap).rename(columns=gpu_trace.NSYS_HEADERS[report])
        key = "Name" if report == "cuda_gpu_kern_sum" else "Range"
        w, g = want.set_index(key).sort_index(), got.set_index(key).sort_index()
        assert w.index.tolist() == g.index.tolist(), report
        for col in ("Total Time (ns)", "Instances", "Total Proj Time (ns)", "Total GPU Ops"):
            if col in w:
                assert [int(x) for x in w[col]] == [int(x) for x in g[col]], (report, col)
    doc = json.loads((run / "report.json").read_text())
    assert doc["gpu_trace"]["gpu_gaps"]["totals"]["busy_pct"] > 0
    assert doc["gpu_trace"]["gpu_gaps"]["totals"]["run_offset_ns"] is not None
    assert "nsys" in doc["use"][0]["utilization"]["text"]
    assert (run / "flamegraphs" / "gpu.svg").exists()
    assert "GPU time, kernel by kernel (nsys)" in (run / "report.md").read_text()
    out = subprocess.run([sys.executable, "-m", "traceinfer.cli", "nsys-stats", str(run), "--report", "gpu_gaps"],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0 and "GC pause" in out.stdout or "probe work" in out.stdout, out.stdout + out.stderr


def test_profile_nsys_names_a_missing_binary(tmp_path):
    cmd = [sys.executable, "-m", "traceinfer.cli", "profile", "--nsys", "--nsys-path", "/no/such/nsys", "--model",
           "synthetic:tiny", "--num-requests", "2", "--out", str(tmp_path / "run")]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2 and "/no/such/nsys" in proc.stderr and "Traceback" not in proc.stderr
