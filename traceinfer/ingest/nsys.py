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
    """Rows of ``sql`` as a DataFrame, read in one fetch (faster than pandas' read_sql for wide tables)."""
    rows = con.execute(sql).fetchall()
    if not rows:
        return pd.DataFrame({c: pd.Series(dtype="int64") for c in columns})
    return pd.DataFrame.from_records(rows, columns=columns, coerce_float=False)


def _strings(con, tables) -> pd.Series:
    if "StringIds" not in tables:
        return pd.Series(dtype=object)
    ids = con.execute("select id, value from StringIds").fetchall()
    return pd.Series(dict(ids), dtype=object)


def _named(ids: pd.Series, strings: pd.Series) -> pd.Series:
    """String ids as a categorical of their strings: one string object per distinct name, however many rows."""
    codes, uniques = pd.factorize(ids)
    names = [str(strings.get(u, f"(string {u})")) for u in uniques]
    if len(set(names)) == len(names):
        cat = pd.Categorical.from_codes(codes, categories=names) if (codes >= 0).all() else None
        if cat is not None:
            return pd.Series(cat, index=ids.index)
    labels = np.array([*names, "(unnamed)"], dtype=object)
    return pd.Series(pd.Categorical(labels[codes]), index=ids.index)  # codes of -1 (no id) pick "(unnamed)"


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
    prefix = df["domain"].map(lambda d: f"{domains[d]}:" if d in domains and domains[d] else "")
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
    df = _query(con, "select start, end, globalTid, correlationId, nameId from CUPTI_ACTIVITY_KIND_RUNTIME",
                ["start", "end", "tid", "correlation", "nameId"])  # fmt: skip
    df["pid"] = pid_of(df["tid"])
    df["name"] = _named(df["nameId"], strings)
    return df[list(LAUNCH_COLUMNS)]


def _gpu(con, tables, strings, warnings) -> pd.DataFrame:
    parts = []
    if "CUPTI_ACTIVITY_KIND_KERNEL" in tables:
        cols = {r[1] for r in con.execute("pragma table_info(CUPTI_ACTIVITY_KIND_KERNEL)")}
        node = "graphNodeId" if "graphNodeId" in cols else "null"
        k = _query(con, f"select start, end, deviceId, streamId, correlationId, globalPid, demangledName, {node} "
                        "from CUPTI_ACTIVITY_KIND_KERNEL",
                   ["start", "end", "device", "stream", "correlation", "pid", "nameId", "graph_node"])  # fmt: skip
        k["kind"] = "kernel"
        k["name"] = _named(k["nameId"], strings).astype(object)
        parts.append(k)
    else:
        warnings.append("no CUPTI_ACTIVITY_KIND_KERNEL table: the capture has no kernels (nsys profile -t cuda)")
    if "CUPTI_ACTIVITY_KIND_MEMCPY" in tables:
        m = _query(con, "select start, end, deviceId, streamId, correlationId, globalPid, copyKind, graphNodeId "
                        "from CUPTI_ACTIVITY_KIND_MEMCPY",
                   ["start", "end", "device", "stream", "correlation", "pid", "copyKind", "graph_node"])  # fmt: skip
        m["kind"] = "memcpy"
        m["name"] = m["copyKind"].map(lambda c: f"[CUDA memcpy {MEMCPY_KINDS.get(c, 'other')}]")
        parts.append(m)
    if "CUPTI_ACTIVITY_KIND_MEMSET" in tables:
        s = _query(con, "select start, end, deviceId, streamId, correlationId, globalPid from CUPTI_ACTIVITY_KIND_MEMSET",
                   ["start", "end", "device", "stream", "correlation", "pid"])  # fmt: skip
        s["kind"], s["name"], s["graph_node"] = "memset", "[CUDA memset]", None
        parts.append(s)
    if "CUPTI_ACTIVITY_KIND_GRAPH_TRACE" in tables:
        g = _query(con, "select start, end, deviceId, streamId, correlationId, globalPid, graphId "
                        "from CUPTI_ACTIVITY_KIND_GRAPH_TRACE",
                   ["start", "end", "device", "stream", "correlation", "pid", "graphId"])  # fmt: skip
        g["kind"], g["graph_node"] = "graph", None
        g["name"] = g["graphId"].map(lambda i: f"[CUDA graph {i}]")
        parts.append(g)
    parts = [p for p in parts if not p.empty]
    if not parts:
        return empty(GPU_COLUMNS)
    df = pd.concat([p[list(GPU_COLUMNS)] for p in parts], ignore_index=True)
    for c in ("start", "end", "device", "stream", "correlation", "pid"):
        df[c] = df[c].astype("int64")
    df["pid"] = pid_of(df["pid"])  # globalPid holds the process id as globalTid does
    df["graph_node"] = pd.array(df["graph_node"], dtype="Int64")
    df["kind"] = df["kind"].astype("category")
    return df.sort_values("start", kind="stable").reset_index(drop=True)


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
