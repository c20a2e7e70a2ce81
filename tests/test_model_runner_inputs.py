"""The runner's eager inputs (``ModelRunner.prepare``) against a plain per-token loop, on the steps a real
engine schedules: prefill chunks that start mid-block, prefix-cache hits, decodes with placeholders."""

from __future__ import annotations

import random

import numpy as np
import torch

from traceinfer import LLM
from traceinfer.engine.sampling_params import SamplingParams


def reference_inputs(out, bs: int) -> dict:
    """What each token of the step is, written the slow, obvious way."""
    ids, pos, slots, qsl, lens, rows = [], [], [], [0], [], []
    for s in out.scheduled:
        seq, start = s.seq, s.seq.num_computed_tokens
        end = start + s.num_new_tokens
        for p in range(start, end):
            ids.append(seq.token_ids[p])
            pos.append(p)
            slots.append(seq.block_table[p // bs] * bs + p % bs)
        qsl.append(qsl[-1] + s.num_new_tokens)
        lens.append(end)
        if s.samples:
            rows.append(qsl[-1] - 1)
    return {"input_ids": ids, "positions": pos, "slot_mapping": slots, "query_start_loc": qsl, "seq_lens": lens,
            "rows": rows}  # fmt: skip


def test_prepare_matches_a_per_token_loop_on_every_step_of_a_mixed_run():
    rng = random.Random(0)
    llm = LLM("synthetic:tiny", num_kv_blocks=256, max_num_batched_tokens=48, max_num_seqs=6, block_size=16,
              async_scheduling="on")  # placeholders among the decode inputs
    runner = llm.engine.runner
    seen = {"steps": 0, "mixed": 0, "placeholders": 0, "mid_block_chunks": 0, "cached": 0}
    prepare = runner.prepare

    def checked(out):
        input_ids, positions, meta, rows, placeholders = prepare(out)
        want = reference_inputs(out, runner.block_size)
        assert input_ids.tolist() == want["input_ids"]
        assert input_ids.dtype == positions.dtype == meta.slot_mapping.dtype == torch.int64
        assert positions.tolist() == want["positions"]
        assert meta.slot_mapping.tolist() == want["slot_mapping"]
        assert meta.query_start_loc.tolist() == meta.query_start_loc_cpu == want["query_start_loc"]
        assert meta.seq_lens.tolist() == meta.seq_lens_cpu == want["seq_lens"]
        assert meta.query_start_loc.dtype == meta.seq_lens.dtype == torch.int32
        assert list(rows) == want["rows"]
        assert meta.max_query_len == max(s.num_new_tokens for s in out.scheduled)
        assert meta.max_seq_len == max(want["seq_lens"])
        assert placeholders == (min(want["input_ids"][: out.num_decode_seqs], default=0) < 0)
        seen["steps"] += 1
        seen["mixed"] += 0 < out.num_decode_seqs < len(out.scheduled)
        seen["placeholders"] += placeholders
        seen["mid_block_chunks"] += any(s.seq.num_computed_tokens % 16 and s.num_new_tokens > 1 for s in out.scheduled)
        seen["cached"] += out.num_cached_tokens > 0
        return input_ids, positions, meta, rows, placeholders

    runner.prepare = checked
    shared = [rng.randrange(1, 400) for _ in range(40)]  # a common prefix: later prompts hit the prefix cache
    prompts = [shared + [rng.randrange(1, 400) for _ in range(rng.randrange(1, 90))] for _ in range(10)]
    params = [SamplingParams(max_tokens=rng.randrange(2, 12), temperature=0.0) for _ in prompts]
    llm.generate(prompts[:2], params[:2])  # fills the prefix cache
    llm.generate(prompts, params)
    assert seen["steps"] > 10 and seen["mixed"] and seen["placeholders"] and seen["mid_block_chunks"] and seen["cached"], seen


def test_to_device_turns_a_list_into_the_asked_dtype_on_cpu():
    from traceinfer.engine.device import to_device

    t = to_device([3, -2, 2**40], torch.int64, torch.device("cpu"))
    assert t.dtype == torch.int64 and t.tolist() == [3, -2, 2**40]
    t = to_device([0, 5], torch.int32, torch.device("cpu"))
    assert t.dtype == torch.int32 and t.tolist() == [0, 5]
    t = to_device(np.array([1, 2], dtype=np.int64), torch.int64, torch.device("cpu"))
    assert t.tolist() == [1, 2]
