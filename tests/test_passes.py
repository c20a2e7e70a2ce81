"""The pass driver: requests arrive when the workload says, at most max_concurrency in flight, TTFT from
each request's arrival; progress reports; a stop request aborts; shared prefixes hit the cache online."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from traceinfer import LLM, open_run
from traceinfer.analysis import kv
from traceinfer.config import WorkloadConfig
from traceinfer.passes.engine import PassStopped, Progress, run_workload, timed_pass
from traceinfer.probes import attach
from traceinfer.workloads import make


@pytest.fixture(scope="module")
def llm():
    torch.set_flush_denormal(True)
    yield LLM("synthetic:tiny", device="cpu", num_kv_blocks=256)
    torch.set_flush_denormal(False)


def small(name: str, **changes):
    return make(WorkloadConfig(name=name, **changes), on_cuda=False, vocab_size=16384)


def test_requests_arrive_on_time_and_ttft_counts_from_arrival(llm):
    workload = small("chatbot", num_requests=6, rate=20.0, output_len=8, prompt_len=64)
    assert not workload.offline and workload.arrival_s[0] == 0.0
    running = []
    unsubscribe = llm.engine.hooks.subscribe(lambda p, ph, t, f: ph == "E" and running.append(len(llm.engine.scheduler.running)), ("step",))
    try:
        result = run_workload(llm, workload)
    finally:
        unsubscribe()
    arrivals = [a for a, _ in result.timings]
    start = arrivals[0]
    offsets = [(a - start) / 1e9 for a in arrivals]
    assert offsets == pytest.approx(workload.arrival_s, abs=1e-6)  # stamped at the workload's own arrival times
    assert result.seconds >= workload.arrival_s[-1]  # a pass lasts at least until the last arrival
    assert all(times[0] > a for a, times in result.timings)  # TTFT is measured from the arrival
    assert result.output_tokens == workload.max_output_tokens and result.details["arrival"] == workload.arrival
    # they did not all run at once: the first step saw only what had arrived by then (a loaded machine's
    # slow steps may let all the others arrive before the second step, so only the first is certain)
    assert running[0] < workload.num_requests


def test_max_concurrency_holds_requests_back(llm):
    workload = dataclasses.replace(small("chatbot", num_requests=6, output_len=6, prompt_len=64, arrival="offline"),
                                   max_concurrency=2)  # fmt: skip
    seen = []
    unsubscribe = llm.engine.hooks.subscribe(lambda p, ph, t, f: ph == "E" and seen.append(
        len(llm.engine.scheduler.running) + len(llm.engine.scheduler.waiting)), ("schedule",))  # fmt: skip
    try:
        result = run_workload(llm, workload)
    finally:
        unsubscribe()
    assert max(seen) == 2 and result.num_requests == 6
    first_token = sorted(times[0] for _, times in result.timings)
    later = sorted(result.timings)[2:]  # held back: each arrived when a slot freed, after some first token
    assert all(a >= first_token[0] for a, _ in later)


def test_offline_and_timed_pass_send_everything_at_once(llm):
    workload = small("chatbot", num_requests=4, output_len=4, prompt_len=64)
    result = timed_pass(llm, workload)
    assert result.details["arrival"] == "offline"
    assert len({a for a, _ in result.timings}) == 1


def test_progress_reports_and_stop_aborts(llm):
    workload = small("chatbot", num_requests=4, output_len=40, prompt_len=64, arrival="offline")
    reports: list[Progress] = []
    result = run_workload(llm, workload, progress=reports.append, progress_every_s=0.0)
    assert reports and reports[-1].requests_total == 4
    assert all(0 <= r.requests_done <= 4 and r.kv_total_blocks == 256 for r in reports)
    assert [r.output_tokens for r in reports] == sorted(r.output_tokens for r in reports)
    assert result.output_tokens == workload.max_output_tokens == reports[-1].max_output_tokens
    calls = []

    def stop():
        calls.append(1)
        return "writing x failed: [Errno 28] No space left on device" if len(calls) == 3 else None

    with pytest.raises(PassStopped, match="No space left on device"):
        run_workload(llm, workload, stop=stop)
    assert not llm.engine.has_unfinished()  # every request was aborted


@pytest.mark.parametrize("name", ["chatbot", "prefix_share"])
def test_shared_prefixes_hit_the_cache_when_requests_arrive_over_time(llm, tmp_path, name):
    workload = small(name)
    llm.engine.block_manager.reset_prefix_cache()
    with attach(llm.engine, "requests", tmp_path / "run"):
        run_workload(llm, workload)
    run = open_run(tmp_path / "run")
    hits = kv.prefix_hits(run.frame("requests"), run.frame("tokens"))
    assert hits["hit_tokens"].sum() > 0 and kv.hit_rate(hits) > 0


def test_a_request_that_fails_alone_is_counted():
    small_cache = LLM("synthetic:tiny", device="cpu", num_kv_blocks=8)  # 128 tokens of KV in all
    workload = small("chatbot", num_requests=3, output_len=4, prompt_len=64, arrival="offline")
    prompts = [workload.prompts[0], list(range(1, 201)), workload.prompts[2]]  # 200 tokens cannot fit
    result = run_workload(small_cache, dataclasses.replace(workload, prompts=prompts))
    assert result.details["failed_requests"] == 1 and result.details["finish_reasons"] == ["error", "length"]
    expected = [0] + sorted(workload.params[i].max_tokens for i in (0, 2))
    assert sorted(len(times) for _, times in result.timings) == expected
