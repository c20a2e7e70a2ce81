"""A GPU capture as tables: host ranges, the runtime calls that launched GPU work, and the GPU work itself.

Two readers fill it: ``ingest.nsys.read_nsys`` (an Nsight Systems SQLite export) and
``ingest.kineto.capture_of_trace`` (a torch.profiler Chrome trace, when nsys is not there). The analyzers
(``traceinfer.analysis.gpu_trace``) compute nsys's reports and the GPU's idle gaps from it, whichever wrote it.

Times are integer nanoseconds on the capture's own clock. The tables and their columns:

    ranges    start, end, style ("PushPop" | "StartEnd"), name ("domain:text", or text without a domain),
              text, tid, pid, payload (Int64, the range's integer payload, or <NA>)
    launches  start, end, tid, pid, correlation, name           (runtime API calls: cudaLaunchKernel, ...)
    gpu       start, end, kind ("kernel" | "memcpy" | "memset" | "graph"), name, device, stream,
              correlation, pid, graph_node (Int64: the node of a CUDA graph a kernel ran in, or <NA>)

A GPU row's ``correlation`` (with its ``pid``) names the launch that started it; every kernel of one CUDA
graph replay shares the ``cudaGraphLaunch``'s. ``graph_trace`` says how graph replays appear: "node"
(their kernels one by one), "graph" (one row of kind "graph" per replay) or None (no graph launched).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

RANGE_COLUMNS = ("start", "end", "style", "name", "text", "tid", "pid", "payload")
LAUNCH_COLUMNS = ("start", "end", "tid", "pid", "correlation", "name")
GPU_COLUMNS = ("start", "end", "kind", "name", "device", "stream", "correlation", "pid", "graph_node")


def empty(columns: tuple[str, ...]) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype="int64") for c in columns})


@dataclass
class GpuCapture:
    source: str
    ranges: pd.DataFrame
    launches: pd.DataFrame
    gpu: pd.DataFrame
    threads: dict[int, str] = field(default_factory=dict)
    graph_trace: str | None = None
    meta: dict = field(default_factory=dict)
    #: what could not be read, one line each (a missing table, an unknown schema minor version, ...)
    warnings: list[str] = field(default_factory=list)
