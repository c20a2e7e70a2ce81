"""Deep dives: four write-ups in Brendan Gregg's manner (a question, the method, the measurements, what they
mean, what to change), each built from one run's streams and walking through the engine's source for its
topic, with ``path:line`` references generated from that source (traceinfer.analysis.source_refs).

    dive = TOPICS["kv-cache"](run.manifest, {name: run.frame(name) for name in run.streams}, run.path)
    dive.sections[2].figures["evict_ops"].value       # every number is a Figure: value, unit, source
    traceinfer.render.deep_dive_text.render_deep_dive(dive)   # the write-up as markdown

Topics: ``kv-cache`` (block operations, prefix hits, eviction, preemption, use, internal fragmentation),
``token-generation`` (step time by stage, GPU time, inter-token latency and its tail, threads, GC),
``memory-pool`` (the KV block pool, the CUDA caching allocator, a memory snapshot), ``batch-processing``
(batch formation, token budget, sequence slots, chunked prefill, queues, what stops a bigger batch).
Every figure comes from a stream or the manifest; a stream the run lacks gives None and a line naming the
probe that records it. The sentences only restate figures and say which rule of the engine they meet.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from traceinfer.analysis import as_mask, kv, requests, source_refs, steps
from traceinfer.analysis.latency import percentile, summarize
from traceinfer.analysis.source_refs import SourceRef
from traceinfer.analysis.summary import STAGE_COLUMNS, gc_summary, graph_coverage, step_split
from traceinfer.rundir.schema import MEMORY_SNAPSHOT, STREAMS

Topic = Literal["kv-cache", "token-generation", "memory-pool", "batch-processing"]
Value = int | float | str | tuple | None


@dataclass(frozen=True)
class Figure:
    """One measured number: its value (None: not measured), unit, and where it comes from."""

    value: Value
    unit: str = ""  # "count", "ms", "bytes", "fraction" (0..1), "blocks", "tokens", ...
    source: str = ""  # the stream and column, or the manifest key, it is computed from


@dataclass(frozen=True)
class Section:
    heading: str
    paragraphs: tuple[str, ...] = ()
    figures: dict[str, Figure] = field(default_factory=dict)
    sources: tuple[SourceRef, ...] = ()  # the engine's code behind the figures


@dataclass(frozen=True)
class DeepDive:
    topic: Topic
    title: str
    subject: str  # what ran: workload, model, device, steps
    question: str
    sections: tuple[Section, ...]
    not_measured: tuple[str, ...] = ()  # streams the run lacks, each naming the probe that records it

    @property
    def figures(self) -> dict[str, Figure]:
        """Every figure of every section (names are unique within a dive)."""
        return {name: f for s in self.sections for name, f in s.figures.items()}

    def values(self) -> dict[str, Value]:
        return {name: f.value for name, f in self.figures.items()}

    def to_dict(self) -> dict:
        """Plain values for JSON: sections with figures {value, unit, source} and sources "path:line"."""
        return {
            "topic": self.topic, "title": self.title, "subject": self.subject, "question": self.question,
            "sections": [{
                "heading": s.heading, "paragraphs": list(s.paragraphs),
                "figures": {n: {"value": list(f.value) if isinstance(f.value, tuple) else f.value,
                                "unit": f.unit, "source": f.source} for n, f in s.figures.items()},
                "sources": [{"ref": str(r), "path": r.path, "line": r.line, "function": r.function,
                             "symbol": r.symbol, "code": r.code} for r in s.sources],
            } for s in self.sections],
            "not_measured": list(self.not_measured),
        }  # fmt: skip


# -- building a dive -----------------------------------------------------------------------------
def _plain(value):
    """numpy scalars to Python, NaN to None."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, (list, tuple)):
        return tuple(_plain(v) for v in value)
    return value


class _SectionBuilder:
    def __init__(self, heading: str, names: set[str]) -> None:
        self.heading = heading
        self.paragraphs: list[str] = []
        self.figures: dict[str, Figure] = {}
        self.sources: list[SourceRef] = []
        self._names = names

    def fig(self, name: str, value, unit: str = "", source: str = ""):
        """Record a figure; returns its value (plain Python, None for NaN)."""
        if name in self._names:
            raise ValueError(f"figure {name!r} is recorded twice")
        self._names.add(name)
        value = _plain(value)
        self.figures[name] = Figure(value, unit, source)
        return value

    def say(self, *texts: str) -> None:
        self.paragraphs.extend(t for t in texts if t)

    def refs(self, *groups) -> None:
        for g in groups:
            self.sources.extend([g] if isinstance(g, SourceRef) else g)

    def build(self) -> Section:
        seen, refs = set(), []
        for r in self.sources:
            if (r.path, r.line, r.symbol) not in seen:
                seen.add((r.path, r.line, r.symbol))
                refs.append(r)
        return Section(self.heading, tuple(self.paragraphs), dict(self.figures), tuple(refs))


class _Dive:
    def __init__(self, topic: Topic, title: str, manifest: dict, question: str) -> None:
        self.topic, self.title, self.manifest, self.question = topic, title, manifest, question
        self.sections: list[_SectionBuilder] = []
        self.missing: list[str] = []
        self._names: set[str] = set()

    def section(self, heading: str) -> _SectionBuilder:
        s = _SectionBuilder(heading, self._names)
        self.sections.append(s)
        return s

    def stream(self, frames: dict[str, pd.DataFrame], name: str) -> pd.DataFrame | None:
        """The stream's frame; None when the run did not record it (noted once in not_measured). A stream whose
        probe ran and recorded no row (no GC in the run) is a frame with no rows: measured, zero events."""
        frame, note = stream_or_note(self.manifest, frames, name)
        if note and note not in self.missing:
            self.missing.append(note)
        return frame

    def build(self, num_steps: int | None) -> DeepDive:
        return DeepDive(self.topic, self.title, _subject(self.manifest, num_steps), self.question,
                        tuple(s.build() for s in self.sections), tuple(self.missing))  # fmt: skip


def probe_of(stream: str) -> str | None:
    """The probe that records ``stream`` (from its schema's description: "... (probe 'kv')")."""
    m = re.search(r"probe '(\w+)'", STREAMS[stream].doc)
    return m.group(1) if m else None


def stream_or_note(
    manifest: dict, frames: dict[str, pd.DataFrame], name: str
) -> tuple[pd.DataFrame | None, str | None]:
    """(frame, None) when the run measured ``name`` (its frame, possibly with no rows), else (None, a line
    saying it was not recorded and which probe records it, with the probe's own reason when it was on)."""
    frame = frames.get(name)
    if frame is not None and not frame.empty:
        return frame, None
    probe = probe_of(name)
    probes = manifest.get("probes") or {}
    details = (probes.get("details") or {}).get(probe) or {}
    if details.get("available") and name in (details.get("streams") or ()):
        return (frame if frame is not None else pd.DataFrame(columns=list(STREAMS[name].names))), None
    if probe in (probes.get("enabled") or ()):
        reason = details.get("reason") or "it recorded nothing"
        return None, f"`{name}` not recorded: probe '{probe}' was on, but {reason}"
    return None, f"`{name}` not recorded: probe '{probe}' records it (on in `--probes all`)"


def _subject(manifest: dict, num_steps: int | None) -> str:
    eng = manifest.get("engine") or {}
    work = (manifest.get("workload") or {}).get("name")
    parts = [f"workload {work}" if work else None, eng.get("model"), f"on {eng['device']}" if eng.get("device") else None,
             f"{num_steps:,} steps" if num_steps else None]  # fmt: skip
    return ", ".join(p for p in parts if p)


# -- formatting numbers for sentences ----------------------------------------------------------------
def _n(v) -> str:
    if v is None:
        return "-"
    return f"{v:,}" if isinstance(v, int) else f"{v:,.3g}" if abs(v) < 100 else f"{v:,.0f}"


def _pct(v) -> str:
    if v is None:
        return "-"
    return f"{100 * v:.2g}%" if 0 < abs(v) < 0.001 else f"{100 * v:.1f}%"


def _ms(v) -> str:
    if v is None:
        return "-"
    return f"{v:,.1f} ms" if v >= 10 else f"{v:,.2f} ms" if v >= 0.1 else f"{v * 1000:,.0f} us"


def _bytes(v) -> str:
    if v is None:
        return "-"
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(v) >= scale:
            return f"{v / scale:,.2f} {unit}"
    return f"{v:,} B"


def _ratio(a, b) -> float | None:
    return a / b if a is not None and b else None


def _q(values, q) -> float | None:
    vals = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return percentile(vals, q)


def _by_tenth(t_ns: pd.Series, values: pd.Series, start: float, end: float) -> tuple:
    """The time-weighted mean of a value that holds from each of its rows to the next (a queue length after
    each step, the blocks in use after each op) in each tenth of [start, end); None before the first row."""
    if end <= start or not len(values):
        return ()
    order = np.argsort(t_ns.to_numpy(np.float64), kind="stable")
    t = t_ns.to_numpy(np.float64)[order]
    v = values.to_numpy(np.float64)[order]
    edges = np.linspace(start, end, 11)
    out = []
    for a, b in itertools.pairwise(edges):
        i = np.searchsorted(t, a, side="right") - 1  # the row in force at a
        inner = (t > a) & (t < b)
        points = np.concatenate(([a], t[inner]))
        held = np.concatenate(([v[i] if i >= 0 else np.nan], v[inner]))
        widths = np.diff(np.concatenate((points, [b])))
        known = ~np.isnan(held)
        out.append(round(float((held[known] * widths[known]).sum() / widths[known].sum()), 3) if known.any() else None)
    return tuple(out)


def _tenths_text(values: tuple, fmt=_n) -> str:
    return ", ".join(fmt(v) for v in values)


def _rows(frame: pd.DataFrame | None) -> bool:
    """The stream was measured and has rows."""
    return frame is not None and len(frame) > 0


def _num_steps(step_rows: pd.DataFrame | None, kv_rows: pd.DataFrame | None = None) -> int | None:
    if _rows(step_rows):
        return len(step_rows)
    if _rows(kv_rows):
        return int(kv_rows["step"].dropna().nunique())
    return None


def _config(manifest: dict) -> dict:
    return (manifest.get("engine") or {}).get("config") or {}


def _sites(point: str) -> list[SourceRef]:
    return source_refs.hook_sites().get(point, [])


# -- kv-cache ------------------------------------------------------------------------------------
KV_OPS = ("allocate", "append", "hit", "stored", "free", "preempt", "evict", "reset")


def kv_cache(manifest: dict, frames: dict[str, pd.DataFrame], run_dir: str | Path | None = None) -> DeepDive:
    """KV-cache management: allocation patterns, prefix hits, eviction, preemption, use, internal fragmentation."""
    d = _Dive("kv-cache", "KV-cache management", manifest,
              "How does this run use its KV-cache blocks: how fast are they taken and given back, how often does "
              "the prefix cache save a prefill, what gets evicted, and did the cache run out?")  # fmt: skip
    eng = manifest.get("engine") or {}
    kv_rows = d.stream(frames, "kv_events")
    step_rows = d.stream(frames, "steps")
    req_rows = d.stream(frames, "requests")
    tok_rows = d.stream(frames, "tokens")
    op_sites = source_refs.block_op_sites()
    num_steps = _num_steps(step_rows, kv_rows)
    total = eng.get("num_kv_blocks") or (kv.num_blocks_of(kv_rows) if _rows(kv_rows) else None)
    bs = eng.get("block_size") or (kv.block_size_of(kv_rows) if _rows(kv_rows) else None)
    prefix_caching = _config(manifest).get("enable_prefix_caching")

    s = d.section("Method")
    s.fig("kv_blocks", total, "blocks", "manifest engine.num_kv_blocks")
    s.fig("block_size", bs, "tokens", "manifest engine.block_size")
    s.fig("prefix_caching", prefix_caching, "", "manifest engine.config.enable_prefix_caching")
    s.fig("kv_steps", num_steps, "count", "steps: rows" if _rows(step_rows) else "kv_events: distinct steps")
    s.say(
        f"The cache has {_n(total)} blocks of {_n(bs)} tokens. The block manager records every operation on them "
        "(allocate, append, hit, stored, free, preempt, evict) as it happens, stamped with its time and step, and "
        "flushes them to the `block` hook point once per step while the forward runs; the `kv` probe writes them "
        "to the `kv_events` stream, one row per operation. The scheduler's `schedule` span carries the free "
        "blocks after each step's scheduling (`steps.num_free_blocks`); preemptions also fire the `preempt` point.",
    )
    s.refs(_sites("block"), _sites("block_manager"), _sites("preempt"),
           source_refs.function_site("BlockManager.flush_ops"))  # fmt: skip

    ops = kv_rows[kv_rows["op"] != "snapshot"] if _rows(kv_rows) else None
    s = d.section("Allocation patterns")
    if ops is not None:
        lens = ops["block_ids"].map(lambda b: len(b) if b is not None else 0)
        parts = []
        for op in KV_OPS:
            mine = ops["op"] == op
            count = s.fig(f"{op}_ops", int(mine.sum()), "count", f"kv_events: rows with op == '{op}'")
            blocks = s.fig(f"{op}_blocks", int(lens[mine].sum()), "blocks", f"kv_events: block_ids of op '{op}'")
            s.fig(f"{op}_ops_per_step", _ratio(count, num_steps), "count/step", f"kv_events op '{op}' / steps")
            if count:
                parts.append(f"{op} {_n(count)} ({_n(blocks)} blocks)")
            s.refs(op_sites.get(op, []))
        per_step = ops.groupby("step").size()
        busiest = s.fig("busiest_step_ops", int(per_step.max()) if len(per_step) else None, "count",
                        "kv_events: rows per step, max")  # fmt: skip
        per_decode = None
        if _rows(step_rows):
            decode_steps = step_rows.loc[step_rows["num_prefill_tokens"].fillna(0) == 0, "step"]
            decode_tokens = s.fig("decode_only_tokens", int(step_rows.loc[decode_steps.index, "num_decode_tokens"].sum()),
                                  "tokens", "steps with no prefill token: num_decode_tokens, summed")  # fmt: skip
            appends = int(lens[(ops["op"] == "append") & ops["step"].isin(decode_steps)].sum())
            per_decode = s.fig("append_blocks_per_decode_token", _ratio(appends, decode_tokens), "blocks/token",
                               "kv_events: append blocks in decode-only steps / decode_only_tokens")  # fmt: skip
        s.say(f"Over {_n(num_steps)} steps the block manager recorded {_n(len(ops))} operations: "
              f"{', '.join(parts) or 'none'}. The busiest step had {_n(busiest)} operations.")  # fmt: skip
        if per_decode is not None and bs:
            s.say(f"A decode step takes a new block only when a sequence crosses a block boundary, once per "
                  f"{_n(bs)} tokens (BlockManager.allocate returns early while the last block has room): in its decode-only "
                  f"steps this run appended {per_decode:.3f} blocks per decode token, against 1/{bs} = {1 / bs:.3f}.")  # fmt: skip
        s.refs(source_refs.function_site("BlockManager.allocate"), source_refs.function_site("BlockManager._allocate"))
    else:
        s.say("Not measured: the run has no `kv_events` stream (probe 'kv').")

    s = d.section("Prefix hits")
    hits = kv.prefix_hits(req_rows, tok_rows) if _rows(req_rows) and tok_rows is not None else None
    if hits is not None:
        lookups = s.fig("prefix_lookups", len(hits), "count", "requests: 'scheduled' events (admissions)")
        with_hit = s.fig("admissions_with_hit", int((hits["hit_tokens"] > 0).sum()), "count",
                         "requests: 'scheduled' events with cached_tokens > 0")  # fmt: skip
        query = s.fig("prefix_query_tokens", int(hits["query_tokens"].sum()), "tokens",
                      "requests prompt_len + tokens emitted before each admission")  # fmt: skip
        hit_tokens = s.fig("prefix_hit_tokens", int(hits["hit_tokens"].sum()), "tokens",
                           "requests: cached_tokens of 'scheduled' events, summed")  # fmt: skip
        rate = s.fig("prefix_hit_rate", kv.hit_rate(hits), "fraction", "prefix_hit_tokens / prefix_query_tokens")
        cached_steps = (s.fig("cached_tokens_in_steps", int(step_rows["num_cached_tokens"].fillna(0).sum()), "tokens",
                              "steps: num_cached_tokens, summed") if _rows(step_rows) else None)  # fmt: skip
        readmit = hits["request_id"].duplicated()
        s.fig("readmissions", int(readmit.sum()), "count", "requests: a request's second and later 'scheduled' events")
        s.say(f"{_n(lookups)} admissions looked up {_n(query)} tokens in the prefix cache and found {_n(hit_tokens)} "
              f"({_pct(rate)}); {_n(with_hit)} of them found at least one block. A hit hands the request blocks "
              "already computed, so its prefill starts after them (Scheduler.schedule adds the cached tokens to "
              "num_computed_tokens).")  # fmt: skip
        if cached_steps is not None:
            s.say(f"The steps stream counts {_n(cached_steps)} prompt tokens served from the cache.")
        if prefix_caching is False:
            s.say("Prefix caching is off in this run (engine.enable_prefix_caching = false): every lookup is empty.")
        if _rows(kv_rows):
            s.fig("hit_ops_blocks", int(kv_rows.loc[kv_rows["op"] == "hit", "block_ids"].map(len).sum()), "blocks",
                  "kv_events: block_ids of op 'hit'")  # fmt: skip
    else:
        s.say("Not measured: prefix hits come from the `requests` and `tokens` streams (probe 'requests').")
    s.refs(source_refs.call_sites("find_cached_prefix", "Scheduler.schedule"),
           source_refs.function_site("BlockManager.find_cached_prefix"), op_sites.get("hit", []),
           source_refs.function_site("BlockManager.cache_full_blocks"), op_sites.get("stored", []))  # fmt: skip

    s = d.section("Eviction")
    if _rows(kv_rows):
        evict = kv_rows[kv_rows["op"] == "evict"]
        n_evict = len(evict)  # the figure is evict_ops, under allocation patterns
        lives = kv.block_lives(kv_rows)
        evicted = lives[lives["end"] == "evicted"]
        idle = evicted["idle_before_evict_ns"].dropna() / 1e6
        idle_p50 = s.fig("idle_before_evict_p50_ms", _q(idle.tolist(), 50), "ms",
                         "kv.block_lives: idle_before_evict_ns of evicted blocks, p50")  # fmt: skip
        idle_max = s.fig("idle_before_evict_max_ms", float(idle.max()) if len(idle) else None, "ms",
                         "kv.block_lives: idle_before_evict_ns, max")  # fmt: skip
        never_hit = s.fig("evicted_never_hit", int((evicted["hits"] == 0).sum()), "count",
                          "kv.block_lives: evicted residencies with no prefix hit")  # fmt: skip
        life_p50 = s.fig("block_lifetime_p50_ms", _q((lives["lifetime_ns"].dropna() / 1e6).tolist(), 50), "ms",
                         "kv.block_lives: lifetime_ns (allocation to eviction or reuse), p50")  # fmt: skip
        stored = int(kv_rows.loc[kv_rows["op"] == "stored", "block_ids"].map(len).sum())
        s.say(f"The cache published {_n(stored)} full blocks to the prefix cache and evicted {_n(n_evict)}. A freed "
              "block keeps its content in the LRU free queue; it is evicted only when a fresh allocation takes it "
              "(BlockManager._pop_free takes the least recently used free block, uncached ones first).")  # fmt: skip
        if n_evict:
            s.say(f"Evicted blocks had been idle {_ms(idle_p50)} at the median (longest {_ms(idle_max)}) since their "
                  f"last holder released them; {_n(never_hit)} of the {_n(n_evict)} were never hit while cached. "
                  f"A block's residency lasted {_ms(life_p50)} at the median.")  # fmt: skip
    else:
        s.say("Not measured: evictions come from the `kv_events` stream (probe 'kv').")
    s.refs(op_sites.get("evict", []), source_refs.function_site("BlockManager._pop_free"))

    s = d.section("Preemption")
    if _rows(kv_rows):
        pre = kv.preemptions(kv_rows)
        n_pre = s.fig("preemptions", int(pre["preemptions"].sum()), "count", "kv.preemptions: 'preempt' ops")
        s.fig("steps_with_preemption", len(pre), "count", "kv.preemptions: steps")
    else:
        n_pre = None
    if _rows(step_rows):
        s.fig("preempted_in_steps", int(step_rows["num_preempted"].fillna(0).sum()), "count", "steps: num_preempted")
    dropped = recovered = failed = None
    if _rows(req_rows):
        pre_ev = req_rows[req_rows["event"] == "preempted"]
        dropped = s.fig("computed_tokens_dropped", int(pre_ev["num_computed_tokens"].fillna(0).sum()), "tokens",
                        "requests: num_computed_tokens of 'preempted' events")  # fmt: skip
        fin = req_rows[req_rows["event"] == "finished"]
        failed_rows = fin[fin["reason"] == "error"]
        failed = s.fig("failed_requests", len(failed_rows), "count", "requests: 'finished' with reason 'error'")
        if hits is not None:
            recovered = s.fig("readmission_hit_tokens", int(hits.loc[hits["request_id"].duplicated(), "hit_tokens"].sum()),
                              "tokens", "requests: cached_tokens of re-admissions")  # fmt: skip
        if n_pre is None:
            n_pre = s.fig("preempted_events", len(pre_ev), "count", "requests: 'preempted' events")
        if n_pre:
            s.say(f"The scheduler preempted {_n(n_pre)} time(s): when a running request needs a block and none is "
                  "free, Scheduler.schedule preempts the newest running request (lowest priority first) by recompute: "
                  f"its blocks are freed and it goes back to the waiting queue. That dropped {_n(dropped)} computed "
                  f"tokens; on re-admission the prefix cache gave back {_n(recovered)} of them.")  # fmt: skip
        else:
            s.say("No request was preempted: every running request found the blocks it needed.")
        if failed:
            message = failed_rows["error"].dropna()
            s.say(f"{_n(failed)} request(s) failed" + (f"; the engine said: \"{message.iloc[0]}\"" if len(message) else "")
                  + ".")  # fmt: skip
    s.refs(_sites("preempt"), op_sites.get("preempt", []), source_refs.function_site("Scheduler._preempt"),
           source_refs.call_sites("_preemption_victim", "Scheduler.schedule"),
           source_refs.function_site("Scheduler._fail_too_large"))  # fmt: skip

    s = d.section("Utilization over time")
    peak = mean_use = full_share = None
    if _rows(kv_rows) and total:
        use = kv.utilization(kv_rows, total)
        peak_blocks = s.fig("peak_used_blocks", int(use["num_used"].max()), "blocks", "kv_events: num_used, max")
        peak = s.fig("peak_usage", peak_blocks / total, "fraction", "kv.utilization: usage, max")
        dt = use["t_ns"].diff().shift(-1).fillna(0).clip(lower=0)
        span = float(dt.sum())
        mean_use = s.fig("time_mean_usage", float((use["usage"] * dt).sum() / span) if span else None, "fraction",
                         "kv.utilization: usage weighted by time to the next op")  # fmt: skip
        full_share = s.fig("time_share_full", float(dt[use["num_used"] >= total].sum() / span) if span else None,
                           "fraction", "kv.utilization: time with every block held")  # fmt: skip
        s.fig("peak_cached_blocks", int(use["num_cached"].max()), "blocks", "kv_events: num_cached, max")
        tenths = s.fig("usage_by_tenth", _by_tenth(use["t_ns"], use["usage"], use["t_ns"].min(), use["t_ns"].max() + 1),
                       "fraction", "kv.utilization: mean usage in each tenth of the run")  # fmt: skip
        s.say(f"Requests held at most {_n(peak_blocks)} of {_n(total)} blocks ({_pct(peak)}); over time the cache was "
              f"{_pct(mean_use)} used on average and completely held for {_pct(full_share)} of the time. By tenth "
              f"of the run: {_tenths_text(tenths, _pct)}.")  # fmt: skip
    if _rows(step_rows):
        s.fig("steps_no_free_block", int((step_rows["num_free_blocks"] == 0).sum()), "count",
              "steps: num_free_blocks == 0 after scheduling")  # fmt: skip
    s.refs(source_refs.attribute_sites("num_free_blocks", "LLMEngine._summary"))

    s = d.section("Internal fragmentation")
    if _rows(kv_rows) and _rows(req_rows) and _rows(tok_rows) and bs:
        frag = kv.internal_fragmentation(kv_rows, req_rows, tok_rows, bs)
        held = frag[frag["allocated_slots"] > 0]
        mean_frac = s.fig("unused_slot_fraction_mean", float(held["unused_fraction"].mean()) if len(held) else None,
                          "fraction", "kv.internal_fragmentation: unused_fraction, mean over steps")  # fmt: skip
        s.fig("unused_slots_max", int(frag["unused_slots"].max()) if len(frag) else None, "slots",
              "kv.internal_fragmentation: unused_slots, max")  # fmt: skip
        s.say(f"A sequence's last block is partly filled: at most {_n(bs - 1)} of its {_n(bs)} slots wait for tokens. "
              f"Over the steps with blocks held, {_pct(mean_frac)} of the allocated slots held no KV on average.")  # fmt: skip
    else:
        s.say("Not measured: needs the `kv_events`, `requests` and `tokens` streams (probes 'kv' and 'requests').")
    s.refs(
        source_refs.function_site("BlockManager.blocks_for"),
        source_refs.call_sites("blocks_for", "BlockManager._allocate"),
    )

    s = d.section("What it means, and what to change")
    if n_pre:
        s.say(f"The cache was too small for this load: {_n(n_pre)} preemption(s) threw away {_n(dropped)} computed "
              "tokens that were computed again later. Give the cache more blocks (engine.num_kv_blocks, or "
              "engine.gpu_memory_utilization on a GPU), admit fewer sequences at once (engine.max_num_seqs), or "
              "cap output lengths.")  # fmt: skip
    if failed:
        s.say(f"{_n(failed)} request(s) needed more blocks than the whole cache holds; no scheduling fixes that: "
              "a larger cache or a shorter max_tokens does.")  # fmt: skip
    if peak is not None and peak < 0.5 and not n_pre:
        s.say(f"The cache is larger than this load needs (peak {_pct(peak)}): the run could admit more sequences "
              "(engine.max_num_seqs), or, on a GPU, give the memory to something else.")  # fmt: skip
    if hits is not None and rate is not None and rate > 0:
        s.say(f"The prefix cache served {_pct(rate)} of the prompt tokens looked up: that prefill work was not done.")
    if _rows(kv_rows) and n_evict and hits is not None and hit_tokens == 0:
        s.say("Blocks were evicted but nothing was ever hit: the workload shares no prefixes, so prefix caching "
              "costs bookkeeping without a return here.")  # fmt: skip
    if not s.paragraphs:
        s.say("Nothing in the KV cache limits this run: no preemption, no failure, and room to spare.")
    return d.build(num_steps)


# -- token-generation ----------------------------------------------------------------------------
def token_generation(manifest: dict, frames: dict[str, pd.DataFrame], run_dir: str | Path | None = None) -> DeepDive:
    """The token-generation pipeline: step time by stage, GPU time, inter-token latency and its tail, threads, GC."""
    d = _Dive("token-generation", "The token-generation pipeline", manifest,
              "Where does the time between two tokens go: which stage of a step, the GPU or the host, and what "
              "makes the slow gaps slow?")  # fmt: skip
    step_rows = d.stream(frames, "steps")
    req_rows = d.stream(frames, "requests")
    tok_rows = d.stream(frames, "tokens")
    thread_rows = d.stream(frames, "thread_samples")
    gc_rows = d.stream(frames, "gc")
    results = manifest.get("results") or {}
    wall_ns = results["seconds"] * 1e9 if results.get("seconds") else None
    num_steps = _num_steps(step_rows)
    stages = source_refs.stage_sites()

    s = d.section("Method")
    s.say("LLMEngine.step wraps each step in the `step` span and each of its stages in its own: `schedule` "
          "(Scheduler.schedule), `prepare` (ModelRunner.prepare builds the forward's inputs), `forward` (the model and "
          "the sampler, launched on a GPU), `sample` (ModelRunner.wait_tokens waits for the sampled tokens) and "
          "`postprocess` (LLMEngine._postprocess puts the tokens in place). Once the forward is launched the engine "
          "hands the step's held-back events to the probes (`handover`). With async scheduling a step waits for and "
          "postprocesses the step launched before it. The `steps` probe turns the spans into one row per step; "
          "tokens are stamped with the time postprocess put them in place (`tokens` stream).")  # fmt: skip
    for point in ("step", "schedule", "prepare", "forward", "handover", "sample", "postprocess", "tokens"):
        s.refs(_sites(point))
    s.refs(source_refs.call_sites("execute", "LLMEngine.step"), source_refs.call_sites("sample", "ModelRunner.execute"),
           source_refs.call_sites("wait_tokens", "LLMEngine.step"))

    s = d.section("Step time by stage")
    shares = {}
    if _rows(step_rows):
        dur = step_rows["dur_ns"].astype(float) / 1e6
        s.fig("steps", num_steps, "count", "steps: rows")
        s.fig("wall_s", results.get("seconds"), "s", "manifest results.seconds")
        p = {q: s.fig(f"step_p{q}_ms", _q(dur.tolist(), q), "ms", f"steps: dur_ns, p{q}") for q in (50, 90, 99)}
        s.fig("step_max_ms", float(dur.max()), "ms", "steps: dur_ns, max")
        for part in step_split(step_rows, wall_ns):
            key = part.name.replace(" ", "_")
            shares[part.name] = s.fig(f"share_{key}", part.share, "fraction",
                                      f"analysis.summary.step_split: {part.name} over the run's wall time")  # fmt: skip
        med = {}
        for stage in (*STAGE_COLUMNS, "handover"):
            vals = (step_rows[f"{stage}_ns"].dropna().astype(float) / 1e3).tolist()
            med[stage] = s.fig(f"{stage}_p50_us", _q(vals, 50), "us", f"steps: {stage}_ns, p50 over steps with one")
            s.fig(f"{stage}_p99_us", _q(vals, 99), "us", f"steps: {stage}_ns, p99")
        top = max(STAGE_COLUMNS, key=lambda st: shares.get(st) or 0)
        s.say(f"{_n(num_steps)} steps took {_ms(p[50])} at the median, {_ms(p[99])} at p99. Of the run's wall time, "
              + ", ".join(f"{name} {_pct(v)}" for name, v in shares.items()) + f". The largest stage is {top}.")  # fmt: skip
        s.say("Per step, the median stage times: " + ", ".join(f"{st} {_ms(v / 1e3 if v is not None else None)}"
                                                                 for st, v in med.items()) + ".")  # fmt: skip
        decode_only = step_rows[step_rows["num_prefill_tokens"].fillna(0) == 0]
        mixed = step_rows[step_rows["num_prefill_tokens"].fillna(0) > 0]
        dp50 = s.fig("decode_only_step_p50_ms", _q((decode_only["dur_ns"] / 1e6).tolist(), 50), "ms",
                     "steps with num_prefill_tokens == 0: dur_ns, p50")  # fmt: skip
        mp50 = s.fig("prefill_step_p50_ms", _q((mixed["dur_ns"] / 1e6).tolist(), 50), "ms",
                     "steps with num_prefill_tokens > 0: dur_ns, p50")  # fmt: skip
        s.say(f"A decode-only step took {_ms(dp50)} at the median ({_n(len(decode_only))} steps); a step with a prefill "
              f"chunk {_ms(mp50)} ({_n(len(mixed))} steps).")  # fmt: skip
    else:
        s.say("Not measured: step times come from the `steps` stream (probe 'steps').")
    for stage in (*STAGE_COLUMNS, "handover"):
        s.refs(stages.get(stage, []))

    s = d.section("GPU time")
    gpu_share = gpu_in_steps = None
    if _rows(step_rows) and step_rows["gpu_forward_ns"].notna().any():
        gpu = step_rows["gpu_forward_ns"].dropna().astype(float) / 1e6
        g50 = s.fig("gpu_forward_p50_ms", _q(gpu.tolist(), 50), "ms", "steps: gpu_forward_ns (CUDA events), p50")
        s.fig("gpu_forward_p99_ms", _q(gpu.tolist(), 99), "ms", "steps: gpu_forward_ns, p99")
        gap = step_rows["gpu_gap_ns"].dropna().astype(float) / 1e6
        gap50 = s.fig("gpu_gap_p50_ms", _q(gap.tolist(), 50), "ms", "steps: gpu_gap_ns, p50")
        gpu_share = s.fig("gpu_busy_share", float(gpu.sum() * 1e6 / wall_ns) if wall_ns else None, "fraction",
                          "steps: gpu_forward_ns summed / manifest results.seconds")  # fmt: skip
        gpu_in_steps = s.fig("gpu_busy_in_steps", _ratio(float(gpu.sum() * 1e6), float(step_rows["dur_ns"].sum())),
                             "fraction", "steps: gpu_forward_ns summed / dur_ns summed")  # fmt: skip
        cov = graph_coverage(step_rows)
        s.fig("cuda_graph_coverage", cov["coverage"], "fraction", "steps: decode-only steps with cuda_graph")
        s.say(f"The forward ran {_ms(g50)} on the GPU at the median and the GPU sat idle {_ms(gap50)} between "
              f"forwards; the GPU was busy {_pct(gpu_share)} of the wall time. {_n(cov['graph_steps'])} of "
              f"{_n(cov['decode_only_steps'])} decode-only steps replayed a CUDA graph.")  # fmt: skip
    else:
        s.fig("gpu_forward_p50_ms", None, "ms", "steps: gpu_forward_ns (null without CUDA)")
        device = (manifest.get("engine") or {}).get("device")
        s.say(f"Not measured: the run has no GPU timing (device {device or 'unknown'}). On a CUDA device the `steps` "
              "probe times each forward with CUDA events (`gpu_forward_ns`, `gpu_gap_ns`); here the forward's host "
              "time is its whole time.")  # fmt: skip
    s.refs(_sites("forward"), source_refs.call_sites("replay", "ModelRunner.forward_logits"))

    s = d.section("Inter-token latency and its tail")
    tail_counts = {}
    if _rows(tok_rows):
        tok = tok_rows.sort_values(["request_id", "index"], kind="stable")
        prev_t = tok.groupby("request_id")["t_ns"].shift()
        prev_step = tok.groupby("request_id")["step"].shift()
        gaps = tok.assign(itl_ms=(tok["t_ns"] - prev_t) / 1e6, prev_step=prev_step)
        gaps = gaps[gaps["itl_ms"].notna()]
        itl = gaps["itl_ms"].tolist()
        q = {
            k: s.fig(f"itl_p{k}_ms", _q(itl, k), "ms", f"tokens: gap between a request's tokens, p{k}")
            for k in (50, 90, 99)
        }
        itl_max = s.fig("itl_max_ms", max(itl) if itl else None, "ms", "tokens: largest gap")
        s.fig("itl_gaps", len(itl), "count", "tokens: gaps")
        s.fig("itl_tail_ratio", _ratio(q[99], q[50]), "x", "itl p99 / p50")
        if _rows(req_rows):
            metrics = requests.request_metrics(req_rows, tok_rows)
            ttft = summarize(metrics["ttft_ms"].tolist())
            s.fig("ttft_p50_ms", ttft["p50"], "ms", "requests/tokens: first token - arrival, p50")
            s.fig("ttft_p99_ms", ttft["p99"], "ms", "requests/tokens: first token - arrival, p99")
            s.fig("tpot_p50_ms", summarize(metrics["tpot_ms"].tolist())["p50"], "ms", "requests/tokens: TPOT, p50")
        s.say(f"Between two tokens of a request: {_ms(q[50])} at the median, {_ms(q[90])} at p90, {_ms(q[99])} at p99 "
              f"and {_ms(itl_max)} at worst, over {_n(len(itl))} gaps.")  # fmt: skip
        if _rows(step_rows) and itl:
            threshold = s.fig("tail_threshold_ms", q[90], "ms", "itl p90: the tail is every gap above it")
            tail = gaps[gaps["itl_ms"] > threshold]
            first, last = int(step_rows["step"].min()), int(step_rows["step"].max())
            index = pd.RangeIndex(first - 1, last + 1)
            by_step = step_rows.set_index("step")
            gc_steps = (set(gc_rows.loc[as_mask(gc_rows["in_step"]), "step"].dropna().astype(int))
                        if gc_rows is not None and len(gc_rows) else set())  # fmt: skip
            flags = {
                "prefill": by_step["num_prefill_tokens"].fillna(0) > 0,
                "preemption": by_step["num_preempted"].fillna(0) > 0,
                "gc": pd.Series([st in gc_steps for st in by_step.index], index=by_step.index),
            }
            explained = pd.Series(False, index=tail.index)
            n_tail = s.fig("tail_gaps", len(tail), "count", "tokens: gaps above tail_threshold_ms")
            for cause, flag in flags.items():
                cum = flag.astype(int).reindex(index, fill_value=0).cumsum()
                a = cum.reindex(tail["prev_step"].astype(int).to_numpy()).to_numpy()
                b = cum.reindex(tail["step"].astype(int).to_numpy()).to_numpy()
                hit = pd.Series((b - a) > 0, index=tail.index)
                explained |= hit
                tail_counts[cause] = s.fig(f"tail_gaps_with_{cause}", int(hit.sum()), "count",
                                           f"tokens/steps: tail gaps spanning a step with {cause}")  # fmt: skip
            rest = s.fig("tail_gaps_unexplained", int((~explained).sum()), "count", "tail gaps spanning none of these")
            s.say(f"The tail (the {_n(n_tail)} gaps above p90, {_ms(threshold)}): {_n(tail_counts['prefill'])} spanned a "
                  f"step that ran a prefill chunk, {_n(tail_counts['preemption'])} a step that preempted, "
                  f"{_n(tail_counts['gc'])} a step with a GC pause, and {_n(rest)} none of these. A prefill chunk runs "
                  "in the same forward as the decodes (chunked prefill), so every decode in that step waits for it.")  # fmt: skip
    else:
        s.say("Not measured: token times come from the `tokens` stream (probe 'requests').")
    s.refs(_sites("tokens"), source_refs.call_sites("put_token", "LLMEngine._postprocess"))

    s = d.section("Threads")
    engine_share = None
    if _rows(thread_rows) and thread_rows["cpu_ns"].notna().any():
        window = float(thread_rows["t_ns"].max() - thread_rows["t_ns"].min())
        cpu = thread_rows.dropna(subset=["cpu_ns"]).groupby(["thread_id", "thread_name"])["cpu_ns"].agg(["min", "max"])
        cpu_s = ((cpu["max"] - cpu["min"]) / 1e9).sort_values(ascending=False)
        engine_id = manifest.get("engine_thread")
        s.fig("threads_sampled", int(thread_rows["thread_id"].nunique()), "count", "thread_samples: thread_id")
        s.fig("sampled_window_s", window / 1e9, "s", "thread_samples: t_ns span")
        eng_cpu = float(cpu_s[cpu_s.index.get_level_values(0) == engine_id].sum()) if engine_id is not None else None
        s.fig("engine_thread_cpu_s", eng_cpu, "s", "thread_samples: cpu_ns of manifest engine_thread, last - first")
        engine_share = s.fig("engine_thread_cpu_share", _ratio(eng_cpu * 1e9 if eng_cpu is not None else None, window),
                             "fraction", "engine_thread_cpu_s / sampled_window_s")  # fmt: skip
        other = s.fig("other_threads_cpu_s", float(cpu_s[cpu_s.index.get_level_values(0) != engine_id].sum()), "s",
                      "thread_samples: cpu_ns of the other threads, last - first")  # fmt: skip
        listing = ", ".join(f"{name} {v:.3f} s" for (_, name), v in cpu_s.head(8).items())
        s.say(f"Sampled over {window / 1e9:.2f} s: {listing}. The engine thread was on a CPU {_pct(engine_share)} of "
              f"the time; the other Python threads used {other:.3f} s of CPU in all. (torch's own worker threads are "
              "native and do not appear here.)")  # fmt: skip
    else:
        s.say("Not measured: per-thread CPU comes from the `thread_samples` stream (probe 'threads', on in "
              "`--probes all`).")  # fmt: skip
    s.refs(_sites("handover"), source_refs.function_site("LLMEngine.handover"))

    s = d.section("Garbage collection")
    gc_step_share = None
    if gc_rows is not None:
        g = gc_summary(gc_rows)
        s.fig("gc_pauses", g["count"], "count", "gc: rows")
        s.fig("gc_total_ms", g["total_ms"], "ms", "gc: dur_ns, summed")
        s.fig("gc_max_ms", g["max_ms"], "ms", "gc: dur_ns, max")
        s.fig("gc_in_step", g["in_step"], "count", "gc: in_step")
        if _rows(step_rows):
            in_step = gc_rows[as_mask(gc_rows["in_step"])]
            gc_step_share = s.fig("gc_share_of_step_time",
                                  _ratio(float(in_step["dur_ns"].sum()), float(step_rows["dur_ns"].sum())), "fraction",
                                  "gc: dur_ns inside steps / steps: dur_ns")  # fmt: skip
            gc_steps = step_rows[step_rows["step"].isin(in_step["step"].dropna().astype(int))]
            s.fig("gc_step_p50_ms", _q((gc_steps["dur_ns"] / 1e6).tolist(), 50), "ms",
                  "steps with a GC pause inside: dur_ns, p50")  # fmt: skip
        if g["count"]:
            gens = ", ".join(f"generation {k}: {v}" for k, v in g["by_generation"].items())
            s.say(f"{_n(g['count'])} collection(s) ({gens}) paused the process {_ms(g['total_ms'])} in all, at most "
                  f"{_ms(g['max_ms'])}; {_n(g['in_step'])} ran inside a step, {_pct(gc_step_share)} of the step time. "
                  "A pause inside a step delays every token of that step.")  # fmt: skip
        else:
            s.say("No garbage collection ran during the run.")
    else:
        s.say("Not measured: GC pauses come from the `gc` stream (probe 'gc').")
    s.refs(source_refs.function_site("freeze_gc"))

    s = d.section("The probes' handover")
    hand = steps.handover_summary(step_rows) if _rows(step_rows) else None
    if hand is not None:
        s.fig("handover_exposed_steps", hand["exposed_steps"], "count", "steps: handover_ns > gpu_forward_ns")
        s.say(steps.describe_handover(hand) + ".")
    else:
        s.say("No step has a handover (no forward ran while the probes were on).")
    s.refs(_sites("handover"), source_refs.function_site("LLMEngine._handover_behind_forward"))

    s = d.section("What it means, and what to change")
    if shares:
        between = shares.get("between steps") or 0
        if gpu_in_steps is not None and gpu_in_steps < 0.5:
            s.say(f"The host is the bottleneck: the GPU ran forwards only {_pct(gpu_in_steps)} of the time the engine "
                  "spent in steps, and waited for the host the rest (schedule, prepare, the launch, postprocess). "
                  "Shorten the host stages: larger batches amortize them, CUDA graphs cut the launch of decode steps.")  # fmt: skip
        elif gpu_in_steps is not None:
            s.say(f"The GPU sets the pace: it ran forwards {_pct(gpu_in_steps)} of the time the engine spent in steps. "
                  "Host work is hidden behind it; a faster forward (kernels, a smaller model, larger batches per "
                  "weight read) is what raises the token rate.")  # fmt: skip
        elif gpu_share is None and (shares.get("forward") or 0) > 0.5:
            s.say(f"The forward dominates ({_pct(shares.get('forward'))} of the wall time) on this device: the model's "
                  "compute sets the token rate; a faster device or a smaller model changes it, scheduling does not.")  # fmt: skip
        if between > 0.2:
            s.say(f"The engine was idle between steps {_pct(between)} of the wall time: requests arrived slower than "
                  "it could serve them (or the pass was waiting for its last arrivals); this is load, not the engine.")  # fmt: skip
    if tail_counts and tail_counts.get("prefill"):
        s.say(f"{_n(tail_counts['prefill'])} tail gap(s) waited on a prefill chunk sharing the step: a smaller "
              "engine.max_num_batched_tokens cuts prefills into shorter chunks, trading TTFT for a flatter ITL.")  # fmt: skip
    if tail_counts and tail_counts.get("gc"):
        s.say(f"{_n(tail_counts['gc'])} tail gap(s) included a GC pause: freeze the long-lived objects (gc.freeze after "
              "loading, as `profile` does with engine.device.freeze_gc) or allocate fewer Python objects per step.")  # fmt: skip
    if engine_share is not None and engine_share < 0.5 and (shares.get("between steps") or 0) < 0.2:
        s.say(f"The engine thread was on a CPU only {_pct(engine_share)} of the sampled time while steps ran: it waits "
              "(for the device, the GIL, or torch's worker threads).")  # fmt: skip
    if not s.paragraphs:
        s.say("No stage stands out in this run.")
    return d.build(num_steps)


# -- memory-pool ---------------------------------------------------------------------------------
def kv_bytes_per_block(shapes: dict, block_size: int) -> int | None:
    """2 (K and V) x layers x KV heads x head_dim x dtype bytes x block_size (ModelRunner.kv_bytes_per_block)."""
    keys = ("num_layers", "num_kv_heads", "head_dim", "dtype_bytes")
    if not shapes or not block_size or any(shapes.get(k) is None for k in keys):
        return None
    return 2 * shapes["num_layers"] * shapes["num_kv_heads"] * shapes["head_dim"] * shapes["dtype_bytes"] * block_size


def memory_pool(manifest: dict, frames: dict[str, pd.DataFrame], run_dir: str | Path | None = None) -> DeepDive:
    """The memory pool: the KV blocks and the CUDA caching allocator (and a memory snapshot when the run has one)."""
    from traceinfer.ingest.memory_snapshot import memory_summary

    d = _Dive("memory-pool", "The memory pool", manifest,
              "How much memory does the KV cache take, how much of it does the run use, and how does the CUDA "
              "caching allocator hold the rest?")  # fmt: skip
    eng = manifest.get("engine") or {}
    config = _config(manifest)
    shapes = eng.get("model_shapes") or {}
    kv_rows = d.stream(frames, "kv_events")
    step_rows = d.stream(frames, "steps")
    req_rows = d.stream(frames, "requests")
    tok_rows = d.stream(frames, "tokens")
    num_steps = _num_steps(step_rows, kv_rows)
    device = eng.get("device") or (manifest.get("device") or {}).get("type")

    s = d.section("The KV block pool")
    blocks = s.fig("kv_blocks", eng.get("num_kv_blocks"), "blocks", "manifest engine.num_kv_blocks")
    bs = s.fig("block_size", eng.get("block_size"), "tokens", "manifest engine.block_size")
    for key in ("num_layers", "num_kv_heads", "head_dim", "dtype_bytes"):
        s.fig(key, shapes.get(key), "", f"manifest engine.model_shapes.{key}")
    per_block = s.fig("bytes_per_block", kv_bytes_per_block(shapes, bs), "bytes",
                      "2 x num_layers x num_kv_heads x head_dim x dtype_bytes x block_size")  # fmt: skip
    pool = s.fig(
        "pool_bytes", per_block * blocks if per_block and blocks else None, "bytes", "bytes_per_block x kv_blocks"
    )
    per_token = s.fig(
        "bytes_per_token", per_block // bs if per_block and bs else None, "bytes", "bytes_per_block / block_size"
    )
    capacity = s.fig("pool_tokens", blocks * bs if blocks and bs else None, "tokens", "kv_blocks x block_size")
    weights = s.fig("weight_bytes", shapes.get("weight_bytes"), "bytes", "manifest engine.model_shapes.weight_bytes")
    if config.get("num_kv_blocks") is not None:
        sized = "set by engine.num_kv_blocks"
    elif device and str(device).startswith("cuda"):
        sized = (f"sized from GPU memory (engine.gpu_memory_utilization = {config.get('gpu_memory_utilization')}) after a "
                 "warm-up forward of a full token budget")  # fmt: skip
    else:
        sized = f"sized from engine.cpu_kv_cache_gib = {config.get('cpu_kv_cache_gib')}"
    s.fig("sized_by", sized, "", "manifest engine.config")
    s.say(f"The KV cache is one tensor [2, layers, blocks, block_size, KV heads, head_dim], allocated once when the "
          f"engine starts (ModelRunner._allocate_kv_cache) and cut into {_n(blocks)} blocks of {_n(bs)} tokens, "
          f"{sized}. A block holds {_bytes(per_block)} ({_n(shapes.get('num_layers'))} layers x "
          f"{_n(shapes.get('num_kv_heads'))} KV heads x {_n(shapes.get('head_dim'))} x {_n(shapes.get('dtype_bytes'))} "
          f"bytes, for K and V, x {_n(bs)} tokens), a token {_bytes(per_token)}: the pool is {_bytes(pool)} for "
          f"{_n(capacity)} tokens, against {_bytes(weights)} of weights.")  # fmt: skip
    s.refs(source_refs.function_site("ModelRunner.kv_bytes_per_block"),
           source_refs.function_site("ModelRunner._allocate_kv_cache"),
           source_refs.call_sites("_allocate_kv_cache", "ModelRunner.__init__"),
           source_refs.call_sites("_blocks_from_gpu_memory", "ModelRunner.__init__"),
           source_refs.function_site("ModelRunner._blocks_from_gpu_memory"),
           source_refs.function_site("ModelRunner._check_kv_cache_fits"),
           source_refs.call_sites("BlockManager", "LLMEngine.__init__"))  # fmt: skip

    s = d.section("How much of the pool the run used")
    peak_blocks = None
    if _rows(kv_rows):
        peak_blocks = int(kv_rows["num_used"].max())
        source = "kv_events: num_used, max"
    elif _rows(step_rows) and blocks:
        peak_blocks = int(blocks - step_rows["num_free_blocks"].min())
        source = "kv_blocks - steps: num_free_blocks, min"
    else:
        source = "kv_events or steps"
    s.fig("peak_used_blocks", peak_blocks, "blocks", source)
    peak_use = s.fig("peak_usage", _ratio(peak_blocks, blocks), "fraction", "peak_used_blocks / kv_blocks")
    peak_bytes = s.fig("peak_used_bytes", peak_blocks * per_block if peak_blocks is not None and per_block else None,
                       "bytes", "peak_used_blocks x bytes_per_block")  # fmt: skip
    results = manifest.get("results") or {}
    n_req = results.get("requests")
    mean_len = (results.get("prompt_tokens", 0) + results.get("output_tokens", 0)) / n_req if n_req else None
    s.fig("mean_request_tokens", mean_len, "tokens", "manifest results: (prompt_tokens + output_tokens) / requests")
    fits = s.fig("requests_pool_holds", int(capacity // mean_len) if capacity and mean_len else None, "count",
                 "pool_tokens / mean_request_tokens")  # fmt: skip
    waste = None
    if _rows(kv_rows) and _rows(req_rows) and _rows(tok_rows) and bs and per_token:
        frag = kv.internal_fragmentation(kv_rows, req_rows, tok_rows, bs)
        waste = s.fig("unused_slot_bytes_mean", float(frag["unused_slots"].mean()) * per_token if len(frag) else None,
                      "bytes", "kv.internal_fragmentation: unused_slots, mean x bytes_per_token")  # fmt: skip
    s.say(f"At its peak the run held {_n(peak_blocks)} blocks ({_pct(peak_use)}, {_bytes(peak_bytes)}). At this "
          f"workload's mean request of {_n(mean_len)} tokens the pool has room for about {_n(fits)} such request(s) at once. "
          f"Partly filled last blocks left {_bytes(waste)} unused on average.")  # fmt: skip
    s.refs(source_refs.function_site("BlockManager.__init__"), source_refs.function_site("BlockManager._pop_free"))

    s = d.section("The CUDA caching allocator")
    mem = d.stream(frames, "cuda_memory")
    if _rows(mem):
        last = mem.sort_values("t_ns").iloc[-1]
        alloc_p50 = s.fig("allocated_p50_bytes", _q(mem["allocated_bytes"].tolist(), 50), "bytes",
                          "cuda_memory: allocated_bytes, p50")  # fmt: skip
        reserved = s.fig(
            "reserved_max_bytes", int(mem["reserved_bytes"].max()), "bytes", "cuda_memory: reserved_bytes, max"
        )
        peak_alloc = s.fig("peak_allocated_bytes", int(mem["peak_allocated_bytes"].max()), "bytes",
                           "cuda_memory: peak_allocated_bytes, max")  # fmt: skip
        at = mem.loc[mem["reserved_bytes"].idxmax()]
        cached = s.fig("reserved_unallocated_bytes", int(at["reserved_bytes"] - at["allocated_bytes"]), "bytes",
                       "cuda_memory: reserved - allocated, at the largest reserved")  # fmt: skip
        frag50 = s.fig("fragmentation_p50", _q(mem["fragmentation"].tolist(), 50), "fraction",
                       "cuda_memory: fragmentation (1 - allocated / reserved), p50")  # fmt: skip
        s.fig("fragmentation_max", float(mem["fragmentation"].max()), "fraction", "cuda_memory: fragmentation, max")
        split = s.fig("inactive_split_max_bytes", int(mem["inactive_split_bytes"].max()), "bytes",
                      "cuda_memory: inactive_split_bytes, max")  # fmt: skip
        retries = s.fig("alloc_retries", int(last["num_alloc_retries"] - mem["num_alloc_retries"].min()), "count",
                        "cuda_memory: num_alloc_retries, last - first")  # fmt: skip
        ooms = s.fig(
            "ooms", int(last["num_ooms"] - mem["num_ooms"].min()), "count", "cuda_memory: num_ooms, last - first"
        )
        kv_share = s.fig(
            "kv_share_of_allocated", _ratio(pool, alloc_p50), "fraction", "pool_bytes / allocated_p50_bytes"
        )
        s.say(f"Tensors held {_bytes(alloc_p50)} at the median step ({_pct(kv_share)} of it the KV pool), at most "
              f"{_bytes(peak_alloc)}; the caching allocator reserved up to {_bytes(reserved)}, {_bytes(cached)} of it "
              f"cached but not in a tensor. Fragmentation (1 - allocated / reserved) was {_pct(frag50)} at the median; "
              f"free pieces of split blocks reached {_bytes(split)}. cudaMalloc retries: {_n(retries)}; "
              f"out-of-memory errors: {_n(ooms)}.")  # fmt: skip
    else:
        s.say(f"Not measured: the engine ran on {device or 'a device without CUDA'}, where the KV cache is host memory "
              "(torch.zeros on the CPU) and there is no CUDA caching allocator to read. On a CUDA device the "
              "`cuda_memory` probe (on in `--probes all`) reads the allocator once per step at the handover: allocated, "
              "reserved, inactive split bytes, fragmentation, peak, cudaMalloc retries and OOMs.")  # fmt: skip
        host = d.stream(frames, "host_samples")
        if host is not None and len(host):
            rss = s.fig("host_rss_max_bytes", int(host["rss_bytes"].max()), "bytes", "host_samples: rss_bytes, max")
            s.fig("pool_share_of_rss", _ratio(pool, rss), "fraction", "pool_bytes / host_rss_max_bytes")
            s.say(f"The process's resident set reached {_bytes(rss)}; the KV pool is {_pct(_ratio(pool, rss))} of it.")
    s.refs(_sites("handover"), source_refs.call_sites("mem_get_info", "ModelRunner"),
           source_refs.call_sites("empty_cache", "ModelRunner"))  # fmt: skip

    s = d.section("Memory snapshot")
    details = ((manifest.get("probes") or {}).get("details") or {}).get("cuda_memory") or {}
    name = details.get("memory_snapshot") or MEMORY_SNAPSHOT
    path = Path(run_dir) / name if run_dir is not None else None
    if path is not None and path.exists():
        snap = memory_summary(path)
        for key in ("allocated", "requested", "reserved", "inactive", "active"):
            s.fig(f"snapshot_{key}_bytes", snap[key], "bytes", f"{name}: memory_summary {key}")
        s.fig("snapshot_segments", snap["segments"], "count", f"{name}: segments")
        s.fig("snapshot_blocks", snap["blocks"], "count", f"{name}: live blocks")
        rounding = s.fig("snapshot_rounding_bytes", snap["allocated"] - snap["requested"], "bytes",
                         "allocated - requested (the allocator's rounding)")  # fmt: skip
        s.fig("snapshot_kv_share", _ratio(pool, snap["allocated"]), "fraction", "pool_bytes / snapshot allocated")
        s.say(f"The snapshot taken at the end of the run holds {_n(snap['segments'])} segments ({_bytes(snap['reserved'])} "
              f"reserved) and {_n(snap['blocks'])} live blocks ({_bytes(snap['allocated'])} allocated, of which "
              f"{_bytes(rounding)} is rounding over what callers asked for); {_bytes(snap['inactive'])} sit cached and "
              f"free. `traceinfer flamegraph RUN --kind memory` shows the live bytes by allocation stack.")  # fmt: skip
    else:
        s.say("No memory snapshot in this run: `profile --memory-snapshot` on a CUDA device writes "
              f"`{MEMORY_SNAPSHOT}` (segments, blocks and the stack that allocated each).")  # fmt: skip

    s = d.section("What it means, and what to change")
    if peak_use is not None and peak_use >= 1.0:
        s.say("The run used every block: the pool, not the allocator, bounds concurrency here. More blocks "
              "(engine.num_kv_blocks, or engine.gpu_memory_utilization on a GPU) or a smaller per-token footprint "
              "(fewer KV heads, a narrower dtype) raise it.")  # fmt: skip
    elif peak_use is not None and peak_use < 0.5:
        s.say(f"The run used at most {_pct(peak_use)} of the pool: {_bytes(pool - peak_bytes if pool and peak_bytes is not None else None)} "
              "of KV memory was never needed by this load.")  # fmt: skip
    if _rows(mem):
        if retries:
            s.say(f"The allocator retried cudaMalloc {_n(retries)} time(s) after freeing its cache: memory is tight; "
                  "lower engine.gpu_memory_utilization to leave activations room.")  # fmt: skip
        if frag50 is not None and frag50 > 0.2:
            s.say(f"{_pct(frag50)} of the reserved memory sat outside tensors at the median step: "
                  "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True reduces the split-block waste.")  # fmt: skip
    if not s.paragraphs:
        s.say("The pool fits the load, and nothing in the measured memory calls for a change.")
    return d.build(num_steps)


# -- batch-processing ----------------------------------------------------------------------------
LIMITERS = ("nothing waiting", "token budget", "sequence slots", "preemption", "KV blocks")


def batch_limiters(step_rows: pd.DataFrame, max_num_seqs: int | None) -> pd.Series:
    """Per step, what kept the waiting requests out of the batch (Scheduler.schedule's admission loop stops at
    the first of: the budget spent, every slot taken, a preemption this step, the next request's blocks not
    fitting): one of LIMITERS. 'nothing waiting' when no request was left waiting after scheduling."""
    waiting = step_rows["num_waiting"].fillna(0) > 0
    at_budget = step_rows["num_batched_tokens"].fillna(0) >= step_rows["token_budget"]
    at_slots = (
        (step_rows["num_running"].fillna(0) >= max_num_seqs)
        if max_num_seqs
        else pd.Series(False, index=step_rows.index)
    )
    preempted = step_rows["num_preempted"].fillna(0) > 0
    labels = np.select([~waiting, at_budget, at_slots, preempted], list(LIMITERS[:4]), default=LIMITERS[4])
    return pd.Series(labels, index=step_rows.index, name="limiter")


def batch_processing(manifest: dict, frames: dict[str, pd.DataFrame], run_dir: str | Path | None = None) -> DeepDive:
    """Batch formation: sizes, prefill/decode mix, token budget, sequence slots, chunked prefill, queues, limits."""
    d = _Dive("batch-processing", "Batch processing", manifest,
              "How big are the batches, what are they made of, and what stops them from being bigger?")  # fmt: skip
    config = _config(manifest)
    step_rows = d.stream(frames, "steps")
    req_rows = d.stream(frames, "requests")
    tok_rows = d.stream(frames, "tokens")
    num_steps = _num_steps(step_rows)
    max_seqs = config.get("max_num_seqs")
    chunked = config.get("enable_chunked_prefill")

    s = d.section("Method")
    s.say("Each step, Scheduler.schedule builds the batch under a token budget (engine.max_num_batched_tokens): first "
          "the running requests, oldest first (a decode is one token, an unfinished prefill a chunk of what the budget "
          "leaves), then waiting requests while budget, sequence slots (engine.max_num_seqs) and KV blocks allow, and "
          "none once the step had to preempt. The `schedule` span's end carries the batch (LLMEngine._summary), which "
          "the `steps` probe writes as one row per step.")  # fmt: skip
    s.refs(_sites("schedule"), source_refs.function_site("Scheduler.schedule"),
           source_refs.function_site("LLMEngine._summary"))  # fmt: skip
    if step_rows is None or not len(step_rows):
        s.say("Not measured: every figure of this topic comes from the `steps` stream (probe 'steps').")
        return d.build(num_steps)
    run = step_rows[step_rows["num_seqs"].fillna(0) > 0]

    s = d.section("Batch formation")
    s.fig("steps", num_steps, "count", "steps: rows")
    s.fig("steps_with_batch", len(run), "count", "steps: num_seqs > 0")
    seqs = run["num_seqs"].astype(float).tolist()
    toks = run["num_batched_tokens"].astype(float).tolist()
    seq50 = s.fig("num_seqs_p50", _q(seqs, 50), "count", "steps: num_seqs, p50")
    seqmax = s.fig("num_seqs_max", int(max(seqs)) if seqs else None, "count", "steps: num_seqs, max")
    s.fig("num_seqs_mean", float(np.mean(seqs)) if seqs else None, "count", "steps: num_seqs, mean")
    tok50 = s.fig("batched_tokens_p50", _q(toks, 50), "tokens", "steps: num_batched_tokens, p50")
    tokmax = s.fig("batched_tokens_max", int(max(toks)) if toks else None, "tokens", "steps: num_batched_tokens, max")
    prefill = s.fig(
        "prefill_tokens", int(run["num_prefill_tokens"].fillna(0).sum()), "tokens", "steps: num_prefill_tokens"
    )
    decode = s.fig("decode_tokens", int(run["num_decode_tokens"].fillna(0).sum()), "tokens", "steps: num_decode_tokens")
    pshare = s.fig(
        "prefill_token_share", _ratio(prefill, prefill + decode), "fraction", "prefill / (prefill + decode) tokens"
    )
    has_p = run["num_prefill_tokens"].fillna(0) > 0
    has_d = run["num_decode_tokens"].fillna(0) > 0
    mixed = s.fig("mixed_steps", int((has_p & has_d).sum()), "count", "steps with prefill and decode tokens")
    ponly = s.fig("prefill_only_steps", int((has_p & ~has_d).sum()), "count", "steps with prefill tokens only")
    donly = s.fig("decode_only_steps", int((~has_p & has_d).sum()), "count", "steps with decode tokens only")
    s.say(f"{_n(len(run))} steps ran a batch: {_n(seq50)} sequences and {_n(tok50)} tokens at the median, at most "
          f"{_n(seqmax)} sequences and {_n(tokmax)} tokens. Prefill made {_pct(pshare)} of the {_n(prefill + decode)} "
          f"tokens. {_n(donly)} steps were decode only, {_n(ponly)} prefill only and {_n(mixed)} mixed a prefill chunk "
          "with decodes (decodes come first in the batch, then prefill chunks).")  # fmt: skip
    s.refs(source_refs.call_sites("ScheduledSeq", "Scheduler.schedule"))

    s = d.section("Token budget")
    budget = s.fig("token_budget", int(step_rows["token_budget"].dropna().iloc[0]) if step_rows["token_budget"].notna().any()
                   else config.get("max_num_batched_tokens"), "tokens", "steps: token_budget")  # fmt: skip
    at_budget = step_rows["num_batched_tokens"].fillna(0) >= step_rows["token_budget"]
    waiting = step_rows["num_waiting"].fillna(0) > 0
    n_at = s.fig("steps_at_budget", int(at_budget.sum()), "count", "steps: num_batched_tokens >= token_budget")
    share_at = s.fig("budget_full_share", _ratio(n_at, num_steps), "fraction", "steps_at_budget / steps")
    n_at_wait = s.fig("steps_at_budget_with_waiting", int((at_budget & waiting).sum()), "count",
                      "steps at the budget with num_waiting > 0")  # fmt: skip
    use = s.fig("budget_use_mean", float((run["num_batched_tokens"] / run["token_budget"]).mean()) if len(run) else None,
                "fraction", "steps: num_batched_tokens / token_budget, mean over steps with a batch")  # fmt: skip
    s.say(f"The budget is {_n(budget)} tokens a step. {_n(n_at)} steps ({_pct(share_at)}) filled it, {_n(n_at_wait)} of "
          f"them with requests left waiting; a step used {_pct(use)} of it on average.")  # fmt: skip
    s.refs(source_refs.attribute_sites("max_num_batched_tokens", "Scheduler.schedule"))

    s = d.section("Sequence slots")
    s.fig("max_num_seqs", max_seqs, "count", "manifest engine.config.max_num_seqs")
    peak_run = s.fig("running_max", int(step_rows["num_running"].max()), "count", "steps: num_running, max")
    at_slots = step_rows["num_running"].fillna(0) >= max_seqs if max_seqs else pd.Series(False, index=step_rows.index)
    n_slots = s.fig("steps_at_slot_limit", int(at_slots.sum()), "count", "steps: num_running >= max_num_seqs")
    s.fig("steps_at_slot_limit_with_waiting", int((at_slots & waiting).sum()), "count",
          "steps at the slot limit with num_waiting > 0")  # fmt: skip
    s.say(f"At most {_n(peak_run)} of {_n(max_seqs)} sequence slots were taken; {_n(n_slots)} steps ran with every slot "
          "taken.")  # fmt: skip
    s.refs(source_refs.attribute_sites("max_num_seqs", "Scheduler.schedule"))

    s = d.section("Chunked prefill")
    s.fig("chunked_prefill", chunked, "", "manifest engine.config.enable_chunked_prefill")
    chunks = s.fig("prefill_chunks", int(run["num_prefill_seqs"].fillna(0).sum()), "count", "steps: num_prefill_seqs")
    multi = None
    if _rows(req_rows) and _rows(tok_rows):
        sched = req_rows[req_rows["event"] == "scheduled"].groupby("request_id")["step"].min()
        first = tok_rows.groupby("request_id")["step"].min()
        both = pd.concat([sched.rename("scheduled"), first.rename("first")], axis=1).dropna()
        spans = both["first"] - both["scheduled"] + 1
        multi = s.fig("prefills_over_one_step", int((spans > 1).sum()), "count",
                      "requests: first token's step - first 'scheduled' step + 1 > 1")  # fmt: skip
        s.fig("prefill_steps_max", int(spans.max()) if len(spans) else None, "steps", "the same span, max")
    s.say(f"Chunked prefill is {'on' if chunked else 'off'}. The run ran {_n(chunks)} prefill chunks"
          + (f"; {_n(multi)} request(s) needed more than one step for their prefill (queued behind the budget, or "
             "preempted and readmitted)." if multi is not None else "."))  # fmt: skip
    s.refs(source_refs.attribute_sites("enable_chunked_prefill", "Scheduler.schedule"))

    s = d.section("Queues over time")
    w50 = s.fig("waiting_p50", _q(step_rows["num_waiting"].tolist(), 50), "count", "steps: num_waiting, p50")
    wmax = s.fig("waiting_max", int(step_rows["num_waiting"].max()), "count", "steps: num_waiting, max")
    wshare = s.fig("steps_with_waiting_share", float(waiting.mean()), "fraction", "steps: num_waiting > 0")
    start, end = float(step_rows["t_ns"].min()), float((step_rows["t_ns"] + step_rows["dur_ns"]).max())
    wt = s.fig("waiting_by_tenth", _by_tenth(step_rows["t_ns"], step_rows["num_waiting"], start, end), "count",
               "steps: num_waiting, mean in each tenth of the run")  # fmt: skip
    rt = s.fig("running_by_tenth", _by_tenth(step_rows["t_ns"], step_rows["num_running"], start, end), "count",
               "steps: num_running, mean in each tenth of the run")  # fmt: skip
    queue = None
    if _rows(req_rows) and _rows(tok_rows):
        metrics = requests.request_metrics(req_rows, tok_rows)
        qs = summarize(metrics["queue_ms"].tolist())
        queue = s.fig("queue_p50_ms", qs["p50"], "ms", "requests: first scheduled - arrival, p50")
        s.fig("queue_p99_ms", qs["p99"], "ms", "requests: first scheduled - arrival, p99")
    s.say(f"Requests were left waiting after {_pct(wshare)} of the steps (median {_n(w50)}, at most {_n(wmax)}). "
          f"Waiting, by tenth of the run: {_tenths_text(wt)}; running: {_tenths_text(rt)}."
          + (f" A request waited {_ms(queue)} at the median before its first step." if queue is not None else ""))  # fmt: skip
    s.refs(source_refs.function_site("Scheduler.add"), source_refs.call_sites("_push_waiting", "Scheduler"))

    s = d.section("What stops a bigger batch")
    limiters = batch_limiters(step_rows, max_seqs)
    counts = {k: s.fig(f"limited_by_{k.replace(' ', '_')}", int((limiters == k).sum()), "count",
                       f"steps: limiter '{k}' (deep_dives.batch_limiters)") for k in LIMITERS}  # fmt: skip
    s.say("After each step's scheduling, a request still waiting was kept out by the first limit the admission loop "
          "met: " + ", ".join(f"{k} {_n(v)}" for k, v in counts.items() if k != "nothing waiting")
          + f" steps; in {_n(counts['nothing waiting'])} steps nobody was waiting, so the batch held every request "
          "in flight and only the load could make it bigger.")  # fmt: skip
    s.refs(source_refs.call_sites("allocate", "Scheduler.schedule"),
           source_refs.attribute_sites("max_num_seqs", "Scheduler.schedule"),
           source_refs.call_sites("_preempt", "Scheduler.schedule"))  # fmt: skip

    s = d.section("What it means, and what to change")
    blocked = {k: v for k, v in counts.items() if k != "nothing waiting" and v}
    if blocked:
        worst = max(blocked, key=blocked.get)
        action = {
            "token budget": "raise engine.max_num_batched_tokens (larger prefill chunks, more decodes per step) if "
                            "the device has headroom; the steps were full, not the device",
            "sequence slots": "raise engine.max_num_seqs: requests queued while the KV cache and budget had room",
            "preemption": "give the KV cache more blocks: steps that preempted admitted nobody",
            "KV blocks": "give the KV cache more blocks (engine.num_kv_blocks or engine.gpu_memory_utilization): the "
                         "next request's blocks did not fit",
        }[worst]  # fmt: skip
        s.say(f"The most frequent limit was {worst} ({_n(blocked[worst])} of {_n(num_steps)} steps): {action}.")
    else:
        s.say("No request ever waited after scheduling: the batches were as large as the load allowed. A larger "
              "batch needs more concurrent requests (a higher arrival rate or --max-concurrency), not engine settings.")  # fmt: skip
    if pshare is not None and pshare > 0.5:
        s.say(f"Prefill made {_pct(pshare)} of the tokens: the run is prefill-heavy; prefix caching and shorter "
              "prompts cut that work.")  # fmt: skip
    return d.build(num_steps)


TOPICS: dict[str, Callable[..., DeepDive]] = {
    "kv-cache": kv_cache,
    "token-generation": token_generation,
    "memory-pool": memory_pool,
    "batch-processing": batch_processing,
}
