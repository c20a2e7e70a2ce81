"""What the manifest says about where a run ran: packages, device, host, git commit."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
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
