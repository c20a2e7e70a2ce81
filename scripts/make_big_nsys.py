"""A big Nsight Systems SQLite export for timing the nsys reader: the node fixture tiled to a one-minute bench.

    python scripts/make_big_nsys.py OUT.sqlite [--seconds 60] [--kernels-per-second 50000]

What it writes: an export of nsys's own schema (every table of tests/data/nsys/node.sqlite.xz, a real H200
capture with CUDA graph nodes traced: 43 engine steps, 2,363 kernels, 2,224 runtime calls, 302 NVTX
ranges, 305 memcpys) whose rows of the tables ``ingest.nsys.read_nsys`` reads as many rows per table are
copies of the fixture's, each copy placed after the one before:

    NVTX_EVENTS (push/pop and start/end ranges), CUPTI_ACTIVITY_KIND_RUNTIME, _KERNEL, _MEMCPY, _MEMSET,
    _GRAPH_TRACE (those the fixture has)
        copy k: start and end + k * span (span: the fixture's first start to last end over these tables,
        plus 1 us), correlationId + k * (the fixture's largest + 1), the "step" ranges' payload (the step
        index) + k * (the fixture's step count), so correlations and steps stay unique
    StringIds, ThreadNames, META_DATA_*, TARGET_INFO_*, CUDA_GRAPH_NODE_EVENTS, NVTX domain and string
    registrations, every other table
        once, as in the fixture: the same threads, names and GPU; a graph is captured once and its replays
        reuse its nodes, so a kernel's graphNodeId is left as it is

How many copies: enough for ``--seconds`` of a real bench's kernel rows. A one-minute qwen3-0.6b bench on
the H200 runs ~20k steps with ~50 kernels a graph replay under node tracing; the issue asks for >= 3M kernel
rows a minute, so the default rate is 50,000 kernel rows a second: 60 s -> 1,270 copies, 3.0M kernels,
2.8M runtime calls, 384k NVTX ranges, 55k steps. The fixture's warm-up and eager prefills repeat in every
copy, so the file holds more runtime calls and ranges per kernel than a steady bench (a heavier read), and
its timeline is longer than the minute (1,270 x 1.75 s): the rows, not the seconds, are what reading costs.
The copies are made in SQL (one INSERT ... SELECT per table over a recursive CTE of copy numbers): 5 s on
the 2-core machine, a 402 MiB file. META_DATA_EXPORT gets a row TRACEINFER_GENERATED
naming this script and the copies.
"""

from __future__ import annotations

import argparse
import lzma
import shutil
import sqlite3
import sys
import time
from pathlib import Path

FIXTURE = Path(__file__).resolve().parent.parent / "tests" / "data" / "nsys" / "node.sqlite.xz"
RANGE_TYPES = (59, 60)  # push/pop, start/end: the ranges read; domain and string registrations stay once
TILED = ("NVTX_EVENTS", "CUPTI_ACTIVITY_KIND_RUNTIME", "CUPTI_ACTIVITY_KIND_KERNEL", "CUPTI_ACTIVITY_KIND_MEMCPY",
         "CUPTI_ACTIVITY_KIND_MEMSET", "CUPTI_ACTIVITY_KIND_GRAPH_TRACE")  # fmt: skip


def _tables(con: sqlite3.Connection, schema: str = "main") -> set[str]:
    return {r[0] for r in con.execute(f"select name from {schema}.sqlite_master where type = 'table'")}


def _columns(con: sqlite3.Connection, table: str) -> list[str]:
    return [r[1] for r in con.execute(f"pragma base.table_info({table})")]


def _where(table: str) -> str:
    return f"where eventType in {RANGE_TYPES}" if table == "NVTX_EVENTS" else ""


def make(out: Path, seconds: float, kernels_per_second: float, fixture: Path = FIXTURE) -> dict:
    out.unlink(missing_ok=True)
    base = out.with_suffix(".fixture.sqlite")
    base.write_bytes(lzma.decompress(fixture.read_bytes()))
    shutil.copy(base, out)
    con = sqlite3.connect(out)
    try:
        con.execute("pragma journal_mode = off")
        con.execute("pragma synchronous = off")
        con.execute("pragma cache_size = -262144")  # 256 MiB
        con.execute("attach database ? as base", (str(base),))
        tiled = [t for t in TILED if t in _tables(con, "base")]
        lo = min(con.execute(f"select min(start) from base.{t} {_where(t)}").fetchone()[0] for t in tiled)
        hi = max(con.execute(f"select max(end) from base.{t} {_where(t)}").fetchone()[0] for t in tiled)
        span = hi - lo + 1_000
        corr = 1 + max(con.execute(f"select coalesce(max(correlationId), 0) from base.{t}").fetchone()[0]
                       for t in tiled if "correlationId" in _columns(con, t))  # fmt: skip
        step_id = con.execute("select id from base.StringIds where value = 'step'").fetchone()[0]
        steps = con.execute("select count(*), min(int64Value), max(int64Value) from base.NVTX_EVENTS "
                            "where textId = ?", (step_id,)).fetchone()  # fmt: skip
        step_span = steps[2] - steps[1] + 1
        kernels = con.execute("select count(*) from base.CUPTI_ACTIVITY_KIND_KERNEL").fetchone()[0]
        copies = max(1, round(seconds * kernels_per_second / kernels))
        for t in tiled:
            cols = _columns(con, t)
            expr = {"start": "start + k * :span", "end": "end + k * :span", "correlationId": "correlationId + k * :corr",
                    "int64Value": "case when textId = :step then int64Value + k * :steps else int64Value end"}  # fmt: skip
            select = ", ".join(expr.get(c, c) for c in cols)
            names = ", ".join(cols)
            con.execute(f"with recursive copies(k) as (select 1 union all select k + 1 from copies where k < :last) "
                        f"insert into main.{t} ({names}) select {select} from copies cross join base.{t} {_where(t)}",
                        {"span": span, "corr": corr, "step": step_id, "steps": step_span, "last": copies - 1})  # fmt: skip
            con.commit()
        note = f"scripts/make_big_nsys.py: {copies} copies of tests/data/nsys/node.sqlite.xz, {span} ns apart"
        con.execute("insert into META_DATA_EXPORT (name, value) values ('TRACEINFER_GENERATED', ?)", (note,))
        con.commit()
        con.execute("detach database base")
        counts = {t: con.execute(f"select count(*) from {t}").fetchone()[0] for t in tiled}
        counts["steps"] = con.execute("select count(*) from NVTX_EVENTS where textId = ?", (step_id,)).fetchone()[0]
    finally:
        con.close()
        base.unlink(missing_ok=True)
    return {"copies": copies, "span_ns": span, "timeline_s": copies * span / 1e9, "rows": counts,
            "bytes": out.stat().st_size}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--seconds", type=float, default=60.0, help="seconds of a bench's kernel rows (default 60)")
    parser.add_argument("--kernels-per-second", type=float, default=50_000.0,
                        help="kernel rows a second of a bench with graph nodes traced (default 50,000)")  # fmt: skip
    args = parser.parse_args()
    t0 = time.perf_counter()
    info = make(args.out, args.seconds, args.kernels_per_second)
    print(f"wrote {args.out} in {time.perf_counter() - t0:.1f} s: {info['copies']} copies of the node fixture, "
          f"{info['span_ns'] / 1e9:.3f} s apart ({info['timeline_s']:.0f} s of capture), {info['bytes'] / 2**20:.0f} MiB")  # fmt: skip
    for table, n in info["rows"].items():
        print(f"  {table:34s} {n:>10,d} rows")
    print(f"Read it with traceinfer.ingest.read_nsys('{args.out}'); time it with scripts/bench_nsys.py {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
