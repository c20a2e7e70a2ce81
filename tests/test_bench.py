"""traceinfer bench: nano-vLLM's workload, the latency and floor arithmetic, and real runs on synthetic:tiny (CPU)."""

from __future__ import annotations

import copy
import json
import random

import numpy as np
import pytest
import torch

from traceinfer import LLM
from traceinfer.analysis.floor import (
    ModelCost,
    decode_kv_token_reads,
    physical_floor,
    prefill_attention_pairs,
    prefill_flops,
)
from traceinfer.analysis.latency import percentile, token_latency_summary
from traceinfer.cli import main
from traceinfer.passes.hf import build_hf_model, hf_state_dict
from traceinfer.render.bench_text import format_report
from traceinfer.workloads import BenchSpec, bench_workload

SMALL = dict(min_input_len=8, max_input_len=24, min_output_len=4, max_output_len=12)


def nano_vllm_workload(num_requests: int = 256):
    """nano-vLLM's bench.py lines, verbatim, on the global random state (restored afterwards)."""
    from random import randint, seed

    state = random.getstate()
    try:
        seed(0)
        prompt_token_ids = [[randint(0, 10000) for _ in range(randint(100, 1024))] for _ in range(num_requests)]
        max_tokens = [randint(100, 1024) for _ in range(num_requests)]
    finally:
        random.setstate(state)
    return prompt_token_ids, max_tokens


def test_workload_is_nano_vllms():
    prompts, params = bench_workload(BenchSpec())
    assert len(prompts) == 256
    assert sum(map(len, prompts)) == 142_827
    assert sum(p.max_tokens for p in params) == 133_966
    assert (prompts, [p.max_tokens for p in params]) == nano_vllm_workload()
    assert all(p.ignore_eos and p.temperature == 0.6 for p in params)


def test_percentile_interpolates_like_numpy():
    assert percentile([], 50) is None
    assert percentile([7.0], 99) == 7.0
    assert percentile([4, 1, 3, 2], 50) == 2.5
    assert percentile([1, 2, 3, 4], 90) == pytest.approx(3.7)
    values = np.random.default_rng(0).exponential(size=101).tolist()
    for q in (50, 90, 99):
        assert percentile(values, q) == pytest.approx(np.percentile(values, q))


def test_latency_summary_ttft_and_itl():
    ms = 1_000_000
    summary = token_latency_summary([(0, [10 * ms, 12 * ms, 15 * ms]), (5 * ms, [25 * ms])])
    assert summary["ttft_ms"]["p50"] == pytest.approx(15.0)  # TTFTs 10 and 20
    assert summary["itl_ms"]["p50"] == pytest.approx(2.5)  # gaps 2 and 3; a one-token request has none
    assert summary["itl_ms"]["mean"] == pytest.approx(2.5)


def test_floor_arithmetic_by_hand():
    cost = ModelCost(
        num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8, matmul_params=1000, weight_bytes=5000, dtype_bytes=2
    )
    assert cost.kv_bytes_per_token == 2 * 2 * 2 * 8 * 2 == 128
    # prompt 2, 3 outputs: output 1 from prefill, outputs 2 and 3 from decode steps reading 3 and 4 rows
    assert decode_kv_token_reads([2], [3]) == 7
    assert prefill_attention_pairs([2]) == 3
    assert prefill_flops(cost, [2]) == 2 * 1000 * 2 + 4 * 2 * 4 * 8 * 3
    floor = physical_floor(cost, [2], [3], num_steps=3, bandwidth_bytes_per_s=1000.0, matmul_flops_per_s=100.0)
    assert floor.memory_s == pytest.approx((3 * 5000 + 7 * 128) / 1000)
    assert floor.compute_s == pytest.approx((4000 + 768) / 100)
    assert floor.output_tok_s == pytest.approx(3 / (floor.memory_s + floor.compute_s))


def test_floor_of_qwen3_06b_on_h100_matches_anchors():
    """ANCHORS.md: 1.19 GB weights, 114,688 KV bytes/token; ~1,024 steps at 3.0 TB/s + 137 TFLOP at 700 TFLOP/s."""
    from traceinfer.engine.attention import select_backend
    from traceinfer.engine.models import model_class
    from traceinfer.engine.synthetic import synthetic_config

    config = synthetic_config("synthetic:qwen3-0.6b")
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("meta"):
            model = model_class(config)(config, select_backend("torch", torch.device("cpu")), 4096)
    finally:
        torch.set_default_dtype(previous)
    cost = ModelCost.from_shapes(model.shapes())
    assert cost.kv_bytes_per_token == 114_688
    assert cost.weight_bytes == pytest.approx(1.19e9, rel=0.01)
    prompts, params = bench_workload(BenchSpec())
    floor = physical_floor(cost, list(map(len, prompts)), [p.max_tokens for p in params], 1024, 3.0e12, 700e12)
    assert floor.kv_read_bytes == pytest.approx(13.87e12, rel=0.005)
    assert floor.prefill_flops == pytest.approx(137e12, rel=0.005)
    assert floor.seconds == pytest.approx(5.2, rel=0.02)
    assert floor.output_tok_s == pytest.approx(25_600, rel=0.02)


def test_hf_model_gets_the_engines_weights():
    llm = LLM("synthetic:tiny", device="cpu", num_kv_blocks=32)
    engine = llm.engine
    weights = hf_state_dict(engine.model)
    hf = build_hf_model("synthetic:tiny", copy.deepcopy(engine.hf_config), weights, engine.device, engine.dtype)
    prompt = list(range(100, 140))
    with torch.no_grad():
        theirs = hf(torch.tensor([prompt])).logits[0].float()
    assert (engine.score(prompt) - theirs).abs().max().item() < 1e-4


SMALL_ARGS = ("--device", "cpu", "--min-input-len", "8", "--max-input-len", "24", "--min-output-len", "4",
              "--max-output-len", "12", "--num-kv-blocks", "64")  # fmt: skip


def check_figures(result: dict) -> None:
    """The figures of a bench result agree with each other: latency percentiles in order and within the
    pass, the floor recomputed from the recorded model cost and device rates, the fraction of it reached."""
    ours = result["traceinfer"]
    for metric in ("ttft_ms", "itl_ms"):
        s = ours["latency"][metric]
        assert 0 <= s["p50"] <= s["p90"] <= s["p99"] <= ours["seconds"] * 1e3
    cost = ModelCost(**{k: v for k, v in result["model_cost"].items() if k != "kv_bytes_per_token"})
    prompts, params = bench_workload(BenchSpec(**{k: result["workload"][k] for k in (
        "num_requests", "min_input_len", "max_input_len", "min_output_len", "max_output_len", "seed", "temperature")}))
    rates = result["device_rates"]
    floor = physical_floor(cost, list(map(len, prompts)), [p.max_tokens for p in params], result["floor"]["num_steps"],
                           rates["bandwidth_bytes_per_s"], rates["matmul_flops_per_s"])  # fmt: skip
    assert result["floor"]["seconds"] == pytest.approx(floor.seconds)
    assert result["fraction_of_floor"] == pytest.approx(ours["output_tok_s"] / floor.output_tok_s)
    assert ours["output_tok_s"] == pytest.approx(ours["output_tokens"] / ours["seconds"])


def test_run_bench_end_to_end(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", *SMALL_ARGS, "--num-requests", "4", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    _, params = bench_workload(BenchSpec(num_requests=4, **SMALL))
    ours = result["traceinfer"]
    assert ours["output_tokens"] == sum(p.max_tokens for p in params)  # ignore_eos: every request runs to max_tokens
    assert result["model"].startswith("synthetic:tiny") and result["synthetic"]
    steps = ours["details"]["steps"]
    assert steps["model_steps"] >= max(p.max_tokens for p in params)
    assert result["floor"]["num_steps"] == steps["model_steps"] and result["device_rates"]["bandwidth_measured"]
    assert result["kernels"]["piecewise_graph_tokens"] == [] and not result["kernels"]["splitk"]
    assert result["engine_config"]["piecewise_graphs"] is True  # asked for; no CUDA, so no graphs taken
    check_figures(result)
    printed = capsys.readouterr().out
    assert "TTFT includes queueing" in printed and "physical floor" in printed and str(out) in printed
    # no GPU: no counters, and the JSON says why
    assert result["gpu_counters"] == "not a CUDA device" and ours["details"]["gpu"] is None
    assert ours["details"]["gpu_runs"] == [None] and "GPU during" not in printed


def test_gpu_counters_between_two_readings():
    """Energy and limiter time are NVML's cumulative counters: a pass gets their differences over its span."""
    from traceinfer.passes.gpu_counters import Reading, between
    from traceinfer.render.bench_text import _gpu_line

    before = Reading(1_000_000_000, 5_000_000, {"power": 7_000_000_000, "thermal": None, "any": 7_000_000_000}, 40)
    after = Reading(3_000_000_000, 6_200_000, {"power": 7_500_000_000, "thermal": None, "any": 7_600_000_000}, 52)
    g = between(before, after, output_tokens=24_000)
    assert g["seconds"] == 2.0 and g["energy_j"] == 1200.0 and g["mean_power_w"] == 600.0
    assert g["output_tokens_per_j"] == 20.0 and g["temperature_c"] == [40, 52]
    assert g["limited_share"] == {"power": 0.25, "thermal": None, "any": 0.3}  # a counter NVML lacks stays None
    assert _gpu_line("traceinfer", g) == (
        "GPU during traceinfer's pass: 600 W mean, 1,200 J, 20.0 output tokens/J; clocks held below application "
        "clocks by power 25.0%, heat -%, any limiter 30.0% of it")
    assert between(None, after, 1) is None and between(after, before, 1) is None


def test_probe_sets_are_compared_in_rotated_repeated_runs(tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = ["bench", *SMALL_ARGS, "--num-requests", "3", "--json", str(out), "--probes", "off,steps", "--repeat", "3"]
    assert main(argv) == 0
    result = json.loads(out.read_text())
    runs = {spec: r["details"]["output_tok_s_runs"] for spec, r in result["probe_runs"].items()}
    assert list(runs) == ["off", "steps"] and all(len(v) == 3 for v in runs.values())
    for spec, r in result["probe_runs"].items():  # each set's result is its median run
        assert r["output_tok_s"] == sorted(runs[spec])[1] and r["details"]["probes"] == spec
    off, steps = (result["probe_runs"][s]["output_tok_s"] for s in ("off", "steps"))
    assert result["probe_cost_pct"] == {"steps": pytest.approx(100 * (1 - steps / off))}
    assert result["probe_off_spread_pct"] == pytest.approx(50 * (max(runs["off"]) - min(runs["off"])) / off)
    assert result["traceinfer"]["output_tok_s"] == off  # the headline is the first set's
    printed = capsys.readouterr().out
    assert "cost vs off" in printed and f"{result['probe_cost_pct']['steps']:+.2f}%" in printed
    # each pass said as it ends, in the rotated order it ran (a stopped bench shows how far it got)
    said = [("off", 0), ("steps", 0), ("steps", 1), ("off", 1), ("off", 2), ("steps", 2)]
    lines = [f"pass {i + 1}/6 ({spec}): {runs[spec][n]:,.1f} output tok/s" for i, (spec, n) in enumerate(said)]
    at = [printed.index(line) for line in lines]
    assert at == sorted(at) and at[-1] < printed.index("cost vs off")
    assert printed.index("timed passes: 3 rounds of off, steps ...") < at[0]
    assert "run-to-run drift" in printed and "held below application clocks" not in printed  # no GPU counters
    # with a GPU's counters, each pass's share of time on held-back clocks is listed by set
    held = {"power": 0.0, "thermal": 0.0, "any": 0.0}
    for spec, r in result["probe_runs"].items():
        r["details"]["gpu_runs"] = [{"limited_share": {**held, "any": 0.01 * i}} for i in range(3)]
    assert ("clocks held below application clocks by any limiter, % of each pass: off 0.0, 1.0, 2.0; "
            "steps 0.0, 1.0, 2.0") in format_report(result)


def test_compare_hf_runs_the_same_requests(tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = ["bench", *SMALL_ARGS, "--num-requests", "3", "--compare", "hf", "--bandwidth", "10",
            "--matmul-tflops", "0.1", "--json", str(out)]  # fmt: skip
    assert main(argv) == 0
    result = json.loads(out.read_text())
    _, params = bench_workload(BenchSpec(num_requests=3, **SMALL))
    expected = sum(p.max_tokens for p in params)
    assert result["traceinfer"]["output_tokens"] == result["hf"]["output_tokens"] == expected
    assert result["ratio_traceinfer_over_hf"] == pytest.approx(
        result["traceinfer"]["output_tok_s"] / result["hf"]["output_tok_s"]
    )
    assert not result["device_rates"]["bandwidth_measured"] and result["device_rates"]["bandwidth_bytes_per_s"] == 1e10
    check_figures(result)
    printed = capsys.readouterr().out
    assert printed.index("timed passes") < printed.index("HF transformers' continuous batching on the same weights")
    kv = result["hf"]["details"]["kv_cache"]  # what HF sized for itself is in the JSON and the table
    assert kv["num_blocks"] > 0 and kv["block_size"] > 0
    assert f"HF transformers' KV cache: {kv['num_blocks']:,} blocks of {kv['block_size']} tokens" in printed
    # on CUDA the free memory HF sized its cache from: a device half taken is called out (2026-12-01's H200 run)
    details = result["hf"]["details"]
    details.update(kv_cache={"num_blocks": 226, "block_size": 256, "max_batch_tokens": 5804},
                   device_free_gb_at_load=60.4, device_total_gb=150.0)  # fmt: skip
    assert ("226 blocks of 256 tokens (57,856 tokens), batches of at most 5,804 tokens; 60.4 GB free on the device "
            "before it loaded, of 150.0 GB: something else held the rest") in format_report(result)
    details.update(device_free_gb_at_load=148.2)
    assert "148.2 GB free on the device before it loaded\n" in format_report(result)


def test_bench_errors_are_one_line(capsys):
    assert main(["bench", "--device", "cpu", "--repeat", "0"]) == 2
    assert capsys.readouterr().err == "traceinfer bench: error: --repeat must be >= 1, got 0\n"
    assert main(["bench", "--device", "cpu", "--probes", "off,nope"]) == 2
    assert "unknown probe 'nope'" in capsys.readouterr().err


def test_a_paired_cost_has_an_interval_that_resolves_what_the_spread_cannot():
    """Round by round: a 1% cost under a +-3% drift both sets share is resolved by pairing; the same
    passes unpaired are not; identical sets give an interval around zero; under 6 rounds there is none."""
    from traceinfer.analysis.overhead import interleaved_overhead, paired_cost

    drift = [1.00, 1.03, 0.97, 1.02, 0.98, 1.01, 0.99, 1.03, 0.97]
    off = [10_000 * d for d in drift]
    probed = [x * (0.99 + 0.001 * (i % 3 - 1)) for i, x in enumerate(off)]  # 1% +- 0.1%
    p = paired_cost(probed, off)
    assert p["resolved"] and p["cost_pct"] == pytest.approx(1.0, abs=0.11) and p["rounds"] == 9
    assert 0.8 < p["ci_pct"][0] <= p["cost_pct"] <= p["ci_pct"][1] < 1.2 and p["coverage"] >= 0.95
    assert not interleaved_overhead(probed, off)["resolved"]  # the spread of the passes hides it
    same = paired_cost(off, off)
    assert same["ci_pct"] == [0.0, 0.0] and not same["resolved"] and same["upper_pct"] == 0.0
    assert paired_cost(probed[:5], off[:5]) is None
