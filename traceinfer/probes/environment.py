"""What the manifest says about where a run ran: packages, device, host, git commit."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path

PACKAGES = (
    "traceinfer",
    "torch",
    "transformers",
    "triton",
    "numpy",
    "pandas",
    "psutil",
    "nvidia-ml-py",
    "nvtx",
    "pyarrow",
)


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    """Installed distribution version of each package (None for one that is not installed), and, once
    torch is imported, what it says at run time: ``torch_runtime`` is ``torch.__version__`` with its build
    tag (``2.14.1+cu130`` where the distribution is ``2.14.1``), ``cuda`` the CUDA it was built for."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    torch = sys.modules.get("torch")
    if torch is not None:
        out["torch_runtime"] = str(torch.__version__)
        out["cuda"] = torch.version.cuda
    return out


def git_info(path: str | Path | None = None) -> dict | None:
    """Commit and dirtiness of the checkout holding traceinfer; None outside a git checkout."""
    cwd = Path(path) if path else Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd, capture_output=True, text=True,
            timeout=5, check=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": bool(status.strip())}


def device_info(device) -> dict:
    """The engine's device; for CUDA the name, memory, capability and driver, else what the CPU is."""
    import torch

    info: dict = {"type": device.type, "str": str(device), "cpu": platform.processor() or platform.machine(),
                  "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()}  # fmt: skip
    if device.type == "cuda" and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(device)
        info.update(
            name=props.name,
            total_memory_bytes=props.total_memory,
            capability=f"{props.major}.{props.minor}",
            multiprocessors=props.multi_processor_count,
            cuda_runtime=torch.version.cuda,
        )
        try:
            import pynvml

            pynvml.nvmlInit()
            try:
                info["driver"] = pynvml.nvmlSystemGetDriverVersion()
            finally:
                pynvml.nvmlShutdown()
        except Exception:
            info["driver"] = None
    else:
        info["name"] = f"CPU {info['cpu']}"
        info["cuda"] = None  # absent, not zero
    return info


def host_info() -> dict:
    return {"hostname": socket.gethostname(), "platform": platform.platform(), "pid": os.getpid(), "argv": sys.argv}


class HostLoad:
    """How busy the machine was while a run was open: load average, CPUs, torch's intra-op threads, and the
    share of the machine's CPU time that other processes took (all CPU time minus this process's and its
    helper processes', over wall time x CPUs). Two profiles at once on 2 cores each ran 11-28x slower with
    nothing in either run directory to show why; this is that record."""

    BUSY_SHARE = 0.25  # other processes' share of the machine above which a run is called oversubscribed

    def __init__(self) -> None:
        import psutil

        self._psutil = psutil
        self._t0 = time.monotonic()
        self._busy0 = self._machine_busy()
        self._own0 = self._own_cpu()
        self._load0 = os.getloadavg() if hasattr(os, "getloadavg") else None

    def _machine_busy(self) -> float:
        t = self._psutil.cpu_times()
        return sum(t) - t.idle - getattr(t, "iowait", 0.0)

    def _own_cpu(self, helper_pids: Iterable[int] = ()) -> float:
        """CPU seconds of this process, its ended (reaped) children, and the live helpers named."""
        t = self._psutil.Process().cpu_times()
        total = t.user + t.system + t.children_user + t.children_system
        for pid in helper_pids:
            try:
                total += sum(self._psutil.Process(pid).cpu_times()[:2])
            except self._psutil.Error:
                pass
        return total

    def finish(self, helper_pids: Iterable[int] = ()) -> dict:
        """The record, once the run is over; ``helper_pids``: our helper processes still running (their CPU
        time is ours, not another process's)."""
        wall = time.monotonic() - self._t0
        cpus = os.cpu_count() or 1
        usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cpus
        other = max(self._machine_busy() - self._busy0 - (self._own_cpu(helper_pids) - self._own0), 0.0)
        share = other / (wall * cpus) if wall > 0 else None
        load = os.getloadavg() if hasattr(os, "getloadavg") else None
        torch = sys.modules.get("torch")
        out = {
            "cpu_count": cpus,
            "usable_cpus": usable,
            "torch_intra_op_threads": torch.get_num_threads() if torch is not None else None,
            "load_average_start": list(self._load0) if self._load0 else None,
            "load_average_end": list(load) if load else None,
            "other_processes_cpu_share": share,
            "wall_s": wall,
        }
        busy = share is not None and share > self.BUSY_SHARE
        loaded = load is not None and load[0] > usable + 0.5
        out["oversubscribed"] = bool(busy or loaded)
        return out


def describe_host_load(load: dict) -> str | None:
    """A warning line when the machine was oversubscribed during the run, else None."""
    if not load.get("oversubscribed"):
        return None
    share = load.get("other_processes_cpu_share")
    avg = (load.get("load_average_end") or [None])[0]
    text = f"warning: the machine was busy during the run: other processes took {100 * (share or 0):.0f}% of its {load['cpu_count']} CPUs"
    if avg is not None:
        text += f" (load average {avg:.1f})"
    return text + ("; timings are slower than on an idle machine: profile one run at a time, or set OMP_NUM_THREADS=1 "
                   "when the CPU is shared")  # fmt: skip
