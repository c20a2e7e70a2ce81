"""The engine-thread cost of each probe's subscribers, per decode step, without running a model.

    OMP_NUM_THREADS=1 python scripts/probe_callbacks.py [--batch 256] [--steps 500]

Drives a real engine's hook points (synthetic:tiny on CPU) the way one decode step of ``--batch``
sequences does: the six stage spans with their fields, 16 block appends while scheduling and 16 blocks
stored in postprocess (one in 16 sequences crosses a block boundary per token at block size 16), one
'tokens' event, and the engine's handover of those events once the forward is launched. Each probe set
is attached in turn; the table gives microseconds per step on the host's critical path (which lengthen
the step) and in the handover (which on a GPU runs while the forward computes), best of 5. GC is off
while timing and nothing is flushed (flush interval 60 s), so the figures are the subscribers' own
work on the engine thread, not contention with the flusher or the collector. On CPU the step trace
records no CUDA events. Not a test: a measuring tool for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import gc
import time

from traceinfer import LLM
from traceinfer.config import ProbesConfig
from traceinfer.engine.device import freeze_gc
from traceinfer.probes import attach

SETS = ("off", "nvtx", "steps", "requests", "kv", "gc", "samplers", "default")


class _Seq:  # what the engine's 'tokens' handover reads from a sequence
    __slots__ = ("num_output_tokens", "request_id")

    def __init__(self, request_id: str) -> None:
        self.request_id, self.num_output_tokens = request_id, 1


def drive(engine, batch: int, steps: int) -> tuple[float, float]:
    """(host critical path, handover) in microseconds per step of ``steps`` simulated decode steps."""
    hooks, bm, clock = engine.hooks, engine.block_manager, time.perf_counter_ns
    seqs = [_Seq(str(i)) for i in range(batch)]
    filled = max(1, batch // 16)
    tokens = tuple(range(16))
    sampled = list(range(batch))
    summary = {
        "num_seqs": batch, "num_prefill_seqs": 0, "num_decode_seqs": batch, "num_batched_tokens": batch,
        "num_prefill_tokens": 0, "num_decode_tokens": batch, "num_cached_tokens": 0, "token_budget": 8192,
        "num_waiting": 0, "num_running": batch, "num_preempted": 0, "num_free_blocks": 1000,
    }  # fmt: skip
    handover = 0
    t0 = clock()
    for i in range(steps):
        bm.step = i
        with hooks.step.span(step=i) as step_info:
            with hooks.schedule.span(step=i) as info:
                if hooks.block:
                    for k in range(filled):
                        bm._record("append", seqs[k].request_id, [k])
                if info is not None:
                    info.update(summary)
            with hooks.prepare.span(num_seqs=batch, num_tokens=batch):
                pass
            with hooks.forward.span(num_tokens=batch, cuda_graph=True):
                pass
            h = clock()
            engine._handover_behind_forward()  # as the runner calls it after launching the forward
            handover += clock() - h
            with hooks.sample.span(num_seqs=batch):
                pass
            with hooks.postprocess.span(num_seqs=batch):
                if hooks.tokens:  # what LLMEngine._postprocess defers
                    engine._deferred.append((hooks.tokens, clock(), (i, list(seqs), list(sampled))))
                if hooks.block:
                    for k in range(filled):
                        bm._record("stored", seqs[k].request_id, [k], [k], [None], [tokens])
            if step_info is not None:
                step_info.update(step=i, num_outputs=0)
    total = clock() - t0
    engine.handover()
    return (total - handover) / steps / 1e3, handover / steps / 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("sets", nargs="*", default=list(SETS))
    args = parser.parse_args()
    engine = LLM("synthetic:tiny", device="cpu", num_kv_blocks=max(1024, args.batch)).engine
    freeze_gc()  # as the commands do
    print(f"{'probes':10s} {'host us/step':>12s} {'handover us/step':>17s}   ({args.batch} sequences per decode step)")
    for spec in args.sets:
        session = attach(engine, spec, None, ProbesConfig(flush_interval_s=60))
        try:
            drive(engine, args.batch, 100)  # warm
            gc.disable()
            host, handover = min(drive(engine, args.batch, args.steps) for _ in range(5))
        finally:
            gc.enable()
            session.close()
        print(f"{spec:10s} {host:12.1f} {handover:17.1f}")


if __name__ == "__main__":
    main()
