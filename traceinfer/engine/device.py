"""The engine's device: resolving names, synchronizing, and measuring what the device can do.

The measured rates (copy bandwidth, matmul rate) feed the physical floor of a run
(traceinfer.analysis.floor); ``scripts/bench_attention.py`` times its kernels against them too.
"""

from __future__ import annotations

import functools
import gc
import platform
import re
import time
from collections.abc import Callable

import numpy as np
import torch

from traceinfer.errors import ConfigError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
CUDA_MODEL = "synthetic:qwen3-0.6b"  # what model = "auto" loads on a GPU
CPU_MODEL = "synthetic:tiny"  # ... and on a CPU


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda when available, else cpu; a named device is checked against this machine."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not re.fullmatch(r"cpu|cuda(:\d+)?", name):
        raise ConfigError(f"engine.device must be one of auto, cpu, cuda, cuda:N, got {name!r}")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"engine.device={name!r} but torch sees no CUDA device on this machine")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            present = ", ".join(f"cuda:{i}" for i in range(count))
            devices = f"{count} CUDA device{'s' * (count > 1)}"
            raise ConfigError(f"engine.device={name!r} but this machine has {devices}: {present}")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return DTYPES[name]


def resolve_model(name: str, device: torch.device) -> str:
    """'auto' -> the embedded model sized for the device; any other name as given."""
    if name != "auto":
        return name
    return CUDA_MODEL if device.type == "cuda" else CPU_MODEL


def to_device(values, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A host list or numpy array as ``dtype`` on ``device``; on CUDA through pinned memory, without waiting.
    Lists go through numpy: torch.tensor on a list of 8192 ints took 598 us, np.array 154 us."""
    t = torch.from_numpy(np.asarray(values, dtype=_numpy_dtype(dtype)))
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


@functools.cache
def _numpy_dtype(dtype: torch.dtype) -> np.dtype:
    return torch.empty(0, dtype=dtype).numpy().dtype


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_op(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Best seconds of ``repeats`` calls after one warm-up; CUDA events on CUDA, perf_counter on CPU."""
    fn()
    synchronize(device)
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            with torch.cuda.device(device):  # events record on the current device's stream
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
            seconds = start.elapsed_time(end) / 1e3
        else:
            t0 = time.perf_counter()
            fn()
            seconds = time.perf_counter() - t0
        best = min(best, seconds)
    return best


def measure_bandwidth(device: torch.device, nbytes: int | None = None, repeats: int = 10) -> float:
    """Device-to-device copy rate in bytes/s, counting bytes read plus bytes written (1 GiB on CUDA, 128 MiB on CPU)."""
    nbytes = nbytes or (2**30 if device.type == "cuda" else 2**27)
    src = torch.empty(nbytes, dtype=torch.uint8, device=device).fill_(1)
    dst = torch.empty_like(src)
    seconds = time_op(lambda: dst.copy_(src), device, repeats)
    return 2 * nbytes / seconds


def measure_matmul(device: torch.device, dtype: torch.dtype, n: int | None = None, repeats: int = 10) -> float:
    """Square GEMM rate in FLOP/s (8192^3 on CUDA, 1024^3 on CPU) in the serving dtype."""
    n = n or (8192 if device.type == "cuda" else 1024)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    seconds = time_op(lambda: torch.mm(a, b), device, repeats)
    return 2.0 * n**3 / seconds


def release_memory(device: torch.device) -> tuple[int, int] | None:
    """Collect garbage and hand the caching allocator's free blocks back to the device; returns the device's
    (free, total) bytes then (None on a CPU)."""
    gc.collect()
    if device.type != "cuda":
        return None
    torch.cuda.empty_cache()
    return torch.cuda.mem_get_info(device)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


def freeze_gc() -> None:
    """Move every object alive now out of the collector's reach (gc.freeze), after one full collection.

    A loaded model, torch and transformers leave ~10^5 long-lived objects; frozen, full collections in the
    serving loop stop scanning them again and again (vLLM does the same). It is process-wide and lasts
    until ``gc.unfreeze()``, so it is the choice of an entry point (the commands make it once the engine
    is built), never of the engine itself."""
    gc.collect()
    gc.freeze()
