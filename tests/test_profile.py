"""``traceinfer profile`` and its workloads, on synthetic:tiny (CPU): a whole run, bad input, and Ctrl-C."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.probe_checks import trace_problems
from traceinfer import open_run
from traceinfer.analysis.floor import ModelCost, physical_floor, run_floor
from traceinfer.cli import main as cli_main
from traceinfer.config import WorkloadConfig
from traceinfer.errors import ConfigError
from traceinfer.probes import PRESETS
from traceinfer.rundir import STREAMS, read_manifest, read_stream
from traceinfer.workloads import SPECS, BenchSpec, ChatbotSpec, bench_workload, chatbot_workload, make

REPO = Path(__file__).resolve().parents[1]
CUDA_CHATBOT, CPU_CHATBOT = SPECS["chatbot"]
CPU_BENCH = SPECS["bench"][1]


def main(argv: list[str]) -> int:
    return cli_main(["profile", *argv])


@pytest.fixture(autouse=True)
def flush_denormals():
    """See tests/test_probes.py: synthetic weights on CPU are ~50x slower with float32 denormals."""
    torch.set_flush_denormal(True)
    yield
    torch.set_flush_denormal(False)


# -- workloads -------------------------------------------------------------------------------
def test_chatbot_workload_is_seeded_and_shaped_like_a_chat():
    prompts, params = chatbot_workload(CUDA_CHATBOT)
    assert (prompts, params) == chatbot_workload(CUDA_CHATBOT)
    assert prompts != chatbot_workload(ChatbotSpec(seed=1))[0]
    assert len(prompts) == 64
    assert 110 <= sum(map(len, prompts)) / 64 <= 146  # about 128 prompt tokens
    assert 220 <= sum(p.max_tokens for p in params) / 64 <= 292  # about 256 output tokens
    system = prompts[0][:32]
    assert all(p[:32] == system for p in prompts)  # a shared system prompt for the prefix cache
    assert all(p.ignore_eos and p.temperature == 0.7 for p in params)
    assert all(0 <= t <= 10000 for p in prompts for t in p)
    with pytest.raises(ConfigError, match="system_prompt_len"):
        ChatbotSpec(system_prompt_len=100)


def test_make_picks_the_size_by_device_and_applies_the_config():
    assert len(make(WorkloadConfig(name="chatbot"), on_cuda=False).prompts) == CPU_CHATBOT.num_requests
    assert len(make(WorkloadConfig(name="chatbot"), on_cuda=True).prompts) == CUDA_CHATBOT.num_requests
    bench = make(WorkloadConfig(name="bench", num_requests=3), on_cuda=False)
    assert bench.prompts == bench_workload(dataclasses.replace(CPU_BENCH, num_requests=3))[0]
    assert bench.spec["kind"] == "BenchSpec" and bench.spec["num_requests"] == 3
    with pytest.raises(ConfigError, match="workload chatbot has no parameter min_input_len; its parameters: "):
        make(WorkloadConfig(name="chatbot", min_input_len=3), on_cuda=False)
    with pytest.raises(ConfigError, match="unknown workload 'nope'; workloads: chatbot, bench"):
        make(WorkloadConfig(name="nope"), on_cuda=False)
    assert BenchSpec() == SPECS["bench"][0]  # nano-vLLM's, on a GPU


# -- a whole run -----------------------------------------------------------------------------
def test_profile_writes_a_complete_run_directory(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["--workload", "chatbot", "--num-requests", "3", "--probes", "all", "--out", str(out),
                 "--num-kv-blocks", "64", "--sample-hz", "50"])  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert f"run directory: {out}" in printed and "ui.perfetto.dev" in printed and "probes cost" in printed

    m = read_manifest(out)
    assert m["status"] == "completed" and m["workload"]["name"] == "chatbot" and m["workload"]["num_requests"] == 3
    assert m["engine"]["model"].startswith("synthetic:tiny") and m["probes"]["enabled"] == list(PRESETS["all"])
    assert m["results"]["requests"] == 3 and m["results"]["output_tokens"] > 0
    o = m["overhead"]
    assert o["throughput_ratio"] == pytest.approx(o["probed_output_tok_s"] / o["baseline_output_tok_s"])
    assert o["probed_output_tok_s"] == m["results"]["output_tok_s"]
    assert m["command"] == ["traceinfer", "profile", "--workload", "chatbot", "--num-requests", "3", "--probes", "all",
                            "--out", str(out), "--num-kv-blocks", "64", "--sample-hz", "50"]  # as typed
    assert m["warmup"] == "workload"
    assert "warm-up: the workload once" in printed
    assert m["handover"]["steps"] == m["results"]["engine_steps"] and m["handover"]["exposed_steps"] is None  # CPU
    assert f"probe handover: median {m['handover']['median_us']:,.0f} us per step" in printed
    for name in ("steps", "requests", "tokens", "kv_events", "gc", "host_samples", "thread_samples"):
        assert name in m["streams"], name
    run = open_run(out)
    assert len(run.frame("tokens")) == m["results"]["output_tokens"] == len(read_stream(out, "tokens"))
    # the floor from the run directory alone equals the floor of the workload it ran
    floor = run_floor(m, run.frame("requests"), run.frame("steps"))
    workload = make(WorkloadConfig(name="chatbot", num_requests=3), on_cuda=False)
    expected = physical_floor(ModelCost.from_shapes(m["engine"]["model_shapes"]), list(map(len, workload.prompts)),
                              [p.max_tokens for p in workload.params], m["results"]["engine_steps"],
                              m["device_rates"]["bandwidth_bytes_per_s"], m["device_rates"]["matmul_flops_per_s"])  # fmt: skip
    assert floor == expected and floor.output_tokens == m["results"]["output_tokens"]
    assert all(m["streams"][name]["parquet"] == f"{name}.parquet" for name in run.streams)
    assert trace_problems(json.loads((out / "trace.json").read_text())) == []

    assert main(["--out", str(out), "--num-kv-blocks", "64"]) == 2  # never overwrites a run
    assert "already holds a run" in capsys.readouterr().err


def test_profile_rejects_an_unknown_probe_before_loading_a_model(tmp_path, capsys):
    assert main(["--probes", "steps,nope", "--out", str(tmp_path / "r")]) == 2
    assert "unknown probe 'nope'" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_sigint_leaves_a_readable_run_directory(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "traceinfer.cli", "profile", "--workload", "chatbot", "--num-requests", "256",
           "--probes", "default", "--out", str(out), "--num-kv-blocks", "512", "--no-baseline", "--no-warmup"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        tokens = out / STREAMS["tokens"].file
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if tokens.exists() and len(tokens.read_text().splitlines()) >= 2:  # header + one flushed batch
                break
            time.sleep(0.05)
        assert proc.poll() is None, f"the run ended before it could be interrupted:\n{proc.stdout.read()}"
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, output
    m = read_manifest(out)
    assert m["status"] == "interrupted" and m["results"] is None, output
    for name, s in m["streams"].items():
        rows = read_stream(out, name)
        assert len(rows) == s["rows"], name
    assert len(read_stream(out, "tokens")) > 0
    assert m["probes"]["details"]["steps"]["rows"] == len(read_stream(out, "steps"))
    assert trace_problems(json.loads((out / "trace.json").read_text())) == []
