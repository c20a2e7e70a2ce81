"""The report as a document: its sections as blocks (paragraphs, tables, charts, flame graphs) with every
figure formatted once, here. The markdown and HTML renderers (report_md, report_html) only add markup, so
both show the same figures in the same words.

    title, sections = document(report)       # traceinfer.analysis.report.Report
    for section in sections:                 # SECTIONS' order: the findings right after the headline
        section.id, section.title, section.blocks

Blocks: Paragraph (text, an optional bold lead), Table (cells are text, or a Note: a figure with its
evidence or, when not measured, what would measure it), Code (a command), Subheading (a finding's title
with its severity), ChartRef (a chart of traceinfer.render.charts, drawn or left out with the probe that
records it), FlameRef (a flame graph's SVG, by its path relative to the run directory).

Strings from the run (workload and model names, commands, thread names) pass through untouched: the
renderers escape them for their format.
"""

from __future__ import annotations

import datetime
import math
import numbers
import shlex
from dataclasses import dataclass
from typing import ClassVar

from traceinfer.analysis.findings import RULES, Finding
from traceinfer.analysis.overhead import describe_overhead
from traceinfer.analysis.report import PARTS, Report
from traceinfer.render.charts import CHARTS, Chart
from traceinfer.rundir.schema import STAGES

# (id, title) of every section, in the order they appear
SECTIONS: tuple[tuple[str, str], ...] = (
    ("headline", "Headline"),
    ("findings", "Findings"),
    ("use", "USE method: utilization, saturation, errors"),
    ("charts", "Latency and load over time"),
    ("anatomy", "Step anatomy"),
    ("gpu", "GPU time, kernel by kernel (nsys)"),
    ("kv", "KV cache"),
    ("gc", "GC and threads"),
    ("flamegraphs", "Flame graphs"),
    ("methodology", "Methodology"),
)


# -- blocks ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Note:
    """A table cell with a note in small type: the evidence of a figure, or what would measure it."""

    text: str
    note: str | None = None
    missing: bool = False  # "not measured": drawn greyed


Cell = str | Note


@dataclass(frozen=True)
class Paragraph:
    text: str
    lead: str | None = None  # bold opening words ("Action")


@dataclass(frozen=True)
class Table:
    columns: tuple[str, ...]
    rows: tuple[tuple[Cell, ...], ...]
    caption: str | None = None  # a line under the table (where its figures come from)


@dataclass(frozen=True)
class Code:
    text: str


@dataclass(frozen=True)
class Subheading:
    text: str
    badge: str | None = None  # a finding's severity


@dataclass(frozen=True)
class ChartRef:
    chart: Chart
    present: bool

    @property
    def missing_line(self) -> str:
        return f"{self.chart.title}: not drawn, this run has no data for it; {self.chart.needs} records it."


@dataclass(frozen=True)
class FlameRef:
    path: str  # relative to the run directory, as Report.flamegraphs
    title: str
    whole: bool  # the whole run (else one engine phase)


Block = Paragraph | Table | Code | Subheading | ChartRef | FlameRef


@dataclass(frozen=True)
class Section:
    id: str
    number: int
    title: str
    blocks: tuple[Block, ...]

    @property
    def heading(self) -> str:
        return f"{self.number}. {self.title}"


class ReportRenderer:
    """One output format of the report: ``render`` returns the file's text; write it as
    ``report.<extension>``. The registry is traceinfer.render.report.REPORT_FORMATS."""

    name: ClassVar[str]
    extension: ClassVar[str]
    opens_with: ClassVar[str]  # what to tell the user after writing ``{path}``

    def render(self, report: Report) -> str:
        raise NotImplementedError


# -- figures, formatted once --------------------------------------------------------------------
def fmt_ms(value: float | None) -> str:
    """A latency in ms: 1,478.6 / 19.0 / 4.49."""
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:,.1f}" if abs(value) >= 10 else f"{value:,.2f}"


def fmt_pct(value: float | None) -> str:
    """A fraction as a percentage: 0.2399 -> 24.0%."""
    return "-" if value is None or not math.isfinite(value) else f"{100 * value:.1f}%"


def fmt_rate(value: float | None) -> str:
    """A throughput: 317.3."""
    return "-" if value is None or not math.isfinite(value) else f"{value:,.1f}"


def fmt_seconds(value: float | None) -> str:
    """A duration given in seconds, in the unit that reads best: 3.12 s, 136.5 ms, 25.3 µs."""
    if value is None or not math.isfinite(value):
        return "-"
    if abs(value) >= 1 or value == 0:
        return f"{value:,.2f} s"
    if abs(value) >= 1e-3:
        return f"{value * 1e3:,.1f} ms"
    return f"{value * 1e6:,.1f} µs"


def fmt_value(value) -> str:
    """Any figure of a finding's evidence: numbers to 4 significant digits, dicts and lists inline."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, numbers.Integral):  # numpy's integers too
        return f"{int(value):,}"
    if isinstance(value, numbers.Real):
        return "-" if not math.isfinite(value) else f"{float(value):,.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k} {fmt_value(v)}" for k, v in value.items()) or "-"
    if isinstance(value, (list, tuple)):
        return ", ".join(fmt_value(v) for v in value) or "-"
    return str(value)


def _on(flag) -> str:
    return "-" if flag is None else "on" if flag else "off"


def _count(value) -> str:
    return "-" if value is None else f"{int(value):,}"


# -- the sections ---------------------------------------------------------------------------------
def _model(h: dict) -> str:
    model = str(h.get("model") or "-")
    if h.get("synthetic") and "synthetic random weights" not in model:
        return f"{model} (synthetic random weights)"
    if h.get("synthetic") is False:
        return f"{model} (checkpoint)"
    return model


def _workload(w: dict) -> str:
    parts = [f"{w.get('name') or '-'}: {_count(w.get('num_requests'))} requests"]
    arrival = w.get("arrival")
    if arrival:
        rate = f" at {w['rate']:g} requests/s" if w.get("rate") and arrival != "offline" else ""
        parts.append(f"{arrival} arrivals{rate}")
    if w.get("max_concurrency"):
        parts.append(f"at most {w['max_concurrency']} at once")
    parts.append(f"{_count(w.get('prompt_tokens'))} prompt tokens, at most {_count(w.get('max_output_tokens'))} "
                 "output tokens")  # fmt: skip
    return ", ".join(parts)


def _engine(e: dict) -> str:
    return (f"{e.get('dtype') or '-'}, {e.get('attention_backend') or '-'} attention, CUDA graphs "
            f"{_on(e.get('cuda_graphs'))}, async scheduling {_on(e.get('async_scheduling'))}, {_count(e.get('num_kv_blocks'))} KV blocks of {e.get('block_size') or '-'} "
            f"tokens, max_model_len {_count(e.get('max_model_len'))}, max_num_seqs {_count(e.get('max_num_seqs'))}, "
            f"max_num_batched_tokens {_count(e.get('max_num_batched_tokens'))}, prefix caching "
            f"{_on(e.get('enable_prefix_caching'))}, chunked prefill {_on(e.get('enable_chunked_prefill'))}, "
            f"enforce_eager {_on(e.get('enforce_eager'))}{_kernels(e.get('kernels'))}")  # fmt: skip


def _kernels(k: dict | None) -> str:
    """The kernel choices beyond the defaults' names: piecewise graphs, split-K GEMM, fused K/V store."""
    if not k:
        return ""
    parts = []
    if k.get("piecewise_graph_tokens"):
        parts.append(f"piecewise graphs at {', '.join(map(_count, k['piecewise_graph_tokens']))} tokens")
    if k.get("splitk"):
        parts.append("split-K GEMM for decode batches")
    if k.get("fuse_kv_store"):
        parts.append("K/V stored by the RoPE kernel")
    return "".join(f", {p}" for p in parts)


def headline(report: Report) -> list[Block]:
    h, s = report.headline, report.summary
    blocks: list[Block] = []
    status = report.run.get("status")
    if status not in (None, "completed"):
        error = report.run.get("error")
        blocks.append(Paragraph(f"the run ended {status}" + (f": {fmt_value(error)}" if error else "") +
                                "; its figures cover what it recorded.", "Warning:"))  # fmt: skip
    failed = f", {h['failed_requests']} failed" if h.get("failed_requests") else ""
    throughput = (f"{fmt_rate(h.get('output_tok_s'))} output tok/s ({s.output_tokens:,} tokens of "
                  f"{_count(h.get('requests'))} requests{failed} in {fmt_seconds(h.get('seconds'))})")  # fmt: skip
    blocks.append(Table(("", ""), (
        ("workload", _workload(h.get("workload") or {})),
        ("model", _model(h)),
        ("device", f"{h.get('device') or '-'}" + (f" ({s.device})" if s.device else "")),
        ("engine", _engine(h.get("engine") or {})),
        ("throughput", throughput),
    )))  # fmt: skip
    latency = h.get("latency_ms") or {}
    if any(latency.get(k) for k in ("ttft", "itl", "e2e")):
        rows = tuple((label, *(fmt_ms((latency.get(key) or {}).get(p)) for p in ("p50", "p90", "p99")))
                     for key, label in (("ttft", "TTFT"), ("itl", "ITL"), ("e2e", "E2E")))  # fmt: skip
        blocks.append(Table(("latency (ms)", "p50", "p90", "p99"), rows,
                            "TTFT: arrival to first token; ITL: between a request's tokens; E2E: arrival to the last."))  # fmt: skip
    else:
        blocks.append(Paragraph("not measured: the requests probe records the requests and tokens they come from.",
                                "Latency:"))  # fmt: skip
    floor = h.get("floor")
    if floor:
        text = (f"{fmt_pct(floor.get('fraction_reached'))} of the physical floor: at best {fmt_seconds(floor['seconds'])}, "
                f"{fmt_rate(floor.get('output_tok_s'))} output tok/s ({fmt_seconds(floor.get('memory_s'))} reading the bytes "
                f"every step must read at the measured copy rate, {fmt_seconds(floor.get('compute_s'))} of matmuls at the "
                "measured matmul rate).")  # fmt: skip
        if floor.get("note"):
            text += f" Note: {floor['note']}."
        blocks.append(Paragraph(text, "Floor:"))
    else:
        blocks.append(Paragraph("not computed: it needs the steps probe and the manifest's device rates.", "Floor:"))
    return blocks


def _evidence_rows(evidence: dict) -> tuple[tuple[str, str], ...]:
    return tuple((str(k), fmt_value(v)) for k, v in evidence.items() if k != "source")


def findings(report: Report) -> list[Block]:
    wall = report.summary.seconds
    found = report.findings
    blocks: list[Block] = []
    if len(found) == 1 and found[0].id == "compute_bound":
        rules = ", ".join(rule.__name__ for rule in RULES)
        blocks.append(Paragraph(f"none of the rules that look for one fired ({rules}). The time goes to the model "
                                "itself; to go faster, make the model's work faster, and see the floor in the headline "
                                "for how far that can go.", "No bottleneck outside the model:"))  # fmt: skip
    else:
        blocks.append(Paragraph(f"{len(found)} finding{'s' if len(found) != 1 else ''}, ranked by the wall time each "
                                f"explains (the run took {fmt_seconds(wall)}): what removing its cause would give back at "
                                "most. The times can overlap.", None))  # fmt: skip
    for rank, f in enumerate(found, 1):
        blocks.extend(_finding(rank, f, wall))
    return blocks


def _finding(rank: int, f: Finding, wall: float | None) -> list[Block]:
    share = f" ({fmt_pct(f.explains_s / wall)} of the run)" if wall else ""
    source = f.evidence.get("source")
    return [
        Subheading(f"{rank}. {f.title}", f.severity),
        Paragraph(f"{f.id}, severity {f.severity}; explains {fmt_seconds(f.explains_s)}{share}.", None),
        Table(("evidence", "value"), _evidence_rows(f.evidence), f"from {source}" if source else None),
        Paragraph(f.action, "Action:"),
    ]


def _use_cell(cell) -> Note:
    if cell.needs:
        return Note(cell.text, f"needs {cell.needs}", missing=True)
    return Note(cell.text, f"from {cell.evidence}" if cell.evidence else None)


USE_INTRO = ("Brendan Gregg's USE method, for every resource the engine uses: utilization (how busy it was), "
             "saturation (work it queued or turned away), errors. Each figure names its evidence (stream.column of "
             "the run directory); \"not measured\" names what would measure it.")  # fmt: skip


def use(report: Report) -> list[Block]:
    rows = tuple((r.resource, _use_cell(r.utilization), _use_cell(r.saturation), _use_cell(r.errors))
                 for r in report.use)  # fmt: skip
    return [
        Paragraph(USE_INTRO),
        Table(("resource", "utilization", "saturation", "errors"), rows),
    ]


def _charts(report: Report, section: str) -> list[Block]:
    return [ChartRef(c, c.present(report)) for c in CHARTS if c.section == section]


def charts(report: Report) -> list[Block]:
    return _charts(report, "charts")


def anatomy(report: Report) -> list[Block]:
    a, s = report.anatomy, report.summary
    if not a:
        return [Paragraph("not measured: the steps probe records every step's parts.", "Step anatomy:")]
    median, p99 = a["median_step"], a["p99_step"]
    blocks: list[Block] = [Paragraph(
        f"{a['steps']:,} steps; a step took {fmt_ms(a['step_ms']['p50'])} ms at the median and "
        f"{fmt_ms(a['step_ms']['p99'])} ms at p99. Where the median step (#{median['step']}, {fmt_ms(median['total_ms'])} "
        f"ms) and the p99 step (#{p99['step']}, {fmt_ms(p99['total_ms'])} ms) spent their host time:", None)]  # fmt: skip
    rows = []
    for part in PARTS:
        m, p = median["parts_ms"].get(part) or 0.0, p99["parts_ms"].get(part) or 0.0
        rows.append((part, fmt_ms(m), fmt_pct(m / median["total_ms"] if median["total_ms"] else None),
                     fmt_ms(p), fmt_pct(p / p99["total_ms"] if p99["total_ms"] else None)))  # fmt: skip
    rows.append(("total", fmt_ms(median["total_ms"]), "", fmt_ms(p99["total_ms"]), ""))
    if "gpu_forward" in median["parts_ms"]:
        rows.append(("GPU forward (CUDA events, beneath forward and sample)", fmt_ms(median["parts_ms"]["gpu_forward"]),
                     "", fmt_ms(p99["parts_ms"].get("gpu_forward")), ""))  # fmt: skip
    blocks.append(Table(("part", "median step (ms)", "share", "p99 step (ms)", "share"), tuple(rows),
                        f"from the steps stream (a _ns column per part); the stages are {', '.join(STAGES)}; handover is "
                        "the probes' per-step work; other is the rest of the step"))  # fmt: skip
    blocks.extend(_charts(report, "anatomy"))
    cg = a.get("cuda_graph") or {}
    if not s.cuda_graphs:
        why = "every forward ran eager on the CPU" if s.device == "cpu" else "the engine captured none (enforce_eager, or a backend without graphs)"
        blocks.append(Paragraph(f"none captured: {why}; {_count(cg.get('decode_only_steps'))} decode-only steps.",
                                "CUDA graphs:"))  # fmt: skip
    else:
        blocks.append(Paragraph(f"{_count(cg.get('graph_steps'))} of {_count(cg.get('decode_only_steps'))} decode-only "
                                f"steps replayed a graph ({fmt_pct(cg.get('coverage'))}; steps.cuda_graph).", "CUDA graphs:"))  # fmt: skip
    if a.get("host_bound_share") is None:
        blocks.append(Paragraph("not measured: on a CPU the host is the device; a GPU run measures how long the GPU "
                                "waits for the host between forwards (steps.gpu_gap_ns).", "Host-bound share:"))  # fmt: skip
    else:
        blocks.append(Paragraph(f"the GPU waited for the host {fmt_pct(a['host_bound_share'])} of the run "
                                f"({fmt_seconds(a.get('gpu_idle_s'))} idle between forwards; steps.gpu_gap_ns).",
                                "Host-bound share:"))  # fmt: skip
    if s.step_split:
        blocks.append(Table(("where the run's time went", "total (ms)", "share of the run"),
                            tuple((p.name, fmt_ms(p.total_ms), fmt_pct(p.share)) for p in s.step_split),
                            "host time by stage over every step, and the time between steps (steps.*_ns, the run's wall time)"))  # fmt: skip
    return blocks


def _quantile_row(label: str, q: dict | None) -> tuple[str, ...]:
    q = q or {}
    return (label, _count(q.get("count")), *(fmt_seconds(q.get(k)) for k in ("p50", "p90", "p99", "max")))


def kv(report: Report) -> list[Block]:
    k = report.kv or {}
    blocks_total, peak = k.get("blocks"), k.get("peak_used_blocks")
    rows: list[tuple[Cell, ...]] = [
        ("KV blocks", f"{_count(blocks_total)}; peak {_count(peak)} used ({fmt_pct(peak / blocks_total if peak is not None and blocks_total else None)})"),
        ("prefix-cache hit rate", f"{fmt_pct(k.get('hit_rate'))} of {_count(k.get('prefix_query_tokens'))} prompt tokens looked up"
         if k.get("prefix_query_tokens") is not None else Note("not measured", "needs the requests probe", True)),
        ("preemptions", _count(k.get("preemptions")) if k.get("preemptions") is not None
         else Note("not measured", "needs the steps probe", True)),
    ]  # fmt: skip
    if "evictions" in k:
        rows.append(("evictions", _count(k["evictions"])))
        ops = k.get("ops") or {}
        rows.append(("block operations", ", ".join(f"{op} {n:,}" for op, n in ops.items()) or "-"))
    else:
        rows.append(("evictions", Note("not measured", "needs the kv probe", True)))
    if k.get("internal_fragmentation") is not None:
        unused = fmt_pct(k["internal_fragmentation"])
        rows.append(("internal fragmentation", f"{unused} of allocated slots unused (partly filled blocks), mean over steps"))
    else:
        rows.append(("internal fragmentation", Note("not measured", "needs the kv and requests probes", True)))
    blocks: list[Block] = [Table(("figure", "value"), tuple(rows), "from steps.num_free_blocks, kv_events, requests, tokens")]
    if "lifetime_s" in k:
        blocks.append(Table(("distribution", "count", "p50", "p90", "p99", "max"), (
            _quantile_row("block lifetime", k.get("lifetime_s")),
            _quantile_row("idle before eviction", k.get("idle_before_evict_s")),
            _quantile_row("reuse gap (a cached block's idle time before a hit)", k.get("reuse_gap_s")),
        ), "from kv_events (analysis.kv.block_lives, reuse_gaps)"))  # fmt: skip
    if k.get("note"):
        blocks.append(Paragraph(k["note"] + ".", "Note:"))
    blocks.extend(_charts(report, "kv"))
    return blocks


def gc_threads(report: Report) -> list[Block]:
    g = report.gc_threads or {}
    gc = g.get("gc")
    blocks: list[Block] = []
    if gc is None:
        blocks.append(Paragraph("not measured: the gc probe records every collection.", "GC:"))
    elif not gc["count"]:
        blocks.append(Paragraph("no collection during the run.", "GC:"))
    else:
        gens = ", ".join(f"gen{k} {v}" for k, v in gc["by_generation"].items())
        blocks.append(Paragraph(f"{gc['count']} collection{'s' if gc['count'] != 1 else ''} ({gens}), "
                                f"{fmt_ms(gc['total_ms'])} ms paused in all, the longest {fmt_ms(gc['max_ms'])} ms; "
                                f"{gc['in_step']} inside a step (gc.dur_ns, gc.in_step).", "GC:"))  # fmt: skip
        if g.get("steps_with_gc_ms") is not None:
            blocks.append(Paragraph(f"a step with a collection took {fmt_ms(g['steps_with_gc_ms'])} ms at the median, one "
                                    f"without {fmt_ms(g.get('steps_without_gc_ms'))} ms.", "Pauses against steps:"))  # fmt: skip
    blocks.extend(c for c in _charts(report, "gc") if c.chart.key == "step_gc")
    threads = g.get("threads")
    if threads:
        blocks.append(Table(("thread", "CPU time / wall time", "samples"),
                            tuple((str(t["thread"]), fmt_pct(t["cpu_share"]), _count(t["samples"])) for t in threads),
                            "from thread_samples.cpu_ns (each thread's CPU clock between its first and last sample)"))  # fmt: skip
    else:
        blocks.append(Paragraph("not measured: the threads probe samples every thread's CPU clock.", "Threads:"))
    blocks.extend(c for c in _charts(report, "gc") if c.chart.key != "step_gc")
    return blocks


def _flame_order(path: str) -> tuple:
    name = path.rsplit("/", 1)[-1].removesuffix(".svg")
    kind, _, phase = name.partition(".")
    order = {p: i for i, p in enumerate((*STAGES, "handover", "other", "between-steps"))}
    return (kind, bool(phase), order.get(phase, len(order)), phase)


def flame_title(path: str) -> tuple[str, bool]:
    """('cpu: the whole run' | 'cpu: phase forward', whole?) from a flame graph's file name."""
    name = path.rsplit("/", 1)[-1].removesuffix(".svg")
    kind, _, phase = name.partition(".")
    return (f"{kind}: phase {phase}" if phase else f"{kind}: the whole run"), not phase


def flamegraphs(report: Report) -> list[Block]:
    if not report.flamegraphs:
        return [Paragraph("none in this run: --pyspy (CPU stacks by engine phase) or the torch_profiler probe (GPU "
                          "kernels by NVTX path) records the stacks they are drawn from; `traceinfer flamegraph RUN` "
                          "draws them.", "Flame graphs:")]  # fmt: skip
    blocks: list[Block] = [Paragraph(f"{len(report.flamegraphs)} flame graphs of the run directory, the whole run "
                                     "first, then one per engine phase. Click a frame to zoom, Ctrl-F (or Search) to "
                                     "search.", None)]  # fmt: skip
    for path in sorted(report.flamegraphs, key=_flame_order):
        title, whole = flame_title(path)
        blocks.append(FlameRef(path, title, whole))
    return blocks


def _started(unix) -> str:
    if not unix:
        return "-"
    return datetime.datetime.fromtimestamp(float(unix), datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def methodology(report: Report) -> list[Block]:
    m = report.methodology
    blocks: list[Block] = []
    command = m.get("command")
    blocks.append(Paragraph("the command that made this run:", "Reproduce:"))
    blocks.append(Code(shlex.join(str(c) for c in command) if command else "-"))
    blocks.append(Paragraph("this report:", "Report:"))
    blocks.append(Code(m.get("report") or "-"))
    git = m.get("git") or {}
    cost = m.get("probe_cost")
    cpu = {k: v for k, v in (m.get("probe_cpu") or {}).items() if k != "note"}
    handover = m.get("handover") or {}
    load = m.get("host_load") or {}
    rates = {k: v for k, v in (m.get("probe_rates_hz") or {}).items() if v}
    rows: list[tuple[Cell, ...]] = [
        ("run directory", f"{report.run.get('path') or '-'} ({report.run.get('status') or '-'}, started {_started(report.run.get('started_unix'))})"),
        ("git commit", f"{git.get('commit') or '-'}" + (" (with uncommitted changes)" if git.get("dirty") else "")),
        ("probes", ", ".join(m.get("probes") or []) or "none"),
        ("sampling rates", ", ".join(f"{k} {v:g} Hz" for k, v in rates.items()) or "-"),
        ("probe cost in throughput", describe_overhead(cost) if cost else
         Note("not measured", "needs --overhead-passes N: interleaved passes with and without the probes", True)),
        ("probe CPU time", ", ".join(f"{k.removesuffix('_cpu_s').replace('_', ' ')} {fmt_seconds(v)}" for k, v in cpu.items()) or "-"),
        ("probes' handover per step", f"median {fmt_ms(handover.get('median_us'))} µs, p99 {fmt_ms(handover.get('p99_us'))} µs"
         if handover.get("median_us") is not None else "-"),
        ("host load", _host_load(load)),
        ("warm-up", fmt_value(m.get("warmup"))),
    ]  # fmt: skip
    blocks.append(Table(("", ""), tuple(rows)))
    versions = {k: v for k, v in (m.get("versions") or {}).items() if v}
    if versions:
        blocks.append(Table(("package", "version"), tuple((k, str(v)) for k, v in versions.items())))
    return blocks


def _host_load(load: dict) -> str:
    if not load:
        return "-"
    avg = (load.get("load_average_end") or [None])[0]
    text = (f"{_count(load.get('usable_cpus') or load.get('cpu_count'))} usable CPUs, torch threads "
            f"{_count(load.get('torch_intra_op_threads'))}; other processes took {fmt_pct(load.get('other_processes_cpu_share'))} "
            f"of the machine; load average {'-' if avg is None else f'{avg:.2f}'} at the end")  # fmt: skip
    return text + ("; oversubscribed" if load.get("oversubscribed") else "")


def _ns_ms(ns) -> str:
    return "-" if ns is None else fmt_ms(ns / 1e6)


def _clip(name: str, width: int = 72) -> str:
    """A kernel's name cut to ``width`` (C++ template arguments run to hundreds of characters)."""
    return name if len(name) <= width else name[: width - 3] + "..."


def _ns_us(ns) -> str:
    return "-" if ns is None else f"{ns / 1e3:,.1f}"


def gpu_time(report: Report) -> list[Block]:
    """The nsys capture's tables: the GPU's busy share, its idle time by the host phase running then, the
    kernels that take its time, and the GPU time of the work each NVTX range launched."""
    g = report.gpu_trace
    if not g:
        return [Paragraph("not captured: `traceinfer profile --nsys` runs the profile under Nsight Systems and reads "
                          "its capture (every kernel, copy and graph replay, tied to the engine stage that launched "
                          "it); `traceinfer nsys-stats FILE.sqlite` reads any nsys export.", "Kernel-level GPU time:")]  # fmt: skip
    blocks: list[Block] = []
    for line in g.get("warnings") or []:
        blocks.append(Paragraph(str(line), "Capture:"))
    gaps = g.get("gpu_gaps") or {}
    t = gaps.get("totals") or {}
    traced = ("CUDA graph replays traced node by node" if g.get("graph_trace") == "node" else
              "CUDA graph replays traced as one item each" if g.get("graph_trace") == "graph" else "no CUDA graph replayed")  # fmt: skip
    if t.get("span_ns"):
        blocks.append(Paragraph(
            f"the GPU ran work {fmt_pct((t.get('busy_pct') or 0) / 100)} of the {_ns_ms(t['span_ns'])} ms between its first "
            f"and last work; it was idle {_ns_ms(t.get('idle_ns'))} ms in {_count(t.get('gaps'))} gaps ({traced}; nsys "
            f"{g.get('nsys_version') or '?'}, export schema {g.get('schema_version') or '?'}).", "GPU busy:"))  # fmt: skip
        rows = tuple((str(r["phase"]), _ns_ms(r["idle_ns"]), fmt_pct(r["idle_pct"] / 100), _count(r["gaps_touched"]),
                      _count(r["gaps"]), _ns_us(r.get("median_gap_ns")), _ns_ms(r.get("max_gap_ns")))
                     for r in gaps.get("by_phase") or [])  # fmt: skip
        if rows:
            joined = ("GC pauses and the probes' per-step work placed from the run's gc and steps streams"
                      if t.get("run_offset_ns") is not None else "phases from the NVTX stage ranges alone")  # fmt: skip
            blocks.append(Table(("host phase while the GPU idled", "idle ms", "share of idle", "gaps touched",
                                 "gaps mostly in it", "median gap us", "longest gap ms"), rows,
                                f"each idle gap between GPU work split over the host phase running then ({joined}); "
                                "nsys_stats.json gpu_gaps"))  # fmt: skip
    else:
        blocks.append(Paragraph("the capture holds no GPU work.", "GPU busy:"))
    kern = g.get("cuda_gpu_kern_sum") or []
    if kern:
        blocks.append(Table(("kernel", "share of kernel time", "total ms", "instances", "median us"),
                            tuple((_clip(str(k["name"])), fmt_pct(k["time_pct"] / 100), _ns_ms(k["total_ns"]), _count(k["instances"]),
                                   f"{k['med_ns'] / 1e3:.1f}") for k in kern[:12]),
                            "nsys stats -r cuda_gpu_kern_sum's figures (traceinfer nsys-stats RUN --report cuda_gpu_kern_sum)"))  # fmt: skip
    proj = g.get("nvtx_gpu_proj_sum") or []
    if proj:
        blocks.append(Table(("range", "instances", "CPU time ms", "GPU projection ms", "median projection us", "GPU ops per instance"),
                            tuple((str(p["range"]), _count(p["range_instances"]), _ns_ms(p["total_range_ns"]),
                                   _ns_ms(p["total_proj_ns"]), f"{p['proj_med_ns'] / 1e3:.1f}", f"{p['avg_gpu_ops']:.1f}")
                                  for p in proj[:12]),
                            "nsys stats -r nvtx_gpu_proj_sum's figures: the GPU time of the work each range launched, from "
                            "its first operation's start to its last one's end"))  # fmt: skip
    return blocks


BUILDERS = {"headline": headline, "findings": findings, "use": use, "charts": charts, "anatomy": anatomy,
            "gpu": gpu_time, "kv": kv, "gc": gc_threads, "flamegraphs": flamegraphs, "methodology": methodology}  # fmt: skip


def title_of(report: Report) -> str:
    h = report.headline
    workload = (h.get("workload") or {}).get("name") or "run"
    return f"traceinfer report: {workload} on {h.get('device') or report.summary.device or 'an unknown device'}"


def document(report: Report) -> tuple[str, list[Section]]:
    """The report's title and its sections, in SECTIONS' order."""
    sections = [Section(sid, n, title, tuple(BUILDERS[sid](report))) for n, (sid, title) in enumerate(SECTIONS, 1)]
    return title_of(report), sections
