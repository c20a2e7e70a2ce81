"""Async scheduling (engine.async_scheduling): the engine launches step N+1 before step N's tokens reach the
host, with placeholders in their place. On a CPU nothing overlaps, but the bookkeeping is the same, so every
case here runs the same requests with it on and off and wants the same tokens, the same prefix-cache hits and
the same streams."""

from __future__ import annotations

import json
import random

import pytest

from tests.probe_checks import trace_problems
from traceinfer import LLM, SamplingParams, open_run
from traceinfer.probes import attach
from traceinfer.render.perfetto import build_trace
from traceinfer.rundir import read_stream

TINY = "synthetic:tiny"


def run(mode: str, requests, aborts=(), **engine) -> tuple[dict, list]:
    """Drive the step API; ``aborts``: (step, request id) pairs. -> outputs by id, the tokens events (and
    last, the number of steps)."""
    e = LLM(TINY, async_scheduling=mode, **engine).engine
    events = []
    e.hooks.subscribe(lambda p, ph, t, f: events.append(f), ("tokens",))
    ids = [e.add_request(prompt, params, request_id=str(i)) for i, (prompt, params) in enumerate(requests)]
    done, step = {}, 0
    while e.has_unfinished():
        for at, rid in aborts:
            if at == step and (out := e.abort(rid)) is not None:
                done[rid] = out
        done.update({o.request_id: o for o in e.step()})
        step += 1
    e.handover()
    assert e.block_manager.num_used_blocks == 0 and e._inflight is None
    assert set(done) == set(ids)
    events.append(step)
    return done, events


def prompts(n: int, seed: int, shared: list[int] = ()) -> list[list[int]]:
    rng = random.Random(seed)
    return [list(shared) + [rng.randrange(1, 200) for _ in range(rng.randrange(1, 40))] for _ in range(n)]


def same(a: dict, b: dict) -> None:
    for rid in a:
        assert a[rid].token_ids == b[rid].token_ids, rid
        assert a[rid].finish_reason == b[rid].finish_reason, rid
        assert all(t >= 0 for t in a[rid].token_ids)
        assert len(a[rid].token_times_ns) == len(a[rid].token_ids)


def test_async_matches_sync_through_chunked_prefill_prefix_hits_and_preemption():
    shared = list(range(3, 35))  # two full blocks of 16 every prompt shares
    reqs = [(p, SamplingParams(temperature=0.0, max_tokens=random.Random(i).randrange(1, 30), ignore_eos=True))
            for i, p in enumerate(prompts(12, 0, shared))]  # fmt: skip
    # a small token budget chunks the prefills; 24 blocks of 16 preempt under 12 requests
    on, ev_on = run("on", reqs, max_num_batched_tokens=48, num_kv_blocks=24)
    off, ev_off = run("off", reqs, max_num_batched_tokens=48, num_kv_blocks=24)
    same(on, off)
    assert [o.num_cached_prompt_tokens for o in on.values()] == [o.num_cached_prompt_tokens for o in off.values()]
    assert sum(o.num_preemptions for o in on.values()) > 0
    # one step more: with nothing left to schedule, the last step launches nothing and finishes the one before
    assert ev_on.pop() == ev_off.pop() + 1
    for events, outputs in ((ev_on, on), (ev_off, off)):  # the streamed tokens are the outputs, index by index
        streamed = {rid: {} for rid in outputs}
        for f in events:
            for rid, tok, i in zip(f["request_ids"], f["token_ids"], f["indices"]):
                streamed[rid][i] = tok
        assert {rid: [s[i] for i in sorted(s)] for rid, s in streamed.items()} == {
            rid: o.token_ids for rid, o in outputs.items()}  # fmt: skip


def test_async_stops_on_eos_and_stop_tokens_like_sync():
    base, _ = run("off", [(p, SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)) for p in prompts(6, 1)])
    # stop on each request's third token: the async engine has already launched the step after it
    reqs = [(p, SamplingParams(temperature=0.0, max_tokens=12, stop_token_ids=[base[str(i)].token_ids[2]]))
            for i, p in enumerate(prompts(6, 1))]  # fmt: skip
    on, _ = run("on", reqs)
    off, _ = run("off", reqs)
    same(on, off)
    assert all(o.finish_reason in ("stop", "eos") and len(o.token_ids) <= 3 for o in on.values())


def test_async_abort_in_flight_keeps_only_known_tokens():
    reqs = [(p, SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True)) for p in prompts(4, 2)]
    on, _ = run("on", reqs, aborts=[(3, "1"), (5, "2")])
    off, _ = run("off", reqs)
    assert on["1"].finish_reason == on["2"].finish_reason == "aborted"
    for rid in on:  # an aborted request keeps a prefix of what it would have generated
        assert on[rid].token_ids == off[rid].token_ids[: len(on[rid].token_ids)]
        assert all(t >= 0 for t in on[rid].token_ids)
    assert on["0"].token_ids == off["0"].token_ids


@pytest.mark.parametrize("temperature", [0.7, 1.0])
def test_async_seeded_sampling_matches_sync(temperature):
    reqs = [(p, SamplingParams(temperature=temperature, max_tokens=15, seed=100 + i, ignore_eos=True))
            for i, p in enumerate(prompts(5, 3))]  # fmt: skip
    on, _ = run("on", reqs)
    off, _ = run("off", reqs)
    same(on, off)


def test_async_stops_at_max_model_len_like_sync():
    # prompts of 1-39 tokens under max_model_len 40: most stop on the length limit, not max_tokens
    reqs = [(p, SamplingParams(temperature=0.0, max_tokens=100, ignore_eos=True)) for p in prompts(6, 4)]
    on, _ = run("on", reqs, max_model_len=40)
    off, _ = run("off", reqs, max_model_len=40)
    same(on, off)
    assert all(len(reqs[int(rid)][0]) + len(o.token_ids) == 40 for rid, o in on.items())


def test_an_async_run_traces_each_stage_once_a_step_and_nests_on_the_timeline(tmp_path):
    """The step after the last launch only finishes it: its own row (sample, postprocess, no forward), so no
    stage runs twice in a step and the Perfetto trace's slices nest."""
    llm = LLM(TINY, async_scheduling="on")
    reqs = prompts(5, 3)
    with attach(llm.engine, "default", tmp_path / "run") as session:
        llm.generate(reqs, SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True))
    steps = read_stream(session.run_dir, "steps")
    assert steps[-1]["forward_ns"] is None and steps[-1]["sample_ns"] is not None
    assert all(r["forward_ns"] is not None for r in steps[:-1])
    assert trace_problems(json.loads(json.dumps(build_trace(open_run(session.run_dir))))) == []
