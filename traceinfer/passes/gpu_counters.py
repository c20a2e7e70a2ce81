"""The GPU's own cumulative counters (NVML), read before and after a timed pass: the energy the board drew,
and how long a limiter (the power cap, heat, or any) held the clocks below the application clocks.

Two passes of one benchmark a few percent apart are told apart by these: a pass that ran on held-back clocks
measured the machine, not the engine. Reading costs a few NVML calls on each side of a pass and nothing
during it. Without a CUDA device, nvidia-ml-py or a reachable NVML there are no readings (``reason`` says
why); a counter the GPU does not keep is None, never 0.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

# nvmlPerfPolicyType_t: the limiters whose time below application clocks NVML adds up (violationTime, ns)
LIMITERS = {"power": 0, "thermal": 1, "any": 10}


@dataclass(frozen=True)
class Reading:
    t_ns: int  # time.perf_counter_ns() when read
    energy_mj: int | None  # the board's energy since the driver loaded, millijoules
    limited_ns: dict[str, int | None]  # limiter -> its time below application clocks since the driver loaded
    temperature_c: int | None


class GpuCounters:
    """NVML's counters of one torch device."""

    def __init__(self, device) -> None:
        self.reason: str | None = None
        self._nv = self._handle = None
        if device.type != "cuda":
            self.reason = "not a CUDA device"
            return
        try:
            import pynvml

            from traceinfer.probes.samplers import nvml_index

            pynvml.nvmlInit()
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(nvml_index(device))
            self._nv = pynvml
        except Exception as exc:  # ImportError, NVMLError: the bench runs on without the counters
            self.reason = f"NVML unavailable: {exc}"

    def read(self) -> Reading | None:
        if self._nv is None:
            return None
        nv, h = self._nv, self._handle

        def get(fn):
            try:
                return int(fn())
            except nv.NVMLError:
                return None

        return Reading(
            time.perf_counter_ns(),
            get(lambda: nv.nvmlDeviceGetTotalEnergyConsumption(h)),
            {name: get(lambda p=p: nv.nvmlDeviceGetViolationStatus(h, p).violationTime) for name, p in LIMITERS.items()},
            get(lambda: nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU)),
        )

    def close(self) -> None:
        if self._nv is not None:
            try:
                self._nv.nvmlShutdown()
            except self._nv.NVMLError:
                pass
            self._nv = None


def between(before: Reading | None, after: Reading | None, output_tokens: int) -> dict | None:
    """What the counters say about the span between two readings (JSON-ready); None without readings."""
    if before is None or after is None or after.t_ns <= before.t_ns:
        return None
    seconds = (after.t_ns - before.t_ns) / 1e9
    energy_j = None
    if before.energy_mj is not None and after.energy_mj is not None:
        energy_j = (after.energy_mj - before.energy_mj) / 1e3
    limited = {}
    for name in LIMITERS:
        a, b = before.limited_ns.get(name), after.limited_ns.get(name)
        limited[name] = None if a is None or b is None else min(max((b - a) / 1e9 / seconds, 0.0), 1.0)
    return {
        "seconds": seconds,
        "energy_j": energy_j,
        "mean_power_w": energy_j / seconds if energy_j is not None else None,
        "output_tokens_per_j": output_tokens / energy_j if energy_j else None,
        "limited_share": limited,  # limiter -> share of the span the clocks were held below application clocks
        "temperature_c": [before.temperature_c, after.temperature_c],
    }
