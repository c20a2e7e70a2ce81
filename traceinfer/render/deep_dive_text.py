"""A deep dive (traceinfer.analysis.deep_dives.DeepDive) as markdown: the question, then each section's
paragraphs, its figures as a table (value, unit, where it comes from) and the engine source behind them as
``path:line`` lines, then the streams the run did not record.

    ## Eviction
    The cache published 31 full blocks to the prefix cache and evicted 37. ...

    | figure | value | from |
    | --- | --- | --- |
    | evict_ops | 37 | kv_events: rows with op == 'evict' |

    Source:
    - `traceinfer/engine/block_manager.py:215` in `BlockManager._pop_free`: `self._record("evict", ...)`
"""

from __future__ import annotations

from traceinfer.analysis.deep_dives import DeepDive, Figure

SUFFIX = ".md"


def _cell(text: str) -> str:
    """Text for a table cell: pipes escaped, no line breaks."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _code(text: str) -> str:
    """Inline code that survives backticks inside it (CommonMark: a longer fence, padded)."""
    fence = "`"
    while fence in text:
        fence += "`"
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _number(v, unit: str) -> str:
    if isinstance(v, (bool, str)):
        return str(v).lower() if isinstance(v, bool) else v
    if unit == "fraction":
        return f"{100 * v:.2g}%" if 0 < abs(v) < 0.001 else f"{100 * v:.1f}%"
    if unit == "bytes" and abs(v) >= 2**20:
        return f"{v / 2**20:,.2f} MiB ({v:,.0f} B)" if isinstance(v, int) else f"{v / 2**20:,.2f} MiB"
    if isinstance(v, int):
        return f"{v:,}"
    return f"{v:,.3f}" if abs(v) < 10 else f"{v:,.2f}" if abs(v) < 1000 else f"{v:,.0f}"


def format_value(f: Figure) -> str:
    """A figure's value as the table shows it ("not measured" for None; fractions as percentages)."""
    if f.value is None:
        return "not measured"
    if isinstance(f.value, tuple):
        return ", ".join("-" if v is None else _number(v, f.unit) for v in f.value)
    return _number(f.value, f.unit)


def render_deep_dive(dive: DeepDive) -> str:
    """The deep dive as one markdown document."""
    out = [f"# {_cell(dive.title)}", ""]
    if dive.subject:
        out += [f"*{_cell(dive.subject)}; `traceinfer report RUN --topic {dive.topic}`*", ""]
    out += [f"**The question.** {dive.question}", ""]
    for s in dive.sections:
        out += [f"## {_cell(s.heading)}", ""]
        for p in s.paragraphs:
            out += [p, ""]
        if s.figures:
            out += ["| figure | value | unit | from |", "| --- | --- | --- | --- |"]
            for name, f in s.figures.items():
                unit = "" if f.unit == "fraction" else f.unit
                out.append(f"| {_cell(name)} | {_cell(format_value(f))} | {_cell(unit)} | {_cell(f.source)} |")
            out.append("")
        if s.sources:
            out += ["Source:", ""]
            for r in s.sources:
                where = f" in `{r.function}`" if r.function else ""
                out.append(f"- `{r.path}:{r.line}`{where}: {_code(r.code)}")
            out.append("")
    if dive.not_measured:
        out += ["## Not measured", ""]
        out += [f"- {line}" for line in dive.not_measured]
        out.append("")
    return "\n".join(out).rstrip() + "\n"
