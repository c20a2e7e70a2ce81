"""The columnar analyzers (analysis.requests, analysis.kv, analysis.latency) against the obvious per-row
implementations they replaced, kept here as oracles: on a run from scripts/make_big_run.py (the engine's
block manager on a simulated clock: hits, evictions, reallocations, preemptions), on random block-manager
logs with resets, on odd frames (tokens out of order, missing events, unpaired counts), and with the list
columns as Arrow instead of Python lists. Frames must be equal, dtypes included. Nothing here is timed:
scripts/bench_report.py times them."""

from __future__ import annotations

import dataclasses
import itertools
import math
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from traceinfer import open_run
from traceinfer.analysis import kv, latency, requests
from traceinfer.engine.block_manager import BlockManager
from traceinfer.engine.hooks import Hooks
from traceinfer.engine.sampling_params import SamplingParams
from traceinfer.engine.sequence import Sequence
from traceinfer.probes.kv_events import VLLM_EVENTS, block_manager_state
from traceinfer.rundir import STREAMS

ROOT = Path(__file__).resolve().parents[1]


# -- the oracles: per-row loops, as the analyzers were written for small runs ---------------------
def ref_percentile(values, q):
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def ref_summarize(values, percentiles=(50, 90, 99)):
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    out = {f"p{q}": ref_percentile(values, q) for q in percentiles}
    out["mean"] = sum(values) / len(values) if values else None
    return out


def _ms(end, start):
    return (end - start) / 1e6 if end is not None and start is not None else None


def ref_request_metrics(req, tok):
    ev = req.sort_values("t_ns", kind="stable")
    t_sorted = tok.sort_values(["request_id", "index"], kind="stable")
    times = t_sorted.groupby("request_id")["t_ns"].apply(list).to_dict() if len(t_sorted) else {}
    rows = []
    for rid, g in ev.groupby("request_id", sort=False):
        first = {e: grp for e, grp in g.groupby("event")}
        if "arrival" not in first:
            continue
        arrival, sched, fin = first["arrival"].iloc[0], first.get("scheduled"), first.get("finished")
        t = times.get(rid, [])
        arrival_ns = int(arrival["t_ns"])
        scheduled_ns = int(sched["t_ns"].iloc[0]) if sched is not None else None
        first_tok, last_tok = (t[0], t[-1]) if t else (None, None)
        finished_ns = int(fin["t_ns"].iloc[0]) if fin is not None else None
        gaps = [b - a for a, b in itertools.pairwise(t)]
        rows.append({
            "request_id": rid, "arrival_ns": arrival_ns, "scheduled_ns": scheduled_ns, "first_token_ns": first_tok,
            "last_token_ns": last_tok, "finished_ns": finished_ns, "prompt_len": arrival["prompt_len"],
            "num_output_tokens": int(fin["num_output_tokens"].iloc[0]) if fin is not None else None,
            "num_tokens_logged": len(t),
            "cached_tokens": int(sched["cached_tokens"].fillna(0).iloc[0]) if sched is not None else None,
            "num_preemptions": len(first["preempted"]) if "preempted" in first else 0,
            "finish_reason": fin["reason"].iloc[0] if fin is not None else None,
            "queue_ms": _ms(scheduled_ns, arrival_ns), "prefill_ms": _ms(first_tok, scheduled_ns),
            "ttft_ms": _ms(first_tok, arrival_ns),
            "tpot_ms": (last_tok - first_tok) / (len(t) - 1) / 1e6 if len(t) > 1 else None,
            "itl_max_ms": max(gaps) / 1e6 if gaps else None, "e2e_ms": _ms(finished_ns, arrival_ns),
        })  # fmt: skip
    return pd.DataFrame(rows, columns=requests.COLUMNS)


def ref_inter_token_latencies(tok):
    t_sorted = tok.sort_values(["request_id", "index"], kind="stable")
    prev = t_sorted.groupby("request_id")["t_ns"].shift()
    out = t_sorted.assign(itl_ms=(t_sorted["t_ns"] - prev) / 1e6)[["request_id", "index", "step", "t_ns", "itl_ms"]]
    return out[out["itl_ms"].notna()].reset_index(drop=True)


def ref_prefix_hits(req, tok):
    arrivals = req[req["event"] == "arrival"].set_index("request_id")["prompt_len"].to_dict()
    sched = req[req["event"] == "scheduled"].sort_values("t_ns")
    tok_times = tok.groupby("request_id")["t_ns"].apply(sorted).to_dict() if len(tok) else {}
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


def ref_block_lives(events):
    cols = [
        "block_id",
        "alloc_ns",
        "stored_ns",
        "released_ns",
        "end_ns",
        "end",
        "hits",
        "lifetime_ns",
        "idle_before_evict_ns",
    ]
    live, rows = {}, []

    def end(b, t, how):
        life = live.pop(b, None)
        if life is None:
            return
        life.update(end_ns=t, end=how, lifetime_ns=t - life["alloc_ns"])
        if how == "evicted" and life["released_ns"] is not None:
            life["idle_before_evict_ns"] = t - life["released_ns"]
        rows.append(life)

    for e in events.to_dict("records"):
        op, t, ids = e["op"], e["t_ns"], e["block_ids"] or []
        if op in ("allocate", "append"):
            for b in ids:
                end(b, t, "reallocated")
                live[b] = {"block_id": b, "alloc_ns": t, "stored_ns": None, "released_ns": None, "end_ns": None,
                           "end": "open", "hits": 0, "lifetime_ns": None, "idle_before_evict_ns": None}  # fmt: skip
        elif op == "hit":
            for b in ids:
                if b in live:
                    live[b]["hits"] += 1
                    live[b]["released_ns"] = None
        elif op == "stored":
            for b in ids:
                if b in live:
                    live[b]["stored_ns"] = t
        elif op in ("free", "preempt"):
            for b, rc in zip(ids, e["ref_counts"] or []):
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


def ref_reuse_gaps(events):
    last, rows = {}, []
    for e in events.to_dict("records"):
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


def ref_internal_fragmentation(events, req, tok, bs):
    prompt = req[req["event"] == "arrival"].set_index("request_id")["prompt_len"].to_dict()
    held, out_tokens = {}, {}
    kv_by_step = {s: g for s, g in events[events["step"].notna()].groupby("step")}
    tok_by_step = tok.groupby("step")["request_id"].apply(list).to_dict() if len(tok) else {}
    rows = []
    for step in sorted(set(kv_by_step) | set(tok_by_step)):
        for e in kv_by_step[step].to_dict("records") if step in kv_by_step else ():
            rid = e["request_id"]
            if e["op"] in kv.ACCESS_OPS and rid is not None:
                held[rid] = held.get(rid, 0) + len(e["block_ids"])
            elif e["op"] in kv.RELEASE_OPS:
                held.pop(rid, None)
        for rid in tok_by_step.get(step, ()):
            out_tokens[rid] = out_tokens.get(rid, 0) + 1
        allocated = used = 0
        for rid, blocks in held.items():
            if rid not in prompt:
                continue
            slots = blocks * bs
            allocated += slots
            used += min(slots, prompt[rid] + out_tokens.get(rid, 0) - 1)
        unused = max(allocated - used, 0)
        rows.append((int(step), allocated, used, unused, unused / allocated if allocated else None))
    return pd.DataFrame(rows, columns=["step", "allocated_slots", "used_slots", "unused_slots", "unused_fraction"])


# -- inputs ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """A generated run with a small KV cache (evictions, reallocations) and frequent forced preemptions."""
    out = tmp_path_factory.mktemp("gen") / "run"
    subprocess.run([sys.executable, str(ROOT / "scripts/make_big_run.py"), str(out), "--minutes", "0.1",
                    "--tokens", "30000", "--kv-blocks", "700", "--preempt-every", "40"], check=True, capture_output=True)  # fmt: skip
    run = open_run(out)
    return run, run.frame("requests"), run.frame("tokens"), run.frame("kv_events")


def random_log(seed: int, num_blocks: int = 24, block_size: int = 4) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """kv_events, requests and tokens frames of a random workload on the engine's BlockManager: shared
    prefixes, decodes, frees, preemptions, and prefix-cache resets while nothing is held."""
    r = random.Random(seed)
    hooks = Hooks()
    ops: list = []
    unsubscribe = hooks.subscribe(lambda point, phase, t, fields: ops.extend(fields["ops"]), ("block",))
    bm = BlockManager(num_blocks, block_size, True, hooks)
    kv_rows = [
        (
            0,
            None,
            "snapshot",
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            bm.num_free_blocks,
            0,
            0,
            block_manager_state(bm),
        )
    ]
    req_rows, tok_rows = [], []
    running, clock = [], itertools.count(1)
    bases = [[r.randrange(50) for _ in range(12)] for _ in range(3)]
    for step in range(120):
        bm.step = step
        if r.random() < 0.3 and len(running) < 4:
            rid = f"r{step}"
            prompt = r.choice(bases)[: r.randrange(13)] + [r.randrange(50) for _ in range(r.randrange(1, 9))]
            seq = Sequence(rid, prompt, SamplingParams(max_tokens=30), arrival_ns=next(clock))
            req_rows.append((seq.arrival_ns, step, rid, "arrival", len(prompt)))
            prefix = bm.find_cached_prefix(seq)
            if bm.allocate(seq, seq.num_tokens - len(prefix) * block_size, prefix):
                seq.num_computed_tokens = seq.num_tokens
                req_rows.append((next(clock), step, rid, "scheduled", None))
                running.append(seq)
        for seq in list(running):
            if r.random() < 0.05:  # preempted: its blocks go, its outputs stay
                bm.free(seq, op="preempt")
                running.remove(seq)
                continue
            if not bm.allocate(seq, 1):
                continue
            seq.token_ids.append(r.randrange(50))
            seq.num_computed_tokens = seq.num_tokens - 1
            tok_rows.append((next(clock), step, seq.request_id, seq.num_output_tokens - 1, seq.token_ids[-1]))
            bm.cache_full_blocks(seq)
            if r.random() < 0.1:
                bm.free(seq)
                running.remove(seq)
        if not running and r.random() < 0.3:
            bm.reset_prefix_cache()
        bm.flush_ops()
        for o in ops:
            kv_rows.append((next(clock), o.step, o.op, VLLM_EVENTS.get(o.op), o.request_id, list(o.block_ids),
                            list(o.block_hashes), o.parent_hashes, list(o.ref_counts),
                            [list(t) for t in o.token_ids] if o.token_ids else None, o.num_free, o.num_used, o.num_cached, None))  # fmt: skip
        ops.clear()
    unsubscribe()
    events = pd.DataFrame(kv_rows, columns=list(STREAMS["kv_events"].names))
    events["step"] = events["step"].astype(float)  # as a frame read from a run: the snapshot row has none
    reqs = pd.DataFrame(req_rows, columns=["t_ns", "step", "request_id", "event", "prompt_len"])
    toks = pd.DataFrame(tok_rows, columns=["t_ns", "step", "request_id", "index", "token_id"])
    return events, reqs, toks


def arrow_lists(events: pd.DataFrame) -> pd.DataFrame:
    """The same frame with its list columns Arrow-backed (no Python lists)."""
    import pyarrow as pa

    out = events.copy()
    for name, typ in (("block_ids", pa.list_(pa.int64())), ("block_hashes", pa.list_(pa.int64())),
                      ("parent_block_hashes", pa.list_(pa.int64())), ("ref_counts", pa.list_(pa.int64())),
                      ("token_ids", pa.list_(pa.list_(pa.int64())))):  # fmt: skip
        out[name] = pd.Series(
            pd.arrays.ArrowExtensionArray(pa.array(events[name].tolist(), type=typ)), index=events.index
        )
    return out


def check_kv(events, req, tok, block_size):
    pd.testing.assert_frame_equal(kv.block_lives(events), ref_block_lives(events))
    pd.testing.assert_frame_equal(kv.reuse_gaps(events), ref_reuse_gaps(events))
    pd.testing.assert_frame_equal(
        kv.internal_fragmentation(events, req, tok, block_size),
        ref_internal_fragmentation(events, req, tok, block_size),
    )


# -- the tests ----------------------------------------------------------------------------------
def test_request_series_match_the_per_request_loops(generated):
    _, req, tok, _ = generated
    assert (req["event"] == "preempted").any() and (req["event"] == "finished").any()
    metrics = requests.request_metrics(req, tok)
    pd.testing.assert_frame_equal(metrics, ref_request_metrics(req, tok))
    pd.testing.assert_frame_equal(requests.inter_token_latencies(tok), ref_inter_token_latencies(tok))
    pd.testing.assert_frame_equal(kv.prefix_hits(req, tok), ref_prefix_hits(req, tok))
    summary = requests.latency_summary(metrics)
    for column in ("queue_ms", "ttft_ms", "tpot_ms", "e2e_ms"):
        assert summary.loc[column].to_dict() == pytest.approx(ref_summarize(metrics[column].tolist()), rel=1e-12)


def test_kv_series_match_the_per_op_loops(generated):
    run, req, tok, events = generated
    ops = set(events["op"])
    assert {"snapshot", "allocate", "append", "hit", "stored", "free", "preempt", "evict"} <= ops, ops
    lives = kv.block_lives(events)
    assert {"evicted", "reallocated", "open"} <= set(lives["end"])
    check_kv(events, req, tok, run.manifest["engine"]["block_size"])
    pd.testing.assert_frame_equal(
        kv.internal_fragmentation(events, req, tok), ref_internal_fragmentation(events, req, tok, 16)
    )
    # Arrow-backed list columns give the same frames and the same replay
    as_arrow = arrow_lists(events)
    pd.testing.assert_frame_equal(kv.block_lives(as_arrow), lives)
    pd.testing.assert_frame_equal(kv.reuse_gaps(as_arrow), kv.reuse_gaps(events))
    pd.testing.assert_frame_equal(
        kv.internal_fragmentation(as_arrow, req, tok), kv.internal_fragmentation(events, req, tok)
    )
    assert kv.replay(as_arrow) == kv.replay(events) == kv.replay(events.to_dict("records"))


@pytest.mark.parametrize("seed", range(8))
def test_random_block_manager_logs_with_resets(seed):
    events, req, tok = random_log(seed)
    check_kv(events, req, tok, 4)
    assert dataclasses.asdict(kv.replay(events))["ref_counts"] == kv.replay(arrow_lists(events)).ref_counts
    # records instead of a frame
    records = events.to_dict("records")
    pd.testing.assert_frame_equal(kv.block_lives(records), ref_block_lives(events))
    pd.testing.assert_frame_equal(kv.reuse_gaps(records), ref_reuse_gaps(events))


def test_resets_are_in_the_random_logs():
    assert any((random_log(seed)[0]["op"] == "reset").any() for seed in range(8))


def test_odd_frames():
    """Tokens out of index order and with a repeated index, requests without arrival, scheduling or finish,
    tokens of requests that never arrived, a NaN prompt, release counts that do not pair up."""
    req = pd.DataFrame({
        "t_ns": [10, 5, 30, 31, 40, 41, 50, 70, 71],
        "step": [0.0, 0.0, 1.0, 1.0, 2.0, 2.0, 3.0, 4.0, 4.0],
        "request_id": ["a", "b", "a", "b", "c", "zz", "a", "c", None],
        "event": ["arrival", "arrival", "scheduled", "scheduled", "arrival", "scheduled", "finished", "preempted", "arrival"],
        "prompt_len": [4.0, np.nan, np.nan, np.nan, 9.0, np.nan, np.nan, np.nan, 3.0],
        "cached_tokens": [np.nan, np.nan, 4.0, 0.0, np.nan, 0.0, np.nan, np.nan, np.nan],
        "reason": [None, None, None, None, None, None, "length", None, None],
        "num_output_tokens": [np.nan] * 6 + [3.0, np.nan, np.nan],
    })  # fmt: skip
    req["request_id"] = req["request_id"].astype("str")
    req["reason"] = req["reason"].astype("str")
    tok = pd.DataFrame({
        "t_ns": [33, 35, 34, 36, 37, 39, 45], "step": [1, 2, 2, 3, 3, 3, 4],
        "request_id": ["a", "a", "a", "b", "zz", "b", "a"], "index": [0, 2, 1, 0, 0, 0, 3],
        "token_id": [1, 2, 3, 4, 5, 6, 7],
    })  # fmt: skip
    tok["request_id"] = tok["request_id"].astype("str")
    pd.testing.assert_frame_equal(requests.request_metrics(req, tok), ref_request_metrics(req, tok))
    pd.testing.assert_frame_equal(requests.inter_token_latencies(tok), ref_inter_token_latencies(tok))
    pd.testing.assert_frame_equal(kv.prefix_hits(req, tok), ref_prefix_hits(req, tok))
    no_count = req.assign(cached_tokens=req["cached_tokens"].where(req["request_id"] != "b"))  # the loop raised here
    assert kv.prefix_hits(no_count, tok)["hit_tokens"].tolist() == [4, 0]
    empty = tok.iloc[:0]
    pd.testing.assert_frame_equal(requests.request_metrics(req, empty), ref_request_metrics(req, empty))
    pd.testing.assert_frame_equal(requests.request_metrics(req.iloc[2:4], tok), ref_request_metrics(req.iloc[2:4], tok))
    pd.testing.assert_frame_equal(kv.prefix_hits(req, empty), ref_prefix_hits(req, empty))

    names = list(STREAMS["kv_events"].names)
    rows = [
        (1, 1.0, "allocate", "a", [0, 1]), (2, 1.0, "allocate", "c", [2]), (3, 2.0, "stored", "a", [0]),
        (4, 2.0, "append", "c", [3]), (5, 3.0, "free", "a", [1, 0]), (6, 3.0, "hit", "b", [0]),
        (7, 4.0, "evict", None, [1]), (8, 4.0, "preempt", "c", [3, 2]), (9, 5.0, "allocate", "b", [1, 3]),
    ]  # fmt: skip
    refs = {"free": [0, 0], "preempt": [0]}  # the preempt's counts are one short: zip pairs the first only
    events = pd.DataFrame([{n: None for n in names} | {"t_ns": t, "step": s, "op": o, "request_id": rid, "block_ids": ids,
                            "ref_counts": refs.get(o, [1] * len(ids))} for t, s, o, rid, ids in rows], columns=names)  # fmt: skip
    events["request_id"] = events["request_id"].astype("str")
    check_kv(events, req, tok, 4)
    check_kv(arrow_lists(events), req, tok, 4)


def test_summarize_takes_lists_arrays_and_series():
    values = np.random.default_rng(0).exponential(size=1001)
    with_gaps = [*values.tolist(), None, float("nan")]
    expected = ref_summarize(with_gaps)
    for given in (with_gaps, np.array([*values, np.nan]), pd.Series(with_gaps, dtype=float), tuple(with_gaps)):
        got = latency.summarize(given)
        assert got == pytest.approx(expected, rel=1e-12) and all(type(v) is float for v in got.values())
    assert latency.summarize(pd.Series([3, None, 1], dtype="Int64")) == {
        "p50": 2.0,
        "p90": 2.8,
        "p99": 2.98,
        "mean": 2.0,
    }
    assert latency.summarize([None, float("nan")]) == {"p50": None, "p90": None, "p99": None, "mean": None}
    assert latency.summarize([], (50,)) == {"p50": None, "mean": None}
    for q in (0, 37.5, 50, 90, 99, 100):
        assert latency.percentile(values, q) == pytest.approx(ref_percentile(values.tolist(), q), rel=1e-12)
