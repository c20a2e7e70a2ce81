"""nsys's tables as text, the way ``nsys stats`` prints them: a header, a rule of dashes, right-aligned
numbers (percentages and averages with one decimal, times and counts as integers), names left-aligned.

    print(table_text(nvtx_sum(cap), NSYS_HEADERS["nvtx_sum"]))
"""

from __future__ import annotations

import math

import pandas as pd

#: columns shown with one decimal (nsys's averages, deviations and shares); every other number is an integer
ONE_DECIMAL = ("_pct", "avg", "med", "stddev", "avg_")


def _cell(column: str, value) -> str:
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, str) or not isinstance(value, (int, float)) and not hasattr(value, "__float__"):
        return str(value)
    if any(k in column for k in ONE_DECIMAL):
        return f"{float(value):,.1f}"
    return f"{int(round(float(value))):,}"


def table_text(df: pd.DataFrame, headers: dict[str, str] | None = None, max_name: int = 90) -> str:
    """``df`` as an aligned text table, its columns titled by ``headers`` (our name -> nsys's)."""
    headers = headers or {}
    cols = list(df.columns)
    titles = [headers.get(c, c) for c in cols]
    numeric = [pd.api.types.is_numeric_dtype(df[c]) for c in cols]
    rows = []
    for row in df.itertuples(index=False, name=None):
        cells = []
        for c, v in zip(cols, row):
            text = _cell(c, v)
            cells.append(text if len(text) <= max_name else text[: max_name - 3] + "...")
        rows.append(cells)
    widths = [max([len(t), *(len(r[i]) for r in rows)]) for i, t in enumerate(titles)]

    def line(cells) -> str:
        return "  ".join(c.rjust(w) if num else c.ljust(w) for c, w, num in zip(cells, widths, numeric)).rstrip()

    return "\n".join([line(titles), line(["-" * w for w in widths]), *(line(r) for r in rows)])
