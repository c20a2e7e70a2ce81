"""A stdlib-only script of this package run as a child process: the stream encoder (traceinfer.rundir.encoder)
and the sampler (traceinfer.probes.sampler_process). Standard library only."""

from __future__ import annotations

import json
import select
import subprocess
import sys


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
