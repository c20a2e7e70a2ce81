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

Columnar: a 10-minute GPU run logs millions of block ops, so the derived series explode the ops' block
lists into one row per (op, block) and work on numpy arrays grouped by block or request; only replay
applies the ops one at a time (it must be exact, and it is a few seconds for millions of ops).
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from traceinfer.analysis.requests import group_order, int_or_null, token_runs
from traceinfer.rundir.schema import STREAMS

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
        """From a 'snapshot' row's state (traceinfer.probes.kv_events.block_manager_state): sparse (free
        queue runs and the blocks that hold something) or, in runs written before 2026-11-30, every block's
        lists in full."""
        n = state["num_blocks"]
        if "free_runs" in state:
            ref_counts, hashes, parents = [0] * n, [None] * n, [None] * n
            tokens: list = [None] * n
            for block_id, ref, h, parent, toks in state["blocks"]:
                ref_counts[block_id], hashes[block_id], parents[block_id] = ref, h, parent
                tokens[block_id] = tuple(toks) if toks is not None else None
            free = [i for first, count in state["free_runs"] for i in range(first, first + count)]
        else:
            ref_counts, hashes, parents = list(state["ref_counts"]), list(state["hashes"]), list(state["parent_hashes"])
            tokens = [tuple(t) if t is not None else None for t in state["token_ids"]]
            free = list(state["free_queue"])
        return cls(
            num_blocks=n, block_size=state["block_size"], ref_counts=ref_counts, hashes=hashes,
            parent_hashes=parents, token_ids=tokens, free_queue=free,
            cached={h: b for b, h in enumerate(hashes) if h is not None},
        )  # fmt: skip


def _frame(kv) -> pd.DataFrame:
    """A kv_events frame, or a list of its records as one."""
    if isinstance(kv, pd.DataFrame):
        return kv
    return pd.DataFrame.from_records(list(kv), columns=list(STREAMS["kv_events"].names))


_REPLAY_COLUMNS = ("op", "block_ids", "block_hashes", "parent_block_hashes", "ref_counts", "token_ids", "state")


def replay(kv) -> KVState:
    """Apply every op of the log, from its first 'snapshot' row, the way BlockManager applies it."""
    if isinstance(kv, pd.DataFrame):
        columns = [kv[c].tolist() for c in _REPLAY_COLUMNS]
    else:
        records = list(kv)
        columns = [[e.get(c) for e in records] for c in _REPLAY_COLUMNS]
    events = list(zip(*columns))
    if not events or events[0][0] != "snapshot":
        raise ValueError("the KV event log does not start with a 'snapshot' row; it cannot be replayed")
    s = KVState.from_snapshot(events[0][6])
    fq: OrderedDict[int, None] = OrderedDict.fromkeys(s.free_queue)
    for op, ids, hashes, parents, refs, tokens, state in events[1:]:
        ids = ids or []
        if op in ACCESS_OPS:
            for b, rc in zip(ids, refs):
                fq.pop(b, None)
                s.ref_counts[b] = rc
        elif op == "evict":
            for b, h in zip(ids, hashes):
                fq.pop(b, None)
                if s.cached.get(h) == b:
                    del s.cached[h]
                s.hashes[b] = s.parent_hashes[b] = s.token_ids[b] = None
        elif op == "stored":
            parents = parents or [None] * len(ids)
            tokens = tokens or [None] * len(ids)
            for b, h, p, t in zip(ids, hashes, parents, tokens):
                s.hashes[b], s.parent_hashes[b] = h, p
                s.token_ids[b] = tuple(t) if t is not None else None
                s.cached[h] = b
        elif op in RELEASE_OPS:
            for b, rc in zip(ids, refs):
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
            s = KVState.from_snapshot(state)
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
    out = kv[["t_ns", "step", "op", "num_used", "num_free", "num_cached"]].reset_index(drop=True)
    out["usage"] = out["num_used"] / total if total else None
    return out


def prefix_hits(requests: pd.DataFrame, tokens: pd.DataFrame) -> pd.DataFrame:
    """One row per admission (a 'scheduled' event): the tokens looked up in the prefix cache (prompt plus
    outputs so far, as a re-admission after preemption recomputes them) and the tokens found."""
    arrivals = requests[requests["event"] == "arrival"].drop_duplicates("request_id", keep="last")
    prompts = arrivals.set_index("request_id")["prompt_len"]
    sched = requests[requests["event"] == "scheduled"].sort_values("t_ns")
    sched = sched[sched["request_id"].isin(prompts.index) & sched["request_id"].notna()]
    out = pd.DataFrame({
        "t_ns": sched["t_ns"].to_numpy(), "step": sched["step"].to_numpy(), "request_id": sched["request_id"].to_numpy(),
        "query_tokens": prompts.reindex(sched["request_id"]).to_numpy() + _emitted_before(tokens, sched),
        "hit_tokens": sched["cached_tokens"].fillna(0).to_numpy(np.int64),
    }) if len(sched) else pd.DataFrame([], columns=["t_ns", "step", "request_id", "query_tokens", "hit_tokens"])  # fmt: skip
    out["cum_hit_rate"] = out["hit_tokens"].cumsum() / out["query_tokens"].cumsum().where(lambda s: s > 0)
    return out


def _emitted_before(tokens: pd.DataFrame, events: pd.DataFrame) -> np.ndarray:
    """For each event (request_id, t_ns): how many of its request's tokens came before it (a binary
    search of every event at once within its request's tokens, ordered by time)."""
    count = np.zeros(len(events), dtype=np.int64)
    if not len(tokens) or not len(events):
        return count
    runs = token_runs(tokens, "t_ns")
    times = tokens["t_ns"].to_numpy()[runs.order]
    g = runs.ids.get_indexer(events["request_id"])
    has = g >= 0
    lo = np.where(has, runs.bounds[np.maximum(g, 0)], 0)
    hi = np.where(has, runs.bounds[np.maximum(g, 0) + 1], 0)
    first = lo.copy()
    t = events["t_ns"].to_numpy()
    while (active := lo < hi).any():
        mid = (lo + hi) // 2
        before = np.zeros(len(t), dtype=bool)
        before[active] = times[mid[active]] < t[active]
        lo = np.where(active & before, mid + 1, lo)
        hi = np.where(active & ~before, mid, hi)
    count[:] = lo - first
    return count


def hit_rate(hits: pd.DataFrame) -> float | None:
    """Prefix-cache hit rate in tokens over the whole run; None with no lookups."""
    queries = hits["query_tokens"].sum()
    return float(hits["hit_tokens"].sum() / queries) if queries else None


def _lengths(lists: pd.Series) -> np.ndarray:
    """The length of each row's list (null: 0), as int64."""
    if isinstance(lists.dtype, pd.ArrowDtype):  # lists kept as Arrow: no Python objects
        return lists.list.len().fillna(0).to_numpy(np.int64)
    values = lists.to_numpy()
    null = pd.isna(values)
    lengths = np.zeros(len(null), dtype=np.int64)
    lengths[~null] = np.fromiter(map(len, values[~null]), np.int64, int(len(values) - null.sum()))
    return lengths


def _explode(lists: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """A list column flattened: (the elements as int64, the length of each row's list; null: 0)."""
    lengths = _lengths(lists)
    if isinstance(lists.dtype, pd.ArrowDtype):
        return lists.list.flatten().to_numpy(np.int64), lengths
    values = lists.to_numpy()[lengths > 0]
    return np.fromiter(itertools.chain.from_iterable(values), np.int64, int(lengths.sum())), lengths


_ALLOC, _HIT, _STORED, _RELEASE, _EVICT, _RESET, _NONE = range(7)
_KINDS = {"allocate": _ALLOC, "append": _ALLOC, "hit": _HIT, "stored": _STORED, "free": _RELEASE,
          "preempt": _RELEASE, "evict": _EVICT}  # fmt: skip


def _block_events(kv: pd.DataFrame, ops: tuple[str, ...]) -> dict[str, np.ndarray]:
    """One event per (op, block) of the ``ops`` rows, in log order: kind, block, t_ns, place (its order
    in the log). A release whose reference count did not reach zero is kind _NONE (it changes nothing)."""
    op = kv["op"]
    selected = op.isin(ops).to_numpy()
    rows = np.flatnonzero(selected)
    # every row's list flattened, then the selected rows' elements kept: cheaper than taking rows of
    # Arrow list columns (a copy of each list)
    block, lengths = _explode(kv["block_ids"])
    block, lengths = block[np.repeat(selected, lengths)], lengths[rows]
    codes, names = pd.factorize(op.iloc[rows])
    kind_of_row = np.array([_KINDS.get(name, _NONE) for name in names] + [_NONE], dtype=np.int8)[codes]
    kind = np.repeat(kind_of_row, lengths)
    row = np.repeat(rows, lengths)
    released = np.flatnonzero(kind_of_row == _RELEASE)
    if len(released):  # a release frees a block when its count reaches zero; ids and counts pair up as zip does
        refs, ref_lengths = _explode(kv["ref_counts"])
        ref_starts, ref_lengths = (np.cumsum(ref_lengths) - ref_lengths)[rows[released]], ref_lengths[rows[released]]
        pairs = np.minimum(lengths[released], ref_lengths)
        k = np.arange(int(pairs.sum())) - np.repeat(np.cumsum(pairs) - pairs, pairs)
        slot = np.repeat((np.cumsum(lengths) - lengths)[released], pairs) + k
        rc = refs[np.repeat(ref_starts, pairs) + k]
        kind[kind == _RELEASE] = _NONE  # an element without a count changes nothing
        kind[slot[rc == 0]] = _RELEASE
    place = np.arange(len(kind), dtype=np.int64)
    resets = np.flatnonzero((op == "reset").to_numpy()) if "reset" in ops else np.zeros(0, np.int64)
    if len(resets):  # a reset reaches every block the log names: one event per block, at the reset's place
        seen = np.unique(block)
        at = np.searchsorted(row, resets)  # the reset comes before the elements of later rows
        kind = np.concatenate([kind, np.full(len(seen) * len(resets), _RESET, np.int8)])
        block = np.concatenate([block, np.tile(seen, len(resets))])
        row = np.concatenate([row, np.repeat(resets, len(seen))])
        place = np.concatenate([2 * place + 1, np.repeat(2 * at, len(seen))])
    return {"kind": kind, "block": block, "t_ns": kv["t_ns"].to_numpy(np.int64)[row], "place": place}


def block_lives(kv: pd.DataFrame) -> pd.DataFrame:
    """One row per residency of a block: from being taken off the free queue (allocated) to eviction,
    reallocation (an uncached block reused), reset, or the end of the log ('open')."""
    cols = ["block_id", "alloc_ns", "stored_ns", "released_ns", "end_ns", "end", "hits",
            "lifetime_ns", "idle_before_evict_ns"]  # fmt: skip
    kv = _frame(kv)
    e = _block_events(kv, ("allocate", "append", "hit", "stored", *RELEASE_OPS, "evict", "reset"))
    if not (e["kind"] == _ALLOC).any():
        return pd.DataFrame([], columns=cols)
    # each block's events in log order
    order, bounds = group_order(e["block"], int(e["block"].max()) + 1, e["place"])
    kind, block, t, place = (e.pop(k)[order] for k in ("kind", "block", "t_ns", "place"))
    del order  # a long log has millions of events: hold as few arrays of them at once as we can
    n = len(kind)
    idx = np.arange(n)

    # a life starts at each allocation and runs to the next allocation of the block, or the block's end
    is_alloc = kind == _ALLOC
    alloc = np.flatnonzero(is_alloc)
    next_alloc = np.append(alloc[1:], n)
    alloc_block_end = bounds[np.searchsorted(bounds, alloc, side="right")]  # exclusive end of the block's events
    seg_end = np.minimum(next_alloc, alloc_block_end)
    life = np.cumsum(is_alloc) - 1  # the life an event falls in (valid from its block's first allocation)
    last_alloc = np.maximum.accumulate(np.where(is_alloc, idx, -1))
    in_life = last_alloc >= bounds[block]  # the last allocation was of this block (its events start at bounds[block])
    del last_alloc
    # released_ns before each event: set by a release to zero, cleared by a hit (and by the allocation)
    marker = (kind == _RELEASE) | (kind == _HIT) | is_alloc
    last_marker = np.maximum.accumulate(np.where(marker, idx, 0))
    released_after = np.where(kind[last_marker] == _RELEASE, t[last_marker], -1)  # -1: none
    del marker, last_marker
    released_before = np.zeros(n, dtype=bool)  # whether released before each event (its time: released_after[i - 1])
    released_before[1:] = released_after[:-1] >= 0
    # the first eviction, or reset of a released block, ends the life
    ends_at = np.flatnonzero(in_life & ((kind == _EVICT) | ((kind == _RESET) & released_before)))
    first_end = np.full(len(alloc), -1, dtype=np.int64)
    if len(ends_at):
        lives_ended = life[ends_at]
        first = np.ones(len(ends_at), dtype=bool)
        first[1:] = lives_ended[1:] != lives_ended[:-1]
        first_end[lives_ended[first]] = ends_at[first]
    del in_life, life
    ended = first_end >= 0
    reallocated = ~ended & (next_alloc < alloc_block_end)
    closed = ended | reallocated
    end_at = np.where(ended, first_end, np.minimum(next_alloc, n - 1))  # the event that closes the life
    last = np.where(ended, first_end, seg_end) - 1  # the life's last event before it closes

    hits_cum = np.cumsum(kind == _HIT)
    hits = hits_cum[last] - hits_cum[alloc]
    del hits_cum
    last_stored = np.maximum.accumulate(np.where(kind == _STORED, idx, -1))[last]
    has_stored = last_stored > alloc
    released = np.where(ended, np.where(end_at > 0, released_after[end_at - 1], -1), released_after[last])
    end_ns = t[end_at]
    evicted = ended & (kind[end_at] == _EVICT)
    end = np.array(["open", "reallocated", "reset", "evicted"], dtype=object)[reallocated + 2 * ended + evicted]
    alloc_ns = t[alloc]

    # rows as the log closes them (ends in log order; lives a reset ends in allocation order), then the open ones
    alloc_place = place[alloc]
    # by (end, allocation) as one int64 key (places are below 2**31 on any log that fits in memory): faster than lexsort
    order_closed = np.argsort(place[end_at] * (int(alloc_place.max()) + 1) + alloc_place)
    still_open = np.flatnonzero(~closed)
    rows = np.concatenate(
        [order_closed[closed[order_closed]], still_open[np.argsort(alloc_place[still_open], kind="stable")]]
    )
    has_released = released[rows] >= 0
    shut = closed[rows]
    return pd.DataFrame({
        "block_id": block[alloc][rows],
        "alloc_ns": alloc_ns[rows],
        "stored_ns": int_or_null(t[np.maximum(last_stored, 0)][rows], has_stored[rows]),
        "released_ns": int_or_null(released[rows], has_released),
        "end_ns": int_or_null(end_ns[rows], shut),
        "end": end[rows].tolist(),
        "hits": hits[rows],
        "lifetime_ns": int_or_null(end_ns[rows] - alloc_ns[rows], shut),
        "idle_before_evict_ns": int_or_null(end_ns[rows] - released[rows], evicted[rows] & has_released),
    }, columns=cols)  # fmt: skip


def reuse_gaps(kv: pd.DataFrame) -> pd.DataFrame:
    """Time between consecutive accesses of a block's content: its allocation, then every prefix hit."""
    cols = ["block_id", "prev_access_ns", "t_ns", "gap_ns"]
    kv = _frame(kv)
    e = _block_events(kv, ("allocate", "append", "hit", "evict"))
    if not (e["kind"] == _HIT).any():
        return pd.DataFrame([], columns=cols)
    order, bounds = group_order(e["block"], int(e["block"].max()) + 1, e["place"])
    kind, block, t = e["kind"][order], e["block"][order], e["t_ns"][order]
    # a hit whose block was accessed before (allocation or hit) and not evicted since
    gap = np.zeros(len(kind), dtype=bool)
    gap[1:] = (kind[1:] == _HIT) & (kind[:-1] != _EVICT)
    starts = bounds[:-1]
    gap[starts[starts < len(kind)]] = False
    at = np.flatnonzero(gap)
    at = at[np.argsort(order[at], kind="stable")]  # in log order
    prev, now = t[at - 1], t[at]
    return pd.DataFrame(
        {"block_id": block[at], "prev_access_ns": prev, "t_ns": now, "gap_ns": now - prev}, columns=cols
    )


def _codes_in(values: pd.Series, index: pd.Index) -> np.ndarray:
    """The position in ``index`` of each value (-1: absent), looking up each distinct value once."""
    codes, uniques = pd.factorize(values)
    return np.append(index.get_indexer(uniques), -1)[codes]


def internal_fragmentation(kv: pd.DataFrame, requests: pd.DataFrame, tokens: pd.DataFrame,
                           block_size: int | None = None) -> pd.DataFrame:  # fmt: skip
    """Per step, after it: slots allocated to running requests, slots holding KV (prompt + outputs - 1:
    the newest token has no KV yet), and the difference, the unused slots of partly filled blocks.
    During a chunked prefill the KV held is overestimated, so the unused slots are clipped at zero.

    A request's share of a step's totals changes only at its block ops and its tokens: the totals are
    cumulative sums, by step, of those changes (a step's block ops apply before its tokens)."""
    cols = ["step", "allocated_slots", "used_slots", "unused_slots", "unused_fraction"]
    bs = block_size or block_size_of(kv)
    arrivals = requests[(requests["event"] == "arrival") & requests["request_id"].notna()]
    prompts = arrivals.drop_duplicates("request_id", keep="last").set_index("request_id")["prompt_len"]
    timed = kv["step"].notna().to_numpy()
    num_blocks = _lengths(kv["block_ids"])[timed]  # each op's block count (not its list: a copy of each)
    kv = kv[["step", "op", "request_id"]][timed]
    kv_steps = kv["step"].to_numpy(np.int64)
    tok_steps = tokens["step"].to_numpy(np.int64)
    if not len(kv_steps) + len(tok_steps):
        return pd.DataFrame([], columns=cols)
    first_step = int(min(kv_steps.min(initial=2**62), tok_steps.min(initial=2**62)))
    span = int(max(kv_steps.max(initial=-(2**62)), tok_steps.max(initial=-(2**62)))) - first_step + 1
    present = np.zeros(span, dtype=bool)
    present[kv_steps - first_step] = True
    present[tok_steps - first_step] = True
    steps = np.flatnonzero(present)  # the steps reported, from first_step

    # block ops of requests that arrived, in the order they apply (by step, then as logged):
    # blocks held after each, the blocks taken since the request's last release
    op = kv["op"]
    release = op.isin(RELEASE_OPS).to_numpy()
    code = _codes_in(kv["request_id"], prompts.index)
    rows = np.flatnonzero((op.isin(ACCESS_OPS).to_numpy() | release) & (code >= 0))
    lengths = num_blocks[rows]
    order, kb = group_order(code[rows], len(prompts), kv_steps[rows])
    k_code, k_step, k_release = code[rows][order], kv_steps[rows][order], release[rows][order]
    k_delta = np.where(k_release, 0, lengths[order])
    start = k_release.copy()
    start[kb[:-1][np.diff(kb) > 0]] = True
    cum = np.cumsum(k_delta)
    held = cum - (cum - k_delta)[start][np.cumsum(start) - 1]
    last = np.ones(len(k_code), dtype=bool)  # the state after a (request, step) is its last op's
    key = k_code * span + (k_step - first_step)
    last[:-1] = key[1:] != key[:-1]
    k_key, k_code, k_hold, k_held = key[last], k_code[last], ~k_release[last], held[last]

    k_step = k_key - k_code * span

    # tokens of requests that arrived, by request then step; a request's outputs after each of its op points
    code = _codes_in(tokens["request_id"], prompts.index)
    order, tb = group_order(code, len(prompts), tok_steps)
    t_step = tok_steps[order] - first_step
    t_key = code[order] * span + t_step
    del code, order  # a long run has ten million tokens: hold as few arrays of them at once as we can
    outs_to = np.searchsorted(t_key, k_key, side="right")  # tokens up to (request, step), all requests before
    k_out = outs_to - tb[k_code]

    # a request's share after an op point: slots = blocks x block_size, KV = min(slots, prompt + outputs - 1).
    # Until its next op point its slots stay; each token adds one slot of KV until KV reaches the slots.
    prompt = prompts.to_numpy(np.float64)[k_code]
    slots = np.where(k_hold, k_held * bs, 0)
    room = np.where(np.isnan(prompt), -np.inf, slots - (prompt + k_out - 1))  # no prompt: min() keeps the slots
    kv_now = np.where(k_hold, slots - np.maximum(room, 0), 0.0)
    next_same = np.zeros(len(k_key), dtype=bool)
    next_same[:-1] = k_code[1:] == k_code[:-1]
    seg_end = np.where(next_same, np.searchsorted(t_key, np.append(k_key[1:], 0), side="left"), tb[k_code + 1])
    growing = np.where(k_hold, np.minimum(seg_end - outs_to, np.maximum(room, 0)), 0).astype(np.int64)
    kv_end = kv_now + growing  # the share just before the request's next op point
    # changes by step: at op points from the request's share before (the end of its last segment) ...
    d_slots = slots.astype(np.float64)
    d_slots[1:] -= np.where(next_same[:-1], slots[:-1], 0)
    d_used = kv_now.copy()
    d_used[1:] -= np.where(next_same[:-1], kv_end[:-1], 0.0)
    # ... and +1 at the step of each token that grew a share: the first `growing` tokens after an op point.
    # Those runs are disjoint (each ends before its request's next op point): no two start at one token, no
    # two end at one, and +1 at each start, -1 at each end sum to 1 inside a run, so one byte a token suffices.
    grows = growing > 0
    mark = np.zeros(len(t_key) + 1, dtype=np.int8)
    mark[outs_to[grows]] += 1
    mark[(outs_to + growing)[grows]] -= 1
    grew = np.cumsum(mark[:-1], dtype=np.int8) > 0
    allocated = np.bincount(k_step, weights=d_slots, minlength=span)
    used = np.bincount(k_step, weights=d_used, minlength=span) + np.bincount(t_step[grew], minlength=span)
    allocated = np.rint(np.cumsum(allocated)[steps]).astype(np.int64)
    used = np.rint(np.cumsum(used)[steps])
    if prompts.dtype.kind != "f":
        used = used.astype(np.int64)
    unused = np.maximum(allocated - used, 0)
    fraction = np.where(allocated > 0, unused / np.maximum(allocated, 1), np.nan)
    return pd.DataFrame({
        "step": steps + first_step, "allocated_slots": allocated, "used_slots": used, "unused_slots": unused,
        "unused_fraction": fraction if (allocated > 0).any() else np.full(len(steps), None, dtype=object),
    }, columns=cols)  # fmt: skip


def preemptions(kv: pd.DataFrame) -> pd.DataFrame:
    """Preemptions per step (one 'preempt' op per preempted request) and the running total."""
    p = kv[kv["op"] == "preempt"]
    out = p.groupby("step").size().rename("preemptions").reset_index()
    out["total"] = out["preemptions"].cumsum()
    return out
