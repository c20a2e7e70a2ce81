"""Run-directory streams as pandas DataFrames, one column per schema column (traceinfer.probes.rundir.STREAMS)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from traceinfer.probes.rundir import STREAMS, iter_stream


def load_frame(run_dir: str | Path, name: str) -> pd.DataFrame:
    """Stream ``name`` of a run; an empty frame with the schema's columns when the stream is absent."""
    return pd.DataFrame(list(iter_stream(run_dir, name)), columns=list(STREAMS[name].names))


def frame_from_rows(name: str, rows) -> pd.DataFrame:
    """Rows (tuples in schema order, or dicts) of stream ``name`` as a DataFrame."""
    return pd.DataFrame(list(rows), columns=list(STREAMS[name].names))
