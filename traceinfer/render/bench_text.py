"""The plain-text table ``traceinfer bench`` prints, from its JSON-ready result."""

from __future__ import annotations

from traceinfer.analysis.latency import PERCENTILES
from traceinfer.analysis.overhead import describe_paired


def _si(value: float, unit: str) -> str:
    """1.19e9, "B" -> "1.19 GB"."""
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.2f} {prefix}{unit}"
    return f"{value:.0f} {unit}"


def _fmt(value, spec: str = ",.1f") -> str:
    return "-" if value is None else format(value, spec)


def _pct(share: float | None) -> str:
    return "-" if share is None else f"{100 * share:.1f}"


def _gpu_line(name: str, g: dict) -> str:
    """The GPU's counters over one pass (passes.gpu_counters.between), in a line."""
    held = g["limited_share"]
    energy = (f"{_fmt(g['mean_power_w'], ',.0f')} W mean, {_fmt(g['energy_j'], ',.0f')} J, "
              f"{_fmt(g['output_tokens_per_j'], ',.1f')} output tokens/J")  # fmt: skip
    return (f"GPU during {name}'s pass: {energy}; clocks held below application clocks by power "
            f"{_pct(held.get('power'))}%, heat {_pct(held.get('thermal'))}%, any limiter {_pct(held.get('any'))}% "
            "of it")  # fmt: skip


def format_report(result: dict) -> str:
    """The plain-text table printed by ``traceinfer bench``."""
    w, ours, hf, floor = result["workload"], result["traceinfer"], result["hf"], result["floor"]
    runs = [("traceinfer", ours)] + ([("HF transformers", hf)] if hf else [])
    lines = [
        f"traceinfer bench: {result['benchmark']}",
        f"model    {result['model']}" + ("  [synthetic weights: the timings are real]" if result["synthetic"] else ""),
        f"device   {result['device']}, torch {result['torch']}, dtype {result['engine_config']['resolved_dtype']}, "
        f"attention {ours['details']['attention_backend']}",
        f"workload {w['num_requests']} requests, seed {w['seed']}, prompts {w['min_input_len']}-{w['max_input_len']} "
        f"({w['prompt_tokens']:,} tokens), outputs {w['min_output_len']}-{w['max_output_len']} "
        f"({w['expected_output_tokens']:,} tokens), temperature {w['temperature']}, ignore_eos",
        "offline batch: every request is added at t=0, so TTFT includes queueing",
        "",
    ]
    rows: list[tuple[str, list[str]]] = [
        ("output tokens", [f"{r['output_tokens']:,}" for _, r in runs]),
        ("seconds", [f"{r['seconds']:.2f}" for _, r in runs]),
        ("output tok/s", [f"{r['output_tok_s']:,.1f}" for _, r in runs]),
        ("total tok/s", [f"{r['total_tok_s']:,.1f}" for _, r in runs]),
    ]
    for metric, title in (("ttft_ms", "TTFT ms"), ("itl_ms", "ITL ms")):
        for q in PERCENTILES:
            rows.append((f"{title} p{q}", [_fmt(r["latency"].get(metric, {}).get(f"p{q}"), ",.2f") for _, r in runs]))
    widths = [max(len(name), *(len(cells[i]) for _, cells in rows)) for i, (name, _) in enumerate(runs)]
    label_w = max(len(label) for label, _ in rows)
    lines.append(" " * label_w + "  " + "  ".join(name.rjust(wd) for (name, _), wd in zip(runs, widths)))
    for label, cells in rows:
        lines.append(label.ljust(label_w) + "  " + "  ".join(c.rjust(wd) for c, wd in zip(cells, widths)))
    if hf:
        lines.append(f"traceinfer / HF output tok/s: {result['ratio_traceinfer_over_hf']:.2f}x")
        if line := _hf_cache_line(hf["details"]):
            lines.append(line)
    for name, r in runs:
        if g := r["details"].get("gpu"):
            lines.append(_gpu_line(name, g))
    costs = result.get("probe_cost_pct")
    if costs:
        lines.append("")
        lines.append("probe set   output tok/s   cost vs off   runs (tok/s)")
        for spec, r in result["probe_runs"].items():
            cost = "-" if spec == "off" else f"{costs[spec]:+.2f}%"
            each = ", ".join(f"{x:,.0f}" for x in r["details"].get("output_tok_s_runs", []))
            lines.append(f"{spec:<10}  {r['output_tok_s']:>12,.1f}   {cost:>11}   {each}")
        spread = result.get("probe_off_spread_pct")
        if spread is not None:
            lines.append(f"(runs of off lie within +-{spread:.1f}% of their median: smaller costs are within the "
                         "run-to-run drift; more --repeat narrows the medians)")  # fmt: skip
        held = {spec: r["details"].get("gpu_runs") or [] for spec, r in result["probe_runs"].items()}
        if any(g and g["limited_share"].get("any") is not None for runs_ in held.values() for g in runs_):
            lines.append("clocks held below application clocks by any limiter, % of each pass: " + "; ".join(
                f"{spec} " + ", ".join(_pct(g["limited_share"]["any"] if g else None) for g in runs_)
                for spec, runs_ in held.items()))  # fmt: skip
        paired = {k: v for k, v in (result.get("probe_cost_paired") or {}).items() if v}
        for spec, p in paired.items():
            lines.append(f"{spec} against off, round by round: {describe_paired(p)}")
        if result.get("probe_cost_paired") and not paired:
            lines.append("(--repeat 6 or more gives each set's cost against off round by round, with an interval)")
    steps = ours["details"]["steps"]
    rates = result["device_rates"]
    lines += [
        "",
        f"engine steps: {steps['model_steps']:,} ({steps['decode_steps']:,} with decodes, {steps['prefill_steps']:,} "
        f"with prefill), preemptions {steps['preemptions']:,}; CUDA graph replays: {ours['details']['cuda_graph_steps']:,} "
        f"of {steps['decode_only_steps']:,} decode-only steps"
        + (f"; piecewise graphs: {pieces:,} eager steps" if (pieces := ours['details'].get('piecewise_graph_steps')) else ""),
        f"device rates ({'measured' if rates['bandwidth_measured'] else 'given'} copy, "
        f"{'measured' if rates['matmul_measured'] else 'given'} {rates['matmul_dtype']} GEMM): "
        f"{_si(rates['bandwidth_bytes_per_s'], 'B/s')}, {_si(rates['matmul_flops_per_s'], 'FLOP/s')}",
        f"physical floor: ({floor['num_steps']:,} steps x {_si(result['model_cost']['weight_bytes'], 'B')} weights "
        f"+ {_si(floor['kv_read_bytes'], 'B')} KV reads) / bandwidth = {floor['memory_s']:.3f} s, "
        f"+ {_si(floor['prefill_flops'], 'FLOP')} prefill / matmul rate = {floor['compute_s']:.3f} s",
        f"floor {floor['seconds']:.3f} s = {floor['output_tok_s']:,.1f} output tok/s; traceinfer reaches "
        f"{100 * result['fraction_of_floor']:.1f}% of it",
    ]
    return "\n".join(lines)


def _hf_cache_line(details: dict) -> str | None:
    """What HF's continuous batching sized for itself: its cache sets how many requests it runs at once. On
    CUDA HF sizes it from the free memory, so a device half taken (another process, or our dropped engine
    still held, as on 2026-12-01) makes HF slower and the ratio unfair: the line says so."""
    kv, free = details.get("kv_cache") or {}, details.get("device_free_gb_at_load")
    if not kv.get("num_blocks") or not kv.get("block_size"):
        return None
    line = (f"HF transformers' KV cache: {kv['num_blocks']:,} blocks of {kv['block_size']} tokens "
            f"({kv['num_blocks'] * kv['block_size']:,} tokens)")  # fmt: skip
    if kv.get("max_batch_tokens"):
        line += f", batches of at most {kv['max_batch_tokens']:,} tokens"
    if free is not None:
        line += f"; {free:,.1f} GB free on the device before it loaded"
        total = details.get("device_total_gb")
        if total and free < 0.5 * total:
            line += (f", of {total:,.1f} GB: something else held the rest, so HF's cache is smaller than on an idle "
                     "device and the ratio flatters traceinfer")  # fmt: skip
    return line
