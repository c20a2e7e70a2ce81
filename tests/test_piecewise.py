"""engine/piecewise on CPU: the pieces run as plain calls (graphs=False) over the same static buffers and
padding as the captured graphs do, against the model's own forward; the capture itself is a GPU test
(tests/gpu/test_engine_gpu.py)."""

from __future__ import annotations

import gc
import random
import weakref

import torch

from traceinfer import LLM
from traceinfer.engine.piecewise import PiecewiseForward, piecewise_sizes
from traceinfer.engine.sampling_params import SamplingParams


def test_sizes_are_powers_of_two_up_to_the_token_budget():
    assert piecewise_sizes(8192) == [256, 512, 1024, 2048, 4096, 8192]
    assert piecewise_sizes(3000) == [256, 512, 1024, 2048, 3000]
    assert piecewise_sizes(100) == [100]


def _mixed_step(llm):
    """A step with decodes and prefill chunks, its inputs prepared."""
    rng = random.Random(1)
    engine = llm.engine
    for n in (5, 9, 30, 41):
        engine.add_request([rng.randrange(1, 400) for _ in range(n)], SamplingParams(max_tokens=8, ignore_eos=True))
    engine.step()
    engine.step()
    for n in (50, 23):
        engine.add_request([rng.randrange(1, 400) for _ in range(n)], SamplingParams(max_tokens=8, ignore_eos=True))
    out = engine.scheduler.schedule()
    assert 0 < out.num_decode_seqs < len(out.scheduled)
    return engine.runner.prepare(out)


@torch.inference_mode()
def test_the_pieces_give_the_models_forward_on_a_padded_mixed_step():
    llm = LLM("synthetic:tiny", num_kv_blocks=128, max_num_batched_tokens=64)
    model = llm.engine.runner.model
    input_ids, positions, meta, _, _ = _mixed_step(llm)
    n = input_ids.shape[0]
    want = model(input_ids, positions, meta)
    pieces = PiecewiseForward(model, 96, graphs=False)  # 96 padded tokens for n real ones
    assert n < 96 and pieces.num_pieces == len(model.model.layers) + 1
    got = pieces.run(input_ids, positions, meta)
    assert got.shape == want.shape == (n, model.config.hidden_size)
    torch.testing.assert_close(got, want)
    assert (pieces.slots[n:] == -1).all()  # padding rows store nothing
    # a smaller step after a larger one (its decodes alone): the padding rows' slots are reset
    nd = meta.num_decode_seqs
    decodes = pieces.run(input_ids[:nd], positions[:nd], decodes_only(meta))
    assert (pieces.slots[nd:] == -1).all()
    torch.testing.assert_close(decodes, model(input_ids[:nd], positions[:nd], decodes_only(meta)))


def decodes_only(meta):
    """The metadata of the step's decodes alone."""
    import dataclasses

    k = meta.num_decode_seqs
    return dataclasses.replace(
        meta, slot_mapping=meta.slot_mapping[:k], query_start_loc=meta.query_start_loc[: k + 1],
        seq_lens=meta.seq_lens[:k], block_tables=meta.block_tables[:k], num_decode_seqs=k, max_query_len=1,
        query_start_loc_cpu=meta.query_start_loc_cpu[: k + 1], seq_lens_cpu=meta.seq_lens_cpu[:k],
        decode_order=None if meta.decode_order is None else meta.decode_order[:k],
    )  # fmt: skip


def test_the_runner_scores_through_the_pieces_as_through_the_model():
    llm = LLM("synthetic:tiny", num_kv_blocks=128, max_num_batched_tokens=64)
    runner = llm.engine.runner
    prompt = [random.Random(2).randrange(1, 400) for _ in range(40)]
    want = llm.engine.score(prompt)
    runner.piecewise = {64: PiecewiseForward(runner.model, 64, graphs=False)}
    runner.piecewise_sizes = [64]
    got = llm.engine.score(prompt)
    assert runner.stats.piecewise_steps == 1
    torch.testing.assert_close(got, want)


def test_a_dropped_engine_and_its_pieces_are_freed_under_gc_freeze():
    """The commands freeze the collector once the engine is built (engine.device.freeze_gc). An engine part in
    a reference cycle is then never freed: bench's HF pass on the H200 started with a dropped engine's weights,
    pieces and graph pool still held (HF sized its cache to 226 blocks instead of 3,376)."""
    llm = LLM("synthetic:tiny", num_kv_blocks=128, max_num_batched_tokens=64)
    runner = llm.engine.runner
    runner.piecewise = {64: PiecewiseForward(runner.model, 64, graphs=False)}
    runner.piecewise_sizes = [64]
    llm.generate([[5, 6, 7, 8] * 10], SamplingParams(max_tokens=4, ignore_eos=True))
    gc.collect()
    gc.freeze()
    try:
        engine, pieces = weakref.ref(llm.engine), weakref.ref(runner.piecewise[64])
        del llm, runner
        gc.collect()
        assert pieces() is None and engine() is None
    finally:
        gc.unfreeze()
