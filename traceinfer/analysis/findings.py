"""Findings: what limits a run, each from one rule, with the figures that prove it and what to change.

A rule is a function (RunData) -> Finding | None. ``explains_s`` is the wall time the finding accounts
for (what removing the cause would give back, at most), so findings rank by it; a rule that does not
fire returns None. Every figure comes from the run's streams or manifest (``evidence`` names them).

    rule                      fires when
    host_bound_gaps           on a GPU, the GPU idles between forwards while the host works
    host_stage                a host stage outside the forward (schedule, prepare, postprocess, handover,
                              the rest of a step) takes more than 5% of the run, and on a GPU the GPU
                              idles more than that between forwards (only then can it cost the run)
    host_waits_in_forward     on a GPU, forwards whose launch lasted as long as their GPU work (a wait for the
                              GPU inside the launch), and the GPU then idled through the next step's host work
    kv_preemptions            the KV cache ran out and requests were preempted (their work recomputed)
    gc_pauses                 collections paused steps for more than 1% of the run
    eager_decode              on a GPU with CUDA graphs expected, decode steps ran eager
    prefill_stalls            steps carrying prefill chunks stretched the decodes riding along
    budget_throttle           requests waited while steps were full to the token budget
    probe_cost                the probes' measured cost is resolved above zero
    kernel_gaps               (an nsys capture) the GPU idles between the kernels of one launch (a graph
                              replay's nodes) for more than 5% of the run: many small kernels
    compute_bound             (info) nothing above fired: the forward itself is where the time goes (with
                              an nsys capture, the kernels that take most of it)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import pandas as pd

from traceinfer.analysis import as_mask
from traceinfer.analysis.derived import Derived
from traceinfer.analysis.gpu_trace import INSIDE_LAUNCH
from traceinfer.analysis.phases import phase_at

Severity = Literal["high", "medium", "low", "info"]


@dataclass(frozen=True)
class Finding:
    id: str
    title: str
    severity: Severity
    explains_s: float
    evidence: dict  # figure -> value, each from a named stream or the manifest
    action: str

    def as_dict(self) -> dict:
        return {"id": self.id, "title": self.title, "severity": self.severity, "explains_s": self.explains_s,
                "evidence": self.evidence, "action": self.action}  # fmt: skip


@dataclass
class RunData:
    """What the rules read: the manifest, the stream frames (a missing stream is an empty frame), the
    run's wall time, the analyzers' tables of those frames (shared with the report's sections), and in
    ``extras['gpu_trace']`` the tables of the run's nsys capture when it has one (nsys_stats.json)."""

    manifest: dict
    frames: dict[str, pd.DataFrame]
    wall_s: float
    extras: dict = field(default_factory=dict)
    derived: Derived | None = None

    def __post_init__(self) -> None:
        if self.derived is None:
            self.derived = Derived(self.frames)

    def frame(self, name: str) -> pd.DataFrame:
        return self.frames.get(name, pd.DataFrame())

    @property
    def gpu_trace(self) -> dict:
        return self.extras.get("gpu_trace") or {}

    @property
    def on_cuda(self) -> bool:
        return str(self.manifest.get("engine", {}).get("device", "")).startswith("cuda")


def _severity(explains_s: float, wall_s: float) -> Severity:
    share = explains_s / wall_s if wall_s else 0.0
    return "high" if share >= 0.2 else "medium" if share >= 0.05 else "low"


def _ms(ns) -> float:
    return float(ns) / 1e6


def _gpu_idle_s(d: RunData) -> float | None:
    """The GPU's idle time between forwards (steps.gpu_gap_ns), or None where the forwards were not timed."""
    steps = d.frame("steps")
    if not d.on_cuda or steps.empty or steps["gpu_gap_ns"].dropna().empty:
        return None
    return float(steps["gpu_gap_ns"].sum()) / 1e9


def host_bound_gaps(d: RunData) -> Finding | None:
    idle_s = _gpu_idle_s(d)
    if idle_s is None:
        return None
    steps = d.frame("steps")
    gaps = steps["gpu_gap_ns"].fillna(0)
    if idle_s < 0.05 * d.wall_s:
        return None
    parts = {stage: float(steps[f"{stage}_ns"].fillna(0).sum()) / 1e9 for stage in ("schedule", "prepare", "postprocess")}
    worst = max(parts, key=parts.get)
    # nsys tracing each graph node makes every replay's launch longer on the host (CUPTI's graph-level records
    # exist to avoid that cost): at batch 1 on the H200 that alone opened gaps no unprofiled run had.
    replayed = bool(as_mask(steps["cuda_graph"]).any())
    node_traced = replayed and d.gpu_trace.get("graph_trace") == "node"
    return Finding(
        "host_bound_gaps",
        f"The GPU waits for the host: idle {100 * idle_s / d.wall_s:.0f}% of the run between forwards",
        _severity(idle_s, d.wall_s),
        idle_s,
        {"gpu_idle_s": idle_s, "wall_s": d.wall_s, "median_gap_ms": _ms(gaps.median()),
         "host_stage_s": parts, "largest_host_stage": worst, "nsys_graph_nodes_traced": node_traced,
         "source": "steps.gpu_gap_ns, steps.<stage>_ns, steps.cuda_graph, nsys_stats.json graph_trace"},  # fmt: skip
        f"Overlap the next step's host work with the forward (async scheduling) and shorten {worst}: "
        "persistent pinned input buffers, fewer Python objects per token."
        + (" This run was captured by nsys tracing every CUDA graph node, which lengthens each graph launch on "
           "the host: see whether the gaps stay in a run without --nsys before acting on them." if node_traced else ""),
    )


HOST_STAGES = ("schedule", "prepare", "postprocess", "handover")


def host_stage(d: RunData) -> Finding | None:
    """The largest host stage outside the forward, when removing it could give back more than 5% of the run.
    (On a GPU the forward is its launch and sample waits for the GPU; on a CPU both are the model's compute.)

    On a GPU with the forwards timed, host work costs the run only while the GPU waits for it: with async
    scheduling the next step's host work runs beside the forward. There a stage explains at most the GPU's
    idle time between forwards (steps.gpu_gap_ns), however long it runs."""
    steps = d.frame("steps")
    if steps.empty or not d.wall_s:
        return None
    totals = {s: float(steps[f"{s}_ns"].fillna(0).sum()) / 1e9 for s in HOST_STAGES}
    handover = totals["handover"]
    totals["other"] = float(steps["other_ns"].fillna(0).sum()) / 1e9 - handover
    gc = d.frame("gc")
    if not gc.empty:  # a collection's pause is the gc finding's, not the stage's it fell in
        for phase, pause in zip(phase_at(steps, gc["t_ns"]), gc["dur_ns"]):
            if phase in totals:
                totals[phase] -= float(pause) / 1e9
    stage = max(totals, key=totals.get)
    seconds = totals[stage]
    gpu_idle_s = _gpu_idle_s(d)
    explains = seconds if gpu_idle_s is None else min(seconds, gpu_idle_s)
    if explains < 0.05 * d.wall_s:
        return None
    per_step = steps[f"{stage}_ns"] if stage != "other" else steps["other_ns"] - steps["handover_ns"].fillna(0)
    actions = {
        "schedule": "profile the scheduler (traceinfer flamegraph RUN --kind cpu --phase schedule): something "
        "in scheduling is slow (a sleep, a lock, a quadratic queue scan)",
        "prepare": "build inputs without Python loops: persistent pinned buffers filled in place, one copy",
        "postprocess": "fewer Python objects per token in postprocess and block bookkeeping",
        "handover": "the probes' per-step work is on the host's path: use fewer probes, or a GPU to hide it",
        "other": "host time outside the named stages: see the CPU flame graph's 'other' phase",
    }
    evidence = {"stage": stage, "stage_s": seconds, "wall_s": d.wall_s, "median_ms": _ms(per_step.median()),
                "p99_ms": _ms(per_step.quantile(0.99)), "source": f"steps.{stage}_ns"}  # fmt: skip
    if gpu_idle_s is not None:
        evidence.update(gpu_idle_s=gpu_idle_s, source=f"steps.{stage}_ns, steps.gpu_gap_ns")
    return Finding(
        f"host_stage_{stage}",
        f"{stage} takes {100 * seconds / d.wall_s:.0f}% of the run ({_ms(per_step.median()):.2f} ms in a median step)",
        _severity(explains, d.wall_s),
        explains,
        evidence,
        actions[stage],
    )


WAIT_MIN_GPU_NS = 1_000_000  # forwards shorter than this on the GPU are left out: any launch is as long
WAIT_SHARE = 0.9  # a launch lasting this share of its GPU work or more kept the host from moving on


def host_waits_in_forward(d: RunData) -> Finding | None:
    """On a GPU the forward stage only launches work, and the host moves on to the next step while the GPU
    runs it. A launch that lasts as long as the GPU work it launched waited for the GPU: at a synchronizing
    call inside the forward, or kernel by kernel when the launches are slower than the kernels. The next
    step's host work then starts only when the GPU is done, and the GPU idles through it. Explains that
    idle: the GPU's gap before each forward that follows such a step. (On the H200 bench of 2026-12-01 the
    eager mixed steps' launch took their GPU time, 24.6 ms: indexing with a host list copied it from pageable
    memory, a wait for the whole forward.)"""
    steps = d.frame("steps")
    if not d.on_cuda or steps.empty or steps["gpu_forward_ns"].dropna().empty or not d.wall_s:
        return None
    s = steps[steps["forward_ns"].notna()].sort_values("step")
    gpu = s["gpu_forward_ns"]
    waited = (gpu >= WAIT_MIN_GPU_NS) & (s["forward_ns"] >= WAIT_SHARE * gpu)
    idle_after = s["gpu_gap_ns"].shift(-1).fillna(0)[waited]
    explains = float(idle_after.sum()) / 1e9
    if explains < 0.01 * d.wall_s:
        return None
    w = s[waited]
    launch_ms, gpu_ms = _ms(w["forward_ns"].median()), _ms(w["gpu_forward_ns"].median())
    eager = int((~as_mask(w["cuda_graph"])).sum())
    prefill = int((w["num_prefill_tokens"].fillna(0) > 0).sum())
    return Finding(
        "host_waits_in_forward",
        f"The host waited for the GPU inside {len(w):,} forwards' launch ({launch_ms:.1f} ms "
        f"against {gpu_ms:.1f} ms of GPU work), and the GPU then idled through the next "
        f"step's host work: {1e3 * explains:.0f} ms",
        _severity(explains, d.wall_s),
        explains,
        {"steps": int(len(w)), "forwards": int(len(s)), "eager": eager, "with_prefill": prefill,
         "launch_median_ms": launch_ms, "gpu_forward_median_ms": gpu_ms,
         "gpu_idle_after_s": explains, "wall_s": d.wall_s, "first_steps": [int(x) for x in w["step"].head(5)],
         "source": "steps.forward_ns, steps.gpu_forward_ns, steps.gpu_gap_ns (of the next forward)"},  # fmt: skip
        "Run one such step under torch.cuda.set_sync_debug_mode('warn'): it names each call that waits for the "
        "GPU (.item(), .tolist(), a copy from pageable memory, indexing a CUDA tensor with a host list). If none "
        "does, the launches themselves are slower than the kernels: a CUDA graph, or fewer, larger kernels.",
    )


def kv_preemptions(d: RunData) -> Finding | None:
    steps, requests = d.frame("steps"), d.frame("requests")
    if steps.empty or not steps["num_preempted"].fillna(0).sum():
        return None
    preempted = int(steps["num_preempted"].fillna(0).sum())
    dropped = 0
    if not requests.empty:
        dropped = int(requests.loc[requests["event"] == "preempted", "num_computed_tokens"].fillna(0).sum())
    prefill = steps[steps["num_prefill_tokens"].fillna(0) > 0]
    tokens_per_s = float(prefill["num_prefill_tokens"].sum()) / (float(prefill["dur_ns"].sum()) / 1e9) if len(prefill) else 0.0
    recompute_s = dropped / tokens_per_s if tokens_per_s else 0.0
    waiting = steps.loc[steps["num_preempted"].fillna(0) > 0, "num_waiting"]
    blocks = d.manifest.get("engine", {}).get("num_kv_blocks")
    low_free = int(steps["num_free_blocks"].min()) if "num_free_blocks" in steps else None
    return Finding(
        "kv_preemptions",
        f"The KV cache ran out: {preempted} preemptions, {dropped:,} computed tokens dropped and recomputed",
        "high" if recompute_s >= 0.05 * d.wall_s else "medium",
        recompute_s,
        {"preemptions": preempted, "tokens_recomputed": dropped, "recompute_s_estimate": recompute_s,
         "prefill_tokens_per_s": tokens_per_s, "num_kv_blocks": blocks, "fewest_free_blocks": low_free,
         "waiting_when_preempting_max": int(waiting.max()) if len(waiting) else 0,
         "source": "steps.num_preempted, requests.num_computed_tokens (preempted)"},  # fmt: skip
        "Give the KV cache more blocks (num_kv_blocks, gpu_memory_utilization, cpu_kv_cache_gib) or admit fewer "
        "sequences at once (max_num_seqs).",
    )


def gc_pauses(d: RunData) -> Finding | None:
    gc, steps, tokens = d.frame("gc"), d.frame("steps"), d.frame("tokens")
    if gc.empty:
        return None
    pause_s = float(gc["dur_ns"].sum()) / 1e9
    if pause_s < 0.01 * d.wall_s:
        return None
    evidence = {"collections": int(len(gc)), "pause_s": pause_s, "longest_ms": _ms(gc["dur_ns"].max()),
                "in_steps": int(as_mask(gc["in_step"]).sum()),
                "by_generation": {int(k): int(v) for k, v in gc["generation"].value_counts().sort_index().items()},
                "source": "gc.dur_ns, gc.step"}  # fmt: skip
    if not steps.empty and not tokens.empty:
        hit = set(gc.loc[as_mask(gc["in_step"]), "step"].dropna().astype(int))
        itl = d.derived.inter_token_latencies
        in_gc = itl["step"].isin(hit)
        with_gc, without = itl.loc[in_gc, "itl_ms"], itl.loc[~in_gc, "itl_ms"]
        evidence.update(itl_p99_ms=float(itl["itl_ms"].quantile(0.99)) if len(itl) else None,
                        itl_p99_without_gc_steps_ms=float(without.quantile(0.99)) if len(without) else None,
                        itl_median_in_gc_steps_ms=float(with_gc.median()) if len(with_gc) else None)  # fmt: skip
    return Finding(
        "gc_pauses",
        f"Garbage collection paused the engine {len(gc)} times, {1e3 * pause_s:.0f} ms in all",
        _severity(pause_s, d.wall_s),
        pause_s,
        evidence,
        "Freeze long-lived objects after loading (gc.freeze), raise the gen0 threshold (gc.set_threshold), or "
        "find what allocates per step (the CPU flame graph's gc frames); never gc.collect() in the serving loop.",
    )


def eager_decode(d: RunData) -> Finding | None:
    steps = d.frame("steps")
    if not d.on_cuda or steps.empty:
        return None
    decode = steps[(steps["num_prefill_tokens"].fillna(0) == 0) & steps["forward_ns"].notna()]
    eager = decode[~as_mask(decode["cuda_graph"])]
    if eager.empty:
        return None
    graphs = decode[as_mask(decode["cuda_graph"])]
    enforce = bool(d.manifest.get("engine", {}).get("config", {}).get("enforce_eager"))
    # what a graph replay would have cost instead: the graph steps' median host time, or none measured
    baseline_ns = float(graphs["dur_ns"].median()) if len(graphs) else None
    if baseline_ns is not None:
        explains = max(float(eager["dur_ns"].sum()) - baseline_ns * len(eager), 0.0) / 1e9
    else:
        # No graph step to compare with: the host time spent issuing the forward's kernels one by one, which
        # one graph replay replaces. CUDA events cannot give the GPU's own time here (a GPU starved by the
        # launches stays between its events), so this is the saving's upper bound, and evidence says so.
        explains = float(eager["forward_ns"].fillna(0).sum()) / 1e9
    sizes = sorted({int(x) for x in eager["num_decode_seqs"].dropna()})
    return Finding(
        "eager_decode",
        f"{len(eager):,} of {len(decode):,} decode-only steps ran eager, without a CUDA graph",
        _severity(explains, d.wall_s),
        explains,
        {"eager_decode_steps": int(len(eager)), "decode_only_steps": int(len(decode)), "enforce_eager": enforce,
         "eager_batch_sizes": sizes[:20], "eager_step_median_ms": _ms(eager["dur_ns"].median()),
         "graph_step_median_ms": _ms(baseline_ns) if baseline_ns is not None else None,
         "explains": "eager steps' time beyond a graph step's median" if baseline_ns is not None else
                     "host time launching the eager forwards (an upper bound: no graph step to compare with)",
         "source": "steps.cuda_graph, steps.dur_ns, manifest engine.config.enforce_eager"},  # fmt: skip
        "Turn CUDA graphs on (enforce_eager = false)" if enforce else
        "Capture graphs for these batch sizes (max_num_seqs bounds the captured sizes)",  # fmt: skip
    )


def prefill_stalls(d: RunData) -> Finding | None:
    steps = d.frame("steps")
    if steps.empty:
        return None
    decode_only = steps[(steps["num_prefill_tokens"].fillna(0) == 0) & (steps["num_decode_seqs"].fillna(0) > 0)]
    mixed = steps[(steps["num_prefill_tokens"].fillna(0) > 0) & (steps["num_decode_seqs"].fillna(0) > 0)]
    if decode_only.empty or mixed.empty:
        return None
    typical = float(decode_only["dur_ns"].median())
    extra = (mixed["dur_ns"] - typical).clip(lower=0)
    stall_s = float((extra * mixed["num_decode_seqs"]).sum()) / 1e9 / max(float(steps["num_decode_seqs"].mean()), 1.0)
    if stall_s < 0.05 * d.wall_s:
        return None
    pieces = (d.manifest.get("engine", {}).get("kernels") or {}).get("piecewise_graph_tokens") or None
    return Finding(
        "prefill_stalls",
        f"Prefill chunks stretch the decode steps they ride in: {len(mixed):,} mixed steps, median "
        f"{_ms(mixed['dur_ns'].median()):.1f} ms against {_ms(typical):.1f} ms for a decode-only step",
        _severity(stall_s, d.wall_s),
        stall_s,
        {"mixed_steps": int(len(mixed)), "mixed_step_median_ms": _ms(mixed["dur_ns"].median()),
         "decode_step_median_ms": _ms(typical), "prefill_tokens_median": float(mixed["num_prefill_tokens"].median()),
         "token_budget": int(steps["token_budget"].dropna().iloc[0]) if steps["token_budget"].notna().any() else None,
         "piecewise_graph_tokens": pieces,
         "source": "steps.dur_ns, steps.num_prefill_tokens, steps.num_decode_seqs, "
                   "manifest engine.kernels.piecewise_graph_tokens"},  # fmt: skip
        "Lower max_num_batched_tokens so prefills come in smaller chunks beside the decodes (chunked prefill on)"
        + ("; these steps already replay piecewise CUDA graphs, so what stretches them is the prefill's own GPU work."
           if pieces else
           ", or run them as piecewise CUDA graphs (piecewise_graphs, with CUDA graphs and the triton backend)."),
    )


def budget_throttle(d: RunData) -> Finding | None:
    steps = d.frame("steps")
    if steps.empty or steps["token_budget"].dropna().empty:
        return None
    budget = int(steps["token_budget"].dropna().iloc[0])
    full = steps[(steps["num_batched_tokens"].fillna(0) >= budget) & (steps["num_waiting"].fillna(0) > 0)]
    if full.empty:
        return None
    waited_s = float((full["dur_ns"] * full["num_waiting"]).sum()) / 1e9 / max(float(steps["num_running"].max()), 1.0)
    if waited_s < 0.02 * d.wall_s:
        return None
    return Finding(
        "budget_throttle",
        f"The token budget ({budget:,}) was full in {len(full):,} steps while requests waited",
        _severity(waited_s, d.wall_s),
        waited_s,
        {"token_budget": budget, "full_steps": int(len(full)), "steps": int(len(steps)),
         "waiting_max": int(full["num_waiting"].max()), "source": "steps.num_batched_tokens, steps.num_waiting"},  # fmt: skip
        "Raise max_num_batched_tokens (a larger step: more prefill per step, longer decode latency).",
    )


def probe_cost(d: RunData) -> Finding | None:
    o = d.manifest.get("overhead") or {}
    if not o.get("resolved") or o.get("cost_pct", 0) <= 0:
        return None
    seconds = o["cost_pct"] / 100 * d.wall_s
    return Finding(
        "probe_cost",
        f"The probes cost {o['cost_pct']:.1f}% of throughput (passes within +-{o['spread_pct']:.1f}%)",
        _severity(seconds, d.wall_s),
        seconds,
        {k: o.get(k) for k in ("cost_pct", "spread_pct", "probed_median_tok_s", "off_median_tok_s", "method")},
        "Profile with fewer probes (--probes default, no threads at 100 Hz), or on a GPU where their work hides "
        "behind the forward.",
    )


def kernel_gaps(d: RunData) -> Finding | None:
    """The GPU idles between the kernels of one launch: a graph replay's nodes each start after the last
    ends, and a step of hundreds of small kernels loses a fraction of a microsecond at every boundary."""
    by_phase = (d.gpu_trace.get("gpu_gaps") or {}).get("by_phase") or []
    inside = next((r for r in by_phase if r["phase"] == INSIDE_LAUNCH), None)
    if inside is None or not d.wall_s:
        return None
    idle_s = inside["idle_ns"] / 1e9
    if idle_s < 0.05 * d.wall_s:
        return None
    steps = d.frame("steps")
    forwards = int(steps["forward_ns"].notna().sum()) if not steps.empty else 0
    kernels = (d.gpu_trace.get("counts") or {}).get("kernels")
    per_forward = kernels / forwards if kernels and forwards else None
    return Finding(
        "kernel_gaps",
        f"The GPU idles between the kernels of each forward: {100 * idle_s / d.wall_s:.0f}% of the run in "
        f"{inside['gaps']:,} gaps of {inside['median_gap_ns'] / 1e3:.1f} us"
        + (f" ({per_forward:.0f} kernels a forward)" if per_forward else ""),
        _severity(idle_s, d.wall_s),
        idle_s,
        {"idle_s": idle_s, "gaps": inside["gaps"], "median_gap_us": inside["median_gap_ns"] / 1e3,
         "kernels_per_forward": per_forward, "wall_s": d.wall_s,
         "source": "nsys_stats.json gpu_gaps.by_phase, counts.kernels; steps.forward_ns"},  # fmt: skip
        "Fewer, larger kernels: fuse the small ones between the matmuls (norms, RoPE, activation, KV store) "
        "into the matmuls' prologues and epilogues; see the kernel table (GPU time, kernel by kernel).",
    )


def compute_bound(d: RunData) -> Finding:
    """What is left when no rule fired: the time is the model's forward (and sampling); with an nsys
    capture, the kernels that take most of the GPU's time are named."""
    steps = d.frame("steps")
    forward = float(steps["forward_ns"].fillna(0).sum() + steps["sample_ns"].fillna(0).sum()) / 1e9 if not steps.empty else 0.0
    gpu = float(steps["gpu_forward_ns"].fillna(0).sum()) / 1e9 if not steps.empty else 0.0
    where = "the GPU's forward" if d.on_cuda else "the model's forward and sampling on the CPU"
    evidence = {"forward_and_sample_s": forward, "gpu_forward_s": gpu if d.on_cuda else None, "wall_s": d.wall_s,
                "source": "steps.forward_ns, steps.sample_ns, steps.gpu_forward_ns"}  # fmt: skip
    action = "Faster kernels or a smaller model; compare with the run's physical floor (headline)."
    kernels = d.gpu_trace.get("cuda_gpu_kern_sum") or []
    if kernels:
        top = kernels[:3]
        evidence["top_kernels"] = [{k: r[k] for k in ("name", "time_pct", "instances", "med_ns")} for r in top]
        evidence["source"] += ", nsys_stats.json cuda_gpu_kern_sum"
        named = ", ".join(f"{r['name']} {r['time_pct']:.0f}% ({r['med_ns'] / 1e3:.1f} us x {r['instances']:,})"
                          for r in top)  # fmt: skip
        action = (f"Faster kernels, the largest first: {named} of the GPU's kernel time. Set each one's time "
                  "against the bytes it must read at the measured copy rate (headline's floor).")  # fmt: skip
    return Finding(
        "compute_bound",
        f"No bottleneck outside the model: {where} takes the time",
        "info",
        gpu if d.on_cuda else forward,
        evidence,
        action,
    )


RULES: tuple[Callable[[RunData], Finding | None], ...] = (
    host_bound_gaps, host_stage, host_waits_in_forward, kv_preemptions, gc_pauses, eager_decode, prefill_stalls,
    budget_throttle, probe_cost, kernel_gaps,
)  # fmt: skip


def find(d: RunData) -> list[Finding]:
    """Every rule that fires, ranked by the time it explains; a run where none fires gets compute_bound."""
    found = [f for f in (rule(d) for rule in RULES) if f is not None]
    found.sort(key=lambda f: (-f.explains_s, f.id))
    return found or [compute_bound(d)]
