"""What folding costs the telemetry thread per token (the GIL time it takes from the engine): a bench-like
stream of inbox events (R requests decoding side by side, one tokens event per step, block appends, finishes)
folded in one go, timed with the thread's CPU clock. Not a test: a measuring tool for docs/benchmarks.md.

    OMP_NUM_THREADS=1 python scripts/telemetry_fold_cost.py [--requests 256] [--steps 1000] [--churn N] [--repeat 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

from traceinfer.engine.block_manager import BlockOp
from traceinfer.telemetry.windows import Telemetry


def events(requests: int, steps: int, churn: int = 0, step_ns: int = 3_000_000) -> list[tuple]:
    """The inbox of ``steps`` decode steps of ``requests`` side by side; with ``churn`` > 0 one request
    finishes and a new one takes its place every ``churn`` steps (the batch changes)."""
    def arrive(r: str, t: int, s: int) -> list[tuple]:
        return [("arrival", t, {"request_id": r, "prompt_len": 128, "arrival_ns": t}),
                ("block", [BlockOp(t, s, "allocate", r, [0], [None], [1], 0, 0, 0, None, None)])]  # fmt: skip

    rids = [f"r{i}" for i in range(requests)]
    first = dict.fromkeys(rids, 0)  # request -> its first step
    out: list[tuple] = [e for r in rids for e in arrive(r, 0, 0)]
    stages = [10_000, 100_000, 50_000, 1_000_000, 30_000]
    fresh = requests
    for s in range(steps):
        t = (s + 1) * step_ns
        summary = {"num_running": requests, "num_waiting": 0, "num_preempted": 0, "num_free_blocks": 1000,
                   "num_batched_tokens": requests}  # fmt: skip
        out.append(("step", s, t - step_ns, t, stages, 20_000, summary))
        out.append(("tokens", t, {"step": s, "request_ids": list(rids), "token_ids": [1] * requests,
                                  "indices": [s - first[r] for r in rids]}))  # fmt: skip
        if s % 16 == 15:
            out.append(("block", [BlockOp(t, s, "append", r, [i], [None], [1], 0, 0, 0, None, None) for i, r in enumerate(rids)]))
        if churn and s % churn == churn - 1:
            done = rids.pop(0)
            out.append(("finish", t, {"request_id": done, "step": s, "reason": "length"}))
            new = f"r{fresh}"
            fresh += 1
            rids.append(new)
            first[new] = s + 1
            out += arrive(new, t, s)
    out += [("finish", steps * step_ns, {"request_id": r, "step": steps - 1, "reason": "length"}) for r in rids]
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--requests", type=int, default=256)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--churn", type=int, default=0, help="a request finishes and another starts every N steps")
    a = p.parse_args()
    stream = events(a.requests, a.steps, a.churn)
    per_token = []
    for _ in range(a.repeat):
        tel = Telemetry(30.0, {"num_kv_blocks": 1000, "block_size": 16}, clock=lambda: a.steps * 3_000_000)
        for e in stream:
            tel.put(e)
        t0 = time.thread_time_ns()
        tel.fold()
        per_token.append((time.thread_time_ns() - t0) / (a.requests * a.steps))
        snap_t0 = time.thread_time_ns()
        tel.snapshot()
        snap_ms = (time.thread_time_ns() - snap_t0) / 1e6
    med = statistics.median(per_token)
    spread = 50 * (max(per_token) - min(per_token)) / med
    print(f"fold: {med:.0f} ns of CPU per token (median of {a.repeat}, +-{spread:.1f}%: "
          f"{', '.join(f'{x:.0f}' for x in per_token)}); a snapshot of that window {snap_ms:.1f} ms")


if __name__ == "__main__":
    main()
