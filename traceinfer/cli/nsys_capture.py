"""``traceinfer profile --nsys``: the same profile, relaunched under Nsight Systems, and its capture read
into the run directory.

    nsys profile -t cuda,nvtx,osrt -s none --cpuctxsw=none --capture-range=cudaProfilerApi
                 --capture-range-end=stop --cuda-graph-trace=node -o RUN/nsys  python -m traceinfer.cli profile ...
    nsys export -t sqlite -o RUN/nsys.sqlite RUN/nsys.nsys-rep
    -> RUN/nsys_stats.json (analysis.gpu_trace.summary), RUN/flamegraphs/gpu.svg, the report rewritten

The nvtx probe brackets the profiled run with cudaProfilerStart/Stop, so the capture holds the workload and
not the model's loading or warm-up. ``--cuda-graph-trace=node`` (each kernel of a graph replay, not one
item per replay) is asked for when the installed nsys knows it. The nsys binary is ``[probes] nsys``
(``--nsys-path``; a name on PATH by default); when it is missing or fails, the error names the binary tried
and what it printed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections import deque
from pathlib import Path

from traceinfer.errors import ConfigError

#: the relaunched profile's environment: [probes] nsys_capture off (over traceinfer.toml), so that it runs
#: the workload instead of relaunching again
CHILD_ENV = {"TRACEINFER_PROBES_NSYS_CAPTURE": "false"}
TRACES = "cuda,nvtx,osrt"


def find_nsys(name: str) -> str:
    path = shutil.which(name) or (name if Path(name).is_file() and os.access(name, os.X_OK) else None)
    if path is None:
        raise ConfigError(f"--nsys: the nsys executable {name!r} was not found (not on PATH, not a file); install "
                          "Nsight Systems or name it with --nsys-path / [probes] nsys")  # fmt: skip
    return path


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else "(nothing)"


def graph_trace_options(nsys: str) -> list[str]:
    """``--cuda-graph-trace=node`` when this nsys knows the option; ConfigError when nsys does not run."""
    try:
        proc = subprocess.run([nsys, "profile", "--help"], capture_output=True, text=True, timeout=60)
    except OSError as exc:
        raise ConfigError(f"--nsys: {nsys} could not be started: {exc}") from None
    text = proc.stdout + proc.stderr
    if proc.returncode != 0 and "Usage" not in text and "usage" not in text:
        raise ConfigError(f"--nsys: `{nsys} profile --help` failed (exit {proc.returncode}): {_last_line(text)}")
    return ["--cuda-graph-trace=node"] if "cuda-graph-trace" in text else []


def child_argv(argv: list[str], out: Path) -> list[str]:
    """The profile's own arguments without --nsys, with the run directory named (so that the capture can
    be put beside it)."""
    args = [a for a in argv[1:] if a not in ("--nsys",)]
    cleaned, skip = [], False
    for a in args:
        if skip:
            skip = False
            continue
        if a in ("--out", "--out-root"):
            skip = True
            continue
        if a.startswith(("--out=", "--out-root=")):
            continue
        cleaned.append(a)
    return [*cleaned, "--out", str(out)]


def _stream(cmd: list[str], env: dict, tail: int = 30) -> tuple[int, str]:
    """Run ``cmd``, its output passed through as it comes; (exit status, its last lines)."""
    last: deque[str] = deque(maxlen=tail)
    with subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            last.append(line)
        rc = proc.wait()
    return rc, "".join(last)


def relaunch(argv: list[str], out: Path, nsys_name: str, report_formats: list[str]) -> int:
    """Profile under nsys, export the capture, read it into the run directory; the profile's exit status."""
    from traceinfer.rundir.schema import NSYS_REP, NSYS_SQLITE

    nsys = find_nsys(nsys_name)
    graph = graph_trace_options(nsys)
    out.parent.mkdir(parents=True, exist_ok=True)
    stem = out.parent / f".{out.name}.nsys"  # nsys writes stem.nsys-rep; moved into the run directory after
    capture = [nsys, "profile", "-t", TRACES, "-s", "none", "--cpuctxsw=none", "--capture-range=cudaProfilerApi",
               "--capture-range-end=stop", *graph, "--force-overwrite=true", "-o", str(stem)]  # fmt: skip
    cmd = [*capture, sys.executable, "-m", "traceinfer.cli", *child_argv(argv, out)]
    print(f"traceinfer profile --nsys: {' '.join(capture)} ...")
    env = {**os.environ, **CHILD_ENV}
    try:
        rc, tail = _stream(cmd, env)
    except OSError as exc:
        raise ConfigError(f"--nsys: {nsys} could not be started: {exc}") from None
    rep = stem.parent / f"{stem.name}.nsys-rep"
    if not rep.exists():
        raise ConfigError(f"--nsys: {nsys} profile wrote no capture (exit {rc}): {_last_line(tail)}")
    if not out.is_dir():
        rep.unlink()
        return rc or 2
    shutil.move(str(rep), out / NSYS_REP)
    export = subprocess.run([nsys, "export", "-t", "sqlite", "--force-overwrite=true", "-o", str(out / NSYS_SQLITE),
                             str(out / NSYS_REP)], capture_output=True, text=True, timeout=1800)  # fmt: skip
    if export.returncode != 0 or not (out / NSYS_SQLITE).exists():
        raise ConfigError(f"--nsys: {nsys} export failed (exit {export.returncode}): {_last_line(export.stdout + export.stderr)}; "
                          f"the capture is {out / NSYS_REP}")  # fmt: skip
    from traceinfer.cli.nsys_stats import ingest_run

    ingest_run(out, report_formats)
    return rc
