"""Telemetry probe: what the other probes see, kept as sliding windows for the live endpoint and ``top``.

It writes no stream. Each subscriber appends one tuple to the telemetry's inbox (traceinfer.telemetry.windows
says what) and returns; the stage spans only add a clock difference into the current step's list. A thread
of the telemetry's own folds the inbox into counters, histograms and windows at 4 Hz, and a snapshot or a
scrape computes percentiles on its caller's thread. ``self.telemetry`` is what an endpoint serves
(``TelemetryServer.serve``) and what ``traceinfer top`` draws in-process.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable

from traceinfer.probes.base import Probe, ProbeContext
from traceinfer.rundir.schema import STAGES

# traceinfer.telemetry imports traceinfer.probes (its sampler thread): imported where used, so that either
# package can be imported first

DEFAULT_WINDOW_S = 30.0


def gpu_sampler(device):
    """A GpuSampler of ``device`` (traceinfer.telemetry.windows), or one that says why there is none."""
    from traceinfer.telemetry.windows import GpuSampler

    if device.type != "cuda":
        return GpuSampler(None, f"the engine runs on {device.type}: no GPU to sample")
    from traceinfer.probes.samplers import nvml_index

    return GpuSampler(nvml_index(device))


class TelemetryProbe(Probe):
    name = "telemetry"
    description = "sliding windows of requests, tokens, KV, steps by phase, GC and GPU for the live endpoint and top"

    def __init__(self, ctx: ProbeContext, window_s: float = DEFAULT_WINDOW_S) -> None:
        super().__init__(ctx)
        engine = ctx.engine
        bm = engine.block_manager
        info = {"model": getattr(engine, "model_label", None), "device": str(engine.device),
                "num_kv_blocks": bm.num_blocks, "block_size": bm.block_size}  # fmt: skip
        from traceinfer.telemetry.windows import Telemetry

        self.telemetry = Telemetry(window_s, info, gpu_sampler(engine.device))
        self._put = self.telemetry.put
        self._stages = [0] * len(STAGES)
        self._t_step: int | None = None
        self._step = -1
        self._summary: dict | None = None
        self._gc_start: int | None = None

    def subscriptions(self) -> dict[str, Callable]:
        put = self._put
        subs: dict[str, Callable] = {
            "step": self._on_step,
            "add_request": lambda point, phase, t, f: put(("arrival", t, f)),
            "block": lambda point, phase, t, f: put(("block", f["ops"])),
            "tokens": lambda point, phase, t, f: put(("tokens", t, f)),
            "finish": lambda point, phase, t, f: put(("finish", t, f)),
        }
        for i, stage in enumerate(STAGES):
            subs[stage] = self._stage(i, stage == "schedule")
        return subs

    def _on_step(self, point: str, phase: str, t: int, f: dict) -> None:
        if phase == "B":
            self._t_step = t
            self._step = f.get("step")
            self._stages = [0] * len(STAGES)
            self._summary = None
        elif self._t_step is not None:
            handover = f.get("handover")
            self._put(("step", self._step, self._t_step, t, self._stages, handover[1] if handover else None, self._summary))
            self._t_step = None

    def _stage(self, i: int, schedule: bool) -> Callable:
        begin = [0]

        def on_stage(point: str, phase: str, t: int, f: dict) -> None:
            if phase == "B":
                begin[0] = t
            elif self._t_step is not None:
                self._stages[i] += t - begin[0]
                if schedule:
                    self._summary = f  # the span's end fields: a fresh dict each step

        return on_stage

    def _gc(self, phase: str, info: dict) -> None:
        t = time.perf_counter_ns()
        if phase == "start":
            self._gc_start = t
        elif self._gc_start is not None:
            self._put(("gc", self._gc_start, t - self._gc_start, info.get("generation")))
            self._gc_start = None

    def start(self) -> None:
        gc.callbacks.append(self._gc)
        self.telemetry.start()

    def stop(self) -> None:
        while self._gc in gc.callbacks:
            gc.callbacks.remove(self._gc)
        self.telemetry.stop()

    def info(self) -> dict:
        t = self.telemetry
        return {**super().info(), "thread_cpu_s": round(t.cpu_s, 4), "window_s": t.window_s,
                "gpu": {"available": t.gpu.available, "reason": t.gpu.reason}}  # fmt: skip
