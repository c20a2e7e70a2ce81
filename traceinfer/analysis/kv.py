"""KV-cache analysis: pure functions over the 'kv_events' stream (and 'requests'/'tokens' where needed).

    replay(kv)                 -> KVState: the block manager's state after the log, exactly
    utilization(kv)            -> t_ns, step, num_used, num_free, num_cached, usage (used / total blocks)
    prefix_hits(requests, tokens) -> one row per admission: query tokens, hit tokens, cumulative hit rate
    block_lives(kv)            -> one row per block residency: allocation, release, end (evicted,
                                  reallocated, reset, open), hits, lifetime, idle before evict
    reuse_gaps(kv)             -> time between consecutive accesses (allocation or hit) of a block
    internal_fragmentation(kv, requests, tokens) -> per step: unused slots in partly filled blocks
    preemptions(kv)            -> per step: preemptions and the running total

Names follow vLLM's metrics where they overlap (kv_cache_usage_perc, prefix_cache_queries/hits,
kv_block_lifetime_seconds, kv_block_idle_before_evict_seconds, kv_block_reuse_gap_seconds,
num_preemptions). Idle-before-evict is measured from the moment the block's last holder released it.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import pandas as pd

ACCESS_OPS = ("allocate", "append", "hit")
RELEASE_OPS = ("free", "preempt")


@dataclass
class KVState:
    """A block manager's state as plain values (comparable with ==)."""

    num_blocks: int
    block_size: int
    ref_counts: list[int]
    hashes: list[int | None]
    parent_hashes: list[int | None]
    token_ids: list[tuple[int, ...] | None]
    free_queue: list[int]  # least recently used first
    cached: dict[int, int] = field(default_factory=dict)  # hash -> block id

    @classmethod
    def from_snapshot(cls, state: dict) -> KVState:
        """From a 'snapshot' row's state (traceinfer.probes.kv_events.block_manager_state)."""
        hashes = list(state["hashes"])
        return cls(
            num_blocks=state["num_blocks"],
            block_size=state["block_size"],
            ref_counts=list(state["ref_counts"]),
            hashes=hashes,
            parent_hashes=list(state["parent_hashes"]),
            token_ids=[tuple(t) if t is not None else None for t in state["token_ids"]],
            free_queue=list(state["free_queue"]),
            cached={h: b for b, h in enumerate(hashes) if h is not None},
        )


def _records(kv) -> list[dict]:
    if isinstance(kv, pd.DataFrame):
        return kv.to_dict("records")
    return list(kv)


def replay(kv) -> KVState:
    """Apply every op of the log, from its first 'snapshot' row, the way BlockManager applies it."""
    events = _records(kv)
    if not events or events[0]["op"] != "snapshot":
        raise ValueError("the KV event log does not start with a 'snapshot' row; it cannot be replayed")
    s = KVState.from_snapshot(events[0]["state"])
    fq: OrderedDict[int, None] = OrderedDict.fromkeys(s.free_queue)
    for e in events[1:]:
        op, ids = e["op"], e["block_ids"] or []
        if op in ACCESS_OPS:
            for b, rc in zip(ids, e["ref_counts"]):
                fq.pop(b, None)
                s.ref_counts[b] = rc
        elif op == "evict":
            for b, h in zip(ids, e["block_hashes"]):
                fq.pop(b, None)
                if s.cached.get(h) == b:
                    del s.cached[h]
                s.hashes[b] = s.parent_hashes[b] = s.token_ids[b] = None
        elif op == "stored":
            parents = e["parent_block_hashes"] or [None] * len(ids)
            tokens = e["token_ids"] or [None] * len(ids)
            for b, h, p, t in zip(ids, e["block_hashes"], parents, tokens):
                s.hashes[b], s.parent_hashes[b] = h, p
                s.token_ids[b] = tuple(t) if t is not None else None
                s.cached[h] = b
        elif op in RELEASE_OPS:
            for b, rc in zip(ids, e["ref_counts"]):
                s.ref_counts[b] = rc
                if rc == 0:
                    fq[b] = None
                    if s.hashes[b] is None:  # uncached blocks are reused first
                        fq.move_to_end(b, last=False)
        elif op == "reset":
            s.hashes = [None] * s.num_blocks
            s.parent_hashes = [None] * s.num_blocks
            s.token_ids = [None] * s.num_blocks
            s.cached.clear()
        elif op == "snapshot":
            s = KVState.from_snapshot(e["state"])
            fq = OrderedDict.fromkeys(s.free_queue)
    s.free_queue = list(fq)
    return s


def num_blocks_of(kv: pd.DataFrame) -> int | None:
    snaps = kv[kv["op"] == "snapshot"]
    return int(snaps.iloc[0]["state"]["num_blocks"]) if len(snaps) else None


def block_size_of(kv: pd.DataFrame) -> int | None:
    snaps = kv[kv["op"] == "snapshot"]
    return int(snaps.iloc[0]["state"]["block_size"]) if len(snaps) else None


def utilization(kv: pd.DataFrame, num_blocks: int | None = None) -> pd.DataFrame:
    """Block counts after every op and usage = used / total (vLLM's kv_cache_usage_perc, as a fraction)."""
    total = num_blocks or num_blocks_of(kv)
    out = kv[["t_ns", "step", "op", "num_used", "num_free", "num_cached"]].copy()
    out["usage"] = out["num_used"] / total if total else None
    return out.reset_index(drop=True)


def prefix_hits(requests: pd.DataFrame, tokens: pd.DataFrame) -> pd.DataFrame:
    """One row per admission (a 'scheduled' event): the tokens looked up in the prefix cache (prompt plus
    outputs so far, as a re-admission after preemption recomputes them) and the tokens found."""
    arrivals = requests[requests["event"] == "arrival"].set_index("request_id")["prompt_len"].to_dict()
    sched = requests[requests["event"] == "scheduled"].sort_values("t_ns")
    tok_times = tokens.groupby("request_id")["t_ns"].apply(sorted).to_dict() if len(tokens) else {}
    rows = []
    for r in sched.itertuples(index=False):
        prompt = arrivals.get(r.request_id)
        if prompt is None:
            continue
        emitted = sum(1 for t in tok_times.get(r.request_id, ()) if t < r.t_ns)
        rows.append((r.t_ns, r.step, r.request_id, prompt + emitted, int(r.cached_tokens or 0)))
    out = pd.DataFrame(rows, columns=["t_ns", "step", "request_id", "query_tokens", "hit_tokens"])
    out["cum_hit_rate"] = out["hit_tokens"].cumsum() / out["query_tokens"].cumsum().where(lambda s: s > 0)
    return out


def hit_rate(hits: pd.DataFrame) -> float | None:
    """Prefix-cache hit rate in tokens over the whole run; None with no lookups."""
    queries = hits["query_tokens"].sum()
    return float(hits["hit_tokens"].sum() / queries) if queries else None


def block_lives(kv: pd.DataFrame) -> pd.DataFrame:
    """One row per residency of a block: from being taken off the free queue (allocated) to eviction,
    reallocation (an uncached block reused), reset, or the end of the log ('open')."""
    cols = ["block_id", "alloc_ns", "stored_ns", "released_ns", "end_ns", "end", "hits",
            "lifetime_ns", "idle_before_evict_ns"]  # fmt: skip
    live: dict[int, dict] = {}
    rows = []

    def end(b: int, t: int, how: str) -> None:
        life = live.pop(b, None)
        if life is None:
            return
        life.update(end_ns=t, end=how, lifetime_ns=t - life["alloc_ns"])
        if how == "evicted" and life["released_ns"] is not None:
            life["idle_before_evict_ns"] = t - life["released_ns"]
        rows.append(life)

    for e in _records(kv):
        op, t, ids = e["op"], e["t_ns"], e["block_ids"] or []
        if op in ("allocate", "append"):
            for b in ids:
                end(b, t, "reallocated")  # a free uncached block taken again (evicted ones ended already)
                live[b] = {"block_id": b, "alloc_ns": t, "stored_ns": None, "released_ns": None, "end_ns": None, "end": "open",
                               "hits": 0, "lifetime_ns": None, "idle_before_evict_ns": None}  # fmt: skip
        elif op == "hit":
            for b in ids:
                if b in live:
                    live[b]["hits"] += 1
                    live[b]["released_ns"] = None
        elif op == "stored":
            for b in ids:
                if b in live:
                    live[b]["stored_ns"] = t
        elif op in RELEASE_OPS:
            for b, rc in zip(ids, e["ref_counts"]):
                if rc == 0 and b in live:
                    live[b]["released_ns"] = t
        elif op == "evict":
            for b in ids:
                end(b, t, "evicted")
        elif op == "reset":
            for b in list(live):
                if live[b]["released_ns"] is not None:
                    end(b, t, "reset")
    rows.extend(live.values())
    return pd.DataFrame(rows, columns=cols)


def reuse_gaps(kv: pd.DataFrame) -> pd.DataFrame:
    """Time between consecutive accesses of a block's content: its allocation, then every prefix hit."""
    last: dict[int, int] = {}
    rows = []
    for e in _records(kv):
        op, t = e["op"], e["t_ns"]
        if op in ("allocate", "append"):
            for b in e["block_ids"]:
                last[b] = t
        elif op == "hit":
            for b in e["block_ids"]:
                if b in last:
                    rows.append((b, last[b], t, t - last[b]))
                last[b] = t
        elif op == "evict":
            for b in e["block_ids"]:
                last.pop(b, None)
    return pd.DataFrame(rows, columns=["block_id", "prev_access_ns", "t_ns", "gap_ns"])


def internal_fragmentation(kv: pd.DataFrame, requests: pd.DataFrame, tokens: pd.DataFrame,
                           block_size: int | None = None) -> pd.DataFrame:  # fmt: skip
    """Per step, after it: slots allocated to running requests, slots holding KV (prompt + outputs - 1:
    the newest token has no KV yet), and the difference, the unused slots of partly filled blocks.
    During a chunked prefill the KV held is overestimated, so the unused slots are clipped at zero."""
    bs = block_size or block_size_of(kv)
    prompt = requests[requests["event"] == "arrival"].set_index("request_id")["prompt_len"].to_dict()
    held: dict[str, int] = {}
    out_tokens: dict[str, int] = {}
    kv_by_step = {s: g for s, g in kv[kv["step"].notna()].groupby("step")}
    tok_by_step = tokens.groupby("step")["request_id"].apply(list).to_dict() if len(tokens) else {}
    rows = []
    for step in sorted(set(kv_by_step) | set(tok_by_step)):
        for e in kv_by_step[step].to_dict("records") if step in kv_by_step else ():
            rid = e["request_id"]
            if e["op"] in ACCESS_OPS and rid is not None:
                held[rid] = held.get(rid, 0) + len(e["block_ids"])
            elif e["op"] in RELEASE_OPS:
                held.pop(rid, None)
        for rid in tok_by_step.get(step, ()):
            out_tokens[rid] = out_tokens.get(rid, 0) + 1
        allocated = used = 0
        for rid, blocks in held.items():
            if rid not in prompt:
                continue
            slots = blocks * bs
            kv_tokens = min(slots, prompt[rid] + out_tokens.get(rid, 0) - 1)
            allocated += slots
            used += kv_tokens
        unused = max(allocated - used, 0)
        rows.append((int(step), allocated, used, unused, unused / allocated if allocated else None))
    return pd.DataFrame(rows, columns=["step", "allocated_slots", "used_slots", "unused_slots", "unused_fraction"])


def preemptions(kv: pd.DataFrame) -> pd.DataFrame:
    """Preemptions per step (one 'preempt' op per preempted request) and the running total."""
    p = kv[kv["op"] == "preempt"]
    out = p.groupby("step").size().rename("preemptions").reset_index()
    out["total"] = out["preemptions"].cumsum()
    return out
