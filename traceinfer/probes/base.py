"""What every probe shares: its options, the context it runs in, and the Probe interface.

A probe is a set of hook subscribers (``subscriptions()``: point -> callable) plus, for samplers, a
thread. A subscriber does as little as it can: read the clock the hook gave it, build one tuple,
append it to a stream's row list. The run writer pickles the rows behind the GPU and an encoder process
writes them (traceinfer.probes.rundir).
"""

from __future__ import annotations

import json
import select
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from traceinfer.errors import ConfigError

if TYPE_CHECKING:
    from traceinfer.engine.llm_engine import LLMEngine
    from traceinfer.probes.rundir import RunWriter


@dataclass(frozen=True)
class ProbeOptions:
    """Options of the probes; shaped to be the ``[probes]`` section of traceinfer.toml.

    A rate left at None takes the selection's rate: 20 Hz, or 100 Hz when ``all`` is selected (the
    overhead target of ``all`` is stated at 100 Hz)."""

    select: str = "default"  # off | default | all | a list of probe names, e.g. "steps,kv"
    sample_hz: float | None = None  # NVML and psutil sampler rate
    stack_hz: float | None = None  # thread stack sampler rate
    nvtx_layers: bool = False  # an NVTX range per decoder layer (eager forwards only: graphs run no Python)
    cuda_profiler_range: bool = (
        True  # torch.cuda.profiler start/stop around the window (nsys --capture-range=cudaProfilerApi)
    )
    memory_snapshot: bool = False  # record torch.cuda.memory history and dump a snapshot at the end
    flush_interval_s: float = 0.5  # how often streams reach the disk: what a crash can lose

    def __post_init__(self) -> None:
        for key in ("sample_hz", "stack_hz"):
            value = getattr(self, key)
            if value is not None and not 0 < value <= 1000:
                raise ConfigError(f"probes.{key} must be in (0, 1000] Hz, got {value}")
        if not 0 < self.flush_interval_s <= 60:
            raise ConfigError(f"probes.flush_interval_s must be in (0, 60] seconds, got {self.flush_interval_s}")


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
    options: ProbeOptions
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


class HelperProcess:
    """A stdlib-only script of this package run as a child process (``python -I script args``): the
    encoder and the sampler. The protocol both follow: the child prints one JSON line once it has
    started (what it can do), reads its input from stdin, and at end of stdin finishes its work, prints
    a JSON report as its last line and exits. Starting waits for the first line, so that a child's
    start-up is not billed to the run that follows."""

    START_TIMEOUT_S = 60.0  # a child starts in tens of milliseconds; a loaded machine may be slow

    def __init__(self, name: str, script: str, args: list[str]) -> None:
        self.name = name
        self.report: dict = {}
        self.proc = subprocess.Popen(
            [sys.executable, "-I", script, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        started, _, _ = select.select([self.proc.stdout], [], [], self.START_TIMEOUT_S)
        line = self.proc.stdout.readline() if started else b""
        if not line:
            self.proc.kill()
            _, err = self.proc.communicate()
            why = f"within {self.START_TIMEOUT_S:.0f} s" if not started else f"(exit {self.proc.returncode}: {_tail(err)})"
            raise OSError(f"the {name} did not start {why}")
        self.ready: dict = json.loads(line)

    def send(self, data: bytes) -> None:
        """Write to its stdin; blocks (without the GIL) only while the pipe is full. OSError if it died."""
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def close(self, timeout_s: float) -> str | None:
        """End its input, wait until it has finished, keep its report; returns an error, or None."""
        try:
            out, err = self.proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
            return f"the {self.name} did not finish within {timeout_s:.0f} s and was killed"
        except OSError as exc:  # stdin already broken: it died before
            self.proc.wait()
            return f"the {self.name} died: {exc}"
        try:
            self.report = json.loads(out.decode().strip().splitlines()[-1])
        except (ValueError, IndexError):
            return f"the {self.name} exited with {self.proc.returncode}: {_tail(err)}"
        return None


def _tail(stderr: bytes) -> str:
    """The last line a child wrote to stderr (its exception, usually)."""
    lines = stderr.decode(errors="replace").strip().splitlines()
    return lines[-1] if lines else "no output"
