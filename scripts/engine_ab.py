"""An engine switch on or off, timed on full passes of the bench workload in one process (GPU).

    python scripts/engine_ab.py kv-store [--rounds 4]       the RoPE kernel stores K/V, or the backend does
    python scripts/engine_ab.py decode-order [--rounds 4]   decode attention longest context first, or row order
    python scripts/engine_ab.py splitk [--rounds 4]         decode batches' projections on engine/splitk, or cuBLAS
    python scripts/engine_ab.py piecewise [--rounds 4]      eager steps through piecewise CUDA graphs, or launched op by op
    ... --num-requests 32                                   the bench workload with 32 requests: decodes at <= 32 rows

Two engines side by side (synthetic:qwen3-0.6b, the bench's defaults but KV_BLOCKS blocks each, enough for the
bench without preemption), each built with its setting (its layers and runner keep it), its CUDA graphs
captured, and warmed up; then passes alternate between them, the order flipping every round. Prints each pass,
the medians and the ratio per round. splitk takes effect where splitk.TUNED lists a shape (gemv_bench.py
--splitk fills it)."""

from __future__ import annotations

import argparse
import importlib
import statistics

from traceinfer import LLM, workloads
from traceinfer.config import WorkloadConfig
from traceinfer.engine.device import freeze_gc
from traceinfer.passes.engine import timed_pass, warm_up

# name -> the default a layer or runner reads when it is built (module, constant), or an [engine] option
SWITCHES = {
    "kv-store": ("traceinfer.engine.models.common", "FUSE_KV_STORE"),
    "decode-order": ("traceinfer.engine.model_runner", "DECODE_LONGEST_FIRST"),
    "splitk": ("traceinfer.engine.models.common", "SPLITK"),
    "piecewise": "piecewise_graphs",
}
KV_BLOCKS = 24_000  # 44 GB each at Qwen3-0.6B's 1.8 MB a block; the bench holds at most ~17,300 blocks


def build(switch: str, on: bool) -> LLM:
    """An engine with the switch on or off; the module's default is put back once it is built."""
    target = SWITCHES[switch]
    if isinstance(target, str):
        return LLM("synthetic:qwen3-0.6b", num_kv_blocks=KV_BLOCKS, **{target: on})
    mod = importlib.import_module(target[0])
    default = getattr(mod, target[1])
    setattr(mod, target[1], on)
    try:
        return LLM("synthetic:qwen3-0.6b", num_kv_blocks=KV_BLOCKS)
    finally:
        setattr(mod, target[1], default)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("switch", choices=SWITCHES)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--num-requests", type=int, help="the bench workload's first N requests (fewer rows a step)")
    args = parser.parse_args()
    wl = workloads.make(WorkloadConfig(name="bench", num_requests=args.num_requests), True)
    engines = {on: build(args.switch, on) for on in (True, False)}
    freeze_gc()
    for llm in engines.values():
        warm_up(llm, wl, full=True)
    rates: dict[bool, list[float]] = {True: [], False: []}
    for r in range(args.rounds):
        for on in (True, False) if r % 2 else (False, True):
            llm = engines[on]
            llm.engine.block_manager.reset_prefix_cache()
            result = timed_pass(llm, wl)
            rates[on].append(result.output_tok_s)
            print(f"round {r} {args.switch} {'on ' if on else 'off'}  {result.output_tok_s:9.1f} tok/s  "
                  f"{result.seconds:.3f} s", flush=True)  # fmt: skip
    for on, xs in rates.items():
        print(f"{args.switch} {'on ' if on else 'off'} median {statistics.median(xs):9.1f} tok/s  "
              f"range {min(xs):.1f}..{max(xs):.1f}")  # fmt: skip
    print(f"on / off per round: {[round(a / b, 4) for a, b in zip(rates[True], rates[False])]}")


if __name__ == "__main__":
    main()
