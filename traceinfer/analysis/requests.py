"""Request latency analysis: pure functions over the 'requests' and 'tokens' streams.

Definitions (vLLM's, in ms):
    queue   = first scheduled - arrival          (request_queue_time_seconds)
    prefill = first token - first scheduled      (request_prefill_time_seconds)
    TTFT    = first token - arrival              (time_to_first_token_seconds)
    ITL     = gap between consecutive tokens     (inter_token_latency_seconds)
    TPOT    = (last token - first token) / (tokens - 1), the mean ITL of a request
    E2E     = finished - arrival                 (e2e_request_latency_seconds)

Columnar throughout: a 10-minute GPU run has about ten million tokens, so nothing here loops over
requests or tokens in Python. Tokens are grouped by request with one stable sort of integer codes
(``token_runs``); a request's tokens are ordered by output position (or by time) within it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from traceinfer.analysis.latency import PERCENTILES, summarize

COLUMNS = [
    "request_id", "arrival_ns", "scheduled_ns", "first_token_ns", "last_token_ns", "finished_ns",
    "prompt_len", "num_output_tokens", "num_tokens_logged", "cached_tokens", "num_preemptions", "finish_reason",
    "queue_ms", "prefill_ms", "ttft_ms", "tpot_ms", "itl_max_ms", "e2e_ms",
]  # fmt: skip


@dataclass(frozen=True)
class TokenRuns:
    """The rows of a tokens frame grouped by request: group g is rows ``order[bounds[g]:bounds[g + 1]]``
    (positions in the frame), ordered stably by ``key`` within the group. Rows without a request id are
    left out. ``ids`` names the groups (sorted when asked for, else in order of first appearance)."""

    ids: pd.Index
    order: np.ndarray  # int64 row positions, one group after another
    bounds: np.ndarray  # int64, len(ids) + 1

    @property
    def starts(self) -> np.ndarray:
        return self.bounds[:-1]

    @property
    def sizes(self) -> np.ndarray:
        return np.diff(self.bounds)


def group_order(codes: np.ndarray, num_groups: int, key: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Positions with code >= 0 sorted stably by (code, key), and the group bounds into them.

    A stable radix sort of the codes (one 16-bit pass, or two); a stream written in time order is
    usually in key order within each group already, else np.lexsort sorts it."""
    valid = codes >= 0
    missing = int(len(codes) - np.count_nonzero(valid))
    shifted = codes + 1 if missing else codes  # missing (-1) first, then dropped
    largest = num_groups if missing else num_groups - 1  # e.g. 65,536 blocks: one 16-bit pass, not two
    if largest <= 0xFFFF:
        order = np.argsort(shifted.astype(np.uint16), kind="stable")
    elif largest <= 0xFFFFFFFF:  # low 16 bits, then high 16 bits: both passes stable
        order = np.argsort((shifted & 0xFFFF).astype(np.uint16), kind="stable")
        order = order[np.argsort((shifted[order] >> 16).astype(np.uint16), kind="stable")]
    else:
        order = np.argsort(shifted, kind="stable")
    order = order[missing:]
    bounds = np.zeros(num_groups + 1, dtype=np.int64)
    np.cumsum(np.bincount(codes[valid] if missing else codes, minlength=num_groups), out=bounds[1:])
    if key is not None and len(order) > 1:
        k = key[order]
        unordered = k[1:] < k[:-1]
        cuts = bounds[1:-1]
        unordered[cuts[(cuts > 0) & (cuts < len(order))] - 1] = False  # across groups
        if unordered.any() or (k.dtype.kind == "f" and np.isnan(k).any()):
            order = np.lexsort((key, codes))[missing:]  # NaN keys last, as sort_values puts them
    return order.astype(np.int64, copy=False), bounds


def token_runs(tokens: pd.DataFrame, key: str = "index", sort_ids: bool = False) -> TokenRuns:
    """``tokens`` grouped by request_id, each group ordered stably by ``key`` ('index' or 't_ns')."""
    codes, uniques = pd.factorize(tokens["request_id"], sort=sort_ids)
    order, bounds = group_order(codes, len(uniques), tokens[key].to_numpy())
    return TokenRuns(pd.Index(uniques), order, bounds)


def int_or_null(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """A column of integers, null where not ``valid``, typed as pandas types a list of ints and Nones:
    int64 when none is null, float64 (NaN) when some are, object (None) when all are."""
    if valid.all():
        return values.astype(np.int64)
    if not valid.any():
        return np.full(len(values), None, dtype=object)
    out = values.astype(np.float64)
    out[~valid] = np.nan
    return out


def _float_or_none(values: np.ndarray) -> np.ndarray:
    """A column of floats, NaN for absent; all absent: object None (as a list of Nones becomes)."""
    return np.full(len(values), None, dtype=object) if np.isnan(values).all() else values


def _first_event(ev: pd.DataFrame, event: str, ids: pd.Index) -> pd.DataFrame:
    """Each request's first ``event`` row (ev is in time order), one row per id in ``ids`` (NaN where none)."""
    rows = ev[ev["event"] == event].drop_duplicates("request_id")
    return rows.set_index("request_id").reindex(ids)


def request_metrics(requests: pd.DataFrame, tokens: pd.DataFrame, runs: TokenRuns | None = None) -> pd.DataFrame:
    """One row per request that arrived while the probe was on, in arrival order."""
    ev = requests.sort_values("t_ns", kind="stable")
    ev = ev[ev["request_id"].notna()]
    seen = ev["request_id"].drop_duplicates()  # the order requests first appear in
    arrived = ev.loc[ev["event"] == "arrival", "request_id"]
    ids = pd.Index(seen[seen.isin(arrived)])
    if not len(ids):
        return pd.DataFrame([], columns=COLUMNS)  # arrived before the probe attached, every one
    arrival = _first_event(ev, "arrival", ids)
    sched = _first_event(ev, "scheduled", ids)
    fin = _first_event(ev, "finished", ids)
    preempted = ev[ev["event"] == "preempted"].groupby("request_id").size()

    arrival_ns = arrival["t_ns"].to_numpy(np.int64)
    has_sched = sched["t_ns"].notna().to_numpy()
    sched_ns = sched["t_ns"].fillna(0).to_numpy(np.int64)
    has_fin = fin["t_ns"].notna().to_numpy()
    fin_ns = fin["t_ns"].fillna(0).to_numpy(np.int64)

    # tokens: first and last by output position, count, largest gap between consecutive positions
    n = len(ids)
    first_tok = np.zeros(n, dtype=np.int64)
    last_tok = np.zeros(n, dtype=np.int64)
    logged = np.zeros(n, dtype=np.int64)
    gap_max = np.zeros(n, dtype=np.int64)
    if len(tokens):
        runs = runs or token_runs(tokens, "index")  # any order of the groups: they are looked up by id
        where = runs.ids.get_indexer(ids)  # -1: no token logged
        got = where >= 0
        t = tokens["t_ns"].to_numpy(np.int64)[runs.order]
        gaps = np.empty(len(t), dtype=np.int64)
        gaps[1:] = t[1:] - t[:-1]
        gaps[runs.starts] = np.iinfo(np.int64).min  # no gap before a request's first token
        g = where[got]
        first_tok[got] = t[runs.starts[g]]
        last_tok[got] = t[runs.bounds[g + 1] - 1]
        logged[got] = runs.sizes[g]
        gap_max[got] = np.maximum.reduceat(gaps, runs.starts)[g] if len(t) else 0
    has_tok = logged > 0
    multi = logged > 1

    def ms(end: np.ndarray, start: np.ndarray, valid: np.ndarray) -> np.ndarray:
        return _float_or_none(np.where(valid, (end - start) / 1e6, np.nan))

    out = pd.DataFrame({
        "request_id": ids.to_numpy(),
        "arrival_ns": arrival_ns,
        "scheduled_ns": int_or_null(sched_ns, has_sched),
        "first_token_ns": int_or_null(first_tok, has_tok),
        "last_token_ns": int_or_null(last_tok, has_tok),
        "finished_ns": int_or_null(fin_ns, has_fin),
        "prompt_len": arrival["prompt_len"].to_numpy(),
        "num_output_tokens": int_or_null(fin["num_output_tokens"].fillna(0).to_numpy(np.int64), has_fin),
        "num_tokens_logged": logged,
        "cached_tokens": int_or_null(sched["cached_tokens"].fillna(0).to_numpy(np.int64), has_sched),
        "num_preemptions": preempted.reindex(ids, fill_value=0).to_numpy(np.int64),
        "finish_reason": np.full(n, None, dtype=object),
        "queue_ms": ms(sched_ns, arrival_ns, has_sched),
        "prefill_ms": ms(first_tok, sched_ns, has_tok & has_sched),
        "ttft_ms": ms(first_tok, arrival_ns, has_tok),
        "tpot_ms": _float_or_none(np.where(multi, (last_tok - first_tok) / np.maximum(logged - 1, 1) / 1e6, np.nan)),
        "itl_max_ms": _float_or_none(np.where(multi, gap_max / 1e6, np.nan)),
        "e2e_ms": ms(fin_ns, arrival_ns, has_fin),
    })  # fmt: skip
    if has_fin.any():
        out["finish_reason"] = fin["reason"].to_numpy()  # the stream's text type, NaN where none
    return out


ITL_COLUMNS = ("request_id", "index", "step", "t_ns", "itl_ms")


def inter_token_latencies(tokens: pd.DataFrame, runs: TokenRuns | None = None,
                          columns: tuple[str, ...] = ITL_COLUMNS) -> pd.DataFrame:
    """Every inter-token gap: request_id, index and step (of the later token), t_ns, itl_ms; in
    (request_id, index) order. ``runs``: ``token_runs(tokens, "index", sort_ids=True)`` if already made;
    ``columns``: those of ITL_COLUMNS to make (a 10M-token run's table is 36 bytes a row with all five)."""
    runs = runs or token_runs(tokens, "index", sort_ids=True)
    t = tokens["t_ns"].to_numpy()[runs.order]
    later = np.ones(len(t), dtype=bool)  # a token with one before it in its request
    later[runs.starts] = False
    itl = np.full(len(t), np.nan)
    itl[1:] = t[1:] - t[:-1]  # in integers, then to ms: a 10M-token run holds as few of its arrays at once as it can
    itl /= 1e6
    del t
    later &= ~np.isnan(itl)  # a token without a time has no gap
    rows = runs.order[later]
    del runs
    itl = itl[later]
    out = tokens[[c for c in ITL_COLUMNS[:-1] if c in columns]].iloc[rows].reset_index(drop=True)
    if "itl_ms" in columns:
        out["itl_ms"] = itl
    return out


def latency_summary(metrics: pd.DataFrame, percentiles=PERCENTILES) -> pd.DataFrame:
    """Percentiles and mean of each latency column over requests (one row per column)."""
    cols = ["queue_ms", "prefill_ms", "ttft_ms", "tpot_ms", "e2e_ms"]
    return pd.DataFrame({c: summarize(metrics[c].astype(float), percentiles) for c in cols}).T
