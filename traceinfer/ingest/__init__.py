"""Readers of other profilers' files, each turning one into folded stacks (traceinfer.flamegraphs.folded):

    kineto            a torch.profiler Chrome trace (``torch_trace.json.gz`` of the torch_profiler probe):
                      ``gpu_stacks`` (kernels under the ranges that launched them), ``cpu_stacks`` (self time
                      under ranges and ops), ``capture_of_trace`` (the trace as a ``capture.GpuCapture``, the
                      same tables as an nsys export's, for when nsys is not there)
    memory_snapshot   a ``torch.cuda.memory`` snapshot (``memory_snapshot.pickle`` of the cuda_memory probe):
                      ``memory_stacks`` (live bytes by allocation stack), ``memory_summary``
    pyspy             py-spy's chrometrace and raw outputs
    nsys              an Nsight Systems SQLite export (``nsys export -t sqlite``), without nsys: ``read_nsys``
                      -> ``capture.GpuCapture`` (NVTX ranges, runtime launches, GPU work as DataFrames), the
                      input of traceinfer.analysis.gpu_trace (nsys's reports, GPU idle gaps, GPU flame graph)

Layer L2' (docs/architecture.md): these modules import the contract (L0) and the standard library, never
torch or the engine, so a run directory's files are read on a machine without either. A file that cannot
be read raises traceinfer.errors.IngestError, naming it.
"""

from traceinfer.ingest.capture import GpuCapture
from traceinfer.ingest.kineto import capture_of_trace, cpu_stacks, gpu_stacks, load_trace
from traceinfer.ingest.memory_snapshot import load_snapshot, memory_stacks, memory_summary
from traceinfer.ingest.nsys import read_nsys

__all__ = ["GpuCapture", "capture_of_trace", "cpu_stacks", "gpu_stacks", "load_snapshot", "load_trace", "memory_stacks",
           "memory_summary", "read_nsys"]
