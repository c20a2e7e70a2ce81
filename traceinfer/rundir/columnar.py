"""Streams as typed columns: journal rows -> Arrow tables -> Parquet files and pandas DataFrames.

One conversion serves both ways a stream is read, so a frame is the same whether it came from the
Parquet file of a closed run or from the journal of a run that was cut off: scalar columns as pandas
converts Arrow (int64, float64 with NaN for null ints, object for text and nullable bools), list
columns as Python lists (exact 64-bit hashes, nulls as None), json columns parsed. ``lists="arrow"``
keeps list columns as Arrow-backed columns instead (``pd.ArrowDtype``, no copy; an element still reads
as a Python list, a null as ``pd.NA``): converting millions of lists to Python objects costs seconds and
gigabytes, and analyzers that work on whole columns (``traceinfer.analysis.kv``) take either form.
pyarrow and pandas are imported here, never by the rest of traceinfer.rundir.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from traceinfer.rundir.schema import Column, StreamSchema

_ARROW = {
    "int": pa.int64(),
    "float": pa.float64(),
    "bool": pa.bool_(),
    "str": pa.string(),
    "list<int>": pa.list_(pa.int64()),
    "list<list<int>>": pa.list_(pa.list_(pa.int64())),
    "json": pa.string(),
}
_AS_PYTHON = ("list<int>", "list<list<int>>", "json")  # columns a frame holds as Python objects


def arrow_schema(schema: StreamSchema) -> pa.Schema:
    """The stream's Arrow schema; each field carries its unit and meaning as metadata."""
    return pa.schema(
        [pa.field(c.name, _ARROW[c.type], metadata={"unit": c.unit, "meaning": c.meaning}) for c in schema.columns],
        metadata={"stream": schema.name, "doc": schema.doc},
    )


def _array(column: Column, values: tuple) -> pa.Array:
    if column.type == "json":
        values = tuple(None if v is None else json.dumps(v, separators=(",", ":")) for v in values)
    return pa.array(values, type=_ARROW[column.type], from_pandas=False)


def table_from_rows(schema: StreamSchema, rows: Iterable[tuple]) -> pa.Table:
    """Rows (tuples in the schema's column order, one per event) as a typed Arrow table."""
    rows = rows if isinstance(rows, list) else list(rows)
    columns = list(zip(*rows)) if rows else [()] * len(schema.columns)
    return pa.Table.from_arrays(
        [_array(c, values) for c, values in zip(schema.columns, columns)], schema=arrow_schema(schema)
    )


def write_parquet(schema: StreamSchema, rows: Iterable[tuple], path: str | Path) -> int:
    """Write ``rows`` as a Parquet file (through a temporary file, so a reader never sees half of one);
    returns the number of rows."""
    table = table_from_rows(schema, rows)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, path)
    return table.num_rows


def read_parquet(path: str | Path, columns: list[str] | None = None, categorical: tuple[str, ...] = ()) -> pa.Table:
    """The Parquet file's table; ``categorical`` text columns read dictionary-encoded, as Parquet stores them."""
    return pq.read_table(path, columns=columns, read_dictionary=list(categorical) or None)


LIST_FORMS = ("python", "arrow")


def to_frame(schema: StreamSchema, table: pa.Table, lists: str = "python", categorical: tuple[str, ...] = ()) -> pd.DataFrame:
    """A table of ``schema``'s columns (or some of them) as a DataFrame (see the module docstring);
    ``categorical`` text columns as pandas Categoricals (one code per row, each distinct string once)."""
    if lists not in LIST_FORMS:
        raise ValueError(f"lists={lists!r}: one of {', '.join(LIST_FORMS)}")
    types = {c.name: c.type for c in schema.columns}
    wrong = [n for n in categorical if types.get(n) != "str"]
    if wrong:
        raise ValueError(f"categorical={wrong}: only text (str) columns can be categorical")
    for name in categorical:
        if name in table.column_names and not pa.types.is_dictionary(table.schema.field(name).type):
            i = table.column_names.index(name)
            table = table.set_column(i, name, table.column(name).dictionary_encode())
    python = [n for n in table.column_names if types[n] in _AS_PYTHON]
    frame = table.drop_columns(python).to_pandas() if len(python) < table.num_columns else pd.DataFrame(index=range(table.num_rows))
    for name in python:
        if lists == "arrow" and types[name] != "json":
            frame[name] = pd.Series(pd.arrays.ArrowExtensionArray(table.column(name)), index=frame.index)
            continue
        values = table.column(name).to_pylist()
        if types[name] == "json":
            values = [None if v is None else json.loads(v) for v in values]
        frame[name] = pd.Series(values, dtype=object, index=frame.index)
    return frame[table.column_names]
