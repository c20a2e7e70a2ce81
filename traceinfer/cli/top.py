"""A live dashboard of an engine: requests, KV cache, throughput, latency, step time by phase, GC, GPU, threads.

    traceinfer top --workload chatbot [--rate R] [workload and engine options]   # runs the workload here
    traceinfer top --attach http://127.0.0.1:9400      # watches `traceinfer profile --telemetry 9400`

Keys: q quits, p pauses (the figures stop moving), r resets the windows (percentiles and rates from now on).
It redraws --refresh-hz times a second (4 by default). In-process, the engine steps on a thread of its own
and the telemetry probe feeds the windows (traceinfer.telemetry); attached, it reads the endpoint's JSON
snapshot, and when the watched process exits it says so and keeps the last figures. Every figure's name is
the one /metrics uses (traceinfer.telemetry.METRICS).
"""

from __future__ import annotations

import argparse
import json
import os
import select
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import deque

from traceinfer.cli import options
from traceinfer.errors import ConfigError

HELP = "a live dashboard of an engine: a workload run here, or another process's --telemetry endpoint"
SPARK = "▁▂▃▄▅▆▇█"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from traceinfer.probes import PRESETS, PROBES
    from traceinfer.workloads import WORKLOADS

    t = parser.add_argument_group("top")
    t.add_argument("--attach", metavar="URL", help="watch the telemetry endpoint at URL (http://HOST:PORT, HOST:PORT "
                   "or PORT) instead of running a workload here")  # fmt: skip
    t.add_argument("--refresh-hz", type=float, default=4.0, metavar="HZ", help="redraws per second (default 4)")
    t.add_argument("--duration", type=float, metavar="S", help="quit after S seconds (default: when q is pressed)")
    options.add_config_file(parser)
    options.add_section(parser, "workload", choices={"name": WORKLOADS})
    probes = f"{' | '.join(PRESETS)} | a comma list of: {', '.join(PROBES)} (telemetry is always added)"
    options.add_section(parser, "probes", only=("select", "sample_hz"), helps={"select": probes})
    options.add_section(parser, "output", only=("run_dir",))
    options.add_section(parser, "telemetry")
    options.add_section(parser, "engine")


def run(args: argparse.Namespace) -> int:
    if not 0.5 <= args.refresh_hz <= 60:
        raise ConfigError(f"--refresh-hz must be in [0.5, 60], got {args.refresh_hz}")
    if args.duration is not None and args.duration <= 0:
        raise ConfigError(f"--duration must be > 0 seconds, got {args.duration}")
    config = options.load(args)
    if args.attach:
        from traceinfer.telemetry import parse_url

        if config.workload.name or config.workload.file:
            raise ConfigError("--attach watches another process: it takes no --workload (run one here without --attach)")
        source = RemoteSource(parse_url(args.attach))
        return Dashboard(source, args.refresh_hz, args.duration).run()
    return _run_workload(args, config)


# -- what top watches ---------------------------------------------------------------------------
class SourceDown(Exception):
    """The watched endpoint did not answer (the reason says why)."""


class RemoteSource:
    """Another process's telemetry endpoint, read over HTTP (GET /snapshot)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.label = url
        self.seen = False  # answered at least once

    def get(self, since_ns: int | None) -> dict:
        query = f"?since_ns={since_ns}" if since_ns is not None else ""
        try:
            with urllib.request.urlopen(f"{self.url}/snapshot{query}", timeout=1.0) as r:
                snap = json.loads(r.read())
        except urllib.error.HTTPError as exc:
            raise SourceDown(f"{self.url} answered {exc.code}: {exc.read().decode(errors='replace').strip()}") from None
        except (OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            if self.seen:
                raise SourceDown(f"the watched process has exited or closed its endpoint ({self.url}: {reason})") from None
            raise SourceDown(f"waiting for {self.url}: {reason} (is `traceinfer profile --telemetry PORT` running?)") from None
        if not isinstance(snap, dict) or snap.get("format") != "traceinfer-telemetry":
            raise SourceDown(f"{self.url}/snapshot is not a traceinfer telemetry snapshot")
        self.seen = True
        return snap

    def status(self) -> str | None:
        return None


class LocalSource:
    """A workload run in this process: its engine steps on the thread ``traceinfer-top-engine``."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.telemetry = None
        self.state = "loading"
        self.stop_reason: str | None = None
        self.ready = threading.Event()

    def get(self, since_ns: int | None) -> dict:
        if self.telemetry is None:
            raise SourceDown(f"the workload is {self.state}")
        return self.telemetry.snapshot(since_ns)

    def status(self) -> str | None:
        return self.state


def _run_workload(args: argparse.Namespace, config) -> int:
    import dataclasses

    from traceinfer import workloads
    from traceinfer.engine import device as dev
    from traceinfer.engine.llm_engine import LLM
    from traceinfer.passes.engine import PassStopped, run_workload, warm_up
    from traceinfer.probes import attach, resolve_probes
    from traceinfer.rundir.writer import check_new_run_dir
    from traceinfer.telemetry import open_endpoint

    resolve_probes(config.probes.selection)
    device = dev.resolve_device(config.engine.device)
    on_cuda = device.type == "cuda"
    engine_config = dataclasses.replace(config.engine, device=str(device), model=dev.resolve_model(config.engine.model, device))
    workloads.validate(config.workload, on_cuda)
    out = config.output.run_dir
    if out:
        try:
            check_new_run_dir(out)
        except Exception as exc:
            raise ConfigError(f"--out: {exc}") from None
    endpoint = open_endpoint(config.telemetry)  # binds now: a port in use fails before the model loads
    print(f"traceinfer top: loading {engine_config.model} on {device}", flush=True)
    llm = LLM(config=engine_config)
    dev.freeze_gc()
    engine = llm.engine
    workload = workloads.make(config.workload, on_cuda, vocab_size=engine.vocab_size, tokenize=engine.tokenizer.encode)
    if config.workload.warmup:
        print("traceinfer top: warm-up (the workload at 4 tokens a request)", flush=True)
        warm_up(llm, workload, full=False)
    source = LocalSource(f"{workload.name} workload, {workload.num_requests} requests, in this process")
    selection = endpoint.selection(config.probes.selection)
    if "telemetry" not in selection.replace("+", ",").split(","):
        selection = "telemetry" if selection == "off" else f"{selection},telemetry"

    def engine_thread() -> None:
        session = None
        try:
            engine.block_manager.reset_prefix_cache()
            session = attach(engine, selection, out, config.probes, {"command": args.argv})
            endpoint.serve(session)
            source.telemetry = session.probes["telemetry"].telemetry
            source.telemetry.resize(config.telemetry.window_s)
            source.state = "running"
            source.ready.set()
            result = run_workload(llm, workload, stop=lambda: source.stop_reason)
            source.state = (f"finished: {result.num_requests} requests, {result.output_tokens} output tokens in "
                            f"{result.seconds:.1f} s ({result.output_tok_s:.0f} tok/s)")  # fmt: skip
        except PassStopped:
            source.state = "stopped (q): the requests in flight were aborted"
        except BaseException as exc:  # shown on the screen and after it
            source.state = f"failed: {type(exc).__name__}: {exc}"
        finally:
            if session is not None:
                session.close("completed" if source.state.startswith("finished") else "interrupted")
            source.ready.set()

    worker = threading.Thread(target=engine_thread, name="traceinfer-top-engine", daemon=True)
    worker.start()
    source.ready.wait()
    code = 1
    try:
        code = Dashboard(source, args.refresh_hz, args.duration).run()
    finally:
        source.stop_reason = source.stop_reason or "stopped from top"
        worker.join()
        endpoint.close(linger=False)
    if out:
        print(f"run directory: {out} ({'completed' if source.state.startswith('finished') else 'interrupted'})")
    return 1 if source.state.startswith("failed") else code


# -- the keyboard ------------------------------------------------------------------------------
class Keys:
    """Single keys from stdin in cbreak mode (no echo, no line buffering; Ctrl-C still interrupts), the
    terminal restored on exit (Ctrl-C too). Without a terminal on stdin no key is read."""

    def __init__(self) -> None:
        self.fd = sys.stdin.fileno() if sys.stdin and sys.stdin.isatty() else None
        self._saved = None

    def __enter__(self) -> Keys:
        if self.fd is not None:
            import termios
            import tty

            self._saved = termios.tcgetattr(self.fd)
            tty.setcbreak(self.fd)
        return self

    def __exit__(self, *exc) -> None:
        if self._saved is not None:
            import termios

            termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved)
            self._saved = None

    def read(self, timeout: float) -> str | None:
        """One key, or None after ``timeout`` seconds."""
        if self.fd is None:
            time.sleep(max(timeout, 0))
            return None
        ready, _, _ = select.select([self.fd], [], [], max(timeout, 0))
        return os.read(self.fd, 1).decode(errors="replace") if ready else None


# -- the screen --------------------------------------------------------------------------------
class Dashboard:
    def __init__(self, source, hz: float, duration: float | None) -> None:
        self.source = source
        self.hz = hz
        self.duration = duration
        self.snap: dict | None = None
        self.since_ns: int | None = None
        self.paused = False
        self.message: str | None = None
        self.down: str | None = None
        self._draws: deque = deque(maxlen=64)

    def run(self) -> int:
        from rich.console import Console
        from rich.live import Live

        console = Console()
        start = time.monotonic()
        period = 1.0 / self.hz
        stop = threading.Event()
        fetcher = threading.Thread(target=self._fetch_loop, args=(stop,), name="traceinfer-top-fetch", daemon=True)
        fetcher.start()
        with Keys() as keys, Live(console=console, auto_refresh=False, screen=console.is_terminal,
                                  transient=False) as live:  # fmt: skip
            next_draw = time.monotonic()
            quit_ = False
            while not quit_:
                self._draws.append(time.monotonic())
                live.update(self.render(), refresh=True)
                next_draw += period
                now = time.monotonic()
                if next_draw < now:  # a slow draw: no catching up in a burst
                    next_draw = now
                if self.duration is not None and now - start >= self.duration:
                    break
                key = keys.read(next_draw - now)
                while key is not None and not quit_:
                    quit_ = key in ("q", "Q")
                    self._key(key)
                    key = None if quit_ else keys.read(max(next_draw - time.monotonic(), 0))
        stop.set()
        fetcher.join(timeout=2.0)  # at most one fetch in flight, bounded by its timeout
        print(("" if console.is_terminal else "\n") + self.farewell())
        return 0

    def _fetch_loop(self, stop: threading.Event) -> None:
        """Fetch on a thread of its own at the refresh rate: a slow or silent endpoint (each try waits up to
        its timeout) never slows the redraws or the keys."""
        period = 1.0 / self.hz
        while True:
            if not self.paused:
                self._fetch()
            if stop.wait(period):
                return

    def _fetch(self) -> None:
        try:
            self.snap = self.source.get(self.since_ns)
            self.down = None
        except SourceDown as exc:
            self.down = str(exc)

    def _key(self, key: str) -> None:
        if key in ("p", "P"):
            self.paused = not self.paused
            self.message = "paused: p resumes" if self.paused else None
        elif key in ("r", "R"):
            if self.snap is not None:
                self.since_ns = self.snap["t_ns"]
            self.message = "windows reset: percentiles and rates from now on"

    def refresh_rate(self) -> float:
        d = self._draws
        return (len(d) - 1) / (d[-1] - d[0]) if len(d) > 1 and d[-1] > d[0] else 0.0

    def farewell(self) -> str:
        s = self.snap
        if s is None:
            return f"traceinfer top: {self.source.label}: no figures ({self.down})"
        r, m = s["requests"], s["metrics"]
        return (f"traceinfer top: {self.source.label}: {r['finished']} requests finished, {m['generation_tokens']} "
                f"output tokens, {m['engine_steps']} steps")  # fmt: skip

    # plain text rows, then rich renders them: easy to read back from a captured screen
    def render(self):
        from rich.console import Group
        from rich.panel import Panel
        from rich.table import Table
        from rich.text import Text

        title = f"traceinfer top: {self.source.label}"
        state = self.source.status()
        lines = [Text(f"refresh {self.refresh_rate():.1f}/s   keys: q quit  p pause  r reset")]
        if state:
            lines.append(Text(f"workload: {state}", style="bold"))
        if self.down:
            lines.append(Text(self.down, style="bold red"))
        if self.message:
            lines.append(Text(self.message.upper() if self.paused else self.message, style="bold yellow"))
        s = self.snap
        if s is None:
            return Panel(Group(*lines, Text("no figures yet")), title=title)
        w, r, m, kv = s["window"], s["requests"], s["metrics"], s["kv"]
        lines.append(Text(f"status {s['status']}   pid {s['pid']}   up {s['uptime_s']:.1f} s   window "
                          f"{w['seconds']:.1f} s of {s['window_s']:.0f} s   model {s['engine'].get('model')} on "
                          f"{s['engine'].get('device')}"))  # fmt: skip
        lines.append(Text(f"requests   running {r['running']}   waiting {r['waiting']}   preempted {r['preemptions']}"
                          f"   finished {r['finished']}   arrived {r['arrived']}"))  # fmt: skip
        hit = w["prefix_hit_rate"]
        lines.append(Text(f"KV cache   {_bar(kv['usage_perc'])} {100 * kv['usage_perc']:5.1f}% of {kv['num_blocks']} "
                          f"blocks   prefix hit rate {_pct(hit)} (window), {_pct(kv['prefix_hit_rate'])} (all)"))  # fmt: skip
        lines.append(Text(f"output     {w['output_tok_s']:8.1f} tok/s {_spark(w['tok_s_series'][-40:])}   output tokens "
                          f"{m['generation_tokens']}   prompt tokens {m['prompt_tokens']}   prompt {w['prompt_tok_s']:.1f} "
                          "tok/s"))  # fmt: skip
        lat = Table(box=None, pad_edge=False, title="latency (ms, window)", title_justify="left")
        for col in ("", "p50", "p99", "n"):
            lat.add_column(col, justify="right" if col else "left")
        for key, label in (("ttft", "TTFT"), ("itl", "ITL"), ("e2e", "E2E"), ("queue", "queue")):
            x = w["latency_s"][key]
            lat.add_row(label, _ms(x["p50"]), _ms(x["p99"]), str(x["n"]))
        steps = Table(box=None, pad_edge=False, title="step time (window)", title_justify="left")
        for col in ("phase", "ms/step", "share"):
            steps.add_column(col, justify="left" if col == "phase" else "right")
        phases, shares = w["step_ms"]["phases"], w["shares"]
        for phase in [*phases, "between steps"]:
            steps.add_row(phase, f"{phases[phase]:.3f}" if phase in phases else "", f"{100 * shares[phase]:5.1f}% {_bar(shares[phase], 12)}")
        mean = w["step_ms"]["mean"]
        gcw = w["gc"]
        g = s["gpu"]
        gpu = (f"GPU        util {_num(g.get('util_pct'))}%   memory {_gib(g.get('mem_used_bytes'))} / "
               f"{_gib(g.get('mem_total_bytes'))} GiB   power {_num(g.get('power_w'))} W   idle {_pct(w['gpu_idle_perc'])} (window)"
               if g["available"] else f"GPU        none: {g['reason']}")  # fmt: skip
        threads = "   ".join(f"{t['name']} {t['cpu_pct']:.0f}%" for t in s["threads"][:6]) or "-"
        tail = [
            Text(f"steps      {m['engine_steps']} in all   {w['steps_per_s']:.1f}/s   mean {_num(mean, 3)} ms   p99 "
                 f"{_num(w['step_ms']['p99'], 3)} ms"),
            Text(f"GC         {sum(m['gc_collections'].values())} collections, {1e3 * sum(m['gc_pause_seconds'].values()):.1f} ms "
                 f"paused in all   window: {gcw['count']}, {gcw['pause_ms']:.1f} ms, max {_num(gcw['max_ms'], 2)} ms"),
            Text(gpu),
            Text(f"threads    {threads}   (CPU, 100% = one core)"),
            Text(f"probes     handover {_pct(w['probe_handover_share'])} of step time   telemetry threads "
                 f"{s['telemetry_cpu_s']:.2f} s CPU"),
        ]  # fmt: skip
        tables = Table.grid(padding=(0, 4))
        tables.add_row(lat, steps)
        return Panel(Group(*lines, Text(""), tables, Text(""), *tail), title=title, title_align="left")


def _bar(frac: float | None, width: int = 20) -> str:
    if frac is None:
        return " " * width
    filled = round(max(0.0, min(frac, 1.0)) * width)
    return "█" * filled + "░" * (width - filled)


def _spark(values: list[float]) -> str:
    top = max(values, default=0)
    if top <= 0:
        return SPARK[0] * len(values)
    return "".join(SPARK[min(int(v / top * (len(SPARK) - 1) + 0.5), len(SPARK) - 1)] for v in values)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{1e3 * x:.2f}"


def _num(x: float | None, digits: int = 0) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _gib(x: int | None) -> str:
    return "-" if x is None else f"{x / 2**30:.1f}"

