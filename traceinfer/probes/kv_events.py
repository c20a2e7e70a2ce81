"""KV-cache event log (stream 'kv_events'): every block operation, replayable into the block manager's state.

The first row is a 'snapshot' of the block manager when the probe attached (free queue order,
reference counts, hashes, tokens of cached blocks), so that the log replays exactly even though the
engine ran (warm-up) before. Then one packed row per handover of ops (the engine hands them over
once per step, while the GPU runs the forward); readers expand it to one row per op. Ops and
their vLLM KV event names where they overlap:

    stored -> BlockStored      evict -> BlockRemoved      reset -> AllBlocksCleared
    allocate, append, hit, free, preempt: no vLLM event (vLLM reports them only as counters)

The derived series (utilization, prefix hit rate, lifetimes, reuse gaps, idle-before-evict,
fragmentation, preemptions) are pure functions in traceinfer.reports.kv_analysis.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from traceinfer.probes.base import Probe, ProbeContext

VLLM_EVENTS = {"stored": "BlockStored", "evict": "BlockRemoved", "reset": "AllBlocksCleared"}


def free_runs(free: list[int]) -> list[list[int]]:
    """``free`` (block ids) as runs of consecutive ids ``[first, count]``, in order. Each run is grown by
    comparing doubling slices with a range (C-speed), so a queue of 4M ids in a few runs takes milliseconds."""
    runs, i, n = [], 0, len(free)
    while i < n:
        first, j, width = free[i], i + 1, 1
        while j < n:
            k = min(n, j + width)
            if free[j:k] == list(range(first + j - i, first + k - i)):
                j, width = k, width * 2
            elif width == 1:
                break
            else:
                width = 1
        runs.append([first, j - i])
        i = j
    return runs


def block_manager_state(bm) -> dict:
    """Everything replay needs to start from, sparse: the free queue as runs of consecutive block ids
    ``[first, count]`` (least recently used first), and only the blocks that hold something, a reference
    (not free) or a prefix-cache hash (in ``bm.cached``), as ``[id, ref_count, hash, parent_hash,
    token_ids]``. A pool of 4M blocks (a tiny model on a large GPU) is a few runs and rows, not five lists
    of 4M entries."""
    runs = free_runs(list(bm.free_queue))
    used, at = [], 0
    for first, count in sorted(runs):  # the ids between the free runs are held
        used.extend(range(at, first))
        at = first + count
    used.extend(range(at, bm.num_blocks))
    held = sorted({*used, *bm.cached.values()})
    blocks = [bm.blocks[i] for i in held]
    return {
        "num_blocks": bm.num_blocks,
        "block_size": bm.block_size,
        "enable_prefix_caching": bm.enable_prefix_caching,
        "free_runs": runs,
        "blocks": [[b.block_id, b.ref_count, b.hash, b.parent_hash, list(b.token_ids) if b.token_ids is not None else None]
                   for b in blocks],
    }  # fmt: skip


class KVEventProbe(Probe):
    name = "kv"
    description = "every KV block operation with ids, hashes, ref counts and free/used/cached counts"
    streams = ("kv_events",)

    def __init__(self, ctx: ProbeContext) -> None:
        super().__init__(ctx)
        self._append = ctx.writer.stream("kv_events").rows.append
        self._steps = ctx.steps
        self.num_ops = 0

    def start(self) -> None:
        bm = self.ctx.engine.block_manager
        self._append(
            (time.perf_counter_ns(), self._steps.step, "snapshot", None, None, None, None, None, None, None,
             bm.num_free_blocks, bm.num_used_blocks, bm.num_cached_blocks, block_manager_state(bm))
        )  # fmt: skip

    def subscriptions(self) -> dict[str, Callable]:
        return {"block": self._on_block}

    def _on_block(self, point: str, phase: str, t: int, f: dict) -> None:
        """One packed row per handover of ops (readers expand it to one row per op): a transpose in C
        instead of a tuple per op."""
        ops = f["ops"]
        t_ns, step, op, rid, ids, hashes, refs, free, used, cached, parents, tokens = zip(*ops)
        vllm = [VLLM_EVENTS.get(o) for o in op]
        self._append((list(t_ns), step, op, vllm, rid, ids, hashes, parents, refs, tokens, free, used, cached, None))
        self.num_ops += len(ops)

    def info(self) -> dict:
        return {**super().info(), "ops": self.num_ops}
