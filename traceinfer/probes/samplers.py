"""Samplers (streams 'host_samples' and 'gpu_samples'): psutil for this process, NVML for the engine's GPU.

The sampling runs in a process of its own (traceinfer.probes.sampler_process, which says why), at
``sample_hz``. This probe starts it, tells it the engine's PID and GPU, shares the current step index
with it through an 8-byte mapped file, writes the two streams' headers and, at stop, ends it and reads
its report. The GPU part is absent, with the reason in the manifest and no stream, when the engine runs
on the CPU, nvidia-ml-py is missing or NVML cannot be reached; the host part when psutil is missing.
A field the GPU does not support is null, never 0.
"""

from __future__ import annotations

import os
import tempfile

from traceinfer.probes import sampler_process
from traceinfer.probes.base import Probe, ProbeContext
from traceinfer.probes.sampler_process import NO_STEP, STEP_CELL_BYTES, map_step_cell
from traceinfer.rundir.helper_process import HelperProcess


def nvml_index(device) -> int:
    """NVML's index of a torch CUDA device (they differ under CUDA_VISIBLE_DEVICES)."""
    import torch

    index = device.index if device.index is not None else torch.cuda.current_device()
    try:
        return torch.cuda._get_nvml_device_index(index)
    except Exception:
        return index


class StepCell:
    """The current engine step in an 8-byte file mapped by the engine's process and the sampler process."""

    def __init__(self) -> None:
        shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
        fd, self.path = tempfile.mkstemp(prefix="traceinfer-step-", dir=shm)
        try:
            os.ftruncate(fd, STEP_CELL_BYTES)
            self.map, self.value = map_step_cell(fd)
        finally:
            os.close(fd)
        self.value.value = NO_STEP

    def __call__(self, point: str, phase: str, t_ns: int, fields: dict) -> None:  # subscribed to 'step'
        if phase == "B":
            self.value.value = fields.get("step", NO_STEP)

    def close(self) -> None:
        self.value = None  # releases the mapping's buffer
        self.map.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


class SamplerProbe(Probe):
    name = "samplers"
    description = "psutil (process CPU, RSS, context switches, threads) and NVML (GPU util, memory, power, clocks, temperature, PCIe) from a sampler process"
    streams = ("host_samples", "gpu_samples")

    def __init__(self, ctx: ProbeContext) -> None:
        super().__init__(ctx)
        self.hz = ctx.sample_hz
        self.ready: dict = {"host": {"available": False, "reason": None}, "gpu": {"available": False, "reason": None}}
        self.report: dict = {}
        self.error: str | None = None
        self._cell = StepCell()
        self._proc: HelperProcess | None = None
        try:
            self._proc = HelperProcess("sampler process", sampler_process.__file__, self._args(ctx))
        except Exception as exc:
            self._end()
            self.absent(f"the sampler process did not start: {exc}")
            return
        self.ready = self._proc.ready
        host, gpu = self.ready["host"], self.ready["gpu"]
        if not host["available"] and not gpu["available"]:
            self._end()
            self.absent(f"host: {host['reason']}; gpu: {gpu['reason']}")
            return
        self.reason = "; ".join(f"{part}: {info['reason']}" for part, info in self.ready.items() if info["reason"]) or None
        for part, stream in (("host", "host_samples"), ("gpu", "gpu_samples")):
            if self.ready[part]["available"]:
                ctx.writer.stream(stream)  # the header; the sampler process appends the rows

    def _args(self, ctx: ProbeContext) -> list[str]:
        device = ctx.engine.device
        args = ["--run-dir", str(ctx.writer.path), "--pid", str(os.getpid()), "--hz", str(self.hz),
                "--step-file", self._cell.path]  # fmt: skip
        if device.type == "cuda":
            return [*args, "--nvml-index", str(nvml_index(device))]
        return [*args, "--no-gpu-reason", f"the engine runs on {device.type}: no GPU to sample"]

    def subscriptions(self) -> dict:
        return {"step": self._cell} if self.available else {}

    def start(self) -> None:
        if self.available:
            self._proc.send(b"g")

    def stop(self) -> None:
        if self._proc is None:
            return
        self._end()
        writer = self.ctx.writer
        for part, stream in (("host", "host_rows"), ("gpu", "gpu_rows")):
            name = f"{part}_samples"
            if name in writer.streams:
                writer.streams[name].count = self.report.get(stream, 0)

    def _end(self) -> None:
        """End the sampler process (end of its stdin) and read its report."""
        proc, self._proc = self._proc, None
        if proc is not None:
            self.error = proc.close(timeout_s=30.0)
            self.report = proc.report
        self._cell.close()

    def info(self) -> dict:
        r = self.report
        return {
            **super().info(),
            "hz": self.hz, "samples": r.get("samples", 0), "errors": r.get("errors", 0),
            "last_error": r.get("last_error") or self.error, "process_cpu_s": r.get("cpu_s"),
            "host": self.ready["host"],
            "gpu": {**self.ready["gpu"], "unsupported_fields": r.get("unsupported_fields")},
        }  # fmt: skip
