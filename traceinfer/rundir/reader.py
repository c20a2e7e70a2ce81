"""Reading a run directory without the engine: ``open_run(path) -> Run``.

    run = traceinfer.open_run("runs/20261130-chatbot")
    run.manifest["status"]            # running | completed | interrupted | failed
    run.streams                       # ('steps', 'requests', 'tokens', ...): the streams present
    steps = run.frame("steps")        # a pandas DataFrame, one row per event, the schema's columns

``frame`` reads the stream's Parquet file when the run closed and wrote one, else its JSON Lines
journal (a run cut off by a crash, or still running); both give the same frame. ``rows`` and
``records`` read the journal as exact Python values (None for null). A torn or unreadable journal
line (a crash mid-write) is skipped with a warning saying how many were. Standard library only at
import: pandas and pyarrow are imported by ``frame``.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from traceinfer.errors import RunDirError
from traceinfer.rundir.schema import FORMAT, MANIFEST, STREAMS, stream

if TYPE_CHECKING:
    import pandas as pd


def read_manifest(run_dir: str | Path) -> dict:
    """The manifest of ``run_dir``; RunDirError when there is none or it is not JSON."""
    path = Path(run_dir) / MANIFEST
    if not Path(run_dir).is_dir():
        raise RunDirError(f"{run_dir} is not a directory")
    if not path.exists():
        raise RunDirError(f"{run_dir} is not a traceinfer run directory: no {MANIFEST}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise RunDirError(f"{path} is not valid JSON ({exc})") from None


def iter_stream(run_dir: str | Path, name: str) -> Iterator[tuple]:
    """Rows of stream ``name`` from its journal, one per event (packed rows expanded), as tuples in the
    schema's column order; nothing if the stream is absent. Columns missing from an older file are None."""
    schema = stream(name)
    path = Path(run_dir) / schema.file
    if not path.exists():
        return
    bad = 0
    with open(path, encoding="utf-8") as fh:
        try:
            columns = json.loads(fh.readline())["columns"]
        except (ValueError, KeyError, TypeError):
            warnings.warn(f"{path}: no header line; ignored the file", stacklevel=2)
            return
        index = [columns.index(c) if c in columns else None for c in schema.names]
        identity = index == list(range(len(schema.names))) and len(columns) == len(index)
        packed = [schema.names.index(c) for c in schema.packed]
        for line in fh:
            try:
                batch = json.loads(line)
            except ValueError:
                bad += 1
                continue
            for row in batch:
                row = tuple(row) if identity else tuple(None if i is None else row[i] for i in index)
                if packed and isinstance(row[packed[0]], list):
                    yield from _unpack(row, packed)
                else:
                    yield row
    if bad:
        warnings.warn(f"{path}: ignored {bad} unreadable line(s) (a run that was cut off mid-write)", stacklevel=2)


def _unpack(row: tuple, packed: list[int]) -> Iterator[tuple]:
    """One packed row -> one row per element of its packed columns."""
    out = list(row)
    for values in zip(*(row[i] for i in packed)):
        for i, v in zip(packed, values):
            out[i] = v
        yield tuple(out)


def read_stream(run_dir: str | Path, name: str) -> list[dict]:
    """Rows of stream ``name`` from its journal as dicts (column -> value)."""
    cols = stream(name).names
    return [dict(zip(cols, row)) for row in iter_stream(run_dir, name)]


class Run:
    """An opened run directory. Reads lazily: opening reads the manifest only."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.manifest: dict = read_manifest(self.path)
        if self.manifest.get("format") != FORMAT:
            raise RunDirError(f"{self.path / MANIFEST} is not a traceinfer run manifest (format "
                              f"{self.manifest.get('format')!r}, expected {FORMAT!r})")  # fmt: skip

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r}, status={self.status!r}, streams={self.streams})"

    @property
    def status(self) -> str | None:
        return self.manifest.get("status")

    @property
    def streams(self) -> tuple[str, ...]:
        """Names of the streams this run has (a journal or a Parquet file), in schema order."""
        return tuple(n for n, s in STREAMS.items() if (self.path / s.file).exists() or self._parquet(n))

    def _parquet(self, name: str) -> Path | None:
        """The stream's Parquet file, if the run wrote one when it closed."""
        entry = self.manifest.get("streams", {}).get(name) or {}
        path = self.path / entry["parquet"] if entry.get("parquet") else None
        return path if path is not None and path.exists() else None

    def frame(self, name: str, columns: list[str] | None = None, lists: str = "python",
              categorical: tuple[str, ...] = ()) -> pd.DataFrame:  # fmt: skip
        """Stream ``name`` as a DataFrame with the schema's columns (or ``columns``), one row per event;
        empty, with those columns, when the run has no such stream. List columns hold Python lists, or
        with ``lists="arrow"`` stay Arrow-backed; ``categorical`` text columns (``request_id``) come as
        pandas Categoricals. Both make a long run's frames much faster to read and smaller (see
        ``rundir.columnar``)."""
        from traceinfer.rundir import columnar

        schema = stream(name)
        unknown = [c for c in columns or () if c not in schema.names]
        if unknown:
            raise RunDirError(f"stream {name} has no column {', '.join(unknown)}; columns: {', '.join(schema.names)}")
        parquet = self._parquet(name)
        if parquet is not None:
            present = tuple(c for c in categorical if columns is None or c in columns)
            table = columnar.read_parquet(parquet, columns, present)
        else:
            table = columnar.table_from_rows(schema, iter_stream(self.path, name))
            if columns is not None:
                table = table.select(columns)
        return columnar.to_frame(schema, table, lists, categorical)

    def rows(self, name: str) -> Iterator[tuple]:
        """Stream ``name``'s journal, one tuple per event in the schema's column order."""
        return iter_stream(self.path, name)

    def records(self, name: str) -> list[dict]:
        """Stream ``name``'s journal as dicts (column -> value, None for null)."""
        return read_stream(self.path, name)


def open_run(path: str | Path) -> Run:
    """Open the run directory at ``path`` (RunDirError, naming the problem, when it is not one)."""
    return Run(path)
