"""The report's charts (traceinfer.analysis.report.Report, its ``series`` and sections) drawn with matplotlib.

    from traceinfer.render.charts import CHARTS, render_chart
    for chart in CHARTS:                          # in the report's order, each tagged with its section
        if chart.present(report):
            svg = render_chart(chart, report, "svg")   # SVG text; "png": PNG bytes
        else:
            print(f"{chart.title}: not drawn: {chart.needs}")

A chart whose data the run lacks (a CPU run has no GPU samples; a run without the requests probe has no
latency heat maps) is left out, and ``needs`` says which probe records it. Nothing here reads a file or
touches pyplot's global state: each chart is a ``matplotlib.figure.Figure`` of its own, saved with the Agg
renderer. matplotlib is imported inside the functions, so importing this module (and ``traceinfer --help``)
stays fast.

Heat maps follow Brendan Gregg's latency heat maps (https://www.brendangregg.com/HeatMaps/latency.html):
time on x, latency buckets on y (log-spaced, as ``series["*_heatmap"]`` bins them), colour = count, an
empty bucket white.
"""

from __future__ import annotations

import io
import math
import multiprocessing
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from traceinfer.analysis.report import PARTS, Report

if TYPE_CHECKING:
    from matplotlib.figure import Figure

ChartFormat = Literal["svg", "png"]
WIDTH_IN = 9.0
DPI = 100  # PNG pixels per inch; the SVG is vector (its heat-map cells and dense scatters are rasterized)
# text drawn as paths (the SVG needs no font), fixed ids (the same run draws the same file)
RC = {"svg.hashsalt": "traceinfer", "svg.fonttype": "path", "font.size": 9}
MAX_BARS = 100  # batch composition: at most this many bars
MAX_SAMPLE_POINTS = 2000  # GPU samples: averaged down to at most this many points
MAX_LINE_POINTS = 60  # throughput: rebinned to at most this many points (a rate over few steps is spiky)
# one colour per step part, the same in every chart (host stages warm, the forward blue, probes grey)
PART_COLORS = {"schedule": "#e15759", "prepare": "#f28e2b", "forward": "#4e79a7", "sample": "#76b7b2",
               "postprocess": "#edc948", "handover": "#9c9c9c", "other": "#d4a6c8"}  # fmt: skip


@dataclass(frozen=True)
class Chart:
    """One chart: where it goes, what it shows, what records its data, how to find the data and draw it."""

    key: str
    section: str  # the report section it belongs to: charts, anatomy, kv, gc
    title: str
    caption: str  # what the reader sees, one sentence
    needs: str  # the probe (and the kind of run) that records its data: shown when it is left out
    data: Callable[[Report], Any]  # the figures it draws, or None when the run lacks them
    plot: Callable[[Figure, Any], None]
    height_in: float = 2.6

    def present(self, report: Report) -> bool:
        return self.data(report) is not None

    def size_px(self, fmt: ChartFormat = "svg") -> tuple[int, int]:
        """The image's width and height in CSS pixels (SVG: 72 points an inch are 96 px; PNG at DPI)."""
        per_in = 96 if fmt == "svg" else DPI
        return round(WIDTH_IN * per_in), round(self.height_in * per_in)


# -- the data of each chart (None: missing) ---------------------------------------------------
def _nonempty(frame) -> bool:
    return frame is not None and len(frame) > 0


def _series(name: str, *columns: str) -> Callable[[Report], Any]:
    """A frame of ``report.series`` when it has rows and at least one value in each column named."""

    def data(report: Report):
        frame = report.series.get(name)
        if not isinstance(frame, pd.DataFrame) or frame.empty:
            return None
        if any(c not in frame or not frame[c].notna().any() for c in columns):
            return None
        return frame

    return data


def _heatmap(name: str) -> Callable[[Report], Any]:
    def data(report: Report):
        heat = report.series.get(name)
        return heat if heat is not None and float(heat["counts"].sum()) > 0 else None

    return data


def _gpu(report: Report):
    frame = report.series.get("gpu")
    if not isinstance(frame, pd.DataFrame) or frame.empty:
        return None
    return frame if frame["util_pct"].notna().any() or frame["power_w"].notna().any() else None


def _anatomy(report: Report):
    a = report.anatomy
    return a if a and a.get("median_step") and a.get("p99_step") else None


def _histogram(name: str) -> Callable[[Report], Any]:
    def data(report: Report):
        values = report.series.get(name)
        if values is None or len(values) == 0:
            return None
        values = np.asarray(values, dtype=float)
        values = values[np.isfinite(values)]
        return values if len(values) else None

    return data


def _step_gc(report: Report):
    points = report.series.get("step_points")
    if not _nonempty(points):
        return None
    return points, report.series.get("gc")


def _threads(report: Report):
    threads = (report.gc_threads or {}).get("threads")
    return threads or None


# -- rebinning ----------------------------------------------------------------------------------
def coarsen_rate(frame: pd.DataFrame, column: str, points: int = MAX_LINE_POINTS) -> pd.DataFrame:
    """A series of equal time bins averaged over runs of ``k`` neighbours, so it has at most ``points``
    rows (a rate stays a rate)."""
    k = max(math.ceil(len(frame) / points), 1)
    groups = pd.RangeIndex(len(frame)) // k
    return frame.reset_index(drop=True).groupby(groups).agg(t_s=("t_s", "first"), value=(column, "mean"))


def token_bars(steps: pd.DataFrame, bars: int = MAX_BARS) -> tuple[pd.DataFrame, float]:
    """Prefill and decode tokens summed into at most ``bars`` equal time bins: (frame, bin width in s)."""
    lo, hi = float(steps["t_s"].min()), float(steps["t_s"].max())
    width = max((hi - lo) / bars, 1e-3)
    index = ((steps["t_s"] - lo) // width).clip(upper=bars - 1).astype(int)
    summed = steps.groupby(index)[["prefill_tokens", "decode_tokens"]].sum()
    return summed.assign(t_s=lo + summed.index.to_series() * width), width


def log_edges(values, bins: int = 30) -> list[float] | None:
    """Log-spaced bin edges over positive ``values`` spanning more than a decade, else None (linear)."""
    values = np.asarray(values, dtype=float)
    positive = values[values > 0]
    if len(positive) < 2 or positive.max() < 10 * positive.min():
        return None
    lo, hi = math.log10(float(positive.min())), math.log10(float(positive.max()))
    return [10 ** (lo + (hi - lo) * i / bins) for i in range(bins + 1)]


# -- drawing --------------------------------------------------------------------------------------
def _axes(fig: Figure, xlabel: str, ylabel: str):
    ax = fig.add_subplot()
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, color="#e4e4e4", linewidth=0.6)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    return ax


def _minor_label(value: float) -> str:
    """A minor log tick's label: 2 and 5 times a power of ten (0.02, 50), the others blank."""
    if value <= 0:
        return ""
    mantissa = value / 10 ** math.floor(math.log10(value) + 1e-9)
    return f"{value:g}" if round(mantissa, 6) in (2.0, 5.0) else ""


def _plain_log(axis) -> None:
    """Log-scale tick labels as plain numbers (0.05, 10, 20), not powers of ten."""
    from matplotlib.ticker import FuncFormatter

    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(FuncFormatter(lambda v, _: _minor_label(v)))


def _legend(fig: Figure, columns: int) -> None:
    fig.legend(loc="outside upper right", frameon=False, ncols=columns, fontsize="small")


def _plot_heatmap(counted: str) -> Callable[[Figure, Any], None]:
    def plot(fig: Figure, heat) -> None:
        import matplotlib
        from matplotlib.ticker import MaxNLocator

        ax = _axes(fig, "time since the run began (s)", "latency (ms, log buckets)")
        cmap = matplotlib.colormaps["YlOrRd"].with_extremes(under="white")  # an empty bucket: white, as Gregg's
        top = max(float(heat["counts"].max()), 1.0)
        mesh = ax.pcolormesh(heat["time_edges_s"], heat["latency_edges_ms"], heat["counts"], cmap=cmap, vmin=0.5,
                             vmax=top, rasterized=True, shading="flat")  # fmt: skip
        ax.set_yscale("log")
        _plain_log(ax.yaxis)
        ax.grid(False)
        ticks = list(range(1, int(top) + 1)) if top <= 8 else MaxNLocator(integer=True)
        fig.colorbar(mesh, ax=ax, pad=0.01, fraction=0.04, ticks=ticks).set_label(counted)

    return plot


def _plot_throughput(fig: Figure, frame: pd.DataFrame) -> None:
    binned = coarsen_rate(frame, "output_tok_s")
    ax = _axes(fig, "time since the run began (s)", "output tok/s")
    ax.fill_between(binned["t_s"], binned["value"], step="post", color="#4e79a7", alpha=0.35, linewidth=0)
    ax.step(binned["t_s"], binned["value"], where="post", color="#4e79a7", linewidth=1)
    ax.set_ylim(bottom=0)


def _plot_queues(fig: Figure, frame: pd.DataFrame) -> None:
    ax = _axes(fig, "time since the run began (s)", "requests")
    ax.step(frame["t_s"], frame["running"], where="post", color="#4e79a7", linewidth=1, label="running")
    ax.step(frame["t_s"], frame["waiting"], where="post", color="#e15759", linewidth=1, label="waiting")
    ax.set_ylim(bottom=0)
    _legend(fig, 2)


def _plot_kv(fig: Figure, frame: pd.DataFrame) -> None:
    ax = _axes(fig, "time since the run began (s)", "KV blocks used (%)")
    used = frame["kv_used"] * 100
    ax.fill_between(frame["t_s"], used, step="post", color="#59a14f", alpha=0.35, linewidth=0)
    ax.step(frame["t_s"], used, where="post", color="#59a14f", linewidth=1)
    ax.set_ylim(0, max(float(used.max()) * 1.15, 1.0))


def thin(frame: pd.DataFrame, points: int = MAX_SAMPLE_POINTS) -> pd.DataFrame:
    """Samples averaged over runs of ``k`` neighbours, so a long run draws at most ``points`` of them."""
    k = max(math.ceil(len(frame) / points), 1)
    return frame if k == 1 else frame.reset_index(drop=True).groupby(pd.RangeIndex(len(frame)) // k).mean()


def _plot_gpu(fig: Figure, frame: pd.DataFrame) -> None:
    frame = thin(frame)
    ax = _axes(fig, "time since the run began (s)", "GPU utilization (%)")
    if frame["util_pct"].notna().any():
        ax.plot(frame["t_s"], frame["util_pct"], color="#4e79a7", linewidth=1, label="utilization (NVML)")
    ax.set_ylim(0, 105)
    if frame["power_w"].notna().any():
        power = ax.twinx()
        power.plot(frame["t_s"], frame["power_w"], color="#f28e2b", linewidth=1, label="power")
        power.set_ylabel("power (W)")
        power.set_ylim(bottom=0)
        power.spines["top"].set_visible(False)
    _legend(fig, 2)


def _plot_batch(fig: Figure, frame: pd.DataFrame) -> None:
    bars, width = token_bars(frame)
    ax = _axes(fig, "time since the run began (s)", f"tokens per {width * 1e3:.0f} ms")
    ax.bar(bars["t_s"], bars["prefill_tokens"], width=width, align="edge", color="#f28e2b", label="prefill")
    ax.bar(bars["t_s"], bars["decode_tokens"], width=width, align="edge", bottom=bars["prefill_tokens"],
           color="#4e79a7", label="decode")  # fmt: skip
    _legend(fig, 2)


def _plot_anatomy(fig: Figure, anatomy: dict) -> None:
    ax = _axes(fig, "ms", "")
    ax.grid(True, axis="x", color="#e4e4e4", linewidth=0.6)
    ax.grid(False, axis="y")
    rows = [("p99 step", anatomy["p99_step"]), ("median step", anatomy["median_step"])]
    for y, (label, step) in enumerate(rows):
        left = 0.0
        for part in PARTS:
            width = step["parts_ms"].get(part) or 0.0
            ax.barh(y, width, left=left, height=0.5, color=PART_COLORS[part], label=part if y == 0 else None)
            left += width
        gpu = step["parts_ms"].get("gpu_forward")
        if gpu is not None:  # the GPU's own time, under the host bar it ran beneath
            ax.barh(y - 0.34, gpu, height=0.12, color="#1b3a5c", label="GPU forward (CUDA events)" if y == 0 else None)
    ax.set_yticks(range(len(rows)), [f"{label} (#{step['step']})" for label, step in rows])
    fig.legend(loc="outside lower center", frameon=False, ncols=8, fontsize="small")


def _plot_histogram(xlabel: str) -> Callable[[Figure, Any], None]:
    def plot(fig: Figure, values: np.ndarray) -> None:
        from matplotlib.ticker import MaxNLocator

        ax = _axes(fig, xlabel, "blocks")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        edges = log_edges(values)
        counts, bins = np.histogram(values, bins=edges or 30)  # binned here: matplotlib's hist is slow on millions
        ax.hist(bins[:-1], bins=bins, weights=counts, color="#59a14f", edgecolor="white", linewidth=0.4)
        if edges:
            ax.set_xscale("log")
            _plain_log(ax.xaxis)

    return plot


def _plot_step_gc(fig: Figure, data) -> None:
    points, gc = data
    ax = _axes(fig, "time since the run began (s)", "ms")
    ax.scatter(points["t_s"], points["dur_ms"], s=4, color="#4e79a7", alpha=0.6, linewidths=0, rasterized=True,
               label="step duration")  # fmt: skip
    if _nonempty(gc):
        for t in gc["t_s"].iloc[:300]:  # a line per pause, up to 300 of them; the markers show every one
            ax.axvline(t, color="#e15759", alpha=0.25, linewidth=0.8)
        ax.scatter(gc["t_s"], gc["pause_ms"], s=22, marker="v", color="#e15759", label="GC pause", zorder=3,
                   rasterized=len(gc) > 500)  # fmt: skip
    ax.set_yscale("log")
    _plain_log(ax.yaxis)
    _legend(fig, 2)


def _plot_threads(fig: Figure, threads: list[dict]) -> None:
    shown = threads[:12]
    ax = _axes(fig, "CPU time over wall time (%)", "")
    ax.grid(False, axis="y")
    ys = range(len(shown))
    ax.barh(list(ys), [100 * t["cpu_share"] for t in shown], color="#4e79a7", height=0.6)
    ax.set_yticks(list(ys), [str(t["thread"])[:40].replace("$", r"\$") for t in shown])  # $: text, not mathtext
    ax.invert_yaxis()
    ax.set_xlim(left=0)


CHARTS: tuple[Chart, ...] = (
    Chart("ttft_heatmap", "charts", "TTFT heat map",
          "Time to first token of each request by its arrival: time on x, latency buckets (log) on y, colour = requests.",
          "the requests probe (streams requests and tokens)", _heatmap("ttft_heatmap"), _plot_heatmap("requests"), 3.0),
    Chart("itl_heatmap", "charts", "Inter-token latency heat map",
          "The gap before each output token: time on x, latency buckets (log) on y, colour = tokens.",
          "the requests probe (stream tokens)", _heatmap("itl_heatmap"), _plot_heatmap("tokens"), 3.0),
    Chart("throughput", "charts", "Output throughput", "Output tokens per second over the run.",
          "the requests probe (stream tokens)", _series("throughput", "output_tok_s"), _plot_throughput),
    Chart("queues", "charts", "Queue lengths", "Requests running and waiting at each step.",
          "the steps probe", _series("steps", "running"), _plot_queues),
    Chart("kv_use", "charts", "KV-cache use", "The share of KV blocks in use at each step.",
          "the steps probe (and the engine's num_kv_blocks in the manifest)", _series("steps", "kv_used"), _plot_kv),
    Chart("gpu", "charts", "GPU utilization and power", "NVML's utilization and board power, sampled.",
          "the samplers probe on a GPU run (NVML)", _gpu, _plot_gpu),
    Chart("batch", "charts", "Batch composition", "Prefill and decode tokens the steps ran, stacked, over time.",
          "the steps probe", _series("steps", "prefill_tokens"), _plot_batch),
    Chart("step_parts", "anatomy", "A median and a p99 step by part",
          "Host time of each part of the step, stacked; on a GPU a thin bar gives the forward's GPU time.",
          "the steps probe", _anatomy, _plot_anatomy, 2.2),
    Chart("block_lifetime", "kv", "KV block lifetime",
          "From a block's allocation to its release or eviction, one count per block life.",
          "the kv probe (stream kv_events)", _histogram("block_lifetime_s"), _plot_histogram("lifetime (s)"), 2.4),
    Chart("reuse_gap", "kv", "KV block reuse gap",
          "How long a cached block sat unused before a prefix hit took it again.",
          "the kv probe (stream kv_events)", _histogram("reuse_gap_s"), _plot_histogram("gap before reuse (s)"), 2.4),
    Chart("step_gc", "gc", "Step durations and GC pauses",
          "Every step's duration over time (log ms), GC pauses marked in red at their time and length.",
          "the steps probe (the pauses: the gc probe)", _step_gc, _plot_step_gc, 2.8),
    Chart("thread_cpu", "gc", "CPU by thread", "Each sampled thread's CPU time over the wall time it was sampled.",
          "the threads probe (stream thread_samples)", _threads, _plot_threads, 2.2),
)  # fmt: skip
BY_KEY: dict[str, Chart] = {c.key: c for c in CHARTS}


def figure_of(chart: Chart, report: Report) -> Figure | None:
    """The chart's figure, or None when the run lacks its data."""
    import matplotlib
    from matplotlib.figure import Figure

    data = chart.data(report)
    if data is None:
        return None
    with matplotlib.rc_context(RC):
        fig = Figure(figsize=(WIDTH_IN, chart.height_in), dpi=DPI, layout="constrained")
        fig.suptitle(chart.title, x=0.01, ha="left", fontsize="medium", fontweight="bold")
        chart.plot(fig, data)
    return fig


def render_chart(chart: Chart, report: Report, fmt: ChartFormat = "svg") -> str | bytes | None:
    """The chart as SVG text or PNG bytes; None when the run lacks its data. Deterministic for one input
    (no date in the metadata, a fixed id salt)."""
    import matplotlib

    fig = figure_of(chart, report)
    if fig is None:
        return None
    buffer = io.BytesIO()
    metadata = {"Date": None, "Creator": "traceinfer"} if fmt == "svg" else {"Software": "traceinfer"}
    with matplotlib.rc_context(RC):
        fig.savefig(buffer, format=fmt, metadata=metadata)
    return buffer.getvalue().decode("utf-8") if fmt == "svg" else buffer.getvalue()


#: a forked child draws every other chart from this many charts on (fewer: not worth a process)
FORK_FROM = 4


def render_charts(charts: Sequence[Chart], report: Report, fmt: ChartFormat = "svg") -> dict[str, str | bytes]:
    """Each of ``charts`` that the run has data for, by key, as ``render_chart`` draws it.

    matplotlib draws in Python, holding the GIL, so on Linux a forked child draws every other chart
    meanwhile: a long run's eleven charts take about half the 2.5 s they take in one process on two cores
    (docs/benchmarks.md). The child shares the report copy-on-write and sends back the images; if it fails
    or does not answer, this process draws its charts too."""
    present = [c for c in charts if c.present(report)]
    forked = len(present) >= FORK_FROM and sys.platform == "linux"
    child = _ChartChild(present[::2], report, fmt) if forked else None
    started = time.perf_counter()
    images = {c.key: render_chart(c, report, fmt) for c in (present[1::2] if child else present)}
    if child is not None:  # the child draws about as much: wait for it as long as four times that, at least 10 s
        images.update(child.images(max(10.0, 4 * (time.perf_counter() - started))))
    return {c.key: images[c.key] if c.key in images else render_chart(c, report, fmt) for c in present}


class _ChartChild:
    """A forked process drawing ``charts`` and sending {key: image} back through a pipe."""

    def __init__(self, charts: list[Chart], report: Report, fmt: ChartFormat) -> None:
        import matplotlib.figure  # noqa: F401  imported once, before the fork, for both processes
        from matplotlib.backends import backend_agg, backend_svg  # noqa: F401

        context = multiprocessing.get_context("fork")
        self.receive, send = context.Pipe(duplex=False)
        self.process = context.Process(target=_draw_into, args=(send, charts, report, fmt), daemon=True)
        self.process.start()
        send.close()

    def images(self, timeout_s: float) -> dict[str, str | bytes]:
        """The child's images, or {} when it failed or did not answer within ``timeout_s``."""
        try:
            images = self.receive.recv() if self.receive.poll(timeout_s) else {}
        except (EOFError, OSError):  # it died before sending
            images = {}
        self.receive.close()
        self.process.join(1.0)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        return images


def _draw_into(send, charts: list[Chart], report: Report, fmt: ChartFormat) -> None:
    send.send({c.key: render_chart(c, report, fmt) for c in charts})
    send.close()
