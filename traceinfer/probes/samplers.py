"""Samplers (streams 'host_samples' and 'gpu_samples'): psutil for this process, NVML for the engine's GPU.

One daemon thread samples both at ``sample_hz``. NVML comes from nvidia-ml-py (``import pynvml``); the
GPU part is absent, with the reason in the manifest and no rows, when the engine runs on the CPU, the
package is missing or the driver cannot be reached. A field the GPU does not support is null, never 0.
PCIe throughput is read at most twice a second: NVML measures it over 20 ms per call.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from traceinfer.probes.base import Probe, ProbeContext, SamplerThread

PCIE_MIN_INTERVAL_NS = 500_000_000


def nvml_index(device) -> int:
    """NVML's index of a torch CUDA device (they differ under CUDA_VISIBLE_DEVICES)."""
    import torch

    index = device.index if device.index is not None else torch.cuda.current_device()
    try:
        return torch.cuda._get_nvml_device_index(index)
    except Exception:
        return index


class GpuReader:
    """Reads one GPU's fields through NVML; a query that raises NotSupported is dropped for good."""

    def __init__(self, pynvml, index: int) -> None:
        n = self.nvml = pynvml
        h = self.handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        self.name = pynvml.nvmlDeviceGetName(h)
        self.unsupported: set[str] = set()
        self._last_pcie_ns = 0

        def util():
            u = n.nvmlDeviceGetUtilizationRates(h)
            return u.gpu, u.memory

        # (columns of gpu_samples, query returning their values), in column order
        self.queries: list[tuple[tuple[str, ...], Callable[[], tuple]]] = [
            (("gpu_util_pct", "mem_util_pct"), util),
            (("mem_used_bytes",), lambda: (n.nvmlDeviceGetMemoryInfo(h).used,)),
            (("power_w",), lambda: (n.nvmlDeviceGetPowerUsage(h) / 1000.0,)),
            (("sm_clock_mhz",), lambda: (n.nvmlDeviceGetClockInfo(h, n.NVML_CLOCK_SM),)),
            (("mem_clock_mhz",), lambda: (n.nvmlDeviceGetClockInfo(h, n.NVML_CLOCK_MEM),)),
            (("temperature_c",), lambda: (n.nvmlDeviceGetTemperature(h, n.NVML_TEMPERATURE_GPU),)),
        ]
        self.pcie = [  # NVML reports KB/s
            (("pcie_rx_bytes_s",), lambda: (n.nvmlDeviceGetPcieThroughput(h, n.NVML_PCIE_UTIL_RX_BYTES) * 1024,)),
            (("pcie_tx_bytes_s",), lambda: (n.nvmlDeviceGetPcieThroughput(h, n.NVML_PCIE_UTIL_TX_BYTES) * 1024,)),
        ]

    def _get(self, names: tuple[str, ...], query) -> tuple:
        if names[0] in self.unsupported:
            return (None,) * len(names)
        try:
            return query()
        except self.nvml.NVMLError as exc:
            if isinstance(exc, self.nvml.NVMLError_NotSupported):
                self.unsupported.update(names)
            return (None,) * len(names)

    def read(self, t_ns: int) -> list:
        """Values in gpu_samples column order after t_ns and step; PCIe only every PCIE_MIN_INTERVAL_NS."""
        values = [v for names, query in self.queries for v in self._get(names, query)]
        if t_ns - self._last_pcie_ns >= PCIE_MIN_INTERVAL_NS:
            self._last_pcie_ns = t_ns
            values += [v for names, query in self.pcie for v in self._get(names, query)]
        else:
            values += [None, None]
        return values


class SamplerProbe(Probe):
    name = "samplers"
    description = "psutil (process CPU, RSS, context switches, threads) and NVML (GPU util, memory, power, clocks, temperature, PCIe) on a thread"
    streams = ("host_samples", "gpu_samples")

    def __init__(self, ctx: ProbeContext) -> None:
        super().__init__(ctx)
        self._steps = ctx.steps
        self.host_reason: str | None = None
        self.gpu_reason: str | None = None
        self.gpu_name: str | None = None
        self._proc = None
        self._gpu: GpuReader | None = None
        self._nvml = None
        try:
            import psutil

            self._proc = psutil.Process()
            self._host = ctx.writer.stream("host_samples").rows.append
        except ImportError:
            self.host_reason = "psutil is not installed (pip install psutil)"
        self._open_gpu(ctx)
        if self._proc is None and self._gpu is None:
            self.absent(f"host: {self.host_reason}; gpu: {self.gpu_reason}")
        else:
            self.reason = "; ".join(r for r in (self.host_reason and f"host: {self.host_reason}",
                                                self.gpu_reason and f"gpu: {self.gpu_reason}") if r) or None  # fmt: skip
        self._sampler = SamplerThread("traceinfer-sampler", ctx.sample_hz, self._sample)

    def _open_gpu(self, ctx: ProbeContext) -> None:
        device = ctx.engine.device
        if device.type != "cuda":
            self.gpu_reason = f"the engine runs on {device.type}: no GPU to sample"
            return
        try:
            import pynvml
        except ImportError:
            self.gpu_reason = "nvidia-ml-py is not installed (pip install nvidia-ml-py)"
            return
        try:
            pynvml.nvmlInit()
        except Exception as exc:
            self.gpu_reason = f"NVML did not initialize: {exc}"
            return
        self._nvml = pynvml
        try:
            self._gpu = GpuReader(pynvml, nvml_index(device))
            self.gpu_name = self._gpu.name
            self._gpu_rows = ctx.writer.stream("gpu_samples").rows.append
        except Exception as exc:
            self.gpu_reason = f"NVML has no handle for {device}: {exc}"
            self._close_nvml()

    def _close_nvml(self) -> None:
        if self._nvml is not None:
            try:
                self._nvml.nvmlShutdown()
            except Exception:
                pass
            self._nvml = None

    def start(self) -> None:
        if not self.available:
            return
        if self._proc is not None:
            times = os.times()
            self._prev_cpu = (time.perf_counter_ns(), times.user + times.system)  # cpu_percent's reference point
        self._sampler.start()

    def stop(self) -> None:
        self._sampler.stop()
        self._close_nvml()

    def _sample(self) -> None:
        t = time.perf_counter_ns()
        step = self._steps.step
        proc = self._proc
        if proc is not None:
            with proc.oneshot():  # two /proc reads: statm, status
                rss = proc.memory_info().rss
                ctx = proc.num_ctx_switches()
                threads = proc.num_threads()
            times = os.times()  # one syscall; psutil.cpu_times would read a third file
            cpu = times.user + times.system
            prev_t, prev_cpu = self._prev_cpu
            pct = 100.0 * (cpu - prev_cpu) / ((t - prev_t) / 1e9) if t > prev_t else None
            self._prev_cpu = (t, cpu)
            self._host((t, step, pct, rss, threads, ctx.voluntary, ctx.involuntary, times.user, times.system))
        if self._gpu is not None:
            self._gpu_rows((t, step, *self._gpu.read(t)))

    def info(self) -> dict:
        return {
            **super().info(),
            **self._sampler.info(),
            "host": {"available": self._proc is not None, "reason": self.host_reason},
            "gpu": {
                "available": self._gpu is not None, "reason": self.gpu_reason, "name": self.gpu_name,
                "unsupported_fields": sorted(self._gpu.unsupported) if self._gpu else None,
            },
        }  # fmt: skip
