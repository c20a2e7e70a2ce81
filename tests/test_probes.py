"""Probes on a real engine (synthetic:tiny, CPU): KV log replay, GC-in-step, request and step traces,
absent hardware, the Perfetto JSON format, the writer's flushing, and no hook left behind."""

from __future__ import annotations

import gc
import itertools
import json
import os
import re
import subprocess
import sys
import time
import types
import warnings

import pandas as pd
import pytest
import torch

from tests.probe_checks import trace_problems
from traceinfer import LLM, SamplingParams, open_run
from traceinfer.analysis import kv as kv_analysis
from traceinfer.analysis import requests as request_analysis
from traceinfer.analysis import steps as step_analysis
from traceinfer.config import ProbesConfig
from traceinfer.errors import ConfigError
from traceinfer.probes import PRESETS, attach, resolve_probes, sampler_process
from traceinfer.probes.kv_events import block_manager_state
from traceinfer.probes.sampler_process import GpuReader, HostReader
from traceinfer.probes.samplers import StepCell
from traceinfer.render.perfetto import build_trace, write_trace
from traceinfer.rundir import STREAMS, iter_stream, read_manifest, read_stream
from traceinfer.rundir.encoder import ROWS_PER_LINE
from traceinfer.rundir.writer import RunWriter


# -- fixtures: engines, and a check that no probe outlives its session --------------------------
@pytest.fixture(scope="module", autouse=True)
def flush_denormals():
    """Random synthetic weights drift into float32 denormals on CPU, which slows matmuls ~50x; these tests
    time nothing, so flush them to zero for speed."""
    torch.set_flush_denormal(True)
    yield
    torch.set_flush_denormal(False)


@pytest.fixture(scope="module")
def make_llm():
    """LLM("synthetic:tiny", **options), built once per option set in this module."""
    cache: dict = {}

    def make(**options) -> LLM:
        key = tuple(sorted(options.items()))
        if key not in cache:
            cache[key] = LLM("synthetic:tiny", device="cpu", **options)
        return cache[key]

    return make


def prompts_of(n: int, length: int, seed: int = 0, prefix: list[int] | None = None) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [(prefix or []) + torch.randint(0, 10000, (length,), generator=g).tolist() for _ in range(n)]


def greedy(n: int) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True)


# -- selection -------------------------------------------------------------------------------
def test_resolve_probes_sets_and_lists():
    assert resolve_probes("off") == ()
    assert resolve_probes("default") == PRESETS["default"]
    assert resolve_probes("all") == PRESETS["all"]
    assert resolve_probes("kv,steps") == ("steps", "kv")  # registry order
    assert resolve_probes("default+threads") == PRESETS["default"] + ("threads",)
    assert resolve_probes(["gc", "kv"]) == ("kv", "gc")
    with pytest.raises(ConfigError, match="unknown probe 'nope'.*probes: nvtx"):
        resolve_probes("steps,nope")
    with pytest.raises(ConfigError, match="off"):
        resolve_probes("off,steps")
    with pytest.raises(ConfigError):
        ProbesConfig(sample_hz=0)


def test_off_subscribes_nothing(make_llm, tmp_path):
    llm = make_llm(num_kv_blocks=64)
    session = attach(llm.engine, "off", tmp_path / "run")
    assert llm.engine.hooks.subscribed() == {}
    llm.generate(prompts_of(1, 8), greedy(2))
    manifest = session.close()
    assert manifest["status"] == "completed" and manifest["probes"]["enabled"] == []
    assert manifest["streams"] == {}


# -- KV event log ----------------------------------------------------------------------------
def test_kv_log_replays_to_the_block_managers_final_state(make_llm, tmp_path):
    llm = make_llm(num_kv_blocks=16, block_size=4)
    engine, bm = llm.engine, llm.engine.block_manager
    system = prompts_of(1, 12, seed=7)[0]
    llm.generate([system + [1, 2, 3]], greedy(3))  # before attaching: cached blocks the snapshot must carry
    with attach(engine, "kv,requests", tmp_path / "run") as session:
        # shared prefixes (hits), more KV than the cache holds (preemption, eviction)
        outputs = llm.generate(prompts_of(5, 10, seed=1, prefix=system), greedy(14))
        llm.generate(prompts_of(2, 6, seed=2), greedy(4))  # no shared prefix: 'allocate'
    kv = open_run(session.run_dir).frame("kv_events")
    ops = set(kv["op"])
    assert {"snapshot", "allocate", "append", "hit", "stored", "free", "preempt", "evict"} <= ops, ops
    assert sum(o.num_preemptions for o in outputs) > 0

    assert kv_analysis.replay(kv) == kv_analysis.KVState.from_snapshot(block_manager_state(bm))
    # vLLM names where they overlap
    names = dict(zip(kv["op"], kv["vllm_event"]))
    assert names["stored"] == "BlockStored" and names["evict"] == "BlockRemoved" and pd.isna(names["free"])

    # every block a request took it gave back: allocations minus frees is zero per request
    taken = kv[kv["op"].isin(["allocate", "append", "hit"])].groupby("request_id")["block_ids"].sum().map(len)
    given = kv[kv["op"].isin(["free", "preempt"])].groupby("request_id")["block_ids"].sum().map(len)
    assert (taken - given.reindex(taken.index, fill_value=0)).eq(0).all()
    assert kv.iloc[-1]["num_used"] == 0 == bm.num_used_blocks


def test_kv_derived_series(make_llm, tmp_path):
    llm = make_llm(num_kv_blocks=16, block_size=4)
    system = prompts_of(1, 12, seed=3)[0]
    with attach(llm.engine, "kv,requests", tmp_path / "run") as session:
        llm.generate([system + [5, 6]], greedy(3))
        llm.generate(prompts_of(3, 5, seed=4, prefix=system), greedy(6))  # hits on the system prompt
    kv = open_run(session.run_dir).frame("kv_events")
    req = open_run(session.run_dir).frame("requests")
    tok = open_run(session.run_dir).frame("tokens")

    util = kv_analysis.utilization(kv)
    assert util["usage"].between(0, 1).all() and util["usage"].max() > 0

    hits = kv_analysis.prefix_hits(req, tok)
    assert len(hits) == 4 and hits["hit_tokens"].iloc[1:].eq(12).all()  # 3 full blocks of the system prompt
    assert kv_analysis.hit_rate(hits) == pytest.approx(36 / hits["query_tokens"].sum())

    lives = kv_analysis.block_lives(kv)
    assert set(lives["end"]) <= {"evicted", "reallocated", "reset", "open"}
    assert lives["hits"].sum() == 9  # 3 requests x 3 system-prompt blocks
    gaps = kv_analysis.reuse_gaps(kv)
    assert len(gaps) == 9 and (gaps["gap_ns"] >= 0).all()
    evicted = lives[lives["end"] == "evicted"]
    assert (evicted["idle_before_evict_ns"].dropna() >= 0).all()

    frag = kv_analysis.internal_fragmentation(kv, req, tok)
    assert (frag["unused_slots"] >= 0).all() and (frag["unused_slots"] < 4 * 4).all()  # < one block per request
    assert kv_analysis.preemptions(kv).empty


# -- GC --------------------------------------------------------------------------------------
def test_forced_collections_land_in_their_steps(make_llm, tmp_path):
    llm = make_llm(num_kv_blocks=64)
    engine = llm.engine
    forced_at = {2, 5}
    current = {}

    def collect_in_forward(point, phase, t_ns, fields):
        if point == "step" and phase == "B":
            current["step"] = fields["step"]
        elif point == "forward" and phase == "B" and current["step"] - first_step in forced_at:
            gc.collect()

    first_step = engine.step_index
    with attach(engine, "gc,steps", tmp_path / "run") as session:
        unsubscribe = engine.hooks.subscribe(collect_in_forward, ("step", "forward"))
        try:
            llm.generate(prompts_of(2, 8), greedy(8))
        finally:
            unsubscribe()
    events = read_stream(session.run_dir, "gc")
    steps = {r["step"]: r for r in read_stream(session.run_dir, "steps")}
    full = [e for e in events if e["generation"] == 2]
    assert {e["step"] - first_step for e in full} == forced_at
    for e in full:
        s = steps[e["step"]]
        assert e["in_step"] and e["thread"] == "MainThread" and e["dur_ns"] > 0
        # inside the forward of that step
        assert s["forward_start_ns"] <= e["t_ns"] and e["t_ns"] + e["dur_ns"] <= s["forward_start_ns"] + s["forward_ns"]


# -- request and step traces -----------------------------------------------------------------
def test_request_trace_matches_the_outputs(make_llm, tmp_path):
    llm = make_llm(num_kv_blocks=64)
    params = [greedy(n) for n in (3, 7, 5)]
    with attach(llm.engine, "default", tmp_path / "run") as session:
        outputs = llm.generate(prompts_of(3, 9), params)
    req = open_run(session.run_dir).frame("requests")
    tok = open_run(session.run_dir).frame("tokens")
    metrics = request_analysis.request_metrics(req, tok).set_index("request_id")
    assert len(metrics) == len(outputs)
    for out in outputs:
        m = metrics.loc[out.request_id]
        assert m["num_tokens_logged"] == m["num_output_tokens"] == len(out.token_ids)
        assert tok[tok["request_id"] == out.request_id].sort_values("index")["token_id"].tolist() == out.token_ids
        assert 0 <= m["queue_ms"] <= m["ttft_ms"] <= m["e2e_ms"]
        assert m["prefill_ms"] >= 0 and m["finish_reason"] == "length" and m["num_preemptions"] == 0
        assert m["arrival_ns"] == out.arrival_ns  # the request's own arrival time, as the engine stamped it
        assert tok[tok["request_id"] == out.request_id].sort_values("index")["t_ns"].tolist() == out.token_times_ns
    # handed over late, every event still names the step it happened in: its time lies inside that step
    steps = open_run(session.run_dir).frame("steps").set_index("step")
    kv = open_run(session.run_dir).frame("kv_events")
    lifecycle = req[req["event"].isin(["scheduled", "finished"])]
    for frame in (tok, kv[kv["op"] != "snapshot"], lifecycle):
        start = steps.loc[frame["step"], "t_ns"].to_numpy()
        end = start + steps.loc[frame["step"], "dur_ns"].to_numpy()
        assert ((frame["t_ns"].to_numpy() >= start) & (frame["t_ns"].to_numpy() <= end)).all()
    itl = request_analysis.inter_token_latencies(tok)
    assert len(itl) == sum(len(o.token_ids) - 1 for o in outputs) and (itl["itl_ms"] > 0).all()
    summary = request_analysis.latency_summary(metrics.reset_index())
    assert summary.loc["ttft_ms", "p50"] <= summary.loc["e2e_ms", "p50"]


def test_step_trace_rows(make_llm, tmp_path):
    llm = make_llm(num_kv_blocks=64)
    engine = llm.engine
    prompts = prompts_of(3, 11)
    first = engine.step_index
    with attach(engine, "steps", tmp_path / "run") as session:
        outputs = llm.generate(prompts, greedy(4))
    rows = read_stream(session.run_dir, "steps")
    assert [r["step"] for r in rows] == list(range(first, engine.step_index))
    for r in rows:
        stages = [r[f"{s}_ns"] for s in ("schedule", "prepare", "forward", "sample", "postprocess")]
        assert all(v is not None and v >= 0 for v in stages)
        assert sum(stages) + r["other_ns"] == r["dur_ns"]
        # the handover to the probes lies between the forward's launch and sampling, within other_ns
        assert 0 <= r["handover_ns"] <= r["other_ns"]
        assert r["forward_start_ns"] + r["forward_ns"] <= r["handover_start_ns"]
        assert r["handover_start_ns"] + r["handover_ns"] <= r["sample_start_ns"]
        assert r["gpu_forward_ns"] is None and r["gpu_gap_ns"] is None  # absent on CPU, not 0
        assert r["cuda_graph"] is False and r["token_budget"] == engine.config.max_num_batched_tokens
    assert sum(r["num_prefill_tokens"] for r in rows) == sum(map(len, prompts))
    assert sum(r["num_decode_tokens"] for r in rows) == sum(len(o.token_ids) - 1 for o in outputs)
    assert sum(r["num_outputs"] for r in rows) == len(outputs)  # a step returns the requests that finished in it
    assert rows[0]["num_waiting"] == 0 and rows[0]["num_running"] == 3
    info = read_manifest(session.run_dir)["probes"]["details"]["steps"]
    assert info["rows"] == len(rows) and "null" in info["reason"]


# -- samplers, threads, absent hardware ------------------------------------------------------
def test_handover_summary_by_hand():
    steps = pd.DataFrame([
        {"step": i, "handover_ns": h and h * 1000, "gpu_forward_ns": g * 1000}
        for i, (h, g) in enumerate([(100, 1000), (200, 150), (300, 5000), (None, 900)])
    ])  # fmt: skip
    s = step_analysis.handover_summary(steps)
    assert (s["steps"], s["median_us"], s["max_us"], s["gpu_forward_median_us"]) == (3, 200, 300, 1000)
    assert (s["exposed_steps"], s["exposed_us"]) == (1, 50)  # 200 us of handover behind a 150 us forward
    assert "behind the forward's GPU time (median 1,000 us) in 2 of 3 steps; 50 us exposed" in step_analysis.describe_handover(s)
    cpu = step_analysis.handover_summary(steps.assign(gpu_forward_ns=None))
    assert cpu["exposed_steps"] is None and "on the host's path" in step_analysis.describe_handover(cpu)
    assert step_analysis.handover_summary(steps.assign(handover_ns=None)) is None


def test_samplers_and_threads_record_and_absent_hardware_is_absent(make_llm, tmp_path):
    llm = make_llm(num_kv_blocks=64)
    options = ProbesConfig(sample_hz=200, stack_hz=200)
    first_step = llm.engine.step_index
    with attach(llm.engine, "samplers,threads,cuda_memory", tmp_path / "run", options) as session:
        llm.generate(prompts_of(2, 16), greedy(12))
        time.sleep(0.05)
    last_step = llm.engine.step_index - 1
    run = session.run_dir
    manifest = read_manifest(run)
    details = manifest["probes"]["details"]
    assert details["samplers"]["gpu"]["available"] is False and "cpu" in details["samplers"]["gpu"]["reason"]
    assert details["cuda_memory"]["available"] is False and details["cuda_memory"]["streams"] == []
    assert manifest["device"]["cuda"] is None
    assert not (run / STREAMS["gpu_samples"].file).exists() and not (run / STREAMS["cuda_memory"].file).exists()
    host = read_stream(run, "host_samples")
    assert len(host) >= 3 and all(r["rss_bytes"] > 0 and r["num_threads"] >= 1 for r in host)
    assert details["samplers"]["samples"] == len(host) and details["samplers"]["errors"] == 0
    # the sampler process reads the engine's process, and the step from the cell the engine writes
    assert all(r["cpu_user_s"] >= 0 and r["ctx_switches_voluntary"] >= 0 for r in host)
    assert [r["t_ns"] for r in host] == sorted(r["t_ns"] for r in host)
    assert host[-1]["step"] == last_step and {r["step"] for r in host} - {None} <= set(range(first_step, last_step + 1))
    assert details["samplers"]["process_cpu_s"] > 0 and manifest["probes"]["cost"]["probe_processes_cpu_s"] > 0

    samples = read_stream(run, "thread_samples")
    main = [s for s in samples if s["thread_name"] == "MainThread"]
    assert main and any("llm_engine.py:LLMEngine.step" in s["stack"] for s in main)
    assert not any(s["thread_name"] == "traceinfer-stacks" for s in samples)  # the sampler leaves itself out
    cpu = [s["cpu_ns"] for s in main]
    assert all(b >= a for a, b in itertools.pairwise(cpu))
    # folded stacks: every frame "file.py:qualname" (no ';' inside), root first (the caller before its callee)
    assert all(re.fullmatch(r"[^;:]+:[^;]+", frame) for s in samples for frame in s["stack"].split(";"))
    nested = [s["stack"].split(";") for s in main if "engine/model_runner.py:ModelRunner.execute" in s["stack"]]
    assert nested and all(
        f.index("engine/llm_engine.py:LLMEngine.step") < f.index("engine/model_runner.py:ModelRunner.execute")
        for f in nested
    )


def test_host_reader_rows_follow_the_stream_schema():
    psutil = pytest.importorskip("psutil")
    reader = HostReader(psutil, os.getpid())
    reader.read(time.perf_counter_ns())
    time.sleep(0.01)
    row = dict(zip(STREAMS["host_samples"].names[2:], reader.read(time.perf_counter_ns())))
    assert len(row) == len(STREAMS["host_samples"].names) - 2
    assert row["rss_bytes"] > 0 and row["num_threads"] >= 1 and row["cpu_percent"] >= 0 and row["cpu_user_s"] > 0


def test_the_sampler_process_never_reads_half_a_step():
    """The engine writes step after step into the cell while another process reads it as the sampler does:
    every read is a step that was written, in order. (Packed with struct.pack_into, about one read in 10,000
    saw the zero-filled cell between the two halves of a write: step 0 in a run at step 30.)"""
    cell = StepCell()
    first = 1_000
    code = f"""
import os, sys, time
sys.path.insert(0, {os.path.dirname(sampler_process.__file__)!r})
from sampler_process import NO_STEP, map_step_cell
_, value = map_step_cell(os.open({cell.path!r}, os.O_RDWR))
bad, last, reads = [], NO_STEP, 0
print("ready", flush=True)
end = time.monotonic() + 1.0
while time.monotonic() < end:
    for _ in range(1000):
        step = value.value
        if step != NO_STEP and (step < {first} or step < last):
            bad.append((last, step))
        last = step
    reads += 1000
print(reads, bad[:5], flush=True)
"""
    try:
        proc = subprocess.Popen([sys.executable, "-I", "-c", code], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline() == "ready\n"
        step = first
        while proc.poll() is None:
            for _ in range(1000):
                cell("step", "B", 0, {"step": step})
                step += 1
        reads, bad = proc.stdout.read().split(" ", 1)
        assert int(reads) > 100_000 and bad.strip() == "[]"
    finally:
        cell.close()


def test_the_sampler_process_ends_when_the_engine_process_dies(tmp_path):
    """The engine's process spawns the sampler and dies without a word: end of stdin ends the sampler."""
    pytest.importorskip("psutil")
    cell = StepCell()
    code = f"""
import subprocess, sys, time, os
proc = subprocess.Popen([sys.executable, "-I", {sampler_process.__file__!r}, "--run-dir", {str(tmp_path)!r},
    "--pid", str(os.getpid()), "--hz", "200", "--step-file", {cell.path!r}], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
proc.stdout.readline()
proc.stdin.write(b"g"); proc.stdin.flush()
print(proc.pid, flush=True)
time.sleep(0.3)
os._exit(0)
"""
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout
        pid = int(out.split()[0])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.05)
        assert not _alive(pid)
        lines = (tmp_path / "host_samples.jsonl").read_text().splitlines()
        assert sum(len(json.loads(line)) for line in lines) >= 10  # ~60 samples in 0.3 s at 200 Hz
    finally:
        cell.close()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False


def test_gpu_reader_reports_unsupported_fields_as_null():
    """NVML cannot run on this CPU machine: a stand-in module with pynvml's own error classes and constants."""
    pynvml = pytest.importorskip("pynvml")
    nvml = types.SimpleNamespace(**{k: getattr(pynvml, k) for k in dir(pynvml) if k.startswith("NVML")})

    def not_supported(*args):
        raise pynvml.NVMLError_NotSupported(pynvml.NVML_ERROR_NOT_SUPPORTED)

    calls = []
    nvml.nvmlDeviceGetHandleByIndex = lambda i: f"gpu{i}"
    nvml.nvmlDeviceGetName = lambda h: "Stand-in GPU"
    nvml.nvmlDeviceGetUtilizationRates = lambda h: calls.append("util") or types.SimpleNamespace(gpu=0, memory=7)
    nvml.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(used=2**30)
    nvml.nvmlDeviceGetPowerUsage = not_supported
    nvml.nvmlDeviceGetClockInfo = lambda h, clock: {nvml.NVML_CLOCK_SM: 1980, nvml.NVML_CLOCK_MEM: 2619}[clock]
    nvml.nvmlDeviceGetTemperature = lambda h, sensor: 41
    nvml.nvmlDeviceGetPcieThroughput = lambda h, which: 3
    reader = GpuReader(nvml, 0)
    columns = STREAMS["gpu_samples"].names[2:]
    first = dict(zip(columns, reader.read(10**9)))
    assert first == {"gpu_util_pct": 0, "mem_util_pct": 7, "mem_used_bytes": 2**30, "power_w": None,
                     "sm_clock_mhz": 1980, "mem_clock_mhz": 2619, "temperature_c": 41,
                     "pcie_rx_bytes_s": 3072, "pcie_tx_bytes_s": 3072}  # fmt: skip
    assert reader.unsupported == {"power_w"} and calls == ["util"]  # one NVML call for both utilizations
    second = dict(zip(columns, reader.read(10**9 + 1)))
    assert second["pcie_rx_bytes_s"] is None and second["gpu_util_pct"] == 0  # a real 0 stays 0


def test_nvtx_is_a_noop_without_the_package(make_llm, tmp_path, monkeypatch):
    llm = make_llm(num_kv_blocks=64)
    monkeypatch.setitem(sys.modules, "nvtx", None)  # import nvtx -> ImportError
    with attach(llm.engine, "nvtx", tmp_path / "run") as session:
        assert set(llm.engine.hooks.subscribed()) == {"step", "handover"}  # the session's own (step index, flush timing): no NVTX subscriber
        llm.generate(prompts_of(1, 8), greedy(2))
    info = read_manifest(session.run_dir)["probes"]["details"]["nvtx"]
    assert info["available"] is False and "nvtx package is not installed" in info["reason"]


def test_nvtx_without_a_tool_attached_subscribes_nothing(make_llm, tmp_path):
    """No NVTX tool (nsys) in this process: nvtx's domain is a dummy, so the probe costs the engine nothing.
    With a tool, tests/gpu/test_nsys.py checks the ranges in nsys's own report."""
    pytest.importorskip("nvtx")
    llm = make_llm(num_kv_blocks=64)
    layers = llm.engine.model.model.layers
    with attach(llm.engine, "nvtx", tmp_path / "run", ProbesConfig(nvtx_layers=True)) as session:
        assert set(llm.engine.hooks.subscribed()) == {"step", "handover"}  # the session's own only
        assert all(not layer._forward_pre_hooks for layer in layers)
        llm.generate(prompts_of(2, 8), greedy(3))
    info = read_manifest(session.run_dir)["probes"]["details"]["nvtx"]
    assert info["available"] and not info["profiler_attached"] and not info["ranges"] and not info["layer_ranges"]
    assert "no NVTX tool" in info["reason"] and info["cuda_profiler_range"] is False


# -- the run directory -----------------------------------------------------------------------
def test_streams_reach_the_disk_while_running_and_torn_lines_are_skipped(tmp_path):
    writer = RunWriter(tmp_path / "run", {"note": "test"}, flush_interval_s=0.02)
    writer.start()
    tokens = writer.stream("tokens")
    for i in range(5):
        tokens.rows.append((i, 0, "r", i, 100 + i))
    deadline = time.monotonic() + 5
    while len(list(iter_stream(tmp_path / "run", "tokens"))) < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [r["index"] for r in read_stream(tmp_path / "run", "tokens")] == list(range(5))  # before close
    assert read_manifest(tmp_path / "run")["status"] == "running"
    manifest = writer.close("completed")
    assert manifest["streams"]["tokens"]["rows"] == 5
    with open(tmp_path / "run" / "tokens.jsonl", "a") as fh:
        fh.write('[[9,0,"r",9,1')  # a crash mid-write
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rows = read_stream(tmp_path / "run", "tokens")
    assert len(rows) == 5 and "ignored 1 unreadable line" in str(caught[0].message)
    with pytest.raises(FileExistsError):
        RunWriter(tmp_path / "run", {})

    big = RunWriter(tmp_path / "big", {})
    big.stream("gc").rows.extend((i, 1, 0, 0, 0, i, False, "t") for i in range(2 * ROWS_PER_LINE + 1))
    big.close("completed")
    assert len((tmp_path / "big" / "gc.jsonl").read_text().splitlines()) == 1 + 3  # header + 3 bounded lines
    assert [r["t_ns"] for r in read_stream(tmp_path / "big", "gc")] == list(range(2 * ROWS_PER_LINE + 1))


def _wait_for_rows(run_dir, stream: str, n: int) -> int:
    deadline = time.monotonic() + 10
    while (count := len(list(iter_stream(run_dir, stream)))) < n and time.monotonic() < deadline:
        time.sleep(0.01)
    return count


def test_the_encoder_process_writes_and_the_writer_outlives_its_death(tmp_path):
    np = pytest.importorskip("numpy")
    run = tmp_path / "run"
    writer = RunWriter(run, {}, flush_interval_s=30)  # only packs after forwards, and close, write
    writer.start()
    assert writer.encoder is not None and writer.encoder.proc.poll() is None
    gc_rows = writer.stream("gc").rows
    gc_rows.extend((i, 1, 0, 0, 0, i, False, "t") for i in range(3))
    gc_rows.append((3, np.int64(7), 0, 0, 0, 3, False, lambda: 0))  # pickle cannot carry the lambda
    writer.on_handover("handover", "i", time.perf_counter_ns(), {})
    assert _wait_for_rows(run, "gc", 4) == 4
    writer.encoder.proc.kill()
    writer.encoder.proc.wait()
    gc_rows.extend((i, 1, 0, 0, 0, i, False, "t") for i in range(4, 6))
    time.sleep(0.1)  # the next pack is due
    writer.on_handover("handover", "i", time.perf_counter_ns(), {})  # packed for a dead encoder: written here
    assert _wait_for_rows(run, "gc", 6) == 6 and writer.encoder is None
    gc_rows.append((6, 1, 0, 0, 0, 6, False, "t"))
    manifest = writer.close("completed")
    rows = read_stream(run, "gc")
    assert [r["t_ns"] for r in rows] == list(range(7)) and rows[3]["dur_ns"] == 7 and rows[3]["thread"].startswith("<function")
    assert manifest["writer"]["encoder"] == "flusher thread"
    assert "died during the run" in manifest["writer"]["error"]


def test_rows_are_packed_after_forwards_and_flushed_without_them(tmp_path):
    """A forward's launch ('handover') packs the new rows on the engine thread when due, at most every
    PACK_EVERY_S, and the writer thread sends them; without forwards the interval still flushes."""
    run = tmp_path / "run"
    writer = RunWriter(run, {}, flush_interval_s=30)  # the interval alone would not flush during this test
    writer.start()
    rows = writer.stream("gc").rows
    rows.append((1, 1, 0, 0, 0, 1, False, "t"))
    time.sleep(0.05)
    assert len(list(iter_stream(run, "gc"))) == 0
    writer.on_handover("handover", "i", time.perf_counter_ns(), {})
    assert rows == [] and writer.packs_after_forward == 1  # taken and pickled on the calling thread
    assert _wait_for_rows(run, "gc", 1) == 1
    rows.append((2, 1, 0, 0, 0, 2, False, "t"))
    writer.on_handover("handover", "i", time.perf_counter_ns(), {})  # too soon after the last pack: not due
    assert len(rows) == 1 and writer.packs_after_forward == 1
    time.sleep(0.1)  # PACK_EVERY_S later it is due again
    writer.on_handover("handover", "i", time.perf_counter_ns(), {})
    assert _wait_for_rows(run, "gc", 2) == 2 and writer.packs_after_forward == 2
    assert writer.close("completed")["writer"]["packs_after_forward"] == 2

    cpu = RunWriter(tmp_path / "cpu", {}, flush_interval_s=30, pack_after_forward=False)  # nothing to hide behind
    cpu.start()
    cpu.stream("gc").rows.append((1, 1, 0, 0, 0, 1, False, "t"))
    cpu.on_handover("handover", "i", time.perf_counter_ns(), {})  # wakes the writer thread, which packs
    assert _wait_for_rows(tmp_path / "cpu", "gc", 1) == 1 and cpu.packs_after_forward == 0
    assert cpu.close("completed")["writer"]["packer"] == "writer thread"

    quiet = RunWriter(tmp_path / "quiet", {}, flush_interval_s=0.05)  # no forwards: the writer thread flushes
    quiet.start()
    quiet.stream("gc").rows.append((1, 1, 0, 0, 0, 1, False, "t"))
    assert _wait_for_rows(tmp_path / "quiet", "gc", 1) == 1 and quiet.packs_after_forward == 0
    quiet.close("completed")


def test_the_encoder_writes_what_it_was_sent_when_the_engine_process_dies(tmp_path):
    code = f"""
import os, sys, time
from traceinfer.rundir.writer import RunWriter
w = RunWriter({str(tmp_path / "run")!r}, {{}}, flush_interval_s=60)
w.start()
w.stream("tokens").rows.extend((i, 0, "r", i, 100 + i) for i in range(1000))
w.flush()
os._exit(3)   # no close: a crash
"""
    proc = subprocess.run([sys.executable, "-c", code], timeout=60)
    assert proc.returncode == 3
    assert _wait_for_rows(tmp_path / "run", "tokens", 1000) == 1000
    assert read_manifest(tmp_path / "run")["status"] == "running"


def test_manifest_describes_the_run(make_llm, tmp_path):
    llm = make_llm(num_kv_blocks=64)
    with attach(llm.engine, "default", tmp_path / "run", manifest={"workload": {"name": "t"}}) as session:
        llm.generate(prompts_of(1, 8), greedy(2))
    m = read_manifest(session.run_dir)
    assert m["format"] == "traceinfer-run" and m["status"] == "completed" and m["error"] is None
    assert m["workload"] == {"name": "t"} and m["engine"]["num_kv_blocks"] == 64
    # the kernel choices the engine was built with (on CPU: the torch paths, no graphs)
    assert m["engine"]["kernels"] == {"fuse_kv_store": False, "splitk": False, "decode_longest_first": True,
                                      "cuda_graph_batch_sizes": [], "piecewise_graph_tokens": []}  # fmt: skip
    packages = m["packages"]
    assert "python" in packages and packages["torch"] and packages["torch_runtime"] == str(torch.__version__)
    assert packages["torch_runtime"].startswith(packages["torch"])  # the runtime adds a build tag, if any
    assert packages["cuda"] == torch.version.cuda
    assert m["clock"]["t0_ns"] == m["timing"]["t0_ns"] and m["timing"]["wall_s"] > 0
    assert m["probes"]["enabled"] == list(PRESETS["default"]) and m["probes"]["sample_hz"] == 20.0
    assert set(m["probes"]["details"]) == set(PRESETS["default"])
    assert "probe_threads_cpu_s" in m["probes"]["cost"] and m["probes"]["cost"]["encoder_cpu_s"] > 0
    assert m["writer"]["encoder"] == "process" and m["writer"]["error"] is None
    for name, s in m["streams"].items():
        assert s["columns"] == list(STREAMS[name].names) and s["rows"] == len(read_stream(session.run_dir, name))


def test_temporary_run_directory_is_removed(make_llm):
    llm = make_llm(num_kv_blocks=64)
    session = attach(llm.engine, "all")
    path = session.run_dir
    llm.generate(prompts_of(1, 8), greedy(2))
    session.close()
    assert not path.exists()


def test_failed_and_interrupted_sessions_say_so(make_llm, tmp_path):
    llm = make_llm(num_kv_blocks=64)
    with pytest.raises(KeyboardInterrupt), attach(llm.engine, "steps", tmp_path / "a"):
        raise KeyboardInterrupt
    assert read_manifest(tmp_path / "a")["status"] == "interrupted"
    with pytest.raises(RuntimeError), attach(llm.engine, "steps", tmp_path / "b"):
        raise RuntimeError("boom")
    m = read_manifest(tmp_path / "b")
    assert m["status"] == "failed" and m["error"] == "RuntimeError: boom"


# -- Perfetto --------------------------------------------------------------------------------
def test_trace_problems_catches_bad_traces():
    good = {"traceEvents": [{"name": "a", "ph": "X", "ts": 0, "dur": 5, "pid": 1, "tid": 1},
                            {"name": "b", "ph": "X", "ts": 1, "dur": 2, "pid": 1, "tid": 1}]}  # fmt: skip
    assert trace_problems(good) == []
    overlap = {"traceEvents": good["traceEvents"] + [{"name": "c", "ph": "X", "ts": 4, "dur": 5, "pid": 1, "tid": 1}]}
    assert "overlaps" in trace_problems(overlap)[0]
    unmatched = {"traceEvents": [{"name": "a", "ph": "B", "ts": 0, "pid": 1, "tid": 1}]}
    assert trace_problems(unmatched) == ["track (1, 1): 1 B without E"]
    assert trace_problems({"traceEvents": [{"name": "c", "ph": "C", "ts": 0, "pid": 1, "tid": 1, "args": {"v": None}}]})


def test_perfetto_trace_validates_and_merges_every_stream(make_llm, tmp_path):
    llm = make_llm(num_kv_blocks=16, block_size=4)
    options = ProbesConfig(sample_hz=200, stack_hz=200)
    with attach(llm.engine, "all", tmp_path / "run", options) as session:
        llm.generate(prompts_of(4, 10, seed=5), greedy(12))  # preempts in a 16-block cache
        gc.collect()
    path = write_trace(build_trace(open_run(session.run_dir)), tmp_path / "trace.json")
    trace = json.loads(path.read_text())
    assert trace_problems(trace) == []
    events = trace["traceEvents"]
    names = {e["name"] for e in events}
    assert {"step", "schedule", "prepare", "forward (eager)", "handover", "sample", "postprocess"} <= names
    assert {"KV blocks", "queues", "batch tokens", "process CPU %", "RSS MB", "gc gen2"} <= names
    assert {"queued", "prefill", "decode", "preempted"} <= names
    threads = {e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] == "thread_name" and e["pid"] == 3}
    assert "MainThread" in threads and "traceinfer-flusher" in threads
    assert min(e["ts"] for e in events if e["ph"] != "M") >= 0


def test_packed_token_rows_expand_per_token_and_count_as_events(tmp_path):
    writer = RunWriter(tmp_path / "run", {"note": "test"})
    tokens = writer.stream("tokens")
    tokens.rows.append((10, 3, ["a", "b", "c"], [0, 5, 1], [7, 8, 9]))
    tokens.rows.append((11, 4, "a", 1, 6))
    manifest = writer.close("completed")
    assert manifest["streams"]["tokens"]["rows"] == 4
    assert [tuple(r.values()) for r in read_stream(tmp_path / "run", "tokens")] == [
        (10, 3, "a", 0, 7), (10, 3, "b", 5, 8), (10, 3, "c", 1, 9), (11, 4, "a", 1, 6),
    ]  # fmt: skip
