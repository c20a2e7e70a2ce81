"""Readers of other profilers' files, each turning one into folded stacks (traceinfer.flamegraphs.folded):

    kineto            a torch.profiler Chrome trace (``torch_trace.json.gz`` of the torch_profiler probe):
                      ``gpu_stacks`` (kernels under the ranges that launched them), ``cpu_stacks`` (self time
                      under ranges and ops)
    memory_snapshot   a ``torch.cuda.memory`` snapshot (``memory_snapshot.pickle`` of the cuda_memory probe):
                      ``memory_stacks`` (live bytes by allocation stack), ``memory_summary``
    pyspy             py-spy's chrometrace and raw outputs

Layer L2' (docs/architecture.md): these modules import the contract (L0) and the standard library, never
torch or the engine, so a run directory's files are read on a machine without either. A file that cannot
be read raises traceinfer.errors.IngestError, naming it.
"""

from traceinfer.ingest.kineto import cpu_stacks, gpu_stacks, load_trace
from traceinfer.ingest.memory_snapshot import load_snapshot, memory_stacks, memory_summary

__all__ = ["cpu_stacks", "gpu_stacks", "load_snapshot", "load_trace", "memory_stacks", "memory_summary"]
