"""The report's renderers (traceinfer.render.report): every format renders a real CPU run's report and reads
back with each section and the report's own figures; the HTML is self-contained, opens in headless Chromium
with every chart drawn and the flame graphs interactive, and escapes what the run names; a run missing
streams still renders, saying which probe would have measured what is left out."""

from __future__ import annotations

import dataclasses
import json
import re
import time
from html.parser import HTMLParser

import pytest

from traceinfer.analysis.findings import Finding
from traceinfer.analysis.report import build_report, report_of_run
from traceinfer.render.charts import BY_KEY, CHARTS, log_edges, render_chart
from traceinfer.render.report import REPORT_FORMATS, JsonReport, renderer_for
from traceinfer.render.report_doc import SECTIONS
from traceinfer.render.report_html import HtmlReport
from traceinfer.render.report_md import MarkdownReport, sparkline
from traceinfer.rundir import open_run

XSS = "<script>alert(1)</script>"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from traceinfer.cli import main

    out = tmp_path_factory.mktemp("report") / "run"
    code = main(["profile", "--workload", "chatbot", "--num-requests", "4", "--output-len", "32", "--probes", "all",
                 "--overhead-passes", "0", "--no-warmup", "--device", "cpu", "--out", str(out)])  # fmt: skip
    assert code == 0
    return open_run(out)


@pytest.fixture(scope="module")
def report(run):
    return report_of_run(run)


@pytest.fixture(scope="module")
def rendered(run, report) -> dict[str, str]:
    return {fmt: renderer_for(fmt, report, run.path).render(report) for fmt in REPORT_FORMATS}


def frames_of(run, leave_out=()) -> dict:
    return {name: run.frame(name) for name in run.streams if name not in leave_out}


class Page(HTMLParser):
    """What a browser would see of a page: its text (entities decoded), its tags with their attributes,
    and the ids and headings of its sections."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.text_parts: list[str] = []
        self.sections: list[str] = []
        self.headings: list[str] = []
        self._in_h2 = False
        self.feed(text)
        self.close()
        self.text = " ".join(" ".join(self.text_parts).split())

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append((tag, attrs))
        if tag == "section":
            self.sections.append(attrs.get("id"))
        self._in_h2 = tag == "h2"

    def handle_endtag(self, tag):
        if tag == "h2":
            self._in_h2 = False

    def handle_data(self, data):
        self.text_parts.append(data)
        if self._in_h2:
            self.headings.append(data.strip())

    def all(self, tag: str) -> list[dict]:
        return [attrs for t, attrs in self.tags if t == tag]


def ms(value: float) -> str:  # the oracle for a latency as the report prints it (summary_text's rule)
    return f"{value:,.1f}" if value >= 10 else f"{value:,.2f}"


# -- every format renders and reads back


@pytest.mark.parametrize("fmt", sorted(REPORT_FORMATS))
def test_every_format_renders_and_reads_back(fmt, run, report, rendered):
    renderer = renderer_for(fmt, report, run.path)
    assert type(renderer) is REPORT_FORMATS[fmt]
    assert renderer.name == fmt and renderer.extension == fmt and "{path}" in renderer.opens_with
    text = rendered[fmt]
    headings = [f"{n}. {title}" for n, (_, title) in enumerate(SECTIONS, 1)]
    if fmt == "md":
        found = re.findall(r"^## (.+)$", text, re.MULTILINE)
        assert found == headings
    elif fmt == "html":
        page = Page(text)
        assert page.sections == [sid for sid, _ in SECTIONS]
        assert page.headings == headings
    else:
        loaded = json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in the JSON"))
        assert loaded == report.as_dict()
        assert json.loads(json.dumps(loaded)) == loaded
        assert [f["id"] for f in loaded["findings"]] == [f.id for f in report.findings]
        assert set(loaded["findings"][0]) == {"id", "title", "severity", "explains_s", "evidence", "action"}


def test_the_figures_shown_are_the_reports(report, rendered):
    h = report.headline
    tok_s = f"{h['output_tok_s']:,.1f} output tok/s"
    latency = {k: h["latency_ms"][k] for k in ("ttft", "itl", "e2e")}
    md, page = rendered["md"], Page(rendered["html"])
    for text in (md, page.text):
        assert tok_s in text
        assert "synthetic random weights" in text and report.headline["workload"]["name"] in text
        kv_row = next(r for r in report.use if r.resource == "KV-cache blocks")
        assert kv_row.utilization.text in text and kv_row.saturation.text in text
        finding = report.findings[0]
        assert finding.title in text and finding.action in text
    for key, label in (("ttft", "TTFT"), ("itl", "ITL"), ("e2e", "E2E")):
        row = f"| {label} | {ms(latency[key]['p50'])} | {ms(latency[key]['p90'])} | {ms(latency[key]['p99'])} |"
        assert row in md
        assert f"{label} {ms(latency[key]['p50'])} {ms(latency[key]['p90'])} {ms(latency[key]['p99'])}" in page.text
    # the findings come right after the headline, ranked as the report ranks them
    assert md.index("## 2. Findings") < md.index(report.findings[0].title) < md.index("## 3. USE")
    # every USE cell's text, and for a cell not measured what would measure it
    for row in report.use:
        for cell in (row.utilization, row.saturation, row.errors):
            assert cell.text in page.text
            if cell.needs:
                assert f"needs {cell.needs}" in page.text and f"needs {cell.needs}" in md
    # the steps counted and the commit recorded
    assert f"{report.anatomy['steps']:,} steps" in md
    if report.methodology["git"] and report.methodology["git"].get("commit"):
        assert report.methodology["git"]["commit"] in md and report.methodology["git"]["commit"] in page.text


def test_a_run_where_no_rule_fires_says_so_and_a_finding_shows_its_evidence(report):
    quiet = dataclasses.replace(report, findings=[Finding(
        "compute_bound", "No bottleneck outside the model: the model's forward and sampling on the CPU takes the time",
        "info", 1.0, {"forward_and_sample_s": 1.0, "source": "steps.forward_ns"}, "Faster kernels.")])  # fmt: skip
    md = MarkdownReport().render(quiet)
    assert "**No bottleneck outside the model:**" in md and "`[info]`" in md
    planted = dataclasses.replace(report, findings=[
        Finding("gc_pauses", "Garbage collection paused the engine 40 times, 900 ms in all", "high", 0.9,
                {"collections": 40, "pause_s": 0.9, "by_generation": {0: 38, 2: 2}, "source": "gc.dur_ns"},
                "Freeze long-lived objects after loading."),
        Finding("probe_cost", "The probes cost 3.0% of throughput", "low", 0.1, {"cost_pct": 3.0}, "Fewer probes."),
    ])  # fmt: skip
    md = MarkdownReport().render(planted)
    assert "No bottleneck" not in md
    assert md.index("### 1. Garbage collection paused") < md.index("### 2. The probes cost")
    assert "| collections | 40 |" in md and "| by_generation | 0 38, 2 2 |" in md and "_from gc.dur_ns_" in md
    assert "**Action:** Freeze long-lived objects after loading." in md and "`[high]`" in md


# -- the HTML: self-contained, escaped, in a browser


def test_the_html_is_one_self_contained_file(report, rendered):
    page = Page(rendered["html"])
    assert not page.all("script") and not page.all("link")
    csp = [m for m in page.all("meta") if m.get("http-equiv") == "Content-Security-Policy"]
    assert len(csp) == 1 and "default-src 'none'" in csp[0]["content"]
    images = page.all("img")
    assert len(images) == sum(c.present(report) for c in CHARTS) > 0
    assert all(img["src"].startswith("data:image/svg+xml;base64,") for img in images)
    frames = page.all("iframe")
    assert len(frames) == len(report.flamegraphs) > 0
    assert all(f["src"].startswith("data:image/svg+xml;base64,") and f["sandbox"] == "allow-scripts" for f in frames)
    # nothing names a place on the network (the run's own strings aside, which are text)
    for tag, attrs in page.tags:
        for name, value in attrs.items():
            assert not re.match(r"\s*(https?:|//)", value or ""), (tag, name)


def test_strings_from_the_run_are_escaped(run):
    manifest = json.loads(json.dumps(run.manifest))
    manifest["engine"]["model"] = XSS
    manifest["workload"]["name"] = f"chat{XSS}"
    manifest["command"] = ["traceinfer", "profile", "--prompt", XSS]
    frames = frames_of(run)
    frames["thread_samples"] = frames["thread_samples"].assign(thread_name=f"{XSS} $x^$")  # $: not mathtext either
    hostile = build_report(manifest, frames, str(run.path))
    assert BY_KEY["thread_cpu"].present(hostile)
    text = HtmlReport().render(hostile)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "<script>alert" not in text and "<script" not in text.lower()
    assert Page(text).text.count(XSS) >= 4  # model, workload, command and thread show as written
    md = MarkdownReport().render(hostile)
    prose = re.sub(r"^```.*?^```", "", md, flags=re.DOTALL | re.MULTILINE)  # a fenced block shows its text as written
    assert not re.search(r"(?<!\\)<script", prose) and "\\<script>alert(1)\\</script>" in prose  # \<: text
    assert "```sh\ntraceinfer profile --prompt '<script>alert(1)</script>'\n```" in md
    assert json.loads(JsonReport().render(hostile))["headline"]["model"] == XSS


def test_the_html_opens_in_chromium_with_every_chart_drawn(browser, report, rendered, tmp_path):
    from selenium.webdriver.common.by import By

    path = tmp_path / "report.html"
    path.write_text(rendered["html"], encoding="utf-8")
    browser.get(path.as_uri())
    images = browser.find_elements(By.CSS_SELECTOR, "figure.chart img")
    assert len(images) == sum(c.present(report) for c in CHARTS)
    deadline = time.monotonic() + 10
    while not all(browser.execute_script("return arguments[0].complete", img) for img in images):
        assert time.monotonic() < deadline, "the charts did not load"
        time.sleep(0.05)
    for img in images:
        natural = browser.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]", img)
        assert natural[0] > 0 and natural[1] > 0, img.get_attribute("alt")
        assert img.size["width"] > 0 and img.size["height"] > 0, img.get_attribute("alt")
    # a flame graph is live in its frame: its script runs under the page's policy and a click zooms
    frame = browser.find_element(By.CSS_SELECTOR, "figure.flame iframe")
    assert frame.size["width"] > 0 and frame.size["height"] > 0
    browser.switch_to.frame(frame)
    try:
        groups = browser.find_elements(By.CSS_SELECTOR, "#frames > g")
        assert groups
        browser.execute_script("arguments[0].dispatchEvent(new MouseEvent('click', {bubbles: true}))", groups[-1])
        assert browser.find_element(By.ID, "unzoom").is_displayed()
    finally:
        browser.switch_to.default_content()
    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(1280, min(height, 16000))
    shot = tmp_path / "report.png"
    assert browser.save_screenshot(str(shot))
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


# -- partial runs: what is missing says which probe measures it


def test_a_run_without_requests_tokens_or_gpu_still_renders_and_names_the_probes(run):
    partial = build_report(run.manifest, frames_of(run, ("requests", "tokens", "gpu_samples", "kv_events")),
                           str(run.path))  # fmt: skip
    assert not BY_KEY["ttft_heatmap"].present(partial) and not BY_KEY["gpu"].present(partial)
    assert BY_KEY["queues"].present(partial)
    md = MarkdownReport().render(partial)
    page = Page(HtmlReport().render(partial))
    for text in (md, page.text):
        assert f"TTFT heat map: not drawn, this run has no data for it; {BY_KEY['ttft_heatmap'].needs} records it." in text
        assert BY_KEY["ttft_heatmap"].needs == "the requests probe (streams requests and tokens)"
        assert "Inter-token latency heat map: not drawn" in text and "KV block lifetime: not drawn" in text
        assert "the samplers probe on a GPU run (NVML) records it" in text
        assert "not measured: the requests probe records the requests and tokens they come from." in text
    assert len(page.all("img")) == sum(c.present(partial) for c in CHARTS)
    assert json.loads(JsonReport().render(partial)) == partial.as_dict()


def test_a_run_with_no_stream_at_all_renders_every_section(run):
    empty = build_report(run.manifest, {}, str(run.path))
    assert [c.key for c in CHARTS if c.present(empty)] == []
    md = MarkdownReport(html_href=None).render(empty)
    assert re.findall(r"^## (\d+)\.", md, re.MULTILINE) == [str(n) for n in range(1, len(SECTIONS) + 1)]
    assert "not measured: the steps probe records every step's parts." in md
    page = Page(HtmlReport().render(empty))
    assert page.sections == [sid for sid, _ in SECTIONS] and not page.all("img")


# -- the pieces


def test_markdown_links_flame_graphs_from_where_it_is_written(run, report, tmp_path):
    inside = renderer_for("md", report, run.path).render(report)
    elsewhere = renderer_for("md", report, run.path, out_dir=run.path.parent / "reports").render(report)
    first = min(report.flamegraphs)
    assert f"]({first})" in inside and f"](../{run.path.name}/{first})" in elsewhere
    assert "[report.html](report.html)" in inside
    html = renderer_for("html", report, run.path)
    assert set(html.flame_svgs) == set(report.flamegraphs)


def test_charts_render_as_svg_and_png(report):
    chart = BY_KEY["itl_heatmap"]
    svg = render_chart(chart, report, "svg")
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg and "<script" not in svg
    assert render_chart(chart, report, "svg") == svg  # the same run draws the same file
    png = render_chart(chart, report, "png")
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert render_chart(BY_KEY["gpu"], report, "svg") is None  # a CPU run has no GPU samples


def test_sparkline_and_log_edges():
    assert sparkline([0, 1, 2, 3, 4, 5, 6, 7]) == "▁▂▃▄▅▆▇█"
    assert sparkline([2, 2, 2]) == "▄▄▄" and sparkline([]) == "" and sparkline([0.0, float("nan")]) == "▁"
    assert len(sparkline(range(1000), width=40)) <= 40
    edges = log_edges([0.001, 0.5, 2.0], bins=3)
    assert edges[0] == pytest.approx(0.001) and edges[-1] == pytest.approx(2.0) and len(edges) == 4
    assert log_edges([1.0, 2.0]) is None  # under a decade: linear bins


