"""The performance report's renderers, one per format, in one registry (the CLI's ``--format`` choices).

    from traceinfer.render.report import REPORT_FORMATS
    renderer = REPORT_FORMATS["html"](flame_svgs={p: (run.path / p).read_text() for p in report.flamegraphs})
    path = out / f"report.{renderer.extension}"
    path.write_text(renderer.render(report), encoding="utf-8")      # report: analysis.report.Report
    print(renderer.opens_with.format(path=path))

Formats (each class: ``name``, ``extension``, ``opens_with``, ``render(report) -> str``):
    md    MarkdownReport(run_href="", html_href="report.html"): GitHub-flavoured markdown, readable as plain
          text; charts live in the HTML (a text sparkline per time series here), flame graphs are links.
    html  HtmlReport(flame_svgs=None, chart_format="svg"): one self-contained file, charts inline, flame graphs
          embedded interactive, every string from the run escaped.
    json  JsonReport(): ``Report.as_dict()`` (the same figures, and the ranked findings), for scripts and CI.

Each renderer is pure: it reads no file. ``renderer_for`` builds one for a run directory, reading the flame
graphs' SVG files the HTML embeds.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from traceinfer.analysis.report import Report
from traceinfer.render.report_doc import ReportRenderer
from traceinfer.render.report_html import HtmlReport
from traceinfer.render.report_md import MarkdownReport


class JsonReport(ReportRenderer):
    name = "json"
    extension = "json"
    opens_with = "{path}: JSON (the report's figures and its ranked findings)"

    def render(self, report: Report) -> str:
        # as_dict maps non-finite numbers to null; allow_nan=False fails loudly if one slips through
        return json.dumps(report.as_dict(), indent=2, allow_nan=False, ensure_ascii=False) + "\n"


REPORT_FORMATS: dict[str, type[ReportRenderer]] = {r.name: r for r in (MarkdownReport, HtmlReport, JsonReport)}


def renderer_for(fmt: str, report: Report, run_path: str | Path, out_dir: str | Path | None = None,
                 formats: tuple[str, ...] | list[str] = ("md", "html", "json")) -> ReportRenderer:  # fmt: skip
    """The renderer of ``fmt`` for a report of the run in ``run_path`` written into ``out_dir`` (default: the
    run directory): the HTML gets the flame graphs' SVG texts (a file that cannot be read is left out, and
    the report names it); the markdown links flame graphs from ``out_dir`` and points to report.html when
    ``formats`` includes html."""
    run_path = Path(run_path)
    if fmt == "html":
        svgs = {}
        for rel in report.flamegraphs:
            try:
                svgs[rel] = (run_path / rel).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                continue
        return HtmlReport(flame_svgs=svgs)
    if fmt == "md":
        out = Path(out_dir) if out_dir is not None else run_path
        href = os.path.relpath(run_path.resolve(), out.resolve()) if out.resolve() != run_path.resolve() else ""
        html_href = f"report.{HtmlReport.extension}" if "html" in formats else None
        return MarkdownReport(run_href=Path(href).as_posix() if href else "", html_href=html_href)
    return REPORT_FORMATS[fmt]()
