"""The report as one self-contained HTML file: inline CSS, charts as SVG (or PNG) data URIs, flame graphs
embedded interactive; no script of its own, no font, nothing fetched (its Content-Security-Policy allows
no network). Readable offline and printable.

    html = HtmlReport(flame_svgs={path: svg_text, ...}).render(report)

``flame_svgs`` maps each of ``report.flamegraphs`` (paths relative to the run directory) to the SVG's text:
the caller reads the files, so the renderer reads none. Each is embedded as an ``<iframe sandbox=
"allow-scripts">`` whose source is the SVG as a data URI: its own script (zoom, search, tooltips) runs, in
an opaque origin that can reach neither this page nor the network, and its ids cannot clash with the page's
or another graph's. A graph missing from ``flame_svgs`` is named with its path instead.

Every string from the run (workload, model, command, thread names, findings) is escaped with html.escape:
a model named ``<script>alert(1)</script>`` shows as that text. The charts are images (``<img>``), whose
SVG scripts a browser never runs.
"""

from __future__ import annotations

import base64
import hashlib
import html
import re
from collections.abc import Mapping

from traceinfer import __version__
from traceinfer.analysis.report import Report
from traceinfer.render.charts import CHARTS, ChartFormat, render_charts
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
)

# nothing from the network; images and frames only from data URIs; styles only inline; no script in the page.
# A data: frame inherits this policy, so the flame graphs' own scripts are allowed by their hashes (the
# page itself holds none of them).
CSP = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; frame-src data:; base-uri 'none'; "
       "form-action 'none'; script-src {scripts}")  # fmt: skip
SCRIPT = re.compile(r"<script\b[^>]*>(.*?)</script>", re.DOTALL | re.IGNORECASE)

CSS = """\
:root{--ink:#1d232b;--muted:#5f6b7a;--rule:#d8dde3;--band:#f4f6f8;--accent:#1f4e9c}
*{box-sizing:border-box}
body{margin:0;color:var(--ink);background:#fff;font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
header,main,footer{max-width:1240px;margin:0 auto;padding:0 24px}
header{padding-top:20px;border-bottom:1px solid var(--rule)}
h1{font-size:1.6em;margin:.2em 0}
h2{font-size:1.3em;margin:1.6em 0 .5em;padding-bottom:.2em;border-bottom:2px solid var(--ink)}
h3{font-size:1.05em;margin:1.2em 0 .3em}
nav ol{display:flex;flex-wrap:wrap;gap:.2em 1.2em;padding:0;margin:.6em 0 1em;list-style:none;counter-reset:s}
nav li{counter-increment:s}
nav li::before{content:counter(s) ". ";color:var(--muted)}
a{color:var(--accent)}
p{margin:.5em 0;max-width:75em}
code,pre{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.9em}
pre{background:var(--band);padding:.6em .8em;border-radius:4px;overflow-x:auto;white-space:pre-wrap;word-break:break-all}
table{border-collapse:collapse;margin:.6em 0;font-size:.92em}
th,td{border:1px solid var(--rule);padding:.3em .6em;text-align:left;vertical-align:top}
thead th{background:var(--band)}
tbody th{font-weight:600;background:#fafbfc;white-space:nowrap}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.note{display:block;color:var(--muted);font-size:.8em;line-height:1.3}
td.missing{color:var(--muted);background:#fbfbfb}
.caption{color:var(--muted);font-size:.85em;margin-top:-.2em}
.missing-chart{color:var(--muted);font-style:italic}
.badge{display:inline-block;margin-left:.5em;padding:0 .5em;border-radius:3px;color:#fff;font-size:.8em;vertical-align:middle;text-transform:uppercase;letter-spacing:.03em}
.sev-high{background:#b3261e}.sev-medium{background:#c46a00}.sev-low{background:#2d6cb5}.sev-info{background:#5f6b7a}
figure{margin:1em 0}
figure.chart img{display:block;max-width:100%;height:auto}
figcaption{color:var(--muted);font-size:.85em}
.flame{overflow-x:auto}
.flame iframe{display:block;border:1px solid var(--rule);max-width:none;background:#fff}
details{margin:.4em 0}
summary{cursor:pointer;color:var(--accent)}
footer{color:var(--muted);font-size:.85em;border-top:1px solid var(--rule);margin-top:2em;padding-top:.6em;padding-bottom:2em}
@media print{
  body{font-size:11pt}
  nav{display:none}
  header,main,footer{max-width:none;padding:0}
  h2{break-after:avoid}
  figure,table,pre{break-inside:avoid}
  details{display:block}
  a{color:inherit;text-decoration:none}
}
"""

MISSING, NUM = ' class="missing"', ' class="num"'
NUMERIC = re.compile(r"^[-+]?[\d,]*\.?\d+( ?(ms|s|µs|%))?$|^-$")
SVG_SIZE = re.compile(r"<svg\b[^>]*?\bwidth=\"([\d.]+)\"[^>]*?\bheight=\"([\d.]+)\"", re.DOTALL)


def esc(text) -> str:
    return html.escape(str(text), quote=True)


def data_uri(mime: str, payload: str | bytes) -> str:
    raw = payload.encode("utf-8") if isinstance(payload, str) else payload
    return f"data:{mime};base64,{base64.b64encode(raw).decode('ascii')}"


def script_hashes(svgs) -> list[str]:
    """CSP sources ('sha256-...') of the inline scripts of ``svgs``: the text a browser hashes is the
    script element's content, a CDATA section's markers left out."""
    hashes = []
    for svg in svgs:
        for body in SCRIPT.findall(svg):
            text = body.replace("<![CDATA[", "").replace("]]>", "")
            digest = base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii")
            hashes.append(f"'sha256-{digest}'")
    return sorted(set(hashes))


def svg_size(svg: str) -> tuple[int, int]:
    """The root element's width and height in px (1200 x 600 when it does not say)."""
    match = SVG_SIZE.search(svg[:4000])
    return (round(float(match.group(1))), round(float(match.group(2)))) if match else (1200, 600)


class HtmlReport(ReportRenderer):
    name = "html"
    extension = "html"
    opens_with = "open file://{path} in a web browser (one self-contained file: charts, flame graphs)"

    def __init__(self, flame_svgs: Mapping[str, str] | None = None, chart_format: ChartFormat = "svg") -> None:
        """``flame_svgs``: the text of each flame graph, by its path in ``report.flamegraphs``; ``chart_format``:
        svg (sharp in print) or png (smaller for dense charts)."""
        self.flame_svgs = dict(flame_svgs or {})
        self.chart_format = chart_format

    def render(self, report: Report) -> str:
        title, sections = document(report)
        run = report.run
        where = f"Run directory <code>{esc(run.get('path'))}</code>" if run.get("path") else "A run"
        nav = "".join(f'<li><a href="#{esc(s.id)}">{esc(s.title)}</a></li>' for s in sections)
        images = render_charts(CHARTS, report, self.chart_format)  # all at once: two processes draw them
        body = "\n".join(self._section(s, images) for s in sections)
        embedded = [self.flame_svgs[p] for p in report.flamegraphs if p in self.flame_svgs]
        csp = CSP.format(scripts=" ".join(script_hashes(embedded)) or "'none'")
        return (
            "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<meta http-equiv=\"Content-Security-Policy\" content=\"{esc(csp)}\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<meta name=\"generator\" content=\"traceinfer {esc(__version__)}\">\n"
            f"<title>{esc(title)}</title>\n<style>\n{CSS}</style>\n</head>\n<body>\n"
            f"<header>\n<h1>{esc(title)}</h1>\n<p>{where} ({esc(run.get('status') or 'status unknown')}).</p>\n"
            f"<nav><ol>{nav}</ol></nav>\n</header>\n<main>\n{body}\n</main>\n"
            f"<footer>traceinfer {esc(__version__)}: {esc(report.methodology.get('report') or 'traceinfer report')}"
            "</footer>\n</body>\n</html>\n"
        )  # fmt: skip

    def _section(self, section: Section, images: Mapping[str, str | bytes]) -> str:
        parts = [f'<section id="{esc(section.id)}">', f"<h2>{esc(section.heading)}</h2>"]
        parts += [self._block(block, images) for block in section.blocks]
        parts.append("</section>")
        return "\n".join(parts)

    def _block(self, block, images: Mapping[str, str | bytes]) -> str:
        if isinstance(block, Paragraph):
            lead = f"<strong>{esc(block.lead)}</strong> " if block.lead else ""
            return f"<p>{lead}{esc(block.text)}</p>"
        if isinstance(block, Subheading):
            badge = f'<span class="badge sev-{esc(block.badge)}">{esc(block.badge)}</span>' if block.badge else ""
            return f"<h3>{esc(block.text)}{badge}</h3>"
        if isinstance(block, Code):
            return f"<pre><code>{esc(block.text)}</code></pre>"
        if isinstance(block, Table):
            return self._table(block)
        if isinstance(block, ChartRef):
            return self._chart(block, images)
        if isinstance(block, FlameRef):
            return self._flame(block)
        raise TypeError(f"no HTML for {type(block).__name__}")

    def _table(self, table: Table) -> str:
        def cell(value, first: bool) -> str:
            if first:
                return f'<th scope="row">{esc(value.text if isinstance(value, Note) else value)}</th>'
            if isinstance(value, Note):
                note = f'<small class="note">{esc(value.note)}</small>' if value.note else ""
                return f"<td{MISSING if value.missing else ''}>{esc(value.text)}{note}</td>"
            numeric = len(table.columns) > 2 and NUMERIC.match(str(value))  # figures in columns align right
            return f"<td{NUM if numeric else ''}>{esc(value)}</td>"

        head = ""
        if any(table.columns):
            head = "<thead><tr>" + "".join(f'<th scope="col">{esc(c)}</th>' for c in table.columns) + "</tr></thead>"
        rows = "".join("<tr>" + "".join(cell(v, i == 0) for i, v in enumerate(row)) + "</tr>" for row in table.rows)
        caption = f'<p class="caption">{esc(table.caption)}</p>' if table.caption else ""
        return f"<table>{head}<tbody>{rows}</tbody></table>{caption}"

    def _chart(self, ref: ChartRef, images: Mapping[str, str | bytes]) -> str:
        chart = ref.chart
        if not ref.present:
            return f'<p class="missing-chart" id="chart-{esc(chart.key)}">{esc(ref.missing_line)}</p>'
        image = images[chart.key]
        mime = "image/svg+xml" if self.chart_format == "svg" else "image/png"
        width, height = chart.size_px(self.chart_format)
        return (f'<figure class="chart" id="chart-{esc(chart.key)}"><img src="{data_uri(mime, image)}" width="{width}" '
                f'height="{height}" alt="{esc(chart.title)}"><figcaption>{esc(chart.caption)}</figcaption></figure>')  # fmt: skip

    def _flame(self, ref: FlameRef) -> str:
        svg = self.flame_svgs.get(ref.path)
        if svg is None:
            return f'<p class="missing-chart">{esc(ref.title)}: not embedded; open {esc(ref.path)} in the run directory.</p>'
        width, height = svg_size(svg)
        frame = (f'<iframe sandbox="allow-scripts" title="flame graph: {esc(ref.title)}" src="{data_uri("image/svg+xml", svg)}" '
                 f'style="width:{width + 2}px;height:{height + 2}px"></iframe>')  # fmt: skip
        caption = f"<figcaption>{esc(ref.title)} ({esc(ref.path)})</figcaption>"
        if ref.whole:
            return f'<figure class="flame">{caption}{frame}</figure>'
        return f'<details><summary>{esc(ref.title)}</summary><figure class="flame">{caption}{frame}</figure></details>'
