"""`traceinfer top`, the real command driven in tmux (send-keys, capture-pane): live figures that match the
run's own streams, the keys (p, r, q) and the terminal restored, --attach to a process that exits, and bad
input as one line. Skips, saying why, without tmux (Debian: apt-get install tmux)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from traceinfer import open_run
from traceinfer.analysis import requests as request_analysis
from traceinfer.rundir import read_manifest

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
TOP = f"{shlex.quote(sys.executable)} -m traceinfer.cli top"


@pytest.fixture
def tmux():
    """A detached tmux session (160x60) that runs one shell command; yields (run, capture, keys)."""
    if not shutil.which("tmux"):
        pytest.skip("the top tests drive the real dashboard in tmux (Debian: apt-get install tmux)")
    name = f"traceinfer-test-{uuid.uuid4().hex[:8]}"
    started = []

    def run(command: str) -> None:
        # after the command: its exit status and whether the terminal is back in canonical mode
        # (COLUMNS and LINES reach the pane from the test process's environment: the pane's own size should rule)
        shell = f"unset COLUMNS LINES; cd {shlex.quote(str(REPO))}; {command}; echo EXIT=$?; stty -a | grep -o -- '-\\?icanon'; sleep 120"
        env = [arg for k in ("PYTHONPATH", "OMP_NUM_THREADS") for arg in ("-e", f"{k}={ENV[k]}")]
        subprocess.run(["tmux", "new-session", "-d", "-s", name, "-x", "160", "-y", "60", *env, shell], check=True)
        started.append(name)

    def capture() -> str:
        return subprocess.run(["tmux", "capture-pane", "-p", "-t", name], capture_output=True, text=True).stdout

    def keys(*k: str) -> None:
        subprocess.run(["tmux", "send-keys", "-t", name, *k], check=True)

    yield run, capture, keys
    if started:
        subprocess.run(["tmux", "kill-session", "-t", name], capture_output=True)


def wait_for(capture, pattern: str, timeout: float = 180.0) -> str:
    deadline = time.monotonic() + timeout
    screen = ""
    while time.monotonic() < deadline:
        screen = capture()
        if re.search(pattern, screen):
            return screen
        time.sleep(0.1)
    raise AssertionError(f"{pattern!r} never appeared; the screen:\n{screen}")


def figure(screen: str, pattern: str) -> float:
    m = re.search(pattern, screen)
    assert m, f"{pattern!r} not on the screen:\n{screen}"
    return float(m.group(1))


WORKLOAD = "--workload chatbot --num-requests 10 --output-len 48 --rate 5 --num-kv-blocks 96 --no-warmup"


def test_top_shows_live_figures_that_match_the_runs_streams_and_obeys_its_keys(tmux, tmp_path):
    run, capture, keys = tmux
    out = tmp_path / "run"
    run(f"{TOP} {WORKLOAD} --out {shlex.quote(str(out))}")
    live = wait_for(capture, r"status running.*\n(.*\n)*.*requests\s+running [1-9]")
    assert figure(live, r"output\s+([\d.]+) tok/s") >= 0
    screen = wait_for(capture, r"workload: finished")
    time.sleep(1.5)  # a few more redraws: the refresh rate is measured over the last ones
    screen = capture()
    assert figure(screen, r"refresh ([\d.]+)/s") >= 4.0

    keys("p")
    paused = wait_for(capture, r"PAUSED: P RESUMES")
    keys("p", "r")
    wait_for(capture, r"windows reset")
    keys("q")
    after = wait_for(capture, r"EXIT=\d+")
    assert "EXIT=0" in after and re.search(r"^icanon", after, re.M), after  # the terminal restored
    assert "Traceback" not in after

    m = read_manifest(out)
    assert m["status"] == "completed" and "telemetry" in m["probes"]["enabled"]
    rundir = open_run(out)
    tokens, steps, requests, gc_rows = (rundir.frame(n) for n in ("tokens", "steps", "requests", "gc"))
    finished = (requests["event"] == "finished").sum()
    assert figure(screen, r"finished (\d+)\s+arrived") == finished == 10
    assert figure(screen, r"output tokens (\d+)") == len(tokens)
    assert figure(screen, r"prompt tokens (\d+)") == requests["prompt_len"].sum()
    assert figure(screen, r"steps\s+(\d+) in all") == len(steps)
    assert figure(screen, r"preempted (\d+)") == (requests["event"] == "preempted").sum()
    assert figure(screen, r"GC\s+(\d+) collections") == len(gc_rows)
    metrics = request_analysis.request_metrics(requests, tokens)
    assert figure(screen, r"TTFT\s+([\d.]+)") == pytest.approx(metrics["ttft_ms"].median(), abs=0.006)
    assert figure(screen, r"E2E\s+([\d.]+)") == pytest.approx(metrics["e2e_ms"].median(), abs=0.006)
    assert "GPU        none: the engine runs on cpu" in screen  # no GPU: it says so and goes on
    assert "traceinfer-top-engine" in screen  # per-thread CPU
    # the windows were reset while paused at the end: nothing since
    assert re.search(r"TTFT\s+-\s+-\s+0", paused) is None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_top_attached_to_a_process_that_exits_says_so_and_keeps_working(tmux, tmp_path):
    run, capture, keys = tmux
    port = free_port()
    profile = subprocess.Popen(
        [sys.executable, "-m", "traceinfer.cli", "profile", "--out", str(tmp_path / "run"),
         *WORKLOAD.replace("--no-warmup", "").split(), "--report-formats", "none", "--no-perfetto", "--no-progress",
         "--telemetry", str(port), "--telemetry-linger", "2"],
        cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        run(f"{TOP} --attach http://127.0.0.1:{port}")
        # bound before the model loads, the endpoint answers at once: 503 until the profiled run starts
        wait_for(capture, r"answered 503: no telemetry yet: the engine is loading or warming up")
        screen = wait_for(capture, r"status (running|finished)")
        assert "requests   running" in screen and f"http://127.0.0.1:{port}" in screen
        printed = profile.communicate(timeout=240)[0]
    finally:
        if profile.poll() is None:
            profile.kill()
    assert profile.returncode == 0, printed
    assert "Traceback" not in printed and "Error" not in printed, printed  # a client that left is no error
    gone = wait_for(capture, r"the watched process has exited")
    assert "status finished" in gone  # the last figures stay on the screen
    m = read_manifest(tmp_path / "run")
    assert figure(gone, r"output tokens (\d+)") == m["results"]["output_tokens"]
    keys("q")
    after = wait_for(capture, r"EXIT=\d+")
    assert "EXIT=0" in after and re.search(r"^icanon", after, re.M), after


def test_a_silent_endpoint_slows_neither_the_redraws_nor_the_keys(tmux):
    """A port that accepts connections and never answers (a process too busy to serve): every fetch waits out
    its timeout, on the fetch thread; the screen still redraws at 4/s and q still quits at once."""
    run, capture, keys = tmux
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        port = silent.getsockname()[1]
        run(f"{TOP} --attach http://127.0.0.1:{port}")
        wait_for(capture, rf"waiting for http://127.0.0.1:{port}: timed out")
        time.sleep(2.0)  # the refresh rate is measured over the last redraws
        assert figure(capture(), r"refresh ([\d.]+)/s") >= 4.0
        t = time.monotonic()
        keys("q")
        after = wait_for(capture, r"EXIT=\d+")
        assert "EXIT=0" in after and time.monotonic() - t < 3.0


@pytest.mark.parametrize("args, message", [
    (["--attach", "ftp://127.0.0.1:1"], "--attach 'ftp://127.0.0.1:1': scheme 'ftp' is not served (http only)"),
    (["--attach", "http://127.0.0.1"], "--attach 'http://127.0.0.1': no host and port"),
    (["--attach", "9400", "--workload", "chatbot"], "--attach watches another process: it takes no --workload"),
    (["--telemetry", "10.0.0.1:9400"], "10.0.0.1 is not a loopback address"),
    (["--refresh-hz", "0"], "--refresh-hz must be in [0.5, 60], got 0.0"),
])  # fmt: skip
def test_bad_input_is_one_line(args, message):
    proc = subprocess.run([sys.executable, "-m", "traceinfer.cli", "top", *args], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and message in proc.stderr, proc.stderr


def test_attach_without_a_terminal_and_nothing_listening_waits_and_says_why():
    port = free_port()
    proc = subprocess.run([sys.executable, "-m", "traceinfer.cli", "top", "--attach", str(port), "--duration", "1"],
                          cwd=REPO, env=ENV, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert f"no figures (waiting for http://127.0.0.1:{port}" in proc.stdout
