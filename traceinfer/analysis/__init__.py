"""Analyzers: pure functions from run-directory tables (pandas DataFrames) or plain values to tables or
dataclasses. They import neither the engine nor the probes, and draw nothing: renderers do that."""

from __future__ import annotations

import pandas as pd


def as_mask(column: pd.Series) -> pd.Series:
    """A bool column of a stream as a bool mask: a null (the probe could not tell) counts as False."""
    return column.fillna(False).astype(bool)
