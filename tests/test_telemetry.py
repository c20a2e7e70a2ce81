"""Telemetry: the probe's windows against the run directory's own streams, /metrics parsed with
prometheus_client's parser against a run's totals (the real `traceinfer profile --telemetry` as a
subprocess), and the endpoint's refusals (a non-loopback bind, a port in use, bad addresses)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from traceinfer import LLM, SamplingParams, open_run
from traceinfer.analysis import requests as request_analysis
from traceinfer.analysis.latency import percentile as np_percentile
from traceinfer.errors import ConfigError
from traceinfer.probes import attach
from traceinfer.rundir import read_manifest
from traceinfer.telemetry import METRICS, PREFIX, TelemetryServer, parse_address, parse_url
from traceinfer.telemetry.metrics import PHASES
from traceinfer.telemetry.windows import Histogram, percentile

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def flush_denormals():
    """See tests/test_probes.py: synthetic weights on CPU are ~50x slower with float32 denormals."""
    torch.set_flush_denormal(True)
    yield
    torch.set_flush_denormal(False)


@pytest.fixture(scope="module")
def llm():
    return LLM("synthetic:tiny", device="cpu", num_kv_blocks=48, block_size=16)


def metrics_of(text: str) -> dict[str, float]:
    """sample name + sorted labels -> value, parsed by prometheus_client's own parser."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[s.name + (f"{{{labels}}}" if labels else "")] = s.value
    return out


def get(url: str, timeout: float = 5.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read()


# -- pieces ------------------------------------------------------------------------------------
def test_percentile_and_histogram_agree_with_numpy_and_prometheus_semantics():
    values = [0.3, 0.001, 0.02, 5.0, 0.02, 0.7]
    for q in (0, 50, 90, 99, 100):
        assert percentile(values, q) == pytest.approx(np_percentile(values, q))
    h = Histogram((0.01, 0.02, 1.0))
    for v in values:
        h.observe(v)
    assert h.cumulative() == [(0.01, 1), (0.02, 3), (1.0, 5), (float("inf"), 6)]  # le: 0.02 counts in 0.02
    assert h.count == 6 and h.sum == pytest.approx(sum(values))


def test_metric_names_are_vllms_where_vllm_has_them():
    vllm = {"num_requests_running", "num_requests_waiting", "kv_cache_usage_perc", "prefix_cache_queries",
            "prefix_cache_hits", "num_preemptions", "prompt_tokens", "generation_tokens",
            "time_to_first_token_seconds", "inter_token_latency_seconds", "e2e_request_latency_seconds",
            "request_queue_time_seconds", "iteration_tokens_total"}  # fmt: skip
    assert vllm <= {n for n, m in METRICS.items() if m.vllm}
    assert {"step_time_seconds", "gpu_idle_perc", "gc_pause_seconds", "probe_handover_seconds"} <= set(METRICS)
    assert all(m.family.startswith("traceinfer:") for m in METRICS.values()) and PREFIX == "traceinfer:"


@pytest.mark.parametrize("text, allow, expected", [
    ("9400", False, ("127.0.0.1", 9400)), ("127.0.0.1:0", False, ("127.0.0.1", 0)),
    ("localhost:9400", False, ("localhost", 9400)), ("[::1]:9400", False, ("::1", 9400)),
    ("0.0.0.0:9400", True, ("0.0.0.0", 9400)),
])  # fmt: skip
def test_addresses(text, allow, expected):
    assert parse_address(text, allow) == expected


@pytest.mark.parametrize("text, message", [
    ("0.0.0.0:9400", "0.0.0.0 is not a loopback address"), ("10.1.2.3:80", "--telemetry-allow-remote"),
    ("example.com:9400", "not a loopback address"), ("abc", "PORT a number"), ("70000", "PORT must be in 0-65535"),
])  # fmt: skip
def test_the_endpoint_refuses_a_non_loopback_bind_unless_asked_and_bad_ports(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_address(text)


def test_attach_urls():
    assert parse_url("9400") == "http://127.0.0.1:9400"
    assert parse_url("localhost:9400") == "http://localhost:9400"
    assert parse_url("http://127.0.0.1:9400/") == "http://127.0.0.1:9400"
    for bad, message in (("ftp://x:1", "http only"), ("http://x", "no host and port"), ("http://x:99999", "out of range")):
        with pytest.raises(ConfigError, match=message):
            parse_url(bad)


def test_a_port_in_use_is_one_error_naming_it():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(ConfigError, match=f"127.0.0.1:{port}: the port is in use"):
            TelemetryServer(("127.0.0.1", port))


# -- the probe on a real engine, against the run directory's streams ---------------------------
def test_the_telemetry_probe_matches_the_run_directorys_streams(llm, tmp_path):
    prompts = [[7] * 40 + list(range(10 + i, 30 + 3 * i)) for i in range(6)]  # a shared prefix: prefix hits
    params = SamplingParams(max_tokens=12, ignore_eos=True, temperature=0.0)
    llm.engine.block_manager.reset_prefix_cache()
    session = attach(llm.engine, "default,telemetry", tmp_path / "run")
    server = TelemetryServer(("127.0.0.1", 0))
    try:
        telemetry = session.probes["telemetry"].telemetry
        server.serve(telemetry)
        llm.generate(prompts[:3], params)
        mid = json.loads(get(f"{server.url}/snapshot"))  # live, from the HTTP thread
        assert mid["status"] == "running" and mid["metrics"]["generation_tokens"] == 36
        llm.generate(prompts[3:], params)
    finally:
        session.close()
    try:
        snap = json.loads(get(f"{server.url}/snapshot"))
        scraped = metrics_of(get(f"{server.url}/metrics").decode())
        assert get(f"{server.url}/").startswith(b"traceinfer telemetry")
    finally:
        server.close()

    run = open_run(tmp_path / "run")
    steps, requests, tokens, gc_rows = (run.frame(n) for n in ("steps", "requests", "tokens", "gc"))
    m = snap["metrics"]
    assert snap["status"] == "finished"
    assert m["generation_tokens"] == len(tokens) == 72
    assert m["prompt_tokens"] == sum(map(len, prompts))
    assert m["engine_steps"] == len(steps)
    assert m["request_success"] == {"length": 6}
    assert m["num_preemptions"] == int(steps["num_preempted"].sum())
    hits = requests[requests["event"] == "scheduled"]["cached_tokens"].sum()
    assert m["prefix_cache_hits"] == hits > 0
    for i, stage in enumerate(PHASES[:5]):
        assert m["step_time_seconds"][stage] == pytest.approx(steps[f"{stage}_ns"].sum() / 1e9), stage
    assert m["step_time_seconds"]["handover"] == pytest.approx(steps["handover_ns"].fillna(0).sum() / 1e9)
    assert sum(m["step_time_seconds"].values()) == pytest.approx(steps["dur_ns"].sum() / 1e9)
    assert m["iteration_tokens_total"]["sum"] == steps["num_batched_tokens"].sum()
    metrics = request_analysis.request_metrics(requests, tokens)
    assert m["time_to_first_token_seconds"]["count"] == 6
    assert m["time_to_first_token_seconds"]["sum"] == pytest.approx(metrics["ttft_ms"].sum() / 1e3)
    assert m["e2e_request_latency_seconds"]["sum"] == pytest.approx(metrics["e2e_ms"].sum() / 1e3)
    assert m["inter_token_latency_seconds"]["count"] == len(tokens) - 6
    # the window holds the whole short run: its percentiles are the run's
    lat = snap["window"]["latency_s"]
    assert lat["ttft"]["p50"] * 1e3 == pytest.approx(metrics["ttft_ms"].median())
    assert lat["ttft"]["n"] == 6 and lat["itl"]["n"] == len(tokens) - 6
    assert sum(m["gc_collections"].values()) == len(gc_rows)
    assert snap["gpu"]["available"] is False and "cpu" in snap["gpu"]["reason"]
    assert any(t["name"] == "traceinfer-telemetry" for t in snap["threads"]) or snap["threads"] == []

    # /metrics: prometheus_client's parser reads what the snapshot says
    assert scraped["traceinfer:generation_tokens_total"] == len(tokens)
    assert scraped["traceinfer:prompt_tokens_total"] == m["prompt_tokens"]
    assert scraped["traceinfer:request_success_total{finished_reason=length}"] == 6
    assert scraped["traceinfer:time_to_first_token_seconds_count"] == 6
    assert scraped["traceinfer:time_to_first_token_seconds_bucket{le=+Inf}"] == 6
    assert scraped["traceinfer:step_time_seconds_total{phase=forward}"] == pytest.approx(steps["forward_ns"].sum() / 1e9)
    assert "traceinfer:gpu_idle_perc" not in scraped  # no GPU: absent, not 0
    manifest = read_manifest(tmp_path / "run")
    assert manifest["probes"]["details"]["telemetry"]["available"] is True


def test_reset_starts_the_window_at_a_snapshots_time(llm):
    session = attach(llm.engine, "telemetry")
    try:
        telemetry = session.probes["telemetry"].telemetry
        llm.generate([[1, 2, 3, 4]] * 2, SamplingParams(max_tokens=6, ignore_eos=True))
        first = telemetry.snapshot()
        assert first["window"]["latency_s"]["ttft"]["n"] == 2
        after = telemetry.snapshot(since_ns=first["t_ns"])
        assert after["window"]["latency_s"]["ttft"]["n"] == 0 and after["metrics"]["generation_tokens"] == 12
    finally:
        session.close()


# -- the real command: /metrics at the end of a run equals the run directory's totals ----------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_profile_serves_metrics_whose_counters_equal_the_run_directorys_totals(tmp_path):
    out, port = tmp_path / "run", free_port()
    cmd = [sys.executable, "-m", "traceinfer.cli", "profile", "--out", str(out), "--workload", "chatbot",
           "--num-requests", "4", "--output-len", "16", "--num-kv-blocks", "64", "--no-warmup", "--report-formats",
           "none", "--no-perfetto", "--no-progress", "--telemetry", str(port), "--telemetry-linger", "30"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        snap, deadline = None, time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                snap = json.loads(get(f"http://127.0.0.1:{port}/snapshot", timeout=2))
            except (OSError, ValueError):
                snap = None
            if snap and snap["status"] == "finished" and (out / "manifest.json").exists() and \
                    read_manifest(out).get("status") == "completed":  # fmt: skip
                break
            time.sleep(0.2)
        assert snap and snap["status"] == "finished", proc.stdout.read() if proc.poll() is not None else "timed out"
        scraped = metrics_of(get(f"http://127.0.0.1:{port}/metrics").decode())
    finally:
        proc.terminate()
        printed = proc.communicate(timeout=60)[0]
    assert f"http://127.0.0.1:{port}" in printed  # it says where
    m = read_manifest(out)
    run = open_run(out)
    steps, requests = run.frame("steps"), run.frame("requests")
    assert scraped["traceinfer:generation_tokens_total"] == m["results"]["output_tokens"] == len(run.frame("tokens"))
    assert scraped["traceinfer:prompt_tokens_total"] == m["results"]["prompt_tokens"]
    assert scraped["traceinfer:engine_steps_total"] == m["results"]["engine_steps"] == len(steps)
    assert scraped["traceinfer:num_preemptions_total"] == (requests["event"] == "preempted").sum()
    assert scraped["traceinfer:request_success_total{finished_reason=length}"] == m["results"]["requests"]
    assert scraped["traceinfer:e2e_request_latency_seconds_count"] == m["results"]["requests"]
    assert scraped["traceinfer:prefix_cache_hits_total"] == requests["cached_tokens"].fillna(0).sum()
    assert scraped["traceinfer:iteration_tokens_total_sum"] == steps["num_batched_tokens"].sum()
    assert scraped["traceinfer:num_requests_running"] == 0 and scraped["traceinfer:num_requests_waiting"] == 0
    assert "telemetry" in m["probes"]["enabled"]


def test_profile_refuses_a_remote_bind_and_a_port_in_use_in_one_line(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    base = [sys.executable, "-m", "traceinfer.cli", "profile", "--out", str(tmp_path / "r"), "--no-warmup"]
    proc = subprocess.run([*base, "--telemetry", "0.0.0.0:9400"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "traceinfer profile: error: --telemetry '0.0.0.0:9400': 0.0.0.0 is not a loopback address; the endpoint has "
        "no authentication, so it binds 127.0.0.1, ::1 or localhost only unless --telemetry-allow-remote is given"
    ]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        proc = subprocess.run([*base, "--telemetry", str(port)], cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=120)  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert "the port is in use" in proc.stderr and not (tmp_path / "r").exists()


@pytest.mark.parametrize("churn", [0, 1, 3])
def test_the_fold_counts_every_token_as_a_loop_over_tokens_would(churn):
    """The fold's shortcuts (one ITL value for a steady batch, per-request times written only when the
    batch changes) against the plain definition, token by token: TTFT, ITL and E2E histograms, the ITL
    window and the counters."""
    import bisect
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent.parent / "scripts"))
    from telemetry_fold_cost import events

    from traceinfer.telemetry.windows import Telemetry

    stream = events(12, 60, churn)
    tel = Telemetry(1e6, {"num_kv_blocks": 1000, "block_size": 16}, clock=lambda: 10**12)
    for e in stream:
        tel.put(e)
    tel.fold()
    arrival, last, itl, ttft, e2e = {}, {}, [], [], []
    for e in stream:
        if e[0] == "arrival":
            arrival[e[2]["request_id"]] = e[2]["arrival_ns"]
        elif e[0] == "tokens":
            t = e[1]
            for rid, idx in zip(e[2]["request_ids"], e[2]["indices"]):
                if idx == 0:
                    ttft.append((t - arrival[rid]) / 1e9)
                elif rid in last:
                    itl.append((t - last[rid]) / 1e9)
                last[rid] = t
        elif e[0] == "finish":
            e2e.append((e[1] - arrival[e[2]["request_id"]]) / 1e9)
    for name, values in (("inter_token_latency_seconds", itl), ("time_to_first_token_seconds", ttft),
                         ("e2e_request_latency_seconds", e2e)):  # fmt: skip
        h = tel.hists[name]
        want = [0] * (len(h.bounds) + 1)
        for v in values:
            want[bisect.bisect_left(h.bounds, v)] += 1
        assert h.counts == want and h.count == len(values) and h.sum == pytest.approx(sum(values)), name
    assert sorted(v for _, (v, n) in tel.w_itl.rows for _ in range(n)) == pytest.approx(sorted(itl))
    from traceinfer.telemetry.windows import percentile, weighted_percentile

    pairs = [pair for _, pair in tel.w_itl.rows]
    for q in (0, 1, 50, 90, 99, 100):
        assert weighted_percentile(pairs, q) == pytest.approx(percentile(itl, q)), q
    assert tel.counters["generation_tokens"] == sum(len(e[2]["request_ids"]) for e in stream if e[0] == "tokens")
