"""Request latency analysis: pure functions over the 'requests' and 'tokens' streams.

Definitions (vLLM's, in ms):
    queue   = first scheduled - arrival          (request_queue_time_seconds)
    prefill = first token - first scheduled      (request_prefill_time_seconds)
    TTFT    = first token - arrival              (time_to_first_token_seconds)
    ITL     = gap between consecutive tokens     (inter_token_latency_seconds)
    TPOT    = (last token - first token) / (tokens - 1), the mean ITL of a request
    E2E     = finished - arrival                 (e2e_request_latency_seconds)
"""

from __future__ import annotations

import itertools

import pandas as pd

from traceinfer.analysis.latency import PERCENTILES, summarize

COLUMNS = [
    "request_id", "arrival_ns", "scheduled_ns", "first_token_ns", "last_token_ns", "finished_ns",
    "prompt_len", "num_output_tokens", "num_tokens_logged", "cached_tokens", "num_preemptions", "finish_reason",
    "queue_ms", "prefill_ms", "ttft_ms", "tpot_ms", "itl_max_ms", "e2e_ms",
]  # fmt: skip


def request_metrics(requests: pd.DataFrame, tokens: pd.DataFrame) -> pd.DataFrame:
    """One row per request that arrived while the probe was on, in arrival order."""
    ev = requests.sort_values("t_ns", kind="stable")
    tok = tokens.sort_values(["request_id", "index"], kind="stable")
    times = tok.groupby("request_id")["t_ns"].apply(list).to_dict() if len(tok) else {}
    rows = []
    for rid, g in ev.groupby("request_id", sort=False):
        first = {e: grp for e, grp in g.groupby("event")}
        if "arrival" not in first:
            continue  # arrived before the probe attached
        arrival = first["arrival"].iloc[0]
        sched = first.get("scheduled")
        fin = first.get("finished")
        t = times.get(rid, [])
        arrival_ns = int(arrival["t_ns"])
        scheduled_ns = int(sched["t_ns"].iloc[0]) if sched is not None else None
        first_tok = t[0] if t else None
        last_tok = t[-1] if t else None
        finished_ns = int(fin["t_ns"].iloc[0]) if fin is not None else None
        gaps = [b - a for a, b in itertools.pairwise(t)]
        rows.append({
            "request_id": rid,
            "arrival_ns": arrival_ns,
            "scheduled_ns": scheduled_ns,
            "first_token_ns": first_tok,
            "last_token_ns": last_tok,
            "finished_ns": finished_ns,
            "prompt_len": arrival["prompt_len"],
            "num_output_tokens": int(fin["num_output_tokens"].iloc[0]) if fin is not None else None,
            "num_tokens_logged": len(t),
            "cached_tokens": int(sched["cached_tokens"].fillna(0).iloc[0]) if sched is not None else None,
            "num_preemptions": len(first["preempted"]) if "preempted" in first else 0,
            "finish_reason": fin["reason"].iloc[0] if fin is not None else None,
            "queue_ms": _ms(scheduled_ns, arrival_ns),
            "prefill_ms": _ms(first_tok, scheduled_ns),
            "ttft_ms": _ms(first_tok, arrival_ns),
            "tpot_ms": (last_tok - first_tok) / (len(t) - 1) / 1e6 if len(t) > 1 else None,
            "itl_max_ms": max(gaps) / 1e6 if gaps else None,
            "e2e_ms": _ms(finished_ns, arrival_ns),
        })  # fmt: skip
    return pd.DataFrame(rows, columns=COLUMNS)


def _ms(end: int | None, start: int | None) -> float | None:
    return (end - start) / 1e6 if end is not None and start is not None else None


def inter_token_latencies(tokens: pd.DataFrame) -> pd.DataFrame:
    """Every inter-token gap: request_id, index (of the later token), t_ns, itl_ms."""
    tok = tokens.sort_values(["request_id", "index"], kind="stable")
    prev = tok.groupby("request_id")["t_ns"].shift()
    out = tok.assign(itl_ms=(tok["t_ns"] - prev) / 1e6)[["request_id", "index", "t_ns", "itl_ms"]]
    return out[out["itl_ms"].notna()].reset_index(drop=True)


def latency_summary(metrics: pd.DataFrame, percentiles=PERCENTILES) -> pd.DataFrame:
    """Percentiles and mean of each latency column over requests (one row per column)."""
    cols = ["queue_ms", "prefill_ms", "ttft_ms", "tpot_ms", "e2e_ms"]
    return pd.DataFrame({c: summarize(metrics[c].astype(float).tolist(), percentiles) for c in cols}).T
