"""The sampler process: psutil for the engine's process and NVML for its GPU, at a fixed rate, in a process
of its own (started by traceinfer.probes.samplers.SamplerProbe).

Why a process and not a thread: every psutil file read and every NVML call releases the GIL and takes it
back, and each time the sampler wants it back while the engine thread holds it, the engine thread is
made to drop it and then waits to be woken again. At 100 Hz that costs the engine far more than the
sampling itself. Out here the engine pays nothing but one 8-byte write per step: the step index, into
a shared file mapped by both (``--step-file``), so every sample still names the step it fell in.

Protocol on stdin/stdout: the process opens psutil and NVML, prints one JSON line saying what it can
sample, waits for a byte ('g') on stdin, then samples, appending JSON Lines rows to ``host_samples.jsonl``
and ``gpu_samples.jsonl`` in the run directory (whose headers the engine's process wrote) about twice a
second. End of stdin (the probe stopping, or the engine's process dying) ends it: it writes what is
left and prints a JSON report (samples, rows, errors, its CPU seconds). It ignores SIGINT and SIGTERM.

Stdlib, psutil and nvidia-ml-py only: it starts (``python -I sampler_process.py ...``) without torch. Rows are in the column order of
traceinfer.probes.rundir.STREAMS (checked by the tests).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import mmap
import os
import select
import signal
import sys
import time
from collections.abc import Callable

PCIE_MIN_INTERVAL_NS = 500_000_000
WRITE_INTERVAL_S = 0.5
NO_STEP = -1  # the step cell before the first step
STEP_CELL_BYTES = ctypes.sizeof(ctypes.c_int64)  # the step cell file's size


def map_step_cell(fd: int) -> tuple[mmap.mmap, ctypes.c_int64]:
    """The shared step cell over the 8-byte file open at ``fd``: a native int64 at the start of the mapping.
    The engine's process writes it and this one reads it, each in one aligned 8-byte access, so a read never
    sees half a write. (``struct.pack_into`` zero-fills the bytes before it packs them: a sampler reading in
    between saw step 0.) Drop the int64 before closing the mapping: it holds the mapping's buffer."""
    cell_map = mmap.mmap(fd, STEP_CELL_BYTES)
    return cell_map, ctypes.c_int64.from_buffer(cell_map)


class GpuReader:
    """Reads one GPU's fields through NVML; a query that raises NotSupported is dropped for good.
    PCIe throughput is read at most twice a second: NVML measures it over 20 ms per call."""

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


class HostReader:
    """The engine's process through psutil: CPU % since the last read, RSS, threads, context switches."""

    def __init__(self, psutil, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self._prev: tuple[int, float] | None = None

    def read(self, t_ns: int) -> list:
        """Values in host_samples column order after t_ns and step."""
        proc = self.proc
        with proc.oneshot():  # three /proc reads: stat, statm, status
            times = proc.cpu_times()
            rss = proc.memory_info().rss
            ctx = proc.num_ctx_switches()
            threads = proc.num_threads()
        cpu = times.user + times.system
        pct = None
        if self._prev is not None and t_ns > self._prev[0]:
            pct = 100.0 * (cpu - self._prev[1]) / ((t_ns - self._prev[0]) / 1e9)
        self._prev = (t_ns, cpu)
        return [pct, rss, threads, ctx.voluntary, ctx.involuntary, times.user, times.system]


def open_host(pid: int) -> tuple[HostReader | None, str | None]:
    try:
        import psutil
    except ImportError:
        return None, "psutil is not installed (pip install psutil)"
    try:
        reader = HostReader(psutil, pid)
        reader.read(time.perf_counter_ns())  # the reference point of the first CPU %
        return reader, None
    except Exception as exc:
        return None, f"psutil cannot read process {pid}: {exc}"


def open_gpu(index: int) -> tuple[GpuReader | None, str | None]:
    try:
        import pynvml
    except ImportError:
        return None, "nvidia-ml-py is not installed (pip install nvidia-ml-py)"
    try:
        pynvml.nvmlInit()
    except Exception as exc:
        return None, f"NVML did not initialize: {exc}"
    try:
        return GpuReader(pynvml, index), None
    except Exception as exc:
        return None, f"NVML has no handle for GPU {index}: {exc}"


class Sampler:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.host, self.host_reason = open_host(args.pid)
        if args.nvml_index >= 0:
            self.gpu, self.gpu_reason = open_gpu(args.nvml_index)
        else:
            self.gpu, self.gpu_reason = None, args.no_gpu_reason
        self.rows: dict[str, list] = {"host_samples.jsonl": [], "gpu_samples.jsonl": []}
        self.written = {"host_samples.jsonl": 0, "gpu_samples.jsonl": 0}
        self.samples = self.errors = 0
        self.last_error: str | None = None
        fd = os.open(args.step_file, os.O_RDWR)  # a ctypes view needs a writable mapping; only the engine writes
        try:
            self.cell_map, self.cell = map_step_cell(fd)
        finally:
            os.close(fd)

    def ready(self) -> dict:
        return {
            "host": {"available": self.host is not None, "reason": self.host_reason},
            "gpu": {"available": self.gpu is not None, "reason": self.gpu_reason,
                    "name": self.gpu.name if self.gpu else None},
        }  # fmt: skip

    def sample(self) -> None:
        t = time.perf_counter_ns()  # CLOCK_MONOTONIC: the engine process's perf_counter_ns clock
        step = self.cell.value
        step = None if step == NO_STEP else step
        try:
            if self.host is not None:
                self.rows["host_samples.jsonl"].append((t, step, *self.host.read(t)))
            if self.gpu is not None:
                self.rows["gpu_samples.jsonl"].append((t, step, *self.gpu.read(t)))
            self.samples += 1
        except Exception as exc:  # a sample that fails is counted, the sampling goes on
            self.errors += 1
            self.last_error = f"{type(exc).__name__}: {exc}"

    def write(self) -> None:
        for name, rows in self.rows.items():
            if rows:
                with open(os.path.join(self.args.run_dir, name), "a", encoding="utf-8") as fh:
                    fh.write(json.dumps(rows, separators=(",", ":")) + "\n")  # one line per write
                self.written[name] += len(rows)
                rows.clear()

    def run(self, stdin_fd: int) -> None:
        period = 1.0 / self.args.hz
        deadline = next_write = time.perf_counter()
        while True:
            self.sample()
            now = time.perf_counter()
            if now >= next_write:
                self.write()
                next_write = now + WRITE_INTERVAL_S
            deadline = max(deadline + period, now)
            readable, _, _ = select.select([stdin_fd], [], [], deadline - now)
            if readable and not os.read(stdin_fd, 4096):  # end of input: stop
                break
        self.write()

    def report(self) -> dict:
        t = os.times()
        return {
            "samples": self.samples, "errors": self.errors, "last_error": self.last_error,
            "host_rows": self.written["host_samples.jsonl"], "gpu_rows": self.written["gpu_samples.jsonl"],
            "unsupported_fields": sorted(self.gpu.unsupported) if self.gpu else None,
            "cpu_s": round(t.user + t.system, 4),
        }  # fmt: skip


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="traceinfer's sampler process (started by the samplers probe)")
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--pid", type=int, required=True, help="the engine's process")
    parser.add_argument("--hz", type=float, required=True)
    parser.add_argument("--step-file", required=True)
    parser.add_argument("--nvml-index", type=int, default=-1, help="the engine's GPU; -1: none")
    parser.add_argument("--no-gpu-reason", default="the engine runs on no GPU")
    args = parser.parse_args(argv[1:])
    for sig in (signal.SIGINT, signal.SIGTERM):  # the engine's process decides when sampling ends
        signal.signal(sig, signal.SIG_IGN)
    sampler = Sampler(args)
    print(json.dumps(sampler.ready()), flush=True)
    stdin_fd = sys.stdin.fileno()
    if os.read(stdin_fd, 1) == b"g":  # nothing (end of input): the probe gave up before starting
        sampler.run(stdin_fd)
    print(json.dumps(sampler.report()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
