"""The report as GitHub-flavoured markdown that reads as well as plain text (traceinfer.render.report_doc's
sections, with markup).

    text = MarkdownReport(run_href="", html_href="report.html").render(report)

Charts: not embedded. GitHub does not show images given as data URIs, and a string cannot carry image
files, so each chart is a line that points to the HTML report, where it is drawn; a time series gets a
text sparkline (``▁▃▅▇``) with its range, so the shape reads here too. A chart the run has no data for
says which probe records it. Flame graphs are links to their SVG files (``run_href`` + the path relative
to the run directory). USE cells carry their evidence as numbered notes under the table.
"""

from __future__ import annotations

import math
import posixpath

import pandas as pd

from traceinfer.analysis.report import Report
from traceinfer.render.charts import coarsen_rate
from traceinfer.render.report_doc import (
    ChartRef,
    Code,
    FlameRef,
    Note,
    Paragraph,
    ReportRenderer,
    Section,
    Subheading,
    Table,
    document,
    fmt_rate,
)

SPARKS = "▁▂▃▄▅▆▇█"
SPARK_WIDTH = 48


def sparkline(values, width: int = SPARK_WIDTH) -> str:
    """``values`` averaged into at most ``width`` buckets, each drawn as one of eight block heights."""
    values = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not values:
        return ""
    per = max(math.ceil(len(values) / width), 1)
    buckets = [sum(values[i:i + per]) / len(values[i:i + per]) for i in range(0, len(values), per)]
    lo, hi = min(buckets), max(buckets)
    if hi == lo:
        return SPARKS[0 if hi == 0 else 3] * len(buckets)
    return "".join(SPARKS[min(int((b - lo) / (hi - lo) * len(SPARKS)), len(SPARKS) - 1)] for b in buckets)


def _spark_lines(report: Report, key: str) -> list[tuple[str, list[float], str]]:
    """(label, values, unit) of the time series a chart draws, for sparklines; [] for charts that are not
    time series (heat maps, bars, histograms)."""
    series = report.series
    steps = series.get("steps")
    if key == "throughput":
        return [("output tok/s", list(coarsen_rate(series["throughput"], "output_tok_s")["value"]), "tok/s")]
    if key == "queues" and isinstance(steps, pd.DataFrame):
        return [("running", list(steps["running"]), "requests"), ("waiting", list(steps["waiting"]), "requests")]
    if key == "kv_use" and isinstance(steps, pd.DataFrame):
        return [("KV blocks used", [100 * v for v in steps["kv_used"]], "%")]
    if key == "batch" and isinstance(steps, pd.DataFrame):
        return [("prefill tokens", list(steps["prefill_tokens"]), "tokens/step"),
                ("decode tokens", list(steps["decode_tokens"]), "tokens/step")]  # fmt: skip
    if key == "gpu":
        gpu = series["gpu"]
        return [(label, list(gpu[c]), unit) for c, label, unit in (("util_pct", "GPU utilization", "%"),
                ("power_w", "power", "W")) if gpu[c].notna().any()]  # fmt: skip
    return []


def _text(text) -> str:
    """Text from the run as markdown that shows it as written: backslashes and ``<`` escaped, so a name
    like ``<script>`` is text to any markdown renderer, never HTML."""
    return str(text).replace("\\", "\\\\").replace("<", "\\<")


def _cell(text) -> str:
    """Text safe inside a table cell: one line, pipes escaped too."""
    return _text(" ".join(str(text).split())).replace("|", "\\|")


def _code(text: str) -> str:
    fence = "```"
    while fence in text:
        fence += "`"
    return f"{fence}sh\n{text}\n{fence}"


class MarkdownReport(ReportRenderer):
    name = "md"
    extension = "md"
    opens_with = "{path}: markdown (GitHub renders it; charts are in report.html)"

    def __init__(self, run_href: str = "", html_href: str | None = "report.html") -> None:
        """``run_href``: the run directory as seen from where the markdown is written ("" when it is written
        into the run directory), prefixed to flame-graph links. ``html_href``: the HTML report beside it,
        where the charts are (None: no HTML was written)."""
        self.run_href = run_href
        self.html_href = html_href

    def render(self, report: Report) -> str:
        title, sections = document(report)
        out = [f"# {_text(title)}", ""]
        run = report.run
        where = f"Run directory {_text(run.get('path'))}" if run.get("path") else "A run"
        charts = f" Charts and embedded flame graphs: [{self.html_href}]({self.html_href})." if self.html_href else ""
        out += [f"{where} ({run.get('status') or 'status unknown'}).{charts}", ""]
        out += ["Contents: " + " · ".join(f"[{s.heading}](#{_anchor(s.heading)})" for s in sections), ""]
        for section in sections:
            out += self._section(section, report)
        return "\n".join(out).rstrip() + "\n"

    def _section(self, section: Section, report: Report) -> list[str]:
        out = [f"## {section.heading}"]
        if section.id == "charts":
            where = f"[{self.html_href}]({self.html_href})" if self.html_href else "the HTML report (--format html)"
            out += ["", (f"Charts are drawn in {where}: GitHub does not show images embedded as data URIs, and this "
                         "file stays plain text. Here each time series is a text sparkline with its range.")]  # fmt: skip
        previous = None
        for block in section.blocks:
            if not (_listed(block) and _listed(previous)):  # a list's items follow each other
                out.append("")
            out += self._block(block, report)
            previous = block
        return out + [""]

    def _block(self, block, report: Report) -> list[str]:
        if isinstance(block, Paragraph):
            return [f"**{_text(block.lead)}** {_text(block.text)}" if block.lead else _text(block.text)]
        if isinstance(block, Subheading):
            return [f"### {_text(block.text)}" + (f" `[{block.badge}]`" if block.badge else "")]
        if isinstance(block, Code):
            return [_code(block.text)]
        if isinstance(block, Table):
            return self._table(block)
        if isinstance(block, ChartRef):
            return self._chart(block, report)
        if isinstance(block, FlameRef):
            href = posixpath.join(self.run_href, block.path) if self.run_href else block.path
            return [f"- [{_cell(block.title)}]({href.replace(' ', '%20')})"]
        raise TypeError(f"no markdown for {type(block).__name__}")

    def _table(self, table: Table) -> list[str]:
        notes: dict[str, int] = {}

        def cell(value) -> str:
            if isinstance(value, Note):
                if not value.note:
                    return _cell(value.text)
                number = notes.setdefault(value.note, len(notes) + 1)
                return f"{_cell(value.text)} [{number}]"
            return _cell(value)

        header = [_cell(c) for c in table.columns]
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
        lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.rows]
        if notes:
            lines.append("")
            lines += [f"[{n}] {_cell(text)}  " for text, n in notes.items()]
        if table.caption:
            lines += ["", f"_{_cell(table.caption)}_"]
        return lines

    def _chart(self, ref: ChartRef, report: Report) -> list[str]:
        chart = ref.chart
        if not ref.present:
            return [f"- _{_text(ref.missing_line)}_"]
        lines = [f"- **{_text(chart.title)}**: {_text(chart.caption)}"]
        for label, values, unit in _spark_lines(report, chart.key):
            finite = [v for v in values if v is not None and math.isfinite(v)]
            if finite:
                lines.append(f"  `{sparkline(finite)}` {_text(label)}, {fmt_rate(min(finite))} to {fmt_rate(max(finite))} {unit}")
        return lines


def _listed(block) -> bool:
    return isinstance(block, (ChartRef, FlameRef))


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens."""
    kept = "".join(ch for ch in heading.lower() if ch.isalnum() or ch in " -_")
    return kept.replace(" ", "-")
