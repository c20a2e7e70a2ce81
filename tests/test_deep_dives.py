"""Deep dives on a real CPU profile: every figure against the run's own streams (computed here a second way),
every source reference against the line of the file it names, the refs following the code when it moves,
and each topic rendered as markdown with every section."""

from __future__ import annotations

import ast
import json
import pickle
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from traceinfer import LLM, open_run
from traceinfer.analysis import deep_dives, source_refs
from traceinfer.analysis.phases import STAGE_FRAMES
from traceinfer.cli import main as cli_main
from traceinfer.engine.hooks import HOOK_POINTS
from traceinfer.render import deep_dive_text
from traceinfer.rundir import STREAMS

REPO = Path(__file__).resolve().parents[1]
# 24 blocks of 4 tokens hold 96 tokens: chatbot's ~60-token prompts with 32 outputs preempt and one fails;
# a 32-token budget chunks the prefills. Every request at t=0 (offline): with arrivals spread over time a
# slow machine may finish one before the next comes, and nothing is preempted
PROFILE = ["profile", "--workload", "chatbot", "--arrival", "offline", "--num-requests", "4", "--output-len", "32",
           "--probes", "all", "--num-kv-blocks", "24", "--block-size", "4", "--max-num-batched-tokens", "32",
           "--overhead-passes", "0", "--no-warmup", "--device", "cpu"]  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("deep") / "run"
    torch.set_flush_denormal(True)  # synthetic weights on CPU are ~50x slower with float32 denormals
    try:
        assert cli_main([*PROFILE, "--out", str(out)]) == 0
    finally:
        torch.set_flush_denormal(False)
    r = open_run(out)
    return r, {name: r.frame(name) for name in r.streams}


@pytest.fixture(scope="module")
def dives(run):
    r, frames = run
    return {topic: build(r.manifest, frames, r.path) for topic, build in deep_dives.TOPICS.items()}


def values(dive) -> dict:
    return dive.values()


# -- source references ---------------------------------------------------------------------------
def call_text(lines: list[str], line: int) -> str:
    """The source from ``line`` (1-based) until its brackets balance: a call spread over several lines."""
    text, depth = "", 0
    for raw in lines[line - 1 :]:
        text += raw + "\n"
        depth += sum(raw.count(c) for c in "([{") - sum(raw.count(c) for c in ")]}")
        if depth <= 0:
            break
    return text


def holds(ref: source_refs.SourceRef, repo: Path = REPO) -> bool:
    """The line the reference names still holds what it says: its code, and its symbol in that code."""
    lines = (repo / ref.path).read_text().splitlines()
    return 0 < ref.line <= len(lines) and lines[ref.line - 1].strip() == ref.code and ref.symbol in lines[ref.line - 1]


def test_every_hook_point_has_a_site_and_each_names_its_line():
    sites = source_refs.hook_sites()
    assert tuple(sites) == HOOK_POINTS == source_refs.hook_points()
    for point, refs in sites.items():
        assert refs, f"no site found for hook point {point!r}"
        for ref in refs:
            assert ref.path.startswith("traceinfer/engine/") and holds(ref), ref
            assert ref.symbol.endswith(f"hooks.{point}") or f"hooks.{point}." in ref.symbol, ref
    spans = {p for p, refs in sites.items() for r in refs if r.symbol.endswith(".span")}
    assert {"step", "schedule", "prepare", "forward", "sample", "postprocess", "block_manager"} <= spans


def test_every_block_op_of_the_run_has_its_record_call(run):
    _, frames = run
    sites = source_refs.block_op_sites()
    recorded = set(frames["kv_events"]["op"]) - {"snapshot"}  # the snapshot is the probe's, not the engine's
    assert recorded <= set(sites) and set(deep_dives.KV_OPS) == set(sites)
    for op, refs in sites.items():
        lines = {r.path: (REPO / r.path).read_text().splitlines() for r in refs}
        assert all(holds(r) for r in refs), refs
        assert "_record(" in lines[refs[0].path][refs[0].line - 1], refs[0]  # the call that records it first
        # the op is written at one of its sites: in the _record call, passed in, or as a default
        assert any(f'"{op}"' in call_text(lines[r.path], r.line) for r in refs), (op, refs)
    assert any(r.symbol == "self.bm.free" and r.function == "Scheduler._preempt" for r in sites["preempt"])


def test_stage_functions_and_named_calls_point_at_their_lines():
    stages = source_refs.stage_sites()
    assert set(stages) == {stage for _, stage in STAGE_FRAMES}
    for frame, stage in STAGE_FRAMES:
        ref = source_refs.function_site(frame)
        assert ref in stages[stage] and holds(ref), ref
        assert ref.code.startswith(f"def {frame.split(':')[-1].split('.')[-1]}("), ref
    assert source_refs.function_site("Scheduler.schedule").path == "traceinfer/engine/scheduler.py"
    with pytest.raises(LookupError, match="no function 'Scheduler.nothing'"):
        source_refs.function_site("Scheduler.nothing")
    for ref in source_refs.call_sites("allocate", "Scheduler.schedule"):
        assert holds(ref) and "self.bm.allocate(" in ref.code and ref.function == "Scheduler.schedule"
    (slots,) = source_refs.attribute_sites("max_num_seqs", "Scheduler.schedule")
    assert holds(slots) and slots.code.startswith("while ")


def test_refs_follow_the_code_and_a_moved_line_is_caught(tmp_path):
    copy = tmp_path / "traceinfer" / "engine"
    shutil.copytree(source_refs.engine_dir(), copy, ignore=shutil.ignore_patterns("__pycache__"))
    before = source_refs.hook_sites()
    moved = copy / "llm_engine.py"
    moved.write_text("# one\n# two\n# three\n" + moved.read_text())
    after = source_refs.hook_sites(copy)
    for point in before:
        for old, new in zip(before[point], after[point], strict=True):
            shift = 3 if old.path.endswith("llm_engine.py") else 0
            assert (new.path, new.line, new.code) == (old.path, old.line + shift, old.code), (old, new)
            assert holds(new, tmp_path)
            assert holds(old, tmp_path) == (shift == 0)  # a reference left behind no longer holds its call


def test_finding_sources_imports_neither_the_engine_nor_torch():
    code = textwrap.dedent("""
        import sys
        from traceinfer.analysis import deep_dives, source_refs
        assert source_refs.hook_sites()["schedule"] and source_refs.block_op_sites()["evict"]
        assert source_refs.stage_sites()["sample"]
        assert not [m for m in sys.modules if m.startswith("traceinfer.engine")], "the engine was imported"
        assert "torch" not in sys.modules, "torch was imported"
    """)
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO, check=False
    )
    assert proc.returncode == 0, proc.stderr


def test_every_reference_of_every_dive_holds_its_line(dives):
    for dive in dives.values():
        refs = [r for s in dive.sections for r in s.sources]
        assert refs and all(holds(r) for r in refs), dive.topic


# -- the figures ---------------------------------------------------------------------------------
def test_kv_cache_figures_are_the_streams(run, dives):
    _, frames = run
    kv, req, steps = frames["kv_events"], frames["requests"], frames["steps"]
    v = values(dives["kv-cache"])
    for op in deep_dives.KV_OPS:
        assert v[f"{op}_ops"] == int((kv["op"] == op).sum())
        assert v[f"{op}_blocks"] == sum(len(b) for b in kv.loc[kv["op"] == op, "block_ids"])
        assert v[f"{op}_ops_per_step"] == pytest.approx((kv["op"] == op).sum() / len(steps))
    preempted = req[req["event"] == "preempted"]
    assert v["preemptions"] == len(preempted) == steps["num_preempted"].sum() == v["preempt_ops"] >= 1
    assert v["computed_tokens_dropped"] == preempted["num_computed_tokens"].sum() > 0
    assert v["evict_ops"] >= 1 and 0 <= v["evicted_never_hit"] <= v["evict_ops"]
    scheduled = req[req["event"] == "scheduled"]
    assert v["prefix_lookups"] == len(scheduled)
    assert v["prefix_hit_tokens"] == scheduled["cached_tokens"].sum() == steps["num_cached_tokens"].sum()
    assert v["prefix_hit_rate"] == pytest.approx(v["prefix_hit_tokens"] / v["prefix_query_tokens"])
    assert v["failed_requests"] == ((req["event"] == "finished") & (req["reason"] == "error")).sum() == 1
    assert v["kv_blocks"] == 24 and v["block_size"] == 4
    assert v["peak_used_blocks"] == kv["num_used"].max() == 24 and v["peak_usage"] == 1.0
    assert v["steps_no_free_block"] == (steps["num_free_blocks"] == 0).sum()
    assert 0 <= v["time_share_full"] <= 1 and len(v["usage_by_tenth"]) == 10
    # decode steps take a block once per block_size tokens
    assert v["append_blocks_per_decode_token"] == pytest.approx(1 / 4, abs=0.05)


def test_token_generation_figures_are_the_streams(run, dives):
    r, frames = run
    steps, tok, gc = frames["steps"], frames["tokens"], frames["gc"]
    v = values(dives["token-generation"])
    dur = steps["dur_ns"] / 1e6
    for q in (50, 90, 99):
        assert v[f"step_p{q}_ms"] == pytest.approx(np.percentile(dur, q))
    wall = r.manifest["results"]["seconds"] * 1e9
    for stage in ("schedule", "prepare", "forward", "sample", "postprocess"):
        assert v[f"share_{stage}"] == pytest.approx(steps[f"{stage}_ns"].sum() / wall)
        assert v[f"{stage}_p50_us"] == pytest.approx(np.percentile(steps[f"{stage}_ns"].dropna() / 1e3, 50))
    gaps = np.concatenate(
        [np.diff(g.sort_values("index")["t_ns"].to_numpy()) / 1e6 for _, g in tok.groupby("request_id")]
    )
    assert v["itl_gaps"] == len(gaps)
    for q in (50, 90, 99):
        assert v[f"itl_p{q}_ms"] == pytest.approx(np.percentile(gaps, q))
    assert v["itl_max_ms"] == pytest.approx(gaps.max())
    assert v["tail_gaps"] == (gaps > np.percentile(gaps, 90)).sum()
    assert v["tail_gaps_unexplained"] <= v["tail_gaps"]
    assert v["gc_pauses"] == len(gc) and v["gc_total_ms"] == pytest.approx(gc["dur_ns"].sum() / 1e6)
    assert v["gpu_forward_p50_ms"] is None  # a CPU run: no CUDA events
    threads = frames["thread_samples"]
    engine = threads[threads["thread_id"] == r.manifest["engine_thread"]]
    assert v["engine_thread_cpu_s"] == pytest.approx((engine["cpu_ns"].max() - engine["cpu_ns"].min()) / 1e9)


def test_memory_pool_figures_are_the_engines_own(run, dives, tmp_path):
    r, frames = run
    v = values(dives["memory-pool"])
    engine = LLM("synthetic:tiny", device="cpu", num_kv_blocks=24, block_size=4).engine  # the oracle: the engine
    assert v["bytes_per_block"] == engine.runner.kv_bytes_per_block()
    assert v["pool_bytes"] == engine.runner.kv_cache.numel() * engine.runner.kv_cache.element_size()
    assert v["pool_tokens"] == 96 and v["peak_used_blocks"] == frames["kv_events"]["num_used"].max()
    assert v["host_rss_max_bytes"] == frames["host_samples"]["rss_bytes"].max()
    dive = dives["memory-pool"]
    allocator = next(s for s in dive.sections if s.heading == "The CUDA caching allocator")
    assert "Not measured" in allocator.paragraphs[0] and "reserved_max_bytes" not in v
    assert any("cuda_memory" in line and "no CUDA allocator" in line for line in dive.not_measured)
    # a run directory holding a memory snapshot (a real H200 capture): its totals, summed here from the pickle
    shutil.copy(REPO / "tests" / "data" / "memory_snapshot.pickle", tmp_path / "memory_snapshot.pickle")
    with_snapshot = values(deep_dives.memory_pool(r.manifest, frames, tmp_path))
    snap = pickle.loads((tmp_path / "memory_snapshot.pickle").read_bytes())
    assert with_snapshot["snapshot_segments"] == len(snap["segments"])
    assert with_snapshot["snapshot_reserved_bytes"] == sum(s["total_size"] for s in snap["segments"])
    live = [b for s in snap["segments"] for b in s["blocks"] if b["state"] == "active_allocated"]
    assert with_snapshot["snapshot_allocated_bytes"] == sum(b["size"] for b in live)
    assert with_snapshot["snapshot_blocks"] == len(live)


def test_batch_processing_figures_are_the_streams(run, dives):
    _, frames = run
    steps = frames["steps"]
    v = values(dives["batch-processing"])
    full = steps["num_batched_tokens"] >= steps["token_budget"]
    waiting = steps["num_waiting"] > 0
    assert v["token_budget"] == 32 and v["steps_at_budget"] == full.sum() >= 1
    assert v["budget_full_share"] == pytest.approx(full.mean())
    assert v["steps_at_budget_with_waiting"] == (full & waiting).sum()
    batch = steps[steps["num_seqs"] > 0]
    assert (
        v["prefill_tokens"] == batch["num_prefill_tokens"].sum()
        and v["decode_tokens"] == batch["num_decode_tokens"].sum()
    )
    assert v["mixed_steps"] + v["prefill_only_steps"] + v["decode_only_steps"] == len(batch)
    assert v["max_num_seqs"] == 256 and v["running_max"] == steps["num_running"].max()
    assert v["prefills_over_one_step"] >= 1  # 32-token chunks of ~60-token prompts
    # what kept a waiting request out, classified a second way
    slots = steps["num_running"] >= 256
    preempted = steps["num_preempted"] > 0
    kv_blocks = waiting & ~full & ~slots & ~preempted
    assert v["limited_by_KV_blocks"] == kv_blocks.sum() >= 1
    assert v["limited_by_nothing_waiting"] == (~waiting).sum()
    assert sum(v[f"limited_by_{k.replace(' ', '_')}"] for k in deep_dives.LIMITERS) == len(steps)


def test_missing_streams_name_their_probe(run):
    r, _ = run
    manifest = {"engine": r.manifest["engine"], "probes": {"enabled": ["steps"], "details": {}}}
    for topic, build in deep_dives.TOPICS.items():
        dive = build(manifest, {})
        assert dive.not_measured and all("probe '" in line for line in dive.not_measured), topic
        for name, f in dive.figures.items():  # nothing is measured from the streams the run lacks
            assert f.value is None or f.source.startswith("manifest") or not any(s in f.source for s in STREAMS), name
        deep_dive_text.render_deep_dive(dive)
    assert any("probe 'threads'" in line for line in deep_dives.token_generation(manifest, {}).not_measured)


# -- markdown ------------------------------------------------------------------------------------
@pytest.mark.parametrize("topic", list(deep_dives.TOPICS))
def test_each_topic_renders_as_markdown_with_every_section(dives, topic):
    dive = dives[topic]
    md = deep_dive_text.render_deep_dive(dive)
    assert md.startswith(f"# {dive.title}\n") and dive.question in md
    headings = [line[3:] for line in md.splitlines() if line.startswith("## ")]
    assert headings[: len(dive.sections)] == [s.heading for s in dive.sections]
    assert dive.sections[-1].heading == "What it means, and what to change" and dive.sections[-1].paragraphs
    for s in dive.sections:
        for name, f in s.figures.items():
            assert f"| {name} | {deep_dive_text.format_value(f)} |" in md
        for ref in s.sources:
            assert f"`{ref.path}:{ref.line}`" in md
    for text in [p for s in dive.sections for p in s.paragraphs] + [
        line for line in md.splitlines() if line.startswith("| ")
    ]:
        assert not re.search(r"\b(nan|None|inf)\b", text), text  # a missing figure reads "not measured" or "-"
    json.dumps(dive.to_dict())  # JSON-ready as it is
    ast.literal_eval(repr(tuple(dive.figures)))  # figure names are plain strings


# -- on a GPU ------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_memory_pool_reads_the_caching_allocator_on_cuda(tmp_path):
    out = tmp_path / "run"
    argv = [*PROFILE[: PROFILE.index("--device")], "--device", "cuda", "--memory-snapshot", "--out", str(out)]
    assert cli_main(argv) == 0
    r = open_run(out)
    frames = {name: r.frame(name) for name in r.streams}
    mem = frames["cuda_memory"]
    v = values(deep_dives.memory_pool(r.manifest, frames, r.path))
    assert (
        v["reserved_max_bytes"] == mem["reserved_bytes"].max()
        and v["peak_allocated_bytes"] == mem["peak_allocated_bytes"].max()
    )
    assert v["allocated_p50_bytes"] == pytest.approx(np.percentile(mem["allocated_bytes"], 50))
    assert v["snapshot_segments"] >= 1 and v["kv_share_of_allocated"] > 0
    t = values(deep_dives.token_generation(r.manifest, frames, r.path))
    assert t["gpu_forward_p50_ms"] == pytest.approx(np.percentile(frames["steps"]["gpu_forward_ns"].dropna() / 1e6, 50))
