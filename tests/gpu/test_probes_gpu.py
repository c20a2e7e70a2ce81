"""Probes on a CUDA device: forward GPU time from CUDA events, NVML and allocator samples, graph replay
flags, the KV replay with graphs on, and a Perfetto trace that validates."""

from __future__ import annotations

import json

import pytest
import torch

from tests.probe_checks import trace_problems
from traceinfer import LLM, SamplingParams, open_run
from traceinfer.analysis import kv as kv_analysis
from traceinfer.config import ProbesConfig
from traceinfer.probes import attach
from traceinfer.probes.kv_events import block_manager_state
from traceinfer.render.perfetto import build_trace
from traceinfer.rundir import read_manifest, read_stream

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.fixture(scope="module")
def llm():
    return LLM("synthetic:tiny", device="cuda", num_kv_blocks=256, max_num_seqs=16)


def test_all_probes_on_cuda(llm, tmp_path):
    engine = llm.engine
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, 10000, (n,), generator=g).tolist() for n in (5, 17, 33, 48, 64, 1, 16)]
    options = ProbesConfig(sample_hz=100, stack_hz=100, memory_snapshot=True)
    with attach(engine, "all", tmp_path / "run", options) as session:
        outputs = llm.generate(prompts, SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True))
    assert engine.hooks.subscribed() == {}
    run = session.run_dir
    m = read_manifest(run)
    details = m["probes"]["details"]
    assert m["status"] == "completed" and m["device"]["type"] == "cuda" and m["device"]["name"]

    steps = read_stream(run, "steps")
    assert len(steps) == details["steps"]["rows"] and details["steps"]["gpu_timing"] == "cuda events"
    launching = [r for r in steps if r["forward_ns"] is not None]  # (the last step only finishes the one before)
    assert len(launching) >= len(steps) - 1
    assert all(r["gpu_forward_ns"] is not None and r["gpu_forward_ns"] > 0 for r in launching)
    assert all(r["gpu_gap_ns"] is not None and r["gpu_gap_ns"] >= 0 for r in launching[1:])
    decode_only = [r for r in launching if r["num_prefill_seqs"] == 0]
    if engine.runner.graphs:
        assert decode_only and all(r["cuda_graph"] for r in decode_only)

    gpu = read_stream(run, "gpu_samples")
    assert details["samplers"]["gpu"]["available"], details["samplers"]["gpu"]
    assert gpu and all(r["mem_used_bytes"] for r in gpu) and any(r["gpu_util_pct"] is not None for r in gpu)
    mem = read_stream(run, "cuda_memory")
    assert len(mem) == len(launching) and all(r["reserved_bytes"] >= r["allocated_bytes"] > 0 for r in mem)
    assert details["cuda_memory"]["memory_snapshot"] == "memory_snapshot.pickle"
    assert (run / "memory_snapshot.pickle").stat().st_size > 0
    assert details["nvtx"]["available"] and details["nvtx"]["cuda_profiler_range"]

    kv = open_run(run).frame("kv_events")
    assert kv_analysis.replay(kv) == kv_analysis.KVState.from_snapshot(block_manager_state(engine.block_manager))
    tokens = read_stream(run, "tokens")
    assert len(tokens) == sum(len(o.token_ids) for o in outputs)
    assert trace_problems(json.loads(json.dumps(build_trace(open_run(run))))) == []
    assert all(m["streams"][name]["parquet"] for name in open_run(run).streams)
