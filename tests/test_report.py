"""The report as data: a CPU run's figures equal its streams, and runs with a planted problem put the
matching finding first (a clean run's first finding is none of them)."""

from __future__ import annotations

import gc
import json
import time

import pandas as pd
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
from traceinfer.rundir.schema import stream
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


def steps_frame(n: int, **columns) -> pd.DataFrame:
    """n rows of the steps stream: every column null but ``columns`` (values or per-row lists)."""
    return pd.DataFrame({c: [None] * n for c in stream("steps").names}).assign(**columns)


def test_a_launch_that_waits_for_the_gpu_is_named_with_the_idle_it_causes():
    """The H200 bench of 2026-12-01: the eager mixed steps' launch lasted their GPU work (24.6 ms; a copy
    from pageable memory waited for the forward), so the next step's prepare ran with the GPU idle."""
    from traceinfer.analysis.findings import RunData, host_waits_in_forward

    n, manifest = 100, {"engine": {"device": "cuda"}}
    steps = steps_frame(n,
        step=range(n), dur_ns=5_000_000, forward_ns=800_000, gpu_forward_ns=4_800_000, gpu_gap_ns=20_000.0,
        cuda_graph=True, num_prefill_tokens=0)  # fmt: skip
    waits = [10, 11, 12, 13, 14]  # eager mixed steps whose launch took their GPU time
    steps.loc[waits, ["forward_ns", "gpu_forward_ns", "cuda_graph", "num_prefill_tokens"]] = [24_000_000, 24_500_000,
                                                                                                 False, 8000]  # fmt: skip
    steps.loc[[w + 1 for w in waits], "gpu_gap_ns"] = 6_000_000.0  # the forward after each started late
    wall_s = 0.62
    f = host_waits_in_forward(RunData(manifest, {"steps": steps}, wall_s))
    assert f.explains_s == pytest.approx(0.030) and f.severity == "low"
    assert f.evidence["steps"] == 5 and f.evidence["eager"] == 5 and f.evidence["with_prefill"] == 5
    assert f.evidence["first_steps"] == waits
    assert "inside 5 forwards' launch (24.0 ms against 24.5 ms of GPU work)" in f.title and "30 ms" in f.title
    assert "set_sync_debug_mode" in f.action
    # launches shorter than their GPU work, forwards under 1 ms on the GPU, or a CPU run: silent
    assert host_waits_in_forward(RunData(manifest, {"steps": steps.assign(forward_ns=800_000)}, wall_s)) is None
    tiny = steps.assign(gpu_forward_ns=500_000, forward_ns=600_000)
    assert host_waits_in_forward(RunData(manifest, {"steps": tiny}, wall_s)) is None
    on_cpu = steps.assign(gpu_forward_ns=None, gpu_gap_ns=None)
    assert host_waits_in_forward(RunData({"engine": {"device": "cpu"}}, {"steps": on_cpu}, wall_s)) is None


def test_prefill_stalls_advise_piecewise_graphs_only_where_they_are_off():
    """The H200 bench of 2026-12-01 with piecewise graphs on still got 'or capture graphs that cover mixed
    steps': the action reads the manifest's kernels and says what is left when they are on."""
    from traceinfer.analysis.findings import RunData, prefill_stalls

    n = 100
    steps = steps_frame(n,
        step=range(n), dur_ns=5_000_000, num_decode_seqs=64, num_prefill_tokens=0, token_budget=8192)  # fmt: skip
    steps.loc[range(0, 100, 10), ["dur_ns", "num_prefill_tokens"]] = [20_000_000, 8000]
    wall_s = 0.65
    kernels = {"piecewise_graph_tokens": [256, 512, 1024, 2048, 4096, 8192]}
    on = prefill_stalls(RunData({"engine": {"device": "cuda", "kernels": kernels}}, {"steps": steps}, wall_s))
    assert on.evidence["mixed_steps"] == 10 and on.evidence["piecewise_graph_tokens"] == kernels["piecewise_graph_tokens"]
    assert "already replay piecewise CUDA graphs" in on.action and "run them as piecewise" not in on.action
    off = prefill_stalls(RunData({"engine": {"device": "cuda", "kernels": {"piecewise_graph_tokens": []}}},
                                 {"steps": steps}, wall_s))  # fmt: skip
    assert off.evidence["piecewise_graph_tokens"] is None and "run them as piecewise CUDA graphs" in off.action
    assert off.explains_s == on.explains_s > 0


def test_host_gaps_in_a_capture_that_traced_graph_nodes_say_so():
    """The H200 at batch 1 under `profile --nsys`: 0.93 ms to launch each replay with graph nodes traced, GPU
    idle 9% between forwards, a token every 1.82 ms; without nsys, 1.16 ms. The finding keeps its figures
    and says to check the gaps without the capture."""
    from traceinfer.analysis.findings import RunData, host_bound_gaps

    n, manifest = 100, {"engine": {"device": "cuda"}}
    steps = steps_frame(n,
        step=range(n), dur_ns=1_800_000, prepare_ns=400_000, gpu_gap_ns=200_000.0, cuda_graph=True)  # fmt: skip
    wall_s = n * 1.8e-3
    plain = host_bound_gaps(RunData(manifest, {"steps": steps}, wall_s))
    node = host_bound_gaps(RunData(manifest, {"steps": steps}, wall_s, extras={"gpu_trace": {"graph_trace": "node"}}))
    assert plain.explains_s == node.explains_s == pytest.approx(0.02)
    assert not plain.evidence["nsys_graph_nodes_traced"] and "nsys" not in plain.action
    assert node.evidence["nsys_graph_nodes_traced"] and "without --nsys" in node.action
    eager = steps.assign(cuda_graph=False)  # no graph replayed: node tracing changed no launch
    assert "nsys" not in host_bound_gaps(RunData(manifest, {"steps": eager}, wall_s,
                                                 extras={"gpu_trace": {"graph_trace": "node"}})).action  # fmt: skip


def test_an_nsys_capture_names_the_gaps_inside_a_graph_and_the_largest_kernels():
    """With the host off the critical path (the H200 at batch 1: 3% idle between forwards), what is left is
    the forward: the idle between a graph's nodes is a finding of its own, and compute_bound names the
    kernels that take the GPU's time."""
    from traceinfer.analysis.findings import RunData, compute_bound, find
    from traceinfer.analysis.gpu_trace import INSIDE_LAUNCH

    n = 100
    steps = steps_frame(n,
        step=range(n), t_ns=[i * 1_450_000 for i in range(n)], dur_ns=1_450_000, schedule_ns=10_000,
        prepare_ns=30_000, postprocess_ns=10_000, handover_ns=5_000, other_ns=20_000, gpu_gap_ns=2_000.0,
        forward_ns=500_000, sample_ns=100_000, gpu_forward_ns=1_400_000, num_preempted=0, cuda_graph=True,
        num_seqs=1, num_prefill_seqs=0, num_prefill_tokens=0, num_decode_tokens=1, num_batched_tokens=1,
        num_waiting=0, num_running=1, token_budget=8192)  # fmt: skip
    kern = [{"name": "gemm_a", "time_pct": 40.0, "instances": 2800, "med_ns": 10_000},
            {"name": "_decode_kernel", "time_pct": 20.0, "instances": 2800, "med_ns": 4_000},
            {"name": "_add_rms_norm_kernel", "time_pct": 10.0, "instances": 5600, "med_ns": 1_600},
            {"name": "other", "time_pct": 5.0, "instances": 100, "med_ns": 1_000}]  # fmt: skip
    gaps = {"by_phase": [{"phase": INSIDE_LAUNCH, "idle_ns": 17_000_000, "gaps": 34_000, "median_gap_ns": 450},
                         {"phase": "prepare", "idle_ns": 200_000, "gaps": 100, "median_gap_ns": 2_000}]}  # fmt: skip
    trace = {"cuda_gpu_kern_sum": kern, "gpu_gaps": gaps, "counts": {"kernels": 35_000}}
    manifest = {"engine": {"device": "cuda"}}
    findings = find(RunData(manifest, {"steps": steps}, n * 1.45e-3, extras={"gpu_trace": trace}))
    assert [f.id for f in findings] == ["kernel_gaps"]
    f = findings[0]
    assert f.explains_s == pytest.approx(0.017) and f.evidence["kernels_per_forward"] == pytest.approx(350)
    assert "12% of the run in 34,000 gaps of 0.5 us (350 kernels a forward)" in f.title
    # fewer gaps: nothing fires, and what is left names the three largest kernels
    quiet = {**trace, "gpu_gaps": {"by_phase": [{**gaps["by_phase"][0], "idle_ns": 1_000_000}]}}
    left = find(RunData(manifest, {"steps": steps}, n * 1.45e-3, extras={"gpu_trace": quiet}))
    assert [f.id for f in left] == ["compute_bound"]
    assert [k["name"] for k in left[0].evidence["top_kernels"]] == ["gemm_a", "_decode_kernel", "_add_rms_norm_kernel"]
    assert "gemm_a 40% (10.0 us x 2,800)" in left[0].action
    # without a capture: the rule does not fire and compute_bound says what it said before
    plain = compute_bound(RunData(manifest, {"steps": steps}, n * 1.45e-3))
    assert "top_kernels" not in plain.evidence and plain.action.startswith("Faster kernels or a smaller model")
