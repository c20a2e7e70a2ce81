"""The report as data: a CPU run's figures equal its streams, and runs with a planted problem put the
matching finding first (a clean run's first finding is none of them)."""

from __future__ import annotations

import gc
import json
import time

import pytest
import torch

from traceinfer import LLM, open_run
from traceinfer.analysis import requests as request_analysis
from traceinfer.analysis.latency import summarize
from traceinfer.analysis.report import compare, report_of_run
from traceinfer.cli import main
from traceinfer.config import ProbesConfig, WorkloadConfig
from traceinfer.passes.engine import run_workload
from traceinfer.probes import attach
from traceinfer.workloads import make

PLANTED = {"gc_pauses", "kv_preemptions", "eager_decode", "host_stage_schedule"}


@pytest.fixture(autouse=True)
def flush_denormals():
    torch.set_flush_denormal(True)
    yield
    torch.set_flush_denormal(False)


def profiled(tmp_path, name: str, plant=None, **engine) -> object:
    """A chatbot run (offline, CPU) written with the default probes, ``plant`` subscribed to the engine's
    hooks meanwhile (the problem under test); returns the opened run directory."""
    llm = LLM("synthetic:tiny", device="cpu", **engine)
    workload = make(WorkloadConfig(name="chatbot", arrival="offline", num_requests=6, output_len=48), on_cuda=False,
                    vocab_size=llm.engine.vocab_size)  # fmt: skip
    llm.generate(workload.prompts[:1], workload.params[:1])
    llm.engine.block_manager.reset_prefix_cache()
    out = tmp_path / name
    session = attach(llm.engine, "default", out, ProbesConfig())
    unsubscribe = plant(llm.engine) if plant else None
    try:
        result = run_workload(llm, workload)
    finally:
        if unsubscribe:
            unsubscribe()
    session.close("completed", results={"seconds": result.seconds, "requests": result.num_requests,
                                        "output_tokens": result.output_tokens, "output_tok_s": result.output_tok_s,
                                        "prompt_tokens": result.prompt_tokens, "failed_requests": 0})  # fmt: skip
    return open_run(out)


def test_report_figures_equal_the_run_directory(tmp_path):
    out = tmp_path / "run"
    assert main(["profile", "--workload", "chatbot", "--num-requests", "4", "--output-len", "32", "--probes", "all",
                 "--overhead-passes", "0", "--no-warmup", "--device", "cpu", "--out", str(out)]) == 0  # fmt: skip
    run = open_run(out)
    report = report_of_run(run)
    d = json.loads(json.dumps(report.as_dict()))  # JSON-ready
    m = run.manifest
    assert d["headline"]["output_tok_s"] == m["results"]["output_tok_s"] and d["headline"]["model"] == m["engine"]["model"]
    metrics = request_analysis.request_metrics(run.frame("requests"), run.frame("tokens"))
    assert d["headline"]["latency_ms"]["ttft"] == pytest.approx(summarize(metrics["ttft_ms"]))
    steps = run.frame("steps")
    assert d["step_anatomy"]["steps"] == len(steps)
    assert d["step_anatomy"]["step_ms"]["p50"] == pytest.approx(steps["dur_ns"].quantile(0.5) / 1e6)
    median = d["step_anatomy"]["median_step"]
    row = steps[steps["step"] == median["step"]].iloc[0]
    assert median["total_ms"] == pytest.approx(row["dur_ns"] / 1e6)
    assert median["parts_ms"]["forward"] == pytest.approx(row["forward_ns"] / 1e6)
    kv = run.frame("kv_events")
    assert d["kv_cache"]["evictions"] == int((kv["op"] == "evict").sum())
    assert d["gc_threads"]["gc"]["count"] == len(run.frame("gc"))
    resources = [u["resource"] for u in d["use"]]
    assert resources[:3] == ["GPU SMs", "HBM bandwidth", "KV-cache blocks"] and "Host memory" in resources
    gpu = d["use"][0]
    assert gpu["utilization"]["text"] == "not measured" and "GPU run" in gpu["utilization"]["needs"]  # a CPU run
    kv_row = next(u for u in d["use"] if u["resource"] == "KV-cache blocks")
    assert kv_row["saturation"]["value"] == int(steps["num_preempted"].sum())
    assert d["findings"] and all({"id", "title", "severity", "explains_s", "evidence", "action"} <= set(f) for f in d["findings"])
    assert d["methodology"]["command"] == m["command"] and d["methodology"]["probes"] == m["probes"]["enabled"]
    assert {"throughput", "itl_heatmap", "ttft_heatmap", "steps"} <= set(report.series)
    rows = compare(report, report)
    assert rows and all(r["delta"] in (0, None) for r in rows)


def test_a_clean_run_finds_no_planted_problem(tmp_path):
    report = report_of_run(profiled(tmp_path, "clean", num_kv_blocks=512))
    assert report.findings[0].id not in PLANTED, [f.id for f in report.findings]


def cyclic_garbage(n: int = 20_000) -> None:
    """``n`` objects in reference cycles, left for the collector: what a serving loop that allocates per
    step gives gc.collect() to do (so the pauses scale with the machine's speed as the steps do)."""
    for _ in range(n // 2):
        a, b = [], []
        a.append(b)
        b.append(a)


def test_gc_collect_every_step_is_the_first_finding(tmp_path):
    def plant(engine):
        return engine.hooks.subscribe(lambda p, ph, t, f: ph == "B" and (cyclic_garbage(), gc.collect()), ("step",))

    report = report_of_run(profiled(tmp_path, "gc", plant, num_kv_blocks=512))
    first = report.findings[0]
    assert first.id == "gc_pauses", [(f.id, f.explains_s) for f in report.findings]
    assert first.evidence["collections"] >= report.anatomy["steps"] and first.evidence["by_generation"].get(2)


def test_a_small_kv_cache_puts_preemption_first(tmp_path):
    report = report_of_run(profiled(tmp_path, "kv", num_kv_blocks=20, block_size=4))
    assert report.findings[0].id == "kv_preemptions", [(f.id, f.explains_s) for f in report.findings]
    assert report.findings[0].evidence["preemptions"] == report.summary.preemptions > 0


def test_a_sleep_in_scheduling_puts_the_scheduler_first(tmp_path):
    def plant(engine):
        return engine.hooks.subscribe(lambda p, ph, t, f: ph == "B" and time.sleep(0.005), ("schedule",))

    report = report_of_run(profiled(tmp_path, "sleep", plant, num_kv_blocks=512))
    first = report.findings[0]
    assert first.id == "host_stage_schedule", [(f.id, f.explains_s) for f in report.findings]
    assert first.evidence["median_ms"] >= 5.0


def test_on_a_gpu_a_host_stage_explains_at_most_the_gpus_idle_time():
    """With async scheduling the host prepares the next step while the GPU runs this one: a long prepare
    costs the run only the GPU's idle time between forwards (the H200's batch-1 report of 2026-12-01 put
    'prepare takes 22% of the run' first while the GPU waited 3% of it)."""
    import pandas as pd

    from traceinfer.analysis.findings import RunData, host_stage

    n = 100
    steps = pd.DataFrame({"schedule_ns": [10_000] * n, "prepare_ns": [300_000] * n, "postprocess_ns": [10_000] * n,
                          "handover_ns": [5_000] * n, "other_ns": [20_000] * n, "gpu_gap_ns": [0.0] + [40_000] * (n - 1)})  # fmt: skip
    wall_s = n * 1.4e-3
    hidden = RunData({"engine": {"device": "cuda"}}, {"steps": steps}, wall_s)
    assert host_stage(hidden) is None  # 30 ms of prepare, 4 ms of GPU idle: under 5% of 140 ms
    waiting = RunData({"engine": {"device": "cuda"}}, {"steps": steps.assign(gpu_gap_ns=250_000)}, wall_s)
    f = host_stage(waiting)
    assert f.id == "host_stage_prepare" and f.explains_s == pytest.approx(0.025)  # the idle, not the 30 ms
    assert f.evidence["gpu_idle_s"] == pytest.approx(0.025)
    on_cpu = RunData({"engine": {"device": "cpu"}}, {"steps": steps.assign(gpu_gap_ns=None)}, wall_s)
    assert host_stage(on_cpu).explains_s == pytest.approx(0.03)
