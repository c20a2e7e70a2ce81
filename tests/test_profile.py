"""``traceinfer profile`` on synthetic:tiny (CPU): a whole run and its summary, progress, the probes' cost,
and the faults a user meets (bad --out, Ctrl-C, SIGTERM, a full disk, a busy machine)."""

from __future__ import annotations

import glob
import json
import os
import pty
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.probe_checks import trace_problems
from traceinfer import open_run
from traceinfer.analysis import requests as request_analysis
from traceinfer.analysis.floor import ModelCost, physical_floor, run_floor
from traceinfer.analysis.latency import summarize
from traceinfer.analysis.overhead import describe_overhead
from traceinfer.analysis.summary import run_summary
from traceinfer.cli import main as cli_main
from traceinfer.config import WorkloadConfig
from traceinfer.probes import PRESETS
from traceinfer.render.summary_text import format_summary
from traceinfer.rundir import STREAMS, read_manifest, read_stream
from traceinfer.workloads import make

REPO = Path(__file__).resolve().parents[1]
SMALL = ["--num-requests", "3", "--output-len", "16", "--num-kv-blocks", "64"]


def main(argv: list[str]) -> int:
    return cli_main(["profile", *argv])


def _sigint_as_at_a_terminal() -> None:
    # a shell without job control starts background commands with SIGINT ignored, and Python keeps an
    # ignored SIGINT ignored: the child gets the disposition a terminal's Ctrl-C would meet
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def profile_process(out: Path, *args: str, **popen) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "traceinfer.cli", "profile", "--out", str(out), *args]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, cwd=REPO, env=env, text=True, preexec_fn=_sigint_as_at_a_terminal, **popen)


@pytest.fixture(autouse=True)
def flush_denormals():
    """See tests/test_probes.py: synthetic weights on CPU are ~50x slower with float32 denormals."""
    torch.set_flush_denormal(True)
    yield
    torch.set_flush_denormal(False)


# -- a whole run -----------------------------------------------------------------------------
def test_profile_writes_a_complete_run_directory_and_tells_its_story(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["--workload", "chatbot", *SMALL, "--probes", "all", "--out", str(out), "--sample-hz", "50",
            "--overhead-passes", "2"]  # fmt: skip
    code = main(argv)
    printed = capsys.readouterr().out
    assert code == 0, printed

    m = read_manifest(out)
    assert m["status"] == "completed" and m["workload"]["name"] == "chatbot" and m["workload"]["num_requests"] == 3
    assert m["engine"]["model"].startswith("synthetic:tiny") and m["probes"]["enabled"] == list(PRESETS["all"])
    assert m["results"]["requests"] == 3 and m["results"]["failed_requests"] == 0
    assert m["results"]["arrival"] == m["workload"]["arrival"] == "poisson"
    assert m["command"] == ["traceinfer", "profile", *argv]  # as typed
    assert m["warmup"] == "workload" and "warm-up: the workload, probes off" in printed
    assert "on a CPU: the CPU size of the workload" in printed
    for name in ("steps", "requests", "tokens", "kv_events", "gc", "host_samples", "thread_samples"):
        assert name in m["streams"], name
    load = m["host_load"]
    assert load["cpu_count"] == os.cpu_count() and load["torch_intra_op_threads"] == torch.get_num_threads()
    assert 0 <= load["other_processes_cpu_share"] <= 1 and isinstance(load["oversubscribed"], bool)

    # the summary printed is the run's own streams, analyzed
    run = open_run(out)
    summary = run_summary(m, {name: run.frame(name) for name in run.streams})
    assert "\n".join(format_summary(summary)) in printed
    tokens = run.frame("tokens")
    assert summary.output_tokens == len(tokens) == m["results"]["output_tokens"] == len(read_stream(out, "tokens"))
    metrics = request_analysis.request_metrics(run.frame("requests"), tokens)
    assert summary.latency_ms["ttft"] == summarize(metrics["ttft_ms"].tolist())
    assert summary.latency_ms["e2e"]["p99"] == pytest.approx(metrics["e2e_ms"].quantile(0.99))
    steps = run.frame("steps")
    assert summary.num_steps == len(steps) == m["results"]["engine_steps"]
    split = {share.name: share.total_ms for share in summary.step_split}
    assert split["schedule"] == pytest.approx(steps["schedule_ns"].sum() / 1e6)
    assert sum(split.values()) == pytest.approx(m["results"]["seconds"] * 1e3)  # the parts add up to the run
    assert summary.gc["count"] == len(run.frame("gc")) and summary.preemptions == steps["num_preempted"].sum()
    assert summary.prefix_hit_rate > 0  # chatbot's shared system prompt, requests arriving over time
    assert summary.cuda_graph["graph_steps"] == 0  # CPU: no graphs
    for line in ("throughput", "latency ms", "TTFT", "ITL", "E2E", "step time", "prefix cache hit rate", "KV cache", "GC"):
        assert line in printed, line

    # the probes' cost: interleaved passes, a median with its spread, never a lone pair presented as a figure
    o = m["overhead"]
    assert len(o["probed_output_tok_s"]) == len(o["off_output_tok_s"]) == 2 and "rotated each round" in o["method"]
    assert o["cost_pct"] == pytest.approx(100 * (1 - o["probed_median_tok_s"] / o["off_median_tok_s"]))
    assert o["resolved"] == (abs(o["cost_pct"]) > o["spread_pct"]) and describe_overhead(o) in printed

    floor = run_floor(m, run.frame("requests"), steps)  # the floor from the run directory alone
    workload = make(WorkloadConfig(name="chatbot", num_requests=3, output_len=16), on_cuda=False, vocab_size=16384)
    expected = physical_floor(ModelCost.from_shapes(m["engine"]["model_shapes"]), list(map(len, workload.prompts)),
                              [p.max_tokens for p in workload.params], m["results"]["engine_steps"],
                              m["device_rates"]["bandwidth_bytes_per_s"], m["device_rates"]["matmul_flops_per_s"])  # fmt: skip
    assert floor == expected and floor.output_tokens == m["results"]["output_tokens"]
    assert all(m["streams"][name]["parquet"] == f"{name}.parquet" for name in run.streams)
    assert trace_problems(json.loads((out / "trace.json").read_text())) == []
    assert "pip install nvtx" not in printed  # no NVTX advice on a CPU run
    assert f"traceinfer.open_run({str(out)!r})" in printed and "ui.perfetto.dev" in printed


def test_one_pair_is_not_presented_as_a_cost(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["--workload", "chatbot", *SMALL, "--out", str(out), "--overhead-passes", "1", "--no-warmup"]) == 0
    o = read_manifest(out)["overhead"]
    assert o["spread_pct"] is None and o["resolved"] is False
    assert "probe cost not resolved" in capsys.readouterr().out


def test_progress_is_a_live_line_on_a_terminal_and_plain_lines_in_a_log(tmp_path):
    args = ["--workload", "chatbot", *SMALL, "--output-len", "48"]
    proc = profile_process(tmp_path / "log", *args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    log, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, log
    assert "loading synthetic:tiny on cpu ..." in log and "profiled run ..." in log
    assert "probe cost not measured: on a CPU" in log and "overhead" not in read_manifest(tmp_path / "log")  # default
    assert "requests done" in log and "output tok/s" in log and "\x1b[" not in log  # plain lines, no escapes

    leader, follower = pty.openpty()
    proc = profile_process(tmp_path / "tty", *args, stdout=follower, stderr=follower)
    os.close(follower)
    screen = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        screen += chunk
    os.close(leader)
    assert proc.wait(timeout=300) == 0, screen.decode(errors="replace")
    text = screen.decode(errors="replace")
    assert "profiled run" in text and "requests done" in text and "\x1b[" in text  # redrawn in place


# -- bad input and faults --------------------------------------------------------------------
def test_bad_out_is_refused_before_the_model_loads(tmp_path, capsys):
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("the user's own")
    cases = [
        (tmp_path / "a-file", "is a file, not a directory for a run"),
        (tmp_path / "a-file" / "run", "is a file"),
        (Path("/sys/traceinfer-test/run"), "cannot write a run directory at /sys/traceinfer-test/run"),
        (tmp_path / "mine", "is not empty and holds no run"),
    ]
    for out, message in cases:
        assert main(["--out", str(out)]) == 2, out
        captured = capsys.readouterr()
        assert captured.err.startswith("traceinfer profile: error: --out: ") and message in captured.err
        assert captured.err.count("\n") == 1 and "loading" not in captured.out
    assert os.listdir(tmp_path / "mine") == ["notes.txt"]  # nothing written among the user's files


def test_profile_rejects_an_unknown_probe_before_loading_a_model(tmp_path, capsys):
    assert main(["--probes", "steps,nope", "--out", str(tmp_path / "r")]) == 2
    assert "unknown probe 'nope'" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def _run_until_tokens_flow(out: Path, *args: str) -> subprocess.Popen:
    proc = profile_process(out, "--workload", "chatbot", "--num-requests", "256", "--arrival", "offline",
                           "--probes", "default", "--num-kv-blocks", "512", "--overhead-passes", "0", "--no-warmup",
                           *args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    tokens = out / STREAMS["tokens"].file
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if tokens.exists() and len(tokens.read_text().splitlines()) >= 2:  # header + one flushed batch
            break
        time.sleep(0.05)
    assert proc.poll() is None, f"the run ended before it could be stopped:\n{proc.stdout.read()}"
    return proc


@pytest.mark.parametrize("sig, status, code", [(signal.SIGINT, "interrupted", 130), (signal.SIGTERM, "terminated", 143)])
def test_a_signal_leaves_a_readable_run_directory(tmp_path, sig, status, code):
    out = tmp_path / "run"
    cells = set(glob.glob("/dev/shm/traceinfer-step-*"))
    proc = _run_until_tokens_flow(out)
    try:
        proc.send_signal(sig)
        output, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == code, output
    m = read_manifest(out)
    assert m["status"] == status and m["results"] is None, output
    for name, s in m["streams"].items():
        assert len(read_stream(out, name)) == s["rows"], name
    assert len(read_stream(out, "tokens")) > 0
    assert m["probes"]["details"]["steps"]["rows"] == len(read_stream(out, "steps"))
    assert trace_problems(json.loads((out / "trace.json").read_text())) == []
    assert set(glob.glob("/dev/shm/traceinfer-step-*")) <= cells  # the sampler's shared step cell is gone
    assert "Traceback" not in output


def test_a_full_disk_stops_the_run_with_one_line_and_keeps_what_was_written(tmp_path):
    out = tmp_path / "run"
    proc = profile_process(out, "--workload", "chatbot", "--num-requests", "64", "--arrival", "offline", "--probes",
                           "default", "--num-kv-blocks", "512", "--overhead-passes", "0", "--no-warmup",
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    tokens, later = out / STREAMS["tokens"].file, out / STREAMS["kv_events"].file  # kv's header comes after tokens'
    deadline = time.monotonic() + 120
    while not later.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.001)
    tokens.unlink()
    tokens.symlink_to("/dev/full")  # every write to it fails with ENOSPC, as on a full disk
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 2, stdout + stderr
    assert stderr.count("\n") == 1 and "Traceback" not in stderr
    assert stderr.startswith(f"traceinfer profile: error: writing {tokens} failed: [Errno 28] No space left on device")
    m = read_manifest(out)
    assert m["status"] == "failed" and "No space left on device" in m["error"]
    assert m["writer"]["write_error"].startswith(f"writing {tokens} failed")
    assert len(open_run(out).frame("steps")) > 0  # what was flushed stays readable


def test_a_busy_machine_is_recorded_and_warned_about(tmp_path, capsys):
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 1)]
    try:
        time.sleep(0.5)
        assert main(["--workload", "chatbot", *SMALL, "--out", str(tmp_path / "run"), "--overhead-passes", "0",
                     "--no-warmup"]) == 0  # fmt: skip
    finally:
        for p in burners:
            p.kill()
            p.wait()
    load = read_manifest(tmp_path / "run")["host_load"]
    assert load["oversubscribed"] and load["other_processes_cpu_share"] > 0.25
    assert "warning: the machine was busy during the run" in capsys.readouterr().out


def test_a_small_vocabulary_checkpoint_runs_every_generated_workload(tmp_path, hf_checkpoint, capsys):
    """Token ids are drawn inside the model's vocabulary (a 512-token checkpoint; chatbot drew ids up to
    10,000 and failed before)."""
    path, _ = hf_checkpoint("qwen3")
    for name in ("chatbot", "prefix_share", "mixed"):
        out = tmp_path / name
        argv = ["--workload", name, "--model", str(path), "--num-requests", "3", "--out", str(out), "--no-warmup",
                "--probes", "requests", "--arrival", "offline"]  # fmt: skip
        assert main(argv) == 0, capsys.readouterr().err  # an id outside the vocabulary fails the command
        m = read_manifest(out)
        assert m["results"]["failed_requests"] == 0 and m["results"]["requests"] == 3
