"""Nsight Systems SQLite exports (``nsys export -t sqlite``), read without nsys.

    cap = read_nsys("run/nsys.sqlite")        # -> ingest.capture.GpuCapture
    cap.ranges / cap.launches / cap.gpu       # DataFrames; times in integer ns on the capture's clock

The tables read (https://docs.nvidia.com/nsight-systems/UserGuide/index.html#exporter-sqlite-schema):

    META_DATA_EXPORT              EXPORT_SCHEMA_VERSION_MAJOR / _MINOR: checked against SCHEMA
    NVTX_EVENTS                   start, end, eventType (59 push/pop, 60 start/end, 75 domain create),
                                  text or textId -> StringIds, domainId, globalTid, int64Value/uint64Value
    CUPTI_ACTIVITY_KIND_RUNTIME   the CUDA runtime and driver calls: start, end, globalTid, correlationId, nameId
    CUPTI_ACTIVITY_KIND_KERNEL    start, end, deviceId, streamId, correlationId, globalPid, demangledName,
                                  graphNodeId (set when graph nodes were traced: --cuda-graph-trace=node)
    CUPTI_ACTIVITY_KIND_MEMCPY    ..., copyKind (ENUM_CUDA_MEMCPY_OPER), bytes
    CUPTI_ACTIVITY_KIND_MEMSET    ...
    CUPTI_ACTIVITY_KIND_GRAPH_TRACE  one row per CUDA graph replay when graphs are traced whole (the default)
    ThreadNames, TARGET_INFO_GPU, META_DATA_CAPTURE (the graph trace mode)

A thread id (globalTid) holds the process id: pid = globalTid // 0x1000000 % 0x1000000. A file that is not
an SQLite database, is truncated, is not an nsys export or is of a schema major version this reader does
not know raises IngestError naming it; a missing table (a capture without NVTX or without kernels) gives
an empty table and a line in ``warnings``. Standard library sqlite3 and pandas only.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd
from pandas.api.types import union_categoricals

from traceinfer.errors import IngestError
from traceinfer.ingest.capture import GPU_COLUMNS, LAUNCH_COLUMNS, RANGE_COLUMNS, GpuCapture, empty

#: the export schema this reader was written against: (major, newest minor checked)
SCHEMA = (3, 20)
PUSH_POP, START_END, DOMAIN_CREATE = 59, 60, 75
STYLES = {PUSH_POP: "PushPop", START_END: "StartEnd"}
MEMCPY_KINDS = {1: "HtoD", 2: "DtoH", 8: "DtoD", 9: "HtoH", 10: "PtoP"}


def pid_of(global_tid):
    return (global_tid // 0x1000000) % 0x1000000


def _connect(path: Path) -> sqlite3.Connection:
    if not path.is_file():
        raise IngestError(f"{path}: no such file (an nsys SQLite export: nsys export -t sqlite -o X.sqlite X.nsys-rep)")
    with open(path, "rb") as f:
        head = f.read(16)
    if head != b"SQLite format 3\x00":
        hint = " (a .nsys-rep: export it first, nsys export -t sqlite)" if path.suffix == ".nsys-rep" else ""
        raise IngestError(f"{path}: not an SQLite database{hint}")
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        con.execute("select count(*) from sqlite_master").fetchone()
    except sqlite3.DatabaseError as e:
        raise IngestError(f"{path}: truncated or corrupt SQLite file ({e})") from None
    return con


def _tables(con: sqlite3.Connection) -> set[str]:
    return {r[0] for r in con.execute("select name from sqlite_master where type in ('table', 'view')")}


def _schema(con: sqlite3.Connection, path: Path, tables: set[str]) -> dict:
    if "META_DATA_EXPORT" not in tables:
        raise IngestError(f"{path}: not an nsys export (no META_DATA_EXPORT table)")
    meta = dict(con.execute("select name, value from META_DATA_EXPORT").fetchall())
    try:
        major, minor = int(meta["EXPORT_SCHEMA_VERSION_MAJOR"]), int(meta["EXPORT_SCHEMA_VERSION_MINOR"])
    except (KeyError, ValueError):
        raise IngestError(f"{path}: the export names no schema version (META_DATA_EXPORT)") from None
    if major != SCHEMA[0]:
        raise IngestError(f"{path}: nsys export schema {meta.get('EXPORT_SCHEMA_VERSION', major)} "
                          f"(from {meta.get('EXPORT_PRODUCT_VERSION', '?')}): this reader knows schema {SCHEMA[0]}.x "
                          f"(up to {SCHEMA[0]}.{SCHEMA[1]})")  # fmt: skip
    return {"schema_version": meta.get("EXPORT_SCHEMA_VERSION", f"{major}.{minor}"), "schema_major": major,
            "schema_minor": minor, "product_version": meta.get("EXPORT_PRODUCT_VERSION")}  # fmt: skip


def _query(con: sqlite3.Connection, sql: str, columns: list[str]) -> pd.DataFrame:
    """Rows of ``sql`` as a DataFrame, read in one fetch (for the small tables: ranges and their strings)."""
    rows = con.execute(sql).fetchall()
    if not rows:
        return pd.DataFrame({c: pd.Series(dtype="int64") for c in columns})
    return pd.DataFrame.from_records(rows, columns=columns, coerce_float=False)


def _int_columns(con: sqlite3.Connection, table: str, exprs: list[str], chunk: int = 65_536) -> list[np.ndarray]:
    """The integer columns ``exprs`` (SQL expressions, never NULL: coalesce them) of every row of ``table``,
    as int64 arrays. Fetched ``chunk`` rows at a time, each chunk turned into an array at once: the Python
    objects of a few thousand rows live at a time, not of millions (3M kernel rows: ~7 s, ~0.2 GB)."""
    cur = con.execute(f"select {', '.join(exprs)} from {table}")
    parts: list[np.ndarray] = []
    while rows := cur.fetchmany(chunk):
        parts.append(np.array(rows, dtype=np.int64).reshape(len(rows), len(exprs)))
    if not parts:
        return [np.empty(0, dtype=np.int64) for _ in exprs]
    return [np.concatenate([p[:, i] for p in parts]) for i in range(len(exprs))]


def _strings(con, tables) -> pd.Series:
    if "StringIds" not in tables:
        return pd.Series(dtype=object)
    ids = con.execute("select id, value from StringIds").fetchall()
    return pd.Series(dict(ids), dtype=object)


def _categorical(codes: np.ndarray, names: list[str]) -> pd.Categorical:
    """``names[codes]`` as a categorical of Python strings (names unique)."""
    return pd.Categorical.from_codes(codes, categories=pd.Index(names, dtype=object))


def _named(ids, strings: pd.Series) -> pd.Categorical:
    """String ids as a categorical of their strings: one string object per distinct name, however many rows
    (ids of one string merged; an id without a string is named "(string N)")."""
    codes, uniques = pd.factorize(np.asarray(ids))
    names = [str(strings.get(u, f"(string {u})")) for u in uniques]
    merged, categories = pd.factorize(pd.Series(names, dtype=object))
    return _categorical(merged[codes], list(categories))


def _ranges(con, tables, strings, warnings) -> pd.DataFrame:
    if "NVTX_EVENTS" not in tables:
        warnings.append("no NVTX_EVENTS table: the capture has no NVTX ranges (nsys profile -t nvtx)")
        return empty(RANGE_COLUMNS)
    cols = {r[1] for r in con.execute("pragma table_info(NVTX_EVENTS)")}
    payload = "coalesce(int64Value, uint64Value)" if {"int64Value", "uint64Value"} <= cols else "null"
    domains = dict(con.execute(f"select domainId, coalesce(text, '') from NVTX_EVENTS where eventType = {DOMAIN_CREATE}").fetchall())
    df = _query(con, f"select start, end, eventType, text, textId, domainId, globalTid, {payload} from NVTX_EVENTS "
                     f"where eventType in ({PUSH_POP}, {START_END}) and end is not null",
                ["start", "end", "type", "text", "textId", "domain", "tid", "payload"])  # fmt: skip
    if df.empty:
        warnings.append("NVTX_EVENTS holds no closed push/pop or start/end range")
        return empty(RANGE_COLUMNS)
    text = df["text"].where(df["text"].notna(), df["textId"].map(strings)).fillna("(unnamed)").astype(str)
    prefixes = {d: f"{name}:" for d, name in domains.items() if name}
    prefix = df["domain"].map(prefixes).fillna("") if prefixes else ""
    out = pd.DataFrame({
        "start": df["start"].astype("int64"), "end": df["end"].astype("int64"),
        "style": df["type"].map(STYLES), "name": prefix + text, "text": text,
        "tid": df["tid"].astype("int64"), "pid": pid_of(df["tid"].astype("int64")),
        "payload": pd.array(df["payload"], dtype="Int64"),
    })  # fmt: skip
    return out.sort_values(["start", "end"], ascending=[True, False], kind="stable").reset_index(drop=True)


def _launches(con, tables, strings, warnings) -> pd.DataFrame:
    if "CUPTI_ACTIVITY_KIND_RUNTIME" not in tables:
        warnings.append("no CUPTI_ACTIVITY_KIND_RUNTIME table: GPU work cannot be tied to the ranges that launched it")
        return empty(LAUNCH_COLUMNS)
    start, end, tid, corr, name = _int_columns(con, "CUPTI_ACTIVITY_KIND_RUNTIME", [
        "start", "end", "coalesce(globalTid, 0)", "coalesce(correlationId, -1)", "nameId"])  # fmt: skip
    return pd.DataFrame({"start": start, "end": end, "tid": tid, "pid": pid_of(tid), "correlation": corr,
                         "name": _named(name, strings)})[list(LAUNCH_COLUMNS)]  # fmt: skip


#: a GPU table's columns read, as SQL expressions (never NULL), in the order start, end, device, stream,
#: correlation, pid (globalPid), then the table's own: the name's source and the graph node (-1: none)
_GPU_COMMON = ["start", "end", "deviceId", "streamId", "coalesce(correlationId, -1)", "coalesce(globalPid, 0)"]


def _gpu(con, tables, strings, warnings) -> pd.DataFrame:
    parts = []  # (kind, columns, name Categorical, graph node or None)
    if "CUPTI_ACTIVITY_KIND_KERNEL" in tables:
        cols = {r[1] for r in con.execute("pragma table_info(CUPTI_ACTIVITY_KIND_KERNEL)")}
        node = "coalesce(graphNodeId, -1)" if "graphNodeId" in cols else "-1"
        *common, name, graph_node = _int_columns(con, "CUPTI_ACTIVITY_KIND_KERNEL", [*_GPU_COMMON, "demangledName", node])
        parts.append(("kernel", common, _named(name, strings), graph_node))
    else:
        warnings.append("no CUPTI_ACTIVITY_KIND_KERNEL table: the capture has no kernels (nsys profile -t cuda)")
    if "CUPTI_ACTIVITY_KIND_MEMCPY" in tables:
        *common, kind, graph_node = _int_columns(con, "CUPTI_ACTIVITY_KIND_MEMCPY",
                                                 [*_GPU_COMMON, "copyKind", "coalesce(graphNodeId, -1)"])  # fmt: skip
        kinds, codes = np.unique(kind, return_inverse=True)
        names = [f"[CUDA memcpy {MEMCPY_KINDS.get(c, 'other')}]" for c in kinds.tolist()]
        parts.append(("memcpy", common, _categorical(codes, names), graph_node))
    if "CUPTI_ACTIVITY_KIND_MEMSET" in tables:
        common = _int_columns(con, "CUPTI_ACTIVITY_KIND_MEMSET", _GPU_COMMON)
        parts.append(("memset", common, _categorical(np.zeros(len(common[0]), dtype=np.int8), ["[CUDA memset]"]), None))
    if "CUPTI_ACTIVITY_KIND_GRAPH_TRACE" in tables:
        *common, graph = _int_columns(con, "CUPTI_ACTIVITY_KIND_GRAPH_TRACE", [*_GPU_COMMON, "graphId"])
        graphs, codes = np.unique(graph, return_inverse=True)
        parts.append(("graph", common, _categorical(codes, [f"[CUDA graph {g}]" for g in graphs.tolist()]), None))
    parts = [p for p in parts if len(p[1][0])]
    if not parts:
        return empty(GPU_COLUMNS)
    start, end, device, stream, correlation, pid = (np.concatenate([p[1][i] for p in parts]) for i in range(6))
    node = np.concatenate([p[3] if p[3] is not None else np.full(len(p[1][0]), -1, dtype=np.int64) for p in parts])
    kinds = sorted(p[0] for p in parts)
    kind_codes = np.repeat([kinds.index(p[0]) for p in parts], [len(p[1][0]) for p in parts]).astype(np.int8)
    kind = pd.Categorical.from_codes(kind_codes, categories=kinds)
    name = union_categoricals([p[2] for p in parts])
    order = np.argsort(start, kind="stable")  # as the rows came: kernels, memcpys, memsets, graphs at equal starts
    df = pd.DataFrame({
        "start": start[order], "end": end[order], "kind": kind[order], "name": name[order], "device": device[order],
        "stream": stream[order], "correlation": correlation[order],
        "pid": pid_of(pid[order]),  # globalPid holds the process id as globalTid does
        "graph_node": pd.arrays.IntegerArray(node[order], node[order] < 0),
    })  # fmt: skip
    return df[list(GPU_COLUMNS)]


def _graph_mode(con, tables, gpu: pd.DataFrame) -> str | None:
    if "META_DATA_CAPTURE" in tables:
        modes = {v.lower() for n, v in con.execute("select name, value from META_DATA_CAPTURE").fetchall()
                 if n.endswith("CUDA_GRAPH_TRACE_OPTIONS:MODE")}  # fmt: skip
        if len(modes) == 1:
            return modes.pop()
    if gpu["graph_node"].notna().any():
        return "node"
    return "graph" if (gpu["kind"] == "graph").any() else None


def read_nsys(path: str | Path) -> GpuCapture:
    """The export at ``path`` as a GpuCapture; IngestError (one line, naming the file) when it cannot be one."""
    path = Path(path)
    con = _connect(path)
    try:
        tables = _tables(con)
        meta = _schema(con, path, tables)
        warnings: list[str] = []
        if meta["schema_minor"] > SCHEMA[1]:
            warnings.append(f"export schema {meta['schema_version']} is newer than {SCHEMA[0]}.{SCHEMA[1]}, the newest "
                            "this reader was checked against: read as that")  # fmt: skip
        strings = _strings(con, tables)
        ranges = _ranges(con, tables, strings, warnings)
        launches = _launches(con, tables, strings, warnings)
        gpu = _gpu(con, tables, strings, warnings)
        threads = {}
        if "ThreadNames" in tables:
            for name_id, tid in con.execute("select nameId, globalTid from ThreadNames").fetchall():
                threads[int(tid)] = str(strings.get(name_id, ""))
        if "TARGET_INFO_GPU" in tables:
            meta["gpus"] = [r[0] for r in con.execute("select name from TARGET_INFO_GPU").fetchall()]
        graph_trace = _graph_mode(con, tables, gpu)
    except sqlite3.DatabaseError as e:
        raise IngestError(f"{path}: truncated or corrupt nsys export ({e})") from None
    finally:
        con.close()
    if gpu.empty:
        warnings.append("the capture holds no GPU work (no kernel, memcpy, memset or graph rows)")
    return GpuCapture(str(path), ranges, launches, gpu, threads, graph_trace, meta, warnings)


__all__ = ["SCHEMA", "pid_of", "read_nsys"]
