"""What every probe shares: its options, the context it runs in, and the Probe interface.

A probe is a set of hook subscribers (``subscriptions()``: point -> callable) plus, for samplers, a
thread. A subscriber does as little as it can: read the clock the hook gave it, build one tuple,
append it to a stream's row list. The run writer pickles the rows behind the GPU and an encoder process
writes them (traceinfer.rundir.writer).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from traceinfer.config import ProbesConfig

if TYPE_CHECKING:
    from traceinfer.engine.llm_engine import LLMEngine
    from traceinfer.rundir.writer import RunWriter


class StepState:
    """The engine step now running (or the last one): every probe tags its records with it.

    Subscribed to the 'step' point before any probe, so a probe's step-begin handler already sees
    the new index."""

    __slots__ = ("in_step", "step")

    def __init__(self) -> None:
        self.step: int | None = None
        self.in_step = False

    def __call__(self, point: str, phase: str, t_ns: int, fields: dict) -> None:
        if phase == "B":
            self.step = fields.get("step")
            self.in_step = True
        elif phase == "E":
            self.in_step = False


@dataclass
class ProbeContext:
    engine: LLMEngine
    writer: RunWriter
    options: ProbesConfig
    steps: StepState
    sample_hz: float
    stack_hz: float


class Probe:
    """One probe. Subclasses set ``name`` and ``streams`` and override what they need."""

    name: ClassVar[str]
    description: ClassVar[str]
    streams: ClassVar[tuple[str, ...]] = ()

    def __init__(self, ctx: ProbeContext) -> None:
        self.ctx = ctx
        self.available = True
        self.reason: str | None = None  # why it is absent or partial

    def absent(self, reason: str) -> None:
        """Mark the probe absent (no package, no hardware): it records nothing and says why."""
        self.available = False
        self.reason = reason

    def subscriptions(self) -> dict[str, Callable[[str, str, int, dict], None]]:
        """Hook point -> subscriber; called once, after start()."""
        return {}

    def start(self) -> None:
        """Begin recording (threads, callbacks, snapshots); subscriptions are installed after it."""

    def stop(self) -> None:
        """Stop recording; called after the hook subscriptions are gone. Must be safe to call twice."""

    def info(self) -> dict[str, Any]:
        """What the manifest says about this probe."""
        written = self.ctx.writer.streams
        return {
            "available": self.available,
            "reason": self.reason,
            "streams": [s for s in self.streams if s in written],
        }


class SamplerThread:
    """Calls ``sample()`` every 1/hz seconds on its own daemon thread until stopped; measures its own CPU."""

    def __init__(self, name: str, hz: float, sample: Callable[[], None]) -> None:
        self.hz = hz
        self.samples = 0
        self.errors = 0
        self.last_error: str | None = None
        self.cpu_s = 0.0
        self._sample = sample
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    @property
    def ident(self) -> int | None:
        return self._thread.ident

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        period = 1.0 / self.hz
        deadline = time.perf_counter()
        while True:
            try:
                self._sample()
                self.samples += 1
            except Exception as exc:  # a sampler must never take the run down
                self.errors += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
            self.cpu_s = time.thread_time()
            deadline += period
            now = time.perf_counter()
            deadline = max(deadline, now)
            if self._stop.wait(deadline - now):
                return

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def info(self) -> dict[str, Any]:
        return {
            "hz": self.hz, "samples": self.samples, "thread_cpu_s": round(self.cpu_s, 4),
            "errors": self.errors, "last_error": self.last_error,
        }  # fmt: skip
