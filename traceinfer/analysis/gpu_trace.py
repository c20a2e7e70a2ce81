"""nsys's summary reports, GPU idle gaps by host phase, and a GPU flame graph, from a GpuCapture.

    cap = read_nsys("run/nsys.sqlite")           # or ingest.kineto.capture_of_trace(trace)
    nvtx_sum(cap)               # = nsys stats -r nvtx_sum: CPU time of each NVTX range, by name
    nvtx_gpu_proj_sum(cap)      # = nsys stats -r nvtx_gpu_proj_sum: GPU time of the work launched inside each range
    cuda_gpu_kern_sum(cap)      # = nsys stats -r cuda_gpu_kern_sum: kernels by name
    gpu_gaps(cap, steps, gc)    # GPU busy/idle timeline; each idle gap split over the host phase running then
    gpu_folded(cap)             # folded stacks: NVTX range path;kernel -> GPU ns

``nsys stats`` on the same export is the oracle for the first three (tests/test_nsys_reader.py checks
them figure for figure). Their statistics follow nsys: a sample standard deviation, the median of the
instances, Time (%) of the total of the table. A range's GPU projection (as nsys's report): the GPU work
whose launching runtime call started inside the range on its thread (a start/end range: in its process),
its children's included, one operation per launch (a CUDA graph replay is one, whatever the nodes it ran);
the projected time runs from the first operation's start to the last one's end. As in nsys, a graph replay
is projected only when its nodes were traced (``--cuda-graph-trace=node``): traced whole (nsys's default)
it is left out of the projection, though it counts as GPU busy time in ``gpu_gaps`` and ``gpu_folded``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from traceinfer.flamegraphs.folded import Folded, annotate
from traceinfer.ingest.capture import GpuCapture

# -- nsys's statistics --------------------------------------------------------------------------------


def _describe(groups, column: str) -> pd.DataFrame:
    """total, instances, avg, med, min, max, stddev (sample, 0 for one instance) of ``column`` by group."""
    g = groups[column]
    out = pd.DataFrame({
        "total_ns": g.sum(), "instances": g.count(), "avg_ns": g.mean(), "med_ns": g.median(),
        "min_ns": g.min(), "max_ns": g.max(), "stddev_ns": g.std(ddof=1).fillna(0.0),
    })  # fmt: skip
    return out


def nvtx_sum(cap: GpuCapture) -> pd.DataFrame:
    """Columns time_pct, total_ns, instances, avg_ns, med_ns, min_ns, max_ns, stddev_ns, style, range."""
    r = cap.ranges
    if r.empty:
        return pd.DataFrame(columns=["time_pct", "total_ns", "instances", "avg_ns", "med_ns", "min_ns", "max_ns",
                                     "stddev_ns", "style", "range"])  # fmt: skip
    r = r.assign(dur=r["end"] - r["start"])
    out = _describe(r.groupby(["name", "style"], sort=False), "dur").reset_index()
    out = out.rename(columns={"name": "range"})
    out.insert(0, "time_pct", 100.0 * out["total_ns"] / out["total_ns"].sum())
    out = out.sort_values(["total_ns", "range"], ascending=[False, True], kind="stable").reset_index(drop=True)
    return out[["time_pct", "total_ns", "instances", "avg_ns", "med_ns", "min_ns", "max_ns", "stddev_ns", "style", "range"]]


def cuda_gpu_kern_sum(cap: GpuCapture) -> pd.DataFrame:
    """Columns time_pct, total_ns, instances, avg_ns, med_ns, min_ns, max_ns, stddev_ns, name."""
    k = cap.gpu[cap.gpu["kind"] == "kernel"]
    if k.empty:
        return pd.DataFrame(columns=["time_pct", "total_ns", "instances", "avg_ns", "med_ns", "min_ns", "max_ns",
                                     "stddev_ns", "name"])  # fmt: skip
    k = k.assign(dur=k["end"] - k["start"])
    out = _describe(k.groupby("name", sort=False, observed=True), "dur").reset_index()
    out["name"] = out["name"].astype(str)  # strings, whether the capture holds names as a categorical or not
    out.insert(0, "time_pct", 100.0 * out["total_ns"] / out["total_ns"].sum())
    out = out.sort_values(["total_ns", "name"], ascending=[False, True], kind="stable").reset_index(drop=True)
    return out[["time_pct", "total_ns", "instances", "avg_ns", "med_ns", "min_ns", "max_ns", "stddev_ns", "name"]]


# -- ranges nested, GPU work tied to the range that launched it -----------------------------------------


@dataclass
class Nesting:
    """Push/pop ranges of each thread as a tree: for each row of ``cap.ranges``, its parent's row (-1 for a
    root) and depth; start/end ranges are roots of their own."""

    parent: np.ndarray
    depth: np.ndarray


def nest(ranges: pd.DataFrame) -> Nesting:
    n = len(ranges)
    parent = np.full(n, -1, dtype=np.int64)
    depth = np.zeros(n, dtype=np.int64)
    if not n:
        return Nesting(parent, depth)
    push = (ranges["style"] == "PushPop").to_numpy()
    order = np.lexsort((-ranges["end"].to_numpy(), ranges["start"].to_numpy(), ranges["tid"].to_numpy()))
    tids, starts, ends = ranges["tid"].to_numpy(), ranges["start"].to_numpy(), ranges["end"].to_numpy()
    stack: list[int] = []
    last_tid = None
    for i in order.tolist():
        if not push[i]:
            continue
        if tids[i] != last_tid:
            stack, last_tid = [], tids[i]
        while stack and not (starts[stack[-1]] <= starts[i] and ends[i] <= ends[stack[-1]]):
            stack.pop()  # ended before this one, or overlapping but not nested (an unbalanced push/pop)
        if stack:
            parent[i] = stack[-1]
            depth[i] = depth[stack[-1]] + 1
        stack.append(i)
    return Nesting(parent, depth)


def _ops(cap: GpuCapture) -> pd.DataFrame:
    """One row per launch that started GPU work: its thread, launch time and the work's first start and
    last end (every kernel of one graph replay shares the launch's correlation id)."""
    gpu, launches = cap.gpu, cap.launches
    gpu = gpu[gpu["kind"] != "graph"]  # as nsys: a graph replay traced whole is not projected
    if gpu.empty or launches.empty:
        return pd.DataFrame({c: pd.Series(dtype="int64") for c in ("tid", "pid", "t", "gpu_start", "gpu_end")})
    work = gpu.groupby(["pid", "correlation"], sort=False).agg(gpu_start=("start", "min"), gpu_end=("end", "max"))
    calls = launches[["pid", "correlation", "tid", "start"]].rename(columns={"start": "t"})
    ops = calls.join(work, on=["pid", "correlation"], how="inner")
    return ops[["tid", "pid", "t", "gpu_start", "gpu_end"]].reset_index(drop=True)


def innermost(cap: GpuCapture, nesting: Nesting, tids: np.ndarray, times: np.ndarray) -> np.ndarray:
    """For each (thread, time), the row of the innermost push/pop range open then on that thread, or -1."""
    r = cap.ranges
    out = np.full(len(times), -1, dtype=np.int64)
    if r.empty or not len(times):
        return out
    push = (r["style"] == "PushPop").to_numpy()
    rows = np.flatnonzero(push)
    r_tid, r_start = r["tid"].to_numpy()[rows], r["start"].to_numpy()[rows]
    order = np.lexsort((r_start, r_tid))
    rows, r_tid, r_start = rows[order], r_tid[order], r_start[order]
    ends = r["end"].to_numpy()
    for tid in np.unique(tids):
        sel = np.flatnonzero(tids == tid)
        lo, hi = np.searchsorted(r_tid, tid, "left"), np.searchsorted(r_tid, tid, "right")
        if lo == hi:
            continue
        pos = np.searchsorted(r_start[lo:hi], times[sel], "right") - 1  # the last range started at or before t
        cand = np.where(pos >= 0, rows[lo:hi][np.clip(pos, 0, None)], -1)
        t = times[sel]
        for _ in range(int(nesting.depth.max()) + 2):  # climb to the first ancestor still open at t
            open_ = cand < 0
            closed = ~open_ & (ends[np.clip(cand, 0, None)] < t)
            if not closed.any():
                break
            cand[closed] = nesting.parent[cand[closed]]
        out[sel] = cand
    return out


def projection(cap: GpuCapture, nesting: Nesting | None = None) -> pd.DataFrame:
    """Each range instance with GPU work: row (of cap.ranges), proj_start, proj_end, ops, level, children."""
    r = cap.ranges
    nesting = nesting or nest(r)
    ops = _ops(cap)
    cols = ["row", "proj_start", "proj_end", "ops"]
    if r.empty or ops.empty:
        return pd.DataFrame({c: pd.Series(dtype="int64") for c in cols})
    own = innermost(cap, nesting, ops["tid"].to_numpy(), ops["t"].to_numpy())
    hit = own >= 0
    acc = pd.DataFrame({"row": own[hit], "s": ops["gpu_start"].to_numpy()[hit], "e": ops["gpu_end"].to_numpy()[hit]})
    per = acc.groupby("row").agg(proj_start=("s", "min"), proj_end=("e", "max"), ops=("s", "size"))
    # each range gets its descendants' work: fold the deepest level into its parents, level by level
    n = len(r)
    start = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
    end = np.full(n, np.iinfo(np.int64).min, dtype=np.int64)
    count = np.zeros(n, dtype=np.int64)
    idx = per.index.to_numpy()
    start[idx], end[idx], count[idx] = per["proj_start"].to_numpy(), per["proj_end"].to_numpy(), per["ops"].to_numpy()
    for level in range(int(nesting.depth.max()), 0, -1):
        rows = np.flatnonzero((nesting.depth == level) & (count > 0))
        parents = nesting.parent[rows]
        ok = parents >= 0
        rows, parents = rows[ok], parents[ok]
        np.minimum.at(start, parents, start[rows])
        np.maximum.at(end, parents, end[rows])
        np.add.at(count, parents, count[rows])
    # start/end ranges: the work launched from any thread of their process while they were open
    for i in np.flatnonzero((r["style"] == "StartEnd").to_numpy()):
        m = (ops["pid"] == r["pid"].iat[i]) & ops["t"].between(r["start"].iat[i], r["end"].iat[i])
        if m.any():
            start[i], end[i], count[i] = ops["gpu_start"][m].min(), ops["gpu_end"][m].max(), int(m.sum())
    rows = np.flatnonzero(count > 0)
    children = np.zeros(n, dtype=np.int64)
    par = nesting.parent[rows]
    np.add.at(children, par[par >= 0], 1)
    return pd.DataFrame({"row": rows, "proj_start": start[rows], "proj_end": end[rows], "ops": count[rows],
                         "level": nesting.depth[rows], "children": children[rows]})  # fmt: skip


def nvtx_gpu_proj_sum(cap: GpuCapture) -> pd.DataFrame:
    """Columns range, style, total_proj_ns, total_range_ns, range_instances, proj_avg_ns, proj_med_ns,
    proj_min_ns, proj_max_ns, proj_stddev_ns, total_gpu_ops, avg_gpu_ops, avg_range_lvl, avg_num_child."""
    cols = ["range", "style", "total_proj_ns", "total_range_ns", "range_instances", "proj_avg_ns", "proj_med_ns",
            "proj_min_ns", "proj_max_ns", "proj_stddev_ns", "total_gpu_ops", "avg_gpu_ops", "avg_range_lvl",
            "avg_num_child"]  # fmt: skip
    p = projection(cap)
    if p.empty:
        return pd.DataFrame(columns=cols)
    r = cap.ranges
    p = p.assign(range=r["name"].to_numpy()[p["row"]], style=r["style"].to_numpy()[p["row"]],
                 proj=p["proj_end"] - p["proj_start"],
                 cpu=(r["end"] - r["start"]).to_numpy()[p["row"]])  # fmt: skip
    g = p.groupby(["range", "style"], sort=False)
    out = pd.DataFrame({
        "total_proj_ns": g["proj"].sum(), "total_range_ns": g["cpu"].sum(), "range_instances": g["proj"].count(),
        "proj_avg_ns": g["proj"].mean(), "proj_med_ns": g["proj"].median(), "proj_min_ns": g["proj"].min(),
        "proj_max_ns": g["proj"].max(), "proj_stddev_ns": g["proj"].std(ddof=1).fillna(0.0),
        "total_gpu_ops": g["ops"].sum(), "avg_gpu_ops": g["ops"].mean(), "avg_range_lvl": g["level"].mean(),
        "avg_num_child": g["children"].mean(),
    }).reset_index()  # fmt: skip
    out = out.sort_values(["total_proj_ns", "range"], ascending=[False, True], kind="stable").reset_index(drop=True)
    return out[cols]


# -- the GPU flame graph ---------------------------------------------------------------------------------


def path_ids(cap: GpuCapture, nesting: Nesting) -> tuple[np.ndarray, list[tuple[str, ...]]]:
    """Each range's path from its root as an id into a list of the distinct paths (annotated frames, as
    ``("step_[r]", "forward (graph)_[r]")``): built level by level, one path per distinct (parent's path,
    text), so a million ranges of a few dozen paths cost a few dozen tuples."""
    r = cap.ranges
    ids = np.full(len(r), -1, dtype=np.int64)
    paths: list[tuple[str, ...]] = []
    if r.empty:
        return ids, paths
    codes, texts = pd.factorize(r["text"])
    frames = [annotate(str(t), "range") for t in texts]
    for level in range(int(nesting.depth.max()) + 1):
        rows = np.flatnonzero(nesting.depth == level)
        if not len(rows):
            continue
        parent = nesting.parent[rows]
        up = np.where(parent >= 0, ids[np.clip(parent, 0, None)], -1)  # the parent's path (-1: a root)
        keys, inverse = np.unique((up + 1) * len(frames) + codes[rows], return_inverse=True)
        base = len(paths)
        for key in keys.tolist():
            p, c = divmod(key, len(frames))
            paths.append((*paths[p - 1], frames[c]) if p else (frames[c],))
        ids[rows] = base + inverse.reshape(-1)
    return ids, paths


def launch_rows(gpu: pd.DataFrame, launches: pd.DataFrame) -> np.ndarray:
    """For each GPU row, the position in ``launches`` of the first runtime call of its (pid, correlation),
    or -1: the pair packed into one integer key and looked up in a hash index."""
    out = np.full(len(gpu), -1, dtype=np.int64)
    if gpu.empty or launches.empty:
        return out
    lp, lc = launches["pid"].to_numpy(np.int64), launches["correlation"].to_numpy(np.int64)
    gp, gc = gpu["pid"].to_numpy(np.int64), gpu["correlation"].to_numpy(np.int64)
    pids, pid_codes = np.unique(np.concatenate([lp, gp]), return_inverse=True)
    low = min(int(lc.min()), int(gc.min()))
    width = max(int(lc.max()), int(gc.max())) - low + 1
    if width * len(pids) >= 2**62:  # ids too far apart to pack: pandas' join
        on = ["pid", "correlation"]
        keys = pd.DataFrame({"pid": lp, "correlation": lc, "row": np.arange(len(lp))}).drop_duplicates(on)
        hit = pd.DataFrame({"pid": gp, "correlation": gc}).join(keys.set_index(on), on=on)
        return hit["row"].fillna(-1).to_numpy(np.int64)
    lkey = pid_codes[: len(lp)].reshape(-1) * width + (lc - low)
    gkey = pid_codes[len(lp) :].reshape(-1) * width + (gc - low)
    first = np.flatnonzero(~pd.Index(lkey).duplicated())  # the first call of each key, as a join would pick
    found = pd.Index(lkey[first]).get_indexer(gkey)
    hit = found >= 0
    out[hit] = first[found[hit]]
    return out


def gpu_folded(cap: GpuCapture) -> Folded:
    """GPU time (ns) of every kernel, memcpy and memset under the NVTX path of the range that launched it
    (``step;forward (graph);_decode_kernel``); work launched outside every range sits under "(no range)"."""
    folded = Folded(unit="ns")
    gpu, launches = cap.gpu, cap.launches
    if gpu.empty:
        return folded
    nesting = nest(cap.ranges)
    ids, paths = path_ids(cap, nesting)
    work = gpu[gpu["kind"] != "graph"] if cap.graph_trace == "node" else gpu
    call = launch_rows(work, launches)
    launched = call >= 0
    rows = np.full(len(work), -1, dtype=np.int64)
    if launched.any():
        rows[launched] = innermost(cap, nesting, launches["tid"].to_numpy(np.int64)[call[launched]],
                                   launches["start"].to_numpy(np.int64)[call[launched]])  # fmt: skip
    path = np.full(len(work), -1, dtype=np.int64)
    path[rows >= 0] = ids[rows[rows >= 0]]  # a capture without NVTX ranges has no ids at all
    names, name_of = pd.factorize(work["name"])
    kinds, kind_of_code = pd.factorize(work["kind"])
    dur = (work["end"] - work["start"]).to_numpy()
    table = pd.DataFrame({"path": path, "name": names, "kind": kinds, "dur": dur})
    for (p, name, kind), ns in table.groupby(["path", "name", "kind"], sort=False)["dur"].sum().items():
        name, kind = str(name_of[name]), str(kind_of_code[kind])
        leaf = annotate(name, "kernel") if kind in ("kernel", "graph") else name
        folded.add((*paths[p], leaf) if p >= 0 else ("(no range)", leaf), float(ns))
    return folded


# -- GPU idle gaps, attributed to the host phase running then ------------------------------------------

#: an NVTX range's text -> the engine phase it stands for (block-manager ranges count for the stage
#: around them; the forward range is the launch of the forward)
PHASE_OF_RANGE = {"schedule": "schedule", "prepare": "prepare", "forward (graph)": "forward launch",
                  "forward (eager)": "forward launch", "forward": "forward launch", "sample": "sample",
                  "postprocess": "postprocess", "step": "step (outside stages)"}  # fmt: skip
BETWEEN_STEPS = "between steps"
GC_PAUSE = "GC pause"
PROBE_WORK = "probe work (handover)"
INSIDE_LAUNCH = "inside one launch (between a graph replay's nodes)"


@dataclass
class GpuGaps:
    """``busy``: the GPU's busy intervals (start, end, ns); ``gaps``: each idle interval between them (start,
    end, dur_ns, phase: the host phase that covered most of it, step); ``by_phase``: the idle time split
    over host phases, ranked (phase, idle_ns, idle_pct, gaps_touched: the gaps it covers part of, gaps: those
    it covers most of, and their median_gap_ns and max_gap_ns); ``totals``:
    span_ns, busy_ns, idle_ns, busy_pct, and the run's clock offset when a run directory was joined."""

    busy: pd.DataFrame
    gaps: pd.DataFrame
    by_phase: pd.DataFrame
    totals: dict


def busy_intervals(gpu: pd.DataFrame) -> pd.DataFrame:
    """The union of the GPU's work intervals (every stream of every device together)."""
    if gpu.empty:
        return pd.DataFrame({"start": pd.Series(dtype="int64"), "end": pd.Series(dtype="int64")})
    g = gpu.sort_values("start", kind="stable")
    s, e = g["start"].to_numpy(), g["end"].to_numpy()
    reach = np.maximum.accumulate(e)
    new = np.empty(len(s), dtype=bool)
    new[0] = True
    new[1:] = s[1:] > reach[:-1]
    firsts = np.flatnonzero(new)
    lasts = np.append(firsts[1:] - 1, len(s) - 1)
    # the launch of each interval's first and last work item: (pid, correlation) as one integer
    launch = (g["pid"].to_numpy(np.int64) << 32) | (g["correlation"].to_numpy(np.int64) & 0xFFFFFFFF)
    return pd.DataFrame({"start": s[firsts], "end": np.maximum.reduceat(e, firsts),
                         "first_launch": launch[firsts], "last_launch": launch[lasts]})  # fmt: skip


def step_offset(cap: GpuCapture, steps: pd.DataFrame) -> int | None:
    """The run's clock minus the capture's, from the NVTX "step" ranges (payload: step index) and the step
    stream's start times; None when they cannot be matched."""
    r = cap.ranges
    if steps is None or steps.empty or r.empty:
        return None
    sr = r[(r["text"] == "step") & r["payload"].notna()]
    if sr.empty:
        return None
    m = sr.join(steps.set_index("step")["t_ns"], on=sr["payload"].astype("int64").rename("step"), how="inner")
    if m.empty:
        return None
    return int(np.median(m["t_ns"].to_numpy() - m["start"].to_numpy()))


def _host_segments(cap: GpuCapture, steps: pd.DataFrame | None, gc: pd.DataFrame | None, offset: int | None):
    """Host phase intervals (start, end, phase, priority) on the capture's clock: the engine thread's
    innermost NVTX stage, overlaid by GC pauses and probe work from the run directory when given."""
    r = cap.ranges
    segs = []
    step_rows = r[r["text"] == "step"]
    if not step_rows.empty:
        engine_tid = step_rows["tid"].mode().iat[0]
        er = r[(r["tid"] == engine_tid) & (r["style"] == "PushPop")]
        nesting = nest(er.reset_index(drop=True))
        names = er["text"].map(PHASE_OF_RANGE).to_numpy(dtype=object)
        # a range without a phase of its own (block ..., layer ...) counts for its nearest ancestor's
        own = pd.notna(names)
        for level in range(1, int(nesting.depth.max()) + 1):
            rows = np.flatnonzero((nesting.depth == level) & ~own)
            names[rows] = names[nesting.parent[rows]]
        segs.append(pd.DataFrame({"start": er["start"].to_numpy(), "end": er["end"].to_numpy(), "phase": names,
                                  "priority": nesting.depth}).dropna(subset=["phase"]))  # fmt: skip
    if offset is not None:
        if gc is not None and not gc.empty:
            segs.append(pd.DataFrame({"start": gc["t_ns"] - offset, "end": gc["t_ns"] + gc["dur_ns"] - offset,
                                      "phase": GC_PAUSE, "priority": 100}))  # fmt: skip
        if steps is not None and "handover_ns" in steps and steps["handover_ns"].notna().any():
            h = steps.dropna(subset=["handover_start_ns", "handover_ns"])
            segs.append(pd.DataFrame({"start": h["handover_start_ns"] - offset,
                                      "end": h["handover_start_ns"] + h["handover_ns"] - offset,
                                      "phase": PROBE_WORK, "priority": 50}))  # fmt: skip
    if not segs:
        return pd.DataFrame({"start": [], "end": [], "phase": [], "priority": []})
    return pd.concat(segs, ignore_index=True)


def _split(gaps: pd.DataFrame, segs: pd.DataFrame) -> pd.DataFrame:
    """How many ns of each gap each phase covers: the time axis cut at every boundary; in each piece the
    highest-priority segment open wins, and pieces no segment covers are BETWEEN_STEPS. Columns gap, phase
    (a categorical, its categories sorted), ns; pieces in time order."""
    phases = sorted({BETWEEN_STEPS, *segs["phase"].dropna().unique().tolist()})
    if gaps.empty:
        return pd.DataFrame({"gap": pd.Series(dtype="int64"), "phase": pd.Categorical([], categories=phases),
                             "ns": pd.Series(dtype="int64")})  # fmt: skip
    cuts = np.sort(np.concatenate([gaps["start"].to_numpy(), gaps["end"].to_numpy(),
                                   segs["start"].to_numpy(dtype=np.int64), segs["end"].to_numpy(dtype=np.int64)]))  # fmt: skip
    cuts = cuts[np.concatenate(([True], cuts[1:] != cuts[:-1]))]
    lo, hi = cuts[:-1], cuts[1:]
    mid = lo + (hi - lo) // 2
    gap_of = np.searchsorted(gaps["start"].to_numpy(), mid, "right") - 1
    inside = (gap_of >= 0) & (mid < gaps["end"].to_numpy()[np.clip(gap_of, 0, None)]) & (hi > lo)
    lo, hi, mid, gap_of = lo[inside], hi[inside], mid[inside], gap_of[inside]
    code = np.full(len(mid), phases.index(BETWEEN_STEPS), dtype=np.int64)
    # segments by priority, lowest first, so higher ones overwrite (each piece is inside or outside a segment)
    for prio in sorted(segs["priority"].unique()):
        s = segs[segs["priority"] == prio].sort_values("start")
        starts, ends = s["start"].to_numpy(np.int64), s["end"].to_numpy(np.int64)
        codes = pd.Categorical(s["phase"], categories=phases).codes.astype(np.int64)
        k = np.searchsorted(starts, mid, "right") - 1
        ok = k >= 0
        ok[ok] = mid[ok] < ends[k[ok]]
        code[ok] = codes[k[ok]]
    return pd.DataFrame({"gap": gap_of, "phase": pd.Categorical.from_codes(code, categories=phases), "ns": hi - lo})


def gpu_gaps(cap: GpuCapture, steps: pd.DataFrame | None = None, gc: pd.DataFrame | None = None) -> GpuGaps:
    """The GPU's busy intervals and idle gaps, each gap's time split over the host phase running then (from
    the capture's NVTX stage ranges; GC pauses and the probes' per-step work too when the run directory's
    ``steps`` and ``gc`` streams are given, placed on the capture's clock by the step ranges)."""
    busy = busy_intervals(cap.gpu)
    totals: dict = {"span_ns": 0, "busy_ns": 0, "idle_ns": 0, "busy_pct": None, "run_offset_ns": None}
    if busy.empty:
        empty_gaps = pd.DataFrame({c: [] for c in ("start", "end", "dur_ns", "phase")})
        return GpuGaps(busy, empty_gaps, pd.DataFrame(columns=["phase", "idle_ns", "idle_pct", "gaps_touched", "gaps",
                                                                "median_gap_ns", "max_gap_ns"]), totals)  # fmt: skip
    busy = busy.assign(ns=busy["end"] - busy["start"])
    gaps = pd.DataFrame({"start": busy["end"].to_numpy()[:-1], "end": busy["start"].to_numpy()[1:]})
    gaps["dur_ns"] = gaps["end"] - gaps["start"]
    offset = step_offset(cap, steps) if steps is not None else None
    # a gap between two items of one launch (the nodes of one graph replay) is the GPU's own, whatever the
    # host was doing; the others are split over the host phase running then
    inside = (busy["last_launch"].to_numpy()[:-1] == busy["first_launch"].to_numpy()[1:])
    outside = np.flatnonzero(~inside)
    pieces = _split(gaps.iloc[outside].reset_index(drop=True), _host_segments(cap, steps, gc, offset))
    categories = [*pieces["phase"].cat.categories, INSIDE_LAUNCH]
    pieces = pd.concat([
        pd.DataFrame({"gap": outside[pieces["gap"].to_numpy(np.int64)],
                      "phase": pd.Categorical(pieces["phase"], categories=categories), "ns": pieces["ns"].to_numpy()}),
        pd.DataFrame({"gap": np.flatnonzero(inside), "phase": pd.Categorical([INSIDE_LAUNCH] * int(inside.sum()), categories=categories),
                      "ns": gaps["dur_ns"].to_numpy()[inside]}),
    ], ignore_index=True)  # fmt: skip
    # phases as codes (their names sorted): the ns of each (gap, phase), in gap then phase order
    phases = np.asarray(pieces["phase"].cat.categories, dtype=object)
    key = pieces["gap"].to_numpy(np.int64) * len(phases) + pieces["phase"].cat.codes.to_numpy(np.int64)
    per_gap = pd.Series(pieces["ns"].to_numpy(np.int64)).groupby(key).sum()
    gap_of, phase_of = np.divmod(per_gap.index.to_numpy(np.int64), len(phases))
    ns = per_gap.to_numpy()
    # each gap's phase: the one covering most of it (a tie: the first by name)
    order = np.lexsort((phase_of, -ns, gap_of))
    first = order[np.flatnonzero(np.diff(gap_of[order], prepend=-1) != 0)]
    main = np.full(len(gaps), int(np.flatnonzero(phases == BETWEEN_STEPS)[0]), dtype=np.int64)
    main[gap_of[first]] = phase_of[first]
    gaps["phase"] = phases[main]
    span = int(busy["end"].iat[-1] - busy["start"].iat[0])
    busy_ns = int(busy["ns"].sum())
    idle = int(gaps["dur_ns"].sum())
    g = pd.Series(ns).groupby(phase_of)  # one row per (gap, phase): a phase's rows are the gaps it touches
    by_phase = pd.DataFrame({"idle_ns": g.sum(), "gaps_touched": g.size()})
    dominant = pd.Series(gaps["dur_ns"].to_numpy()).groupby(main)
    by_phase["gaps"] = dominant.size().reindex(by_phase.index).fillna(0).astype("int64")
    by_phase["median_gap_ns"] = dominant.median().reindex(by_phase.index)
    by_phase["max_gap_ns"] = dominant.max().reindex(by_phase.index)
    by_phase.index = pd.Index(phases[by_phase.index.to_numpy()], name="phase")
    by_phase["idle_pct"] = 100.0 * by_phase["idle_ns"] / idle if idle else 0.0
    by_phase = by_phase.reset_index().sort_values(["idle_ns", "phase"], ascending=[False, True]).reset_index(drop=True)
    by_phase = by_phase[["phase", "idle_ns", "idle_pct", "gaps_touched", "gaps", "median_gap_ns", "max_gap_ns"]]
    totals.update(span_ns=span, busy_ns=busy_ns, idle_ns=idle, busy_pct=100.0 * busy_ns / span if span else None,
                  gaps=len(gaps), run_offset_ns=offset)  # fmt: skip
    if steps is not None and offset is None:
        totals["run_join"] = "the capture's step ranges match no step of the run: GC and probe work not placed"
    gaps["step"] = _step_of(cap, gaps["start"].to_numpy())
    return GpuGaps(busy[["start", "end", "ns"]], gaps, by_phase, totals)


def _step_of(cap: GpuCapture, times: np.ndarray) -> pd.arrays.IntegerArray:
    """The step (the "step" range's payload) open at each time, <NA> where none is."""
    r = cap.ranges
    times = np.asarray(times, dtype=np.int64)
    sr = r[(r["text"] == "step")].sort_values("start")
    if sr.empty:
        return pd.arrays.IntegerArray(np.zeros(len(times), dtype=np.int64), np.ones(len(times), dtype=bool))
    k = np.searchsorted(sr["start"].to_numpy(), times, "right") - 1
    at = np.clip(k, 0, None)
    pay = pd.array(sr["payload"], dtype="Int64")
    values, missing = pay.to_numpy(dtype=np.int64, na_value=0), pay.isna()
    found = (k >= 0) & (times <= sr["end"].to_numpy()[at]) & ~missing[at]
    return pd.arrays.IntegerArray(values[at], ~found)


#: our column -> the header ``nsys stats --format csv`` prints for it, per report
NSYS_HEADERS: dict[str, dict[str, str]] = {
    "nvtx_sum": {"time_pct": "Time (%)", "total_ns": "Total Time (ns)", "instances": "Instances", "avg_ns": "Avg (ns)",
                 "med_ns": "Med (ns)", "min_ns": "Min (ns)", "max_ns": "Max (ns)", "stddev_ns": "StdDev (ns)",
                 "style": "Style", "range": "Range"},
    "cuda_gpu_kern_sum": {"time_pct": "Time (%)", "total_ns": "Total Time (ns)", "instances": "Instances",
                          "avg_ns": "Avg (ns)", "med_ns": "Med (ns)", "min_ns": "Min (ns)", "max_ns": "Max (ns)",
                          "stddev_ns": "StdDev (ns)", "name": "Name"},
    "nvtx_gpu_proj_sum": {"range": "Range", "style": "Style", "total_proj_ns": "Total Proj Time (ns)",
                          "total_range_ns": "Total Range Time (ns)", "range_instances": "Range Instances",
                          "proj_avg_ns": "Proj Avg (ns)", "proj_med_ns": "Proj Med (ns)", "proj_min_ns": "Proj Min (ns)",
                          "proj_max_ns": "Proj Max (ns)", "proj_stddev_ns": "Proj StdDev (ns)",
                          "total_gpu_ops": "Total GPU Ops", "avg_gpu_ops": "Avg GPU Ops", "avg_range_lvl": "Avg Range Lvl",
                          "avg_num_child": "Avg Num Child"},
}  # fmt: skip


def records(df: pd.DataFrame) -> list[dict]:
    """Rows as JSON-ready dicts: times (``*_ns``) as integer nanoseconds, counts as ints, other numbers as
    floats, missing values as None."""
    out = []
    cols = list(df.columns)
    for row in df.itertuples(index=False, name=None):
        rec = {}
        for c, v in zip(cols, row):
            if v is None or (isinstance(v, float) and np.isnan(v)) or v is pd.NA:
                rec[c] = None
            elif c.endswith("_ns") or c in ("start", "end", "step"):
                rec[c] = int(round(float(v)))
            elif isinstance(v, (bool, np.bool_)):
                rec[c] = bool(v)
            elif isinstance(v, (int, np.integer)):
                rec[c] = int(v)
            elif isinstance(v, (float, np.floating)):
                rec[c] = float(v)
            else:
                rec[c] = str(v)
        out.append(rec)
    return out


def summary(cap: GpuCapture, steps: pd.DataFrame | None = None, gc: pd.DataFrame | None = None, top: int = 25) -> dict:
    """Every table of the capture, JSON-ready, for a run directory's ``nsys_stats.json`` and the report:
    the gaps' totals and split by phase, the longest gaps, and the first ``top`` rows of the other tables."""
    gaps = gpu_gaps(cap, steps, gc)
    return {
        "source": cap.source, "graph_trace": cap.graph_trace, "schema_version": cap.meta.get("schema_version"),
        "nsys_version": cap.meta.get("product_version"), "gpus": cap.meta.get("gpus"), "warnings": list(cap.warnings),
        "counts": {"ranges": len(cap.ranges), "launches": len(cap.launches),
                   "kernels": int((cap.gpu["kind"] == "kernel").sum()) if len(cap.gpu) else 0, "gpu_rows": len(cap.gpu)},
        "gpu_gaps": {"totals": {k: (int(v) if isinstance(v, (int, np.integer)) else v) for k, v in gaps.totals.items()},
                     "by_phase": records(gaps.by_phase),
                     "longest": records(gaps.gaps.nlargest(top, "dur_ns"))},
        "cuda_gpu_kern_sum": records(cuda_gpu_kern_sum(cap).head(top)),
        "nvtx_gpu_proj_sum": records(nvtx_gpu_proj_sum(cap).head(top)),
        "nvtx_sum": records(nvtx_sum(cap).head(top)),
    }  # fmt: skip
