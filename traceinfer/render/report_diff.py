"""Two runs side by side (traceinfer.analysis.report.compare) as markdown: each section's figures, B
against A, with the change and whether it is better; then each run's findings."""

from __future__ import annotations

from traceinfer.analysis.report import Report


def _fmt(value, unit: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and not unit and abs(value) <= 1.5:
        return f"{100 * value:.1f}%"
    return f"{value:,.2f}" if isinstance(value, float) else f"{value:,}"


def _change(row: dict) -> str:
    if row["delta"] is None:
        return "-"
    if row["delta"] == 0:
        return "="
    text = _fmt(row["delta"], row["unit"])
    text = text if text.startswith("-") else "+" + text
    if row["relative"] is not None and row["unit"]:
        text += f" ({100 * row['relative']:+.1f}%)"
    return text + (f" {row['verdict']}" if row["verdict"] else "")


def render_diff(a: Report, b: Report, rows: list[dict], a_name: str, b_name: str, flamegraph: str | None) -> str:
    lines = [f"# {b_name} against {a_name}", "",
             f"A: `{a.run.get('path')}` ({a.headline.get('model')}, {a.headline.get('device')})  ",
             f"B: `{b.run.get('path')}` ({b.headline.get('model')}, {b.headline.get('device')})", "",
             "One run of each: a change smaller than the runs' own drift (a few % of throughput from run to run; "
             "`traceinfer bench --repeat N` measures it) is not resolved by this comparison.", ""]  # fmt: skip
    section = None
    for row in rows:
        if row["section"] != section:
            section = row["section"]
            lines += ["", f"## {section}", "", "| figure | A | B | change |", "| --- | ---: | ---: | --- |"]
        unit = f" {row['unit']}" if row["unit"] else ""
        lines.append(f"| {row['metric']}{unit} | {_fmt(row['a'], row['unit'])} | {_fmt(row['b'], row['unit'])} | {_change(row)} |")
    lines += ["", "## findings", ""]
    for name, report in ((a_name, a), (b_name, b)):
        lines.append(f"{name}:")
        lines += [f"- {f.title} ({f.severity}, explains {f.explains_s:.2f} s)" for f in report.findings] + [""]
    if flamegraph:
        lines += ["## differential flame graph", "", f"[{flamegraph}]({flamegraph}): red where B spends a larger share "
                  "than A, blue a smaller one.", ""]  # fmt: skip
    return "\n".join(lines) + "\n"
