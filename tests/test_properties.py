"""Property tests on random workloads through the real engine (a micro Qwen3 checkpoint)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from traceinfer import LLM, SamplingParams


@pytest.fixture(scope="module")
def micro_checkpoint(tmp_path_factory):
    from transformers import AutoModelForCausalLM, Qwen3Config

    config = Qwen3Config(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
        head_dim=16, vocab_size=64, max_position_embeddings=256, architectures=["Qwen3ForCausalLM"], eos_token_id=None,
    )  # fmt: skip
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("micro")
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    return str(path)


BASES = ([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12], [20, 21, 22, 23, 24, 25, 26, 27], [30] * 16)

requests = st.lists(
    st.tuples(
        st.integers(0, len(BASES) - 1),  # shared prefix, so prefix hits happen
        st.integers(0, 12),  # prefix tokens kept
        st.lists(st.integers(0, 63), max_size=20),  # own tail
        st.integers(1, 10),  # max_tokens
        st.integers(0, 6),  # step at which it arrives
        st.integers(0, 2),  # priority
    ),
    min_size=1,
    max_size=10,
)
engines = st.fixed_dictionaries(
    {
        "block_size": st.sampled_from([2, 4, 8]),
        "num_kv_blocks": st.integers(4, 40),
        "max_num_batched_tokens": st.integers(1, 48),
        "max_num_seqs": st.integers(1, 8),
    }
)


class InvariantChecker:
    """Subscribes to every hook point and checks the engine's invariants as events arrive."""

    def __init__(self, engine) -> None:
        self.engine = engine
        self.budget = engine.config.max_num_batched_tokens
        self.allocated = 0
        self.freed = 0
        self.hits = 0
        self.steps = 0
        self.unsubscribe = engine.hooks.subscribe(self)

    def __call__(self, point, phase, t_ns, fields) -> None:
        if point == "schedule" and phase == "E":
            assert fields["num_batched_tokens"] <= self.budget
            self.steps += 1
        if point != "block":
            return
        bm = self.engine.block_manager
        for o in fields["ops"]:  # the ops of this step so far, handed over after scheduling and at step end
            self.check_op(bm, o)

    def check_op(self, bm, o) -> None:
        assert all(r >= 0 for r in o.ref_counts)
        assert o.num_free + o.num_used == bm.num_blocks
        if o.op in ("allocate", "append"):
            self.allocated += len(o.block_ids)
        if o.op == "hit":
            self.hits += 1
            seq = self.engine.requests[o.request_id]
            # the hit blocks are exactly the cached blocks of this prompt's leading block hashes
            hashes = seq.block_hashes[: len(o.block_ids)]
            assert o.block_hashes == hashes
            assert [bm.cached[h] for h in hashes] == o.block_ids
            # hits are taken before any compute of this admission: after scheduling, the hit is all it has
            assert seq.num_computed_tokens == seq.num_cached_tokens == len(o.block_ids) * bm.block_size


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(workload=requests, options=engines)
def test_random_workloads_keep_invariants(micro_checkpoint, workload, options):
    llm = LLM(micro_checkpoint, **options)
    engine = llm.engine
    checker = InvariantChecker(engine)
    pending = sorted(enumerate(workload), key=lambda item: item[1][4])
    expected: dict[str, int] = {}
    finished = {}
    step = 0
    try:
        while pending or engine.has_unfinished():
            while pending and pending[0][1][4] <= step:
                i, (base, keep, tail, max_tokens, _, priority) = pending.pop(0)
                prompt = (BASES[base][:keep] + tail) or [0]
                params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
                rid = engine.add_request(prompt, params, priority=priority)
                expected[rid] = max_tokens
            for out in engine.step():
                if out.finished:
                    assert out.request_id not in finished
                    finished[out.request_id] = out
            step += 1
            assert step < 5_000, "the workload did not drain"
    finally:
        checker.unsubscribe()
    # every request finished: with its full length, or with an error naming the cache limit
    assert set(finished) == set(expected)
    for rid, out in finished.items():
        if out.finish_reason == "error":
            assert "whole cache has" in out.error
        else:
            assert out.finish_reason == "length" and len(out.token_ids) == expected[rid]
    # no block leaks: every reference was dropped, and the free queue holds every block once
    bm = engine.block_manager
    assert bm.num_used_blocks == 0
    assert sorted(bm.free_queue) == list(range(bm.num_blocks))
    assert all(b.ref_count == 0 for b in bm.blocks)
    assert not engine.scheduler.running and not engine.scheduler.waiting


def test_fixed_workload_reaches_hits_and_preemption(micro_checkpoint):
    """The paths the property test must cover, forced: shared prefixes arriving late, a cache too small."""
    llm = LLM(micro_checkpoint, block_size=4, num_kv_blocks=12, max_num_batched_tokens=32)
    engine = llm.engine
    checker = InvariantChecker(engine)
    try:
        first = engine.add_request(BASES[0] + [40], SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True))
        engine.step()
        ids = [engine.add_request(BASES[0] + [41 + i], SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True)) for i in range(3)]
        done = {}
        while engine.has_unfinished():
            done.update({o.request_id: o for o in engine.step()})
    finally:
        checker.unsubscribe()
    assert set(done) == {first, *ids}
    assert checker.hits > 0 and sum(o.num_preemptions for o in done.values()) > 0
    assert engine.block_manager.num_used_blocks == 0
