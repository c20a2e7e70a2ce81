"""py-spy probe (name 'pyspy'): py-spy samples the engine's process from outside while the run is open.

py-spy (https://github.com/benfred/py-spy) reads the Python stacks of a running process from its memory,
at ``pyspy_rate`` Hz, with optional ``--gil`` (only samples holding the GIL), ``--idle`` (idle threads
too), ``--native`` (C/C++ frames), ``--nonblocking`` (never pauses the process: cheaper, less exact) and
``--subprocesses`` (our encoder and sampler processes). It writes a Chrome trace (``--format
chrometrace``): per thread, spans of identical stacks with times in microseconds from py-spy's own start.

To join those samples to the engine's step trace (traceinfer.analysis.phases) the two clocks must be
aligned. Once py-spy is sampling, the engine thread runs ``sync_marker``: it alternates between two
functions py-spy can see, switching SWITCHES times at known ``perf_counter_ns`` instants spaced by an
irrational multiple of the sampling interval, so the first sample after each switch bounds the offset
between the clocks from a different phase of the sampling grid (the manifest keeps the switch times).

If py-spy is missing or cannot attach (no ptrace permission, a container without SYS_PTRACE) the probe
is absent and says why and how to fix it; the run goes on without it.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from traceinfer.probes.base import Probe, ProbeContext
from traceinfer.rundir.schema import PYSPY_LOG, PYSPY_TRACE

SWITCHES = 24  # marker switches: the offset is known to about a sampling interval / SWITCHES
STEP = 1.381966  # switch spacing in sampling intervals (1 + 1/golden ratio^2: incommensurate with the grid)
ATTACH_TIMEOUT_S = 15.0
PTRACE_HELP = ("py-spy needs ptrace permission: run as root, or `sudo setcap cap_sys_ptrace+ep $(which py-spy)`, "
               "or `sudo sysctl kernel.yama.ptrace_scope=0`; in a container add --cap-add SYS_PTRACE")  # fmt: skip


def pyspy_sync_even(until_ns: int) -> None:
    """Busy until ``until_ns`` (one half of the clock-alignment marker; py-spy sees this frame)."""
    while time.perf_counter_ns() < until_ns:
        pass


def pyspy_sync_odd(until_ns: int) -> None:
    """Busy until ``until_ns`` (the other half of the marker)."""
    while time.perf_counter_ns() < until_ns:
        pass


def sync_marker(interval_ns: int, switches: int = SWITCHES) -> list[int]:
    """Alternate between the two marker functions; returns the ``perf_counter_ns`` of each switch (the
    first is the marker's start)."""
    marks = []
    for i in range(switches + 1):
        start = time.perf_counter_ns()
        marks.append(start)
        (pyspy_sync_even if i % 2 == 0 else pyspy_sync_odd)(start + int(STEP * interval_ns))
    marks.append(time.perf_counter_ns())  # the marker's end
    return marks


def find_pyspy() -> str | None:
    """The py-spy executable: on PATH, or beside this Python (a venv's bin/, when it is not on PATH)."""
    found = shutil.which("py-spy")
    if found:
        return found
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else None


class PySpyProbe(Probe):
    name = "pyspy"
    description = "py-spy stack samples of the engine's process, with times, for CPU flame graphs per engine phase"
    streams = ()

    def __init__(self, ctx: ProbeContext) -> None:
        super().__init__(ctx)
        o = ctx.options
        self.rate = o.pyspy_rate
        self.flags = [flag for flag, on in (("--gil", o.pyspy_gil), ("--idle", o.pyspy_idle), ("--native", o.pyspy_native),
                      ("--nonblocking", o.pyspy_nonblocking), ("--subprocesses", o.pyspy_subprocesses)) if on]  # fmt: skip
        self.binary = o.pyspy_path or find_pyspy()
        self.proc: subprocess.Popen | None = None
        self.marks: list[int] = []
        self.engine_thread = threading.get_ident()  # attach runs on the thread that steps the engine
        self.threads: dict[int, str] = {}
        self.cpu_s: float | None = None
        self.samples = self.errors = None
        self.exit_code: int | None = None
        if self.binary is None:
            self.absent("py-spy is not installed (pip install py-spy)")
        elif not os.access(self.binary, os.X_OK):
            self.absent(f"py-spy was not found at {self.binary} (an executable; or leave pyspy_path unset)")

    @property
    def trace_path(self) -> Path:
        return self.ctx.writer.path / PYSPY_TRACE

    @property
    def log_path(self) -> Path:
        return self.ctx.writer.path / PYSPY_LOG

    def start(self) -> None:
        if not self.available:
            return
        cmd = [self.binary, "record", "--pid", str(os.getpid()), "--format", "chrometrace", "--rate", str(self.rate),
               "--output", str(self.trace_path), *self.flags]  # fmt: skip
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + ATTACH_TIMEOUT_S
        while time.monotonic() < deadline:  # py-spy says "Sampling process ..." once it has attached
            if self.proc.poll() is not None:
                self._wait()
                self.absent(f"py-spy could not attach to process {os.getpid()}: {self._error_line()}. {PTRACE_HELP}")
                return
            if b"Sampling process" in self.log_path.read_bytes():
                break
            time.sleep(0.01)
        else:
            self._kill()
            self.absent(f"py-spy did not start sampling within {ATTACH_TIMEOUT_S:.0f} s: {self._error_line()}")
            return
        self.threads = {t.ident: t.name for t in threading.enumerate() if t.ident is not None}
        self.marks = sync_marker(int(1e9 / self.rate))

    def _error_line(self) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("py-spy> Sampling")]
        errors = [ln for ln in lines if ln.lower().startswith("error")]
        return (errors or lines or ["no output"])[0]

    def stop(self) -> None:
        """SIGINT makes py-spy write its trace and exit (as Ctrl-C does); its CPU time comes from wait4."""
        if self.proc is None:
            return
        self.threads.update({t.ident: t.name for t in threading.enumerate() if t.ident is not None})  # and the ended
        if self.proc.returncode is None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        self._wait()
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        found = re.search(r"Samples: (\d+) Errors: (\d+)", text)
        if found:
            self.samples, self.errors = int(found.group(1)), int(found.group(2))
        if not self.trace_path.exists():
            self.reason = f"py-spy wrote no trace (exit {self.exit_code}): {self._error_line()}"

    def _wait(self, timeout_s: float = 60.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.returncode is not None:  # already reaped (poll): its exit status, no resource usage
            self.exit_code = proc.returncode
            return
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                proc.returncode = self.exit_code = os.waitstatus_to_exitcode(status)
                self.cpu_s = usage.ru_utime + usage.ru_stime
                return
            time.sleep(0.02)
        proc.kill()
        proc.wait()
        self.exit_code = proc.returncode
        self.reason = f"py-spy did not finish within {timeout_s:.0f} s and was killed"

    def _kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self._wait()

    def info(self) -> dict:
        return {
            **super().info(),
            "binary": self.binary,
            "rate_hz": self.rate,
            "flags": self.flags,
            "trace": PYSPY_TRACE if self.trace_path.exists() else None,
            "samples": self.samples,
            "errors": self.errors,
            "process_cpu_s": round(self.cpu_s, 4) if self.cpu_s is not None else None,
            "engine_thread": self.engine_thread,
            "threads": {str(k): v for k, v in self.threads.items()},
            "sync_marks_ns": self.marks,
        }
