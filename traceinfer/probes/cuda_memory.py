"""CUDA allocator probe (stream 'cuda_memory'): torch's caching-allocator counters once per step that
launches a forward (not the step that only finishes the last launched one),
and optionally a ``torch.cuda.memory`` snapshot for https://pytorch.org/memory_viz.

It reads ``torch.cuda.memory_stats_as_nested_dict`` (the allocator's own dict; ``memory_stats`` would
flatten and sort its few hundred entries in Python on every step) at the 'handover' point, once the
step's forward is launched: its inputs are allocated, the previous step's temporaries freed, and the
read hides behind the GPU. One call per step, so this probe is in ``all``, not ``default``. Absent
(no rows, the reason in the manifest) without CUDA.
"""

from __future__ import annotations

from collections.abc import Callable

from traceinfer.probes.base import Probe, ProbeContext
from traceinfer.rundir.schema import MEMORY_SNAPSHOT


class CudaMemoryProbe(Probe):
    name = "cuda_memory"
    description = (
        "torch CUDA allocator stats per step (allocated, reserved, fragmentation, retries); optional memory snapshot"
    )
    streams = ("cuda_memory",)

    def __init__(self, ctx: ProbeContext) -> None:
        super().__init__(ctx)
        self._torch = None
        self.snapshot: str | None = None
        device = ctx.engine.device
        if device.type != "cuda":
            self.absent(f"the engine runs on {device.type}: no CUDA allocator")
            return
        import torch

        if not torch.cuda.is_available():
            self.absent("torch sees no CUDA device")
            return
        self._torch = torch
        self._device = device
        self._append = ctx.writer.stream("cuda_memory").rows.append

    def subscriptions(self) -> dict[str, Callable]:
        return {"handover": self._on_handover} if self._torch is not None else {}

    def start(self) -> None:
        if self._torch is not None:
            self._torch.cuda.reset_peak_memory_stats(self._device)
            if self.ctx.options.memory_snapshot:
                self._torch.cuda.memory._record_memory_history(max_entries=100_000)

    def _on_handover(self, point: str, phase: str, t: int, fields: dict) -> None:
        s = self._torch.cuda.memory_stats_as_nested_dict(self._device)
        allocated = s["allocated_bytes"]["all"]
        reserved = s["reserved_bytes"]["all"]["current"]
        frag = 1.0 - allocated["current"] / reserved if reserved else None
        self._append(
            (t, fields["step"], allocated["current"], reserved,
             s["active_bytes"]["all"]["current"], s["inactive_split_bytes"]["all"]["current"], frag,
             allocated["peak"], s["num_alloc_retries"], s["num_ooms"])
        )  # fmt: skip

    def stop(self) -> None:
        if self._torch is not None and self.ctx.options.memory_snapshot and self.snapshot is None:
            path = self.ctx.writer.path / MEMORY_SNAPSHOT
            try:
                self._torch.cuda.memory._dump_snapshot(str(path))
                self.snapshot = path.name
            finally:
                self._torch.cuda.memory._record_memory_history(enabled=None)

    def info(self) -> dict:
        return {**super().info(), "memory_snapshot": self.snapshot}
