"""Host time of ModelRunner.prepare (an eager step's inputs) on the shapes the bench's eager steps have (CPU).

    OMP_NUM_THREADS=1 python scripts/prepare_cost.py [--repeat 200]

A prefill step of 8 prompts of 1024 tokens (the 8192-token budget) and a mixed step of 128 decodes beside
8,064 prefill tokens, scheduled by a real engine (synthetic:tiny, whose shapes do not enter prepare);
prints the best and the median of ``--repeat`` calls of each."""

from __future__ import annotations

import argparse
import random
import statistics
import time

from traceinfer import LLM
from traceinfer.engine.sampling_params import SamplingParams


def timed(fn, repeat: int) -> tuple[float, float]:
    fn()
    runs = []
    for _ in range(repeat):
        t = time.perf_counter_ns()
        fn()
        runs.append((time.perf_counter_ns() - t) / 1e6)
    return min(runs), statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=200)
    args = parser.parse_args()
    rng = random.Random(0)
    llm = LLM("synthetic:tiny", max_model_len=2048, num_kv_blocks=4096, max_num_seqs=256)
    engine = llm.engine
    for _ in range(8):
        engine.add_request([rng.randrange(1, 400) for _ in range(1024)], SamplingParams(max_tokens=4))
    prefill = engine.scheduler.schedule()
    assert prefill.num_batched_tokens == 8192 and prefill.num_decode_seqs == 0
    best, median = timed(lambda: engine.runner.prepare(prefill), args.repeat)
    print(f"prefill step, {prefill.num_batched_tokens} tokens in {len(prefill.scheduled)} sequences: "
          f"prepare {median:.3f} ms median, {best:.3f} ms best")  # fmt: skip

    llm = LLM("synthetic:tiny", max_model_len=2048, num_kv_blocks=8192, max_num_seqs=256)
    engine = llm.engine
    for _ in range(128):
        engine.add_request([rng.randrange(1, 400) for _ in range(rng.randrange(20, 60))], SamplingParams(max_tokens=64))
    while engine.scheduler.waiting:
        engine.step()
    for _ in range(16):
        engine.add_request([rng.randrange(1, 400) for _ in range(1024)], SamplingParams(max_tokens=4))
    mixed = engine.scheduler.schedule()
    best, median = timed(lambda: engine.runner.prepare(mixed), args.repeat)
    print(f"mixed step, {mixed.num_decode_seqs} decodes and {mixed.num_batched_tokens - mixed.num_decode_seqs} "
          f"prefill tokens: prepare {median:.3f} ms median, {best:.3f} ms best")  # fmt: skip


if __name__ == "__main__":
    main()
