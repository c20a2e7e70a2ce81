"""Other profilers' files as folded stacks: the torch_profiler probe's trace of a real CPU run (synthetic:tiny)
read back as a range-path flame graph; the GPU reader on a trace written to Kineto's format; the
torch.cuda.memory snapshot reader; files that are not what they claim."""

from __future__ import annotations

import gzip
import json
import pickle

import pytest
import torch

import traceinfer
from traceinfer import SamplingParams
from traceinfer.config import ProbesConfig
from traceinfer.errors import IngestError
from traceinfer.flamegraphs.folded import kind_of
from traceinfer.ingest import cpu_stacks, gpu_stacks, load_snapshot, load_trace, memory_stacks, memory_summary
from traceinfer.probes import PRESETS, attach, resolve_probes
from traceinfer.rundir import read_manifest
from traceinfer.rundir.schema import TORCH_TRACE

STAGE_RANGES = {"schedule_[r]", "prepare_[r]", "forward (eager)_[r]", "sample_[r]", "postprocess_[r]"}


@pytest.fixture(scope="module")
def llm():
    """synthetic:tiny on the CPU, warmed up; denormals flushed (random weights drift into them: 50x slower
    matmuls) for the module's time only."""
    torch.set_flush_denormal(True)
    engine = traceinfer.LLM("synthetic:tiny", device="cpu", num_kv_blocks=64)
    engine.generate(_prompts(2), _greedy(2))
    yield engine
    torch.set_flush_denormal(False)


def _prompts(n: int, length: int = 16) -> list[list[int]]:
    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, 10000, (length,), generator=g).tolist() for _ in range(n)]


def _greedy(n: int) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True)


@pytest.fixture(scope="module")
def profiled(llm, tmp_path_factory):
    """One profiled generate with a range per decoder layer: (run directory, engine steps run, the trace)."""
    run = tmp_path_factory.mktemp("torch-profiler") / "run"
    prompts = _prompts(3)  # outside the window: only the engine's steps are in the trace
    first = llm.engine.step_index
    with attach(llm.engine, "torch_profiler", run, ProbesConfig(nvtx_layers=True)):
        llm.generate(prompts, _greedy(6))
    return run, llm.engine.step_index - first, load_trace(run / TORCH_TRACE)


def _ranges(trace: dict, name: str) -> list[dict]:
    return [e for e in trace["traceEvents"] if e.get("cat") == "user_annotation" and e.get("name") == name]


# -- the probe -------------------------------------------------------------------------------
def test_the_torch_profiler_is_named_not_in_a_preset():
    assert "torch_profiler" not in PRESETS["all"] and "torch_profiler" not in PRESETS["default"]
    assert resolve_probes("default,torch_profiler") == PRESETS["default"] + ("torch_profiler",)


def test_every_step_and_stage_is_a_range_in_the_trace(profiled, llm):
    run, steps, trace = profiled
    assert steps > 0 and len(_ranges(trace, "step")) == steps
    for stage in ("schedule", "prepare", "forward (eager)", "sample", "postprocess"):
        assert len(_ranges(trace, stage)) == steps, stage
    layers = len(llm.engine.model.model.layers)
    assert all(len(_ranges(trace, f"layer.{i}")) == steps for i in range(layers))
    info = read_manifest(run)["probes"]["details"]["torch_profiler"]
    assert info["available"] and info["trace"] == TORCH_TRACE and info["events"] == len(trace["traceEvents"])
    blocks = [e for e in trace["traceEvents"] if e.get("cat") == "user_annotation" and e["name"].startswith("block ")]
    assert blocks and {e["name"] for e in blocks} <= {"block allocate", "block free", "block preempt", "block cache_full_blocks"}
    assert info["ranges"] == steps * (6 + layers) + len(blocks) and info["activities"] == ["cpu"]
    assert all(not layer._forward_pre_hooks and not layer._forward_hooks for layer in llm.engine.model.model.layers)


def test_a_cpu_trace_reads_as_a_range_path_flame_graph(profiled, llm):
    _, _, trace = profiled
    folded = cpu_stacks(trace)
    assert folded.unit == "ns" and len(folded) > 0
    assert {stack[0] for stack in folded.counts} == {"step_[r]"}  # nothing ran outside a step
    assert {s[1] for s in folded.counts if len(s) > 1 and kind_of(s[1])[1] == "range"} == STAGE_RANGES
    ops = [s for s in folded.counts if len(s) > 2 and s[1] in STAGE_RANGES and kind_of(s[2])[1] == "native"]
    assert ops and all(s[2].startswith("aten::") for s in ops)  # aten ops below the stage ranges
    layers = {s[2] for s in folded.counts if len(s) > 2 and s[1] == "forward (eager)_[r]" and s[2].startswith("layer.")}
    assert layers == {f"layer.{i}_[r]" for i in range(len(llm.engine.model.model.layers))}
    assert all(s[2] in layers for s in folded.counts if any(f.startswith("layer.") for f in s))  # only there


def test_self_times_add_up_to_the_ranges_per_thread(profiled):
    _, _, trace = profiled
    steps_ns = sum(round(e["dur"] * 1000) for e in _ranges(trace, "step"))
    folded = cpu_stacks(trace, threads=True)
    per_thread: dict[str, float] = {}
    for stack, ns in folded.counts.items():
        assert stack[1] == "step_[r]"
        per_thread[stack[0]] = per_thread.get(stack[0], 0.0) + ns
    assert len(per_thread) == 1 and per_thread.popitem()[1] == pytest.approx(steps_ns, abs=len(folded))
    forward_ns = sum(round(e["dur"] * 1000) for e in _ranges(trace, "forward (eager)"))
    under = sum(ns for s, ns in folded.counts.items() if len(s) > 2 and s[2] == "forward (eager)_[r]")
    assert under == pytest.approx(forward_ns, abs=len(folded))


def test_gpu_stacks_of_a_cpu_trace_are_empty(profiled):
    folded = gpu_stacks(profiled[2])
    assert len(folded) == 0 and folded.unit == "ns"


def test_ranges_left_open_are_closed_at_stop(llm, tmp_path):
    """A Ctrl-C between a stage's begin and its end leaves ranges open: stop() closes them, innermost first,
    before it stops the profiler."""
    with attach(llm.engine, "torch_profiler", tmp_path / "run") as session:
        llm.generate(_prompts(1), _greedy(2))
        subs = session.probes["torch_profiler"].subscriptions()
        subs["step"]("step", "B", 0, {"step": -1})  # a step whose end never came
        subs["forward"]("forward", "B", 0, {"cuda_graph": False})
    trace = load_trace(tmp_path / "run" / TORCH_TRACE)
    step, forward = _ranges(trace, "step")[-1], _ranges(trace, "forward (eager)")[-1]
    assert step["ts"] <= forward["ts"] and forward["ts"] + forward["dur"] <= step["ts"] + step["dur"]
    assert cpu_stacks(trace).counts.get(("step_[r]", "forward (eager)_[r]"), 0) > 0


def test_a_profiler_already_running_leaves_the_probe_absent(llm, tmp_path):
    prompts = _prompts(1)
    profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
    with profiler, attach(llm.engine, "torch_profiler", tmp_path / "run") as session:
        assert set(llm.engine.hooks.subscribed()) == {"step", "handover"}  # the session's own only
        llm.generate(prompts, _greedy(1))
    info = read_manifest(session.run_dir)["probes"]["details"]["torch_profiler"]
    assert not info["available"] and "already running" in info["reason"] and info["trace"] is None
    assert not (tmp_path / "run" / TORCH_TRACE).exists()


# -- the GPU reader --------------------------------------------------------------------------
def _gpu_trace() -> dict:
    """A trace in Kineto's format as torch.profiler writes it on a GPU (made by hand: this machine has
    none): a step with an eager forward (aten::mm -> cudaLaunchKernel -> a kernel, inside layer.0) and a
    graph replay (one cudaGraphLaunch, two kernels sharing its correlation id), a memcpy, a kernel whose
    launch is not in the trace, and the kinds the reader skips (flows, GPU-side annotations)."""
    cpu = {"pid": 100, "tid": 100}
    gpu = {"pid": 0, "tid": 7}

    def x(cat, name, ts, dur, where, **args):
        return {"ph": "X", "cat": cat, "name": name, "ts": ts, "dur": dur, **where, "args": args}

    return {"traceEvents": [
        {"ph": "M", "name": "thread_name", **cpu, "args": {"name": "thread 100 (python)"}},
        x("user_annotation", "step", 1000.0, 500.0, cpu),
        x("user_annotation", "forward (eager)", 1010.0, 100.0, cpu),
        x("user_annotation", "layer.0", 1020.0, 50.0, cpu),
        x("cpu_op", "aten::mm", 1030.0, 20.0, cpu),
        x("cuda_runtime", "cudaLaunchKernel", 1035.0, 5.0, cpu, correlation=11),
        x("kernel", "gemm_kernel", 1100.0, 12.5, gpu, correlation=11, stream=7),
        x("user_annotation", "forward (graph)", 1200.0, 50.0, cpu),
        x("cuda_runtime", "cudaGraphLaunch", 1210.0, 10.0, cpu, correlation=12),
        x("kernel", "attn_kernel", 1250.0, 3.0, gpu, correlation=12),
        x("kernel", "mlp_kernel", 1254.0, 4.0, gpu, correlation=12),
        x("user_annotation", "sample", 1300.0, 20.0, cpu),
        x("cuda_runtime", "cudaMemcpyAsync", 1305.0, 2.0, cpu, correlation=13),
        x("gpu_memcpy", "Memcpy DtoH (Device -> Pinned)", 1320.0, 1.0, gpu, correlation=13),
        x("kernel", "orphan_kernel", 2000.0, 2.0, gpu, correlation=99),
        x("gpu_user_annotation", "step", 1100.0, 300.0, gpu),
        {"ph": "s", "cat": "ac2g", "name": "ac2g", "id": 11, "ts": 1035.0, **cpu},
        {"ph": "X", "cat": "some_future_kind", "name": "?", "ts": 1.0, "dur": 1.0, **cpu},
    ]}  # fmt: skip


def test_kernels_sit_under_the_ranges_that_launched_them():
    folded = gpu_stacks(_gpu_trace())
    assert folded.counts == {
        ("step_[r]", "forward (eager)_[r]", "layer.0_[r]", "gemm_kernel_[k]"): 12500,
        ("step_[r]", "forward (graph)_[r]", "attn_kernel_[k]"): 3000,
        ("step_[r]", "forward (graph)_[r]", "mlp_kernel_[k]"): 4000,
        ("step_[r]", "sample_[r]", "Memcpy DtoH (Device -> Pinned)_[k]"): 1000,
        ("(no launch found)", "orphan_kernel_[k]"): 2000,
    }
    with_ops = gpu_stacks(_gpu_trace(), ops=True)
    assert ("step_[r]", "forward (eager)_[r]", "layer.0_[r]", "aten::mm_[n]", "gemm_kernel_[k]") in with_ops.counts


def test_the_cpu_view_of_a_gpu_trace_has_runtime_calls_as_native_frames():
    folded = cpu_stacks(_gpu_trace(), threads=True)
    thread = "thread 100 (python)"
    assert folded.counts[(thread, "step_[r]", "forward (graph)_[r]", "cudaGraphLaunch_[n]")] == 10000
    assert folded.counts[(thread, "step_[r]", "forward (eager)_[r]", "layer.0_[r]", "aten::mm_[n]")] == 15000
    assert folded.total == 500_000  # the step: every nanosecond once


# -- files that are not traces ----------------------------------------------------------------
def test_a_truncated_or_foreign_trace_is_one_line_naming_the_file(profiled, tmp_path):
    whole = (profiled[0] / TORCH_TRACE).read_bytes()
    cut = tmp_path / "cut.json.gz"
    cut.write_bytes(whole[: len(whole) // 2])
    plain_cut = tmp_path / "cut.json"
    plain_cut.write_text(gzip.decompress(whole).decode()[:5000])
    foreign = tmp_path / "list.json"
    foreign.write_text(json.dumps([{"ph": "B"}]))
    for path in (cut, plain_cut, foreign, tmp_path / "missing.json.gz"):
        with pytest.raises(IngestError) as err:
            cpu_stacks(path)
        assert str(path) in str(err.value) and "\n" not in str(err.value), err.value


def test_malformed_events_are_skipped_with_a_warning():
    trace = _gpu_trace()
    trace["traceEvents"].append({"ph": "X", "cat": "cpu_op", "name": "aten::bad", "ts": "soon", "dur": 1.0})
    with pytest.warns(UserWarning, match="ignored 1 trace event"):
        assert cpu_stacks(trace).total == 500_000


# -- the memory snapshot reader ---------------------------------------------------------------
def _frame(filename: str, line: int, name: str) -> dict:
    return {"filename": filename, "line": line, "name": name}


RUNNER = _frame("/src/traceinfer/engine/model_runner.py", 330, "forward_logits")
STEP = _frame("/src/traceinfer/engine/llm_engine.py", 200, "step")
LINEAR = _frame("/site-packages/torch/nn/functional.py", 12, "linear")
ALLOC = _frame("??", 0, "c10::cuda::CUDACachingAllocator::malloc")


def _snapshot() -> dict:
    """A snapshot built by hand from the structure documented at
    https://pytorch.org/docs/stable/torch_cuda_memory.html (``torch.cuda.memory._snapshot``'s Snapshot,
    Segment, Block and Frame; frames innermost first): making a real one needs CUDA. Two segments: live
    blocks from two stacks (one twice, one with a C++ frame), one without frames, a block freed but
    awaiting its stream, and cached free space."""
    return {
        "segments": [
            {"address": 0, "total_size": 2 << 20, "stream": 0, "segment_type": "large",
             "allocated_size": 1_572_864, "active_size": 1_572_864,
             "blocks": [
                 {"address": 0, "size": 1 << 20, "requested_size": 1_000_000, "state": "active_allocated",
                  "frames": [LINEAR, RUNNER, STEP]},
                 {"address": 1 << 20, "size": 512 << 10, "requested_size": 512 << 10, "state": "active_allocated",
                  "frames": [ALLOC, RUNNER, STEP]},
                 {"address": 3 << 19, "size": 512 << 10, "requested_size": 0, "state": "inactive", "frames": []},
             ]},
            {"address": 1 << 30, "total_size": 2 << 20, "stream": 0, "segment_type": "large",
             "allocated_size": 1 << 20, "active_size": 3 << 19,
             "blocks": [
                 {"address": 1 << 30, "size": 1 << 20, "requested_size": 1 << 20, "state": "active_allocated",
                  "frames": [LINEAR, RUNNER, STEP]},
                 {"address": (1 << 30) + (1 << 20), "size": 4096, "requested_size": 4000,
                  "state": "active_allocated", "frames": []},
                 {"address": (1 << 30) + (1 << 20) + 4096, "size": 512 << 10, "requested_size": 512 << 10,
                  "state": "active_awaiting_free", "frames": [RUNNER, STEP]},
                 {"address": (1 << 30) + (3 << 19) + 4096, "size": (512 << 10) - 4096, "requested_size": 0,
                  "state": "inactive", "frames": []},
             ]},
        ],
        "device_traces": [[]],
    }  # fmt: skip


def test_live_bytes_by_allocation_stack_root_first(tmp_path):
    step, runner = "engine/llm_engine.py:step", "engine/model_runner.py:forward_logits"
    live = {
        (step, runner, "nn/functional.py:linear"): 2 << 20,  # two blocks, one stack
        (step, runner, "??:c10::cuda::CUDACachingAllocator::malloc_[n]"): 512 << 10,
        ("(no stack recorded)",): 4096,
    }
    assert memory_stacks(_snapshot()).counts == live and memory_stacks(_snapshot()).unit == "bytes"
    free = memory_stacks(_snapshot(), free=True).counts
    assert free == {**live, ("(cached, free)_[i]",): (1 << 20) - 4096, ("(awaiting free)_[i]", step, runner): 512 << 10}
    path = tmp_path / "memory_snapshot.pickle"
    path.write_bytes(pickle.dumps(_snapshot()))
    assert memory_stacks(path).counts == live  # read from the file a probe writes
    assert memory_summary(path) == {
        "allocated": (2 << 20) + (512 << 10) + 4096, "requested": 1_000_000 + (512 << 10) + (1 << 20) + 4000,
        "active": (2 << 20) + (1 << 20) + 4096, "reserved": 4 << 20, "inactive": (1 << 20) - 4096,
        "segments": 2, "blocks": 4,
    }  # fmt: skip


def test_an_older_snapshot_keeps_its_frames_in_history():
    snap = {"segments": [{"total_size": 1024, "blocks": [
        {"size": 1024, "state": "active_allocated", "history": [{"addr": 0, "real_size": 1000, "frames": [RUNNER]}]},
    ]}]}  # fmt: skip
    assert memory_stacks(snap).counts == {("engine/model_runner.py:forward_logits",): 1024}


def test_a_damaged_or_hostile_snapshot_is_one_line_naming_the_file(tmp_path):
    whole = pickle.dumps(_snapshot())
    cut = tmp_path / "cut.pickle"
    cut.write_bytes(whole[: len(whole) // 2])
    hostile = tmp_path / "hostile.pickle"
    hostile.write_bytes(pickle.dumps({"segments": [], "x": print}))  # would import builtins.print
    other = tmp_path / "other.pickle"
    other.write_bytes(pickle.dumps([1, 2]))
    for path in (cut, hostile, other, tmp_path / "missing.pickle"):
        with pytest.raises(IngestError) as err:
            load_snapshot(path)
        assert str(path) in str(err.value) and "\n" not in str(err.value), err.value
