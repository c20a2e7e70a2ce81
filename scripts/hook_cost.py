"""What the hook points cost per engine step when nothing subscribes (a benchmark, not a test).

Counts the hook calls of a real run on synthetic:tiny, times one unsubscribed call of each kind
in a tight loop, and prints the cost per step next to the measured step time.
"""

from __future__ import annotations

import time
import timeit

from traceinfer import LLM, SamplingParams
from traceinfer.engine.hooks import Hooks


def main() -> None:
    llm = LLM("synthetic:tiny", num_kv_blocks=2048)
    engine = llm.engine
    prompts = [[(7 * i + j) % 16000 for j in range(64 + 8 * i)] for i in range(32)]
    params = SamplingParams(temperature=0.0, max_tokens=64, ignore_eos=True)
    llm.generate(prompts[:2], params)  # warm-up
    steps0 = engine.step_index
    t = time.perf_counter()
    llm.generate(prompts, params)
    step_s = (time.perf_counter() - t) / (engine.step_index - steps0)

    hooks = Hooks()
    n = 1_000_000
    span_s = min(timeit.repeat(lambda: hooks.forward.span(num_tokens=1).__enter__(), number=n, repeat=5)) / n
    guard_s = min(timeit.repeat(lambda: bool(hooks.block), number=n, repeat=5)) / n
    # per step: 6 spans (step, schedule, prepare, forward, sample, postprocess) and, per sequence,
    # a few guarded checks (block ops, token, finish); 32 sequences here
    per_step = 6 * span_s + 4 * 32 * guard_s
    print(f"unsubscribed span: {span_s * 1e9:.0f} ns, guarded emit: {guard_s * 1e9:.0f} ns")
    print(f"hook cost per step ~{per_step * 1e6:.2f} us vs step {step_s * 1e3:.2f} ms: {100 * per_step / step_s:.4f}%")


if __name__ == "__main__":
    main()
