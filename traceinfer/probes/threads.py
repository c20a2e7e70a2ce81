"""Thread probe (stream 'thread_samples'): a stack sample of every Python thread, with its CPU time.

At ``stack_hz`` a sampler thread reads ``sys._current_frames()`` and writes, per thread, its folded
stack (root first, frames ``dir/file.py:qualname`` joined by ';', the interchange format of
traceinfer.flamegraphs) and its CPU time from ``pthread_getcpuclockid`` (null where the OS has no
per-thread clock). Example stack::

    traceinfer/cli.py:main;traceinfer/profile.py:run_profile;engine/llm_engine.py:LLMEngine.step

The sampler leaves itself out. A thread whose CPU clock has not moved since the last sample cannot
have run a bytecode since, so its previous stack is reused instead of walked again (idle threads
then cost one clock read).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any

from traceinfer.flamegraphs.folded import python_frame
from traceinfer.probes.base import Probe, ProbeContext, SamplerThread

MAX_DEPTH = 128


def frame_label(code) -> str:
    """``dir/file.py:qualname`` of a code object (traceinfer.flamegraphs.folded.python_frame)."""
    return python_frame(code.co_filename, getattr(code, "co_qualname", code.co_name))


class ThreadProbe(Probe):
    name = "threads"
    description = "per-thread CPU time and stack samples of every thread (sys._current_frames)"
    streams = ("thread_samples",)

    def __init__(self, ctx: ProbeContext) -> None:
        super().__init__(ctx)
        self._append = ctx.writer.stream("thread_samples").rows.append
        self._steps = ctx.steps
        self._labels: dict[Any, str] = {}  # code object -> label
        self._threads: dict[int, tuple[str, int | None, int | None]] = {}  # ident -> (name, native id, clock id)
        self._last: dict[int, tuple[int | None, str]] = {}  # ident -> (cpu_ns, stack) of its last sample
        self.reused = 0
        self._sampler = SamplerThread("traceinfer-stacks", ctx.stack_hz, self._sample)
        if not hasattr(time, "pthread_getcpuclockid"):
            self.reason = f"no per-thread CPU clock on {sys.platform}: cpu_ns is null"

    def start(self) -> None:
        self._sampler.start()

    def stop(self) -> None:
        self._sampler.stop()

    def _thread(self, ident: int) -> tuple[str, int | None, int | None]:
        thread = threading._active.get(ident)
        name = thread.name if thread is not None else f"thread-{ident}"
        native = getattr(thread, "native_id", None) if thread is not None else None
        clock = None
        if hasattr(time, "pthread_getcpuclockid"):
            try:
                clock = time.pthread_getcpuclockid(ident)
            except (OSError, OverflowError):
                clock = None
        info = (name, native, clock)
        self._threads[ident] = info
        return info

    def _fold(self, frame) -> str:
        labels = self._labels
        out = []
        depth = 0
        while frame is not None and depth < MAX_DEPTH:
            code = frame.f_code
            label = labels.get(code)
            if label is None:
                label = labels[code] = frame_label(code)
            out.append(label)
            frame = frame.f_back
            depth += 1
        out.reverse()
        return ";".join(out)

    def _sample(self) -> None:
        t = time.perf_counter_ns()
        frames = sys._current_frames()
        me = threading.get_ident()
        step = self._steps.step
        known, last = self._threads, self._last
        for gone in known.keys() - frames.keys():
            del known[gone]
            last.pop(gone, None)
        for ident, frame in frames.items():
            if ident == me:
                continue
            name, native, clock = known.get(ident) or self._thread(ident)
            cpu = None
            if clock is not None:
                try:
                    cpu = time.clock_gettime_ns(clock)
                except OSError:  # the thread ended between the two calls
                    pass
            prev = last.get(ident)
            if cpu is not None and prev is not None and prev[0] == cpu:
                stack = prev[1]  # it has not run since: same stack
                self.reused += 1
            else:
                stack = self._fold(frame)
                last[ident] = (cpu, stack)
            self._append((t, step, ident, native, name, cpu, stack))
        del frames

    def info(self) -> dict:
        return {**super().info(), **self._sampler.info(), "stacks_reused": self.reused, "pid": os.getpid()}
