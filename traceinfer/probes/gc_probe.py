"""GC probe (stream 'gc'): every collection from ``gc.callbacks``, with the step it landed in.

``gc.callbacks`` calls ``callback(phase, info)`` with phase "start" or "stop" and info
``{generation, collected, uncollectable}`` (https://docs.python.org/3/library/gc.html#gc.callbacks).
The pause is the time between the two calls.
"""

from __future__ import annotations

import gc
import threading
import time

from traceinfer.probes.base import Probe, ProbeContext


class GCProbe(Probe):
    name = "gc"
    description = "garbage-collector pauses: generation, duration, collected, uncollectable, step"
    streams = ("gc",)

    def __init__(self, ctx: ProbeContext) -> None:
        super().__init__(ctx)
        self._append = ctx.writer.stream("gc").rows.append
        self._steps = ctx.steps
        self._start_ns: int | None = None
        self.collections = 0
        self.pause_ns = 0

    def _callback(self, phase: str, info: dict) -> None:
        t = time.perf_counter_ns()
        if phase == "start":
            self._start_ns = t
            return
        start = self._start_ns if self._start_ns is not None else t
        self._start_ns = None
        steps = self._steps
        self._append(
            (start, t - start, info.get("generation"), info.get("collected"), info.get("uncollectable"),
             steps.step, steps.in_step, threading.current_thread().name)
        )  # fmt: skip
        self.collections += 1
        self.pause_ns += t - start

    def start(self) -> None:
        gc.callbacks.append(self._callback)

    def stop(self) -> None:
        while self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)

    def info(self) -> dict:
        return {**super().info(), "collections": self.collections, "pause_s": round(self.pause_ns / 1e9, 6)}
