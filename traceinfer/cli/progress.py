"""What a command shows while it works: phases (model load, warm-up, the run) and a pass's progress.

On a terminal a rich live line, redrawn by the engine's own thread between steps at most twice a second
(no refresh thread: any thread that takes the GIL slows the engine's host work, see
traceinfer/rundir/writer.py); otherwise a plain line every ``plain_every_s`` seconds, for logs.
"""

from __future__ import annotations

import sys
import time

from traceinfer.passes.engine import Progress


def _fmt_s(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"


def describe(p: Progress) -> str:
    """One line: requests done, output tok/s, queues, KV use, ETA."""
    kv = 100.0 * p.kv_used_blocks / p.kv_total_blocks if p.kv_total_blocks else 0.0
    text = (f"{p.requests_done}/{p.requests_total} requests done, {p.output_tok_s:,.0f} output tok/s, "
            f"running {p.running}, waiting {p.waiting}")  # fmt: skip
    if p.not_sent:
        text += f", not yet arrived {p.not_sent}"
    text += f", KV {kv:.0f}% used, ETA {_fmt_s(p.eta_s)}"
    if p.failed:
        text += f", {p.failed} failed"
    return text


class Display:
    """Phases and pass progress for one command; ``live``: a terminal (rich), else plain lines; ``quiet``:
    nothing at all (a command run as a library call)."""

    def __init__(self, live: bool | None = None, plain_every_s: float = 5.0, quiet: bool = False) -> None:
        self.quiet = quiet
        self.live = not quiet and (sys.stdout.isatty() if live is None else live)
        self.plain_every_s = plain_every_s
        self._console = None
        self._live = None
        self._phase = ""
        self._t0 = time.perf_counter()
        self._last_plain = float("-inf")  # the first report prints at once
        if self.live:
            from rich.console import Console

            self._console = Console()

    def phase(self, text: str) -> None:
        """A new phase: ends the previous live line and says what comes next."""
        self.done()
        self._phase = text
        self._t0 = time.perf_counter()
        if self.quiet:
            return
        if self._console is not None:
            from rich.live import Live
            from rich.text import Text

            self._live = Live(Text(f"{text} ..."), console=self._console, auto_refresh=False, transient=True)
            self._live.start(refresh=True)
        else:
            print(f"{text} ...", flush=True)

    def __call__(self, p: Progress) -> None:
        """The pass's progress (a callback of traceinfer.passes.engine.run_workload)."""
        if self._live is not None:
            from rich.text import Text

            self._live.update(Text(f"{self._phase}: [{_fmt_s(p.elapsed_s)}] {describe(p)}"), refresh=True)
        elif not self.quiet and p.elapsed_s - self._last_plain >= self.plain_every_s:
            self._last_plain = p.elapsed_s
            print(f"  [{_fmt_s(p.elapsed_s)}] {describe(p)}", flush=True)

    @property
    def phase_name(self) -> str:
        """The phase under way ("" between phases)."""
        return self._phase

    def say(self, text: str) -> None:
        """A line of its own within the phase (above the live line on a terminal)."""
        if self._console is not None:
            self._console.print(text, highlight=False)
        elif not self.quiet:
            print(text, flush=True)

    def done(self, text: str | None = None) -> None:
        """End the current phase (a line saying how long it took, on a terminal); ``text`` replaces it."""
        if self._live is not None:
            self._live.stop()
            self._live = None
        if self._phase and self._console is not None:
            self._console.print(text or f"{self._phase}: {time.perf_counter() - self._t0:.1f} s", highlight=False)
        elif text and not self.quiet:
            print(text, flush=True)
        self._phase = ""
        self._last_plain = float("-inf")  # the first report prints at once
