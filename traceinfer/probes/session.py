"""The probe registry, the ``off | default | all | LIST`` selection, and ``attach``: probes on an engine.

    session = attach(engine, "default", "runs/r1")     # subscribes, starts threads, writes the manifest
    ... run the workload ...
    manifest = session.close()                         # unsubscribes, flushes, writes the final manifest

or as a context manager (``with attach(...) as session:``), which records "interrupted" on Ctrl-C and
"failed" on an exception. After close the engine has no subscriber left (``engine.hooks.subscribed()``
is ``{}``), ``gc.callbacks`` is as before and every probe thread has ended.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from traceinfer.config import ProbesConfig
from traceinfer.errors import ConfigError
from traceinfer.probes.base import Probe, ProbeContext, StepState
from traceinfer.probes.cuda_memory import CudaMemoryProbe
from traceinfer.probes.environment import HostLoad, device_info, git_info, host_info, package_versions
from traceinfer.probes.gc_probe import GCProbe
from traceinfer.probes.kv_events import KVEventProbe
from traceinfer.probes.nvtx_probe import NvtxProbe
from traceinfer.probes.pyspy import PySpyProbe
from traceinfer.probes.request_trace import RequestTraceProbe
from traceinfer.probes.samplers import SamplerProbe
from traceinfer.probes.step_trace import StepTraceProbe
from traceinfer.probes.telemetry import TelemetryProbe
from traceinfer.probes.threads import ThreadProbe
from traceinfer.probes.torch_profiler import TorchProfilerProbe
from traceinfer.rundir.writer import RunWriter

#: Every probe, by name, in the order they are attached.
PROBES: dict[str, type[Probe]] = {
    cls.name: cls
    for cls in (
        NvtxProbe,
        StepTraceProbe,
        RequestTraceProbe,
        KVEventProbe,
        GCProbe,
        SamplerProbe,
        ThreadProbe,
        CudaMemoryProbe,
        TorchProfilerProbe,
        PySpyProbe,
        TelemetryProbe,
    )
}

#: Named sets. ``default`` is what is cheap enough to leave on; ``all`` adds stack sampling and
#: per-step allocator stats, and samples at ALL_HZ. The torch profiler (it times every op) and py-spy (a
#: process of its own that pauses the engine to read it) are in neither: name them to add them
#: (``default,torch_profiler``; ``--pyspy``).
PRESETS: dict[str, tuple[str, ...]] = {
    "off": (),
    "default": ("nvtx", "steps", "requests", "kv", "gc", "samplers"),
    "all": ("nvtx", "steps", "requests", "kv", "gc", "samplers", "threads", "cuda_memory"),
}
DEFAULT_HZ = 20.0
ALL_HZ = 100.0


def resolve_probes(spec: str | Sequence[str]) -> tuple[str, ...]:
    """``"off"``, ``"default"``, ``"all"`` or a list of probe and set names joined by ',' or '+'
    (``"default,threads"``) -> probe names in registry order. Unknown names raise ConfigError."""
    tokens = _tokens(spec)
    chosen: set[str] = set()
    for tok in tokens:
        if tok in PRESETS:
            chosen.update(PRESETS[tok])
        elif tok in PROBES:
            chosen.add(tok)
        else:
            raise ConfigError(
                f"unknown probe {tok!r} in --probes {','.join(tokens)!r}; sets: {', '.join(PRESETS)}; "
                f"probes: {', '.join(PROBES)}"
            )
    if "off" in tokens and len(tokens) > 1:
        raise ConfigError(f"--probes 'off' cannot be combined with other probes, got {','.join(tokens)!r}")
    return tuple(name for name in PROBES if name in chosen)


def _tokens(spec: str | Sequence[str]) -> list[str]:
    parts = spec.replace("+", ",").split(",") if isinstance(spec, str) else list(spec)
    tokens = [p.strip() for p in parts if p.strip()]
    if not tokens:
        raise ConfigError("--probes is empty; use off, default, all or a list of probe names")
    return tokens


def _rates(spec: str | Sequence[str], options: ProbesConfig) -> tuple[float, float]:
    hz = ALL_HZ if "all" in _tokens(spec) else DEFAULT_HZ
    return options.sample_hz or hz, options.stack_hz or hz


def engine_manifest(engine) -> dict:
    config = dataclasses.asdict(engine.config)
    return {
        "config": config,
        "model": engine.model_label,
        "synthetic": engine.synthetic,
        "device": str(engine.device),
        "dtype": str(engine.dtype).removeprefix("torch."),
        "attention_backend": engine.attention_backend,
        "num_kv_blocks": engine.block_manager.num_blocks,
        "block_size": engine.block_manager.block_size,
        "max_model_len": engine.max_model_len,
        "cuda_graphs": bool(getattr(engine.runner, "graphs", None)),
        "kernels": engine.runner.kernel_choices(),
        "async_scheduling": getattr(engine, "async_scheduling", None),  # config's 'auto' resolved
        "model_shapes": engine.model.shapes(),  # what the physical floor needs (traceinfer.analysis.floor)
    }


class ProbeSession:
    """Probes attached to one engine, writing one run directory."""

    def __init__(
        self, engine, names: tuple[str, ...], writer: RunWriter, options: ProbesConfig, temporary: bool
    ) -> None:
        self.engine = engine
        self.names = names
        self.writer = writer
        self.options = options
        self.temporary = temporary
        self.probes: dict[str, Probe] = {}
        self.closed = False
        self._unsubscribe: list[Callable[[], None]] = []
        self.t0_ns = time.perf_counter_ns()
        self.t0_unix = time.time()
        self.host_load = HostLoad()  # how busy the machine is while the run is open (manifest 'host_load')

    @property
    def run_dir(self) -> Path:
        return self.writer.path

    def _subscribe(self, fn: Callable, point: str) -> None:
        self._unsubscribe.append(self.engine.hooks.subscribe(fn, (point,)))

    def _detach(self) -> None:
        while self._unsubscribe:
            self._unsubscribe.pop()()

    def close(self, status: str = "completed", error: str | None = None, **manifest_fields: Any) -> dict:
        """Take the events the engine still holds, unsubscribe, stop every probe, flush, write the final
        manifest; returns it. Safe to call twice. Call it from the thread that steps the engine (or while
        the engine is not stepping): the handover touches the engine's pending events."""
        if self.closed:
            return self.writer.manifest
        try:
            self.engine.handover()  # what the engine still holds for the probes (e.g. after Ctrl-C)
        finally:
            self._detach()
        errors = {}
        for name, probe in self.probes.items():
            try:
                probe.stop()
            except Exception as exc:  # one probe failing to stop must not lose the others' data
                errors[name] = f"{type(exc).__name__}: {exc}"
        t_end = time.perf_counter_ns()
        self.closed = True
        m = self.writer.manifest
        m.update(manifest_fields)
        m["error"] = error
        m["timing"] = {
            **m.get("timing", {}),
            "t0_ns": self.t0_ns, "t_end_ns": t_end, "wall_s": (t_end - self.t0_ns) / 1e9,
            "started_unix": self.t0_unix, "ended_unix": time.time(),
        }  # fmt: skip
        encoder = self.writer.encoder
        m["host_load"] = self.host_load.finish([encoder.proc.pid] if encoder is not None else [])
        details = {name: probe.info() for name, probe in self.probes.items()}
        for name, err in errors.items():
            details[name]["stop_error"] = err
        m["probes"]["details"] = details
        manifest = self.writer.close(status)
        threads = sum(d.get("thread_cpu_s") or 0.0 for d in details.values())
        processes = sum(d.get("process_cpu_s") or 0.0 for d in details.values())
        manifest["probes"]["cost"] = {
            "probe_threads_cpu_s": round(threads, 4),
            "flusher_cpu_s": round(self.writer.flusher_cpu_s, 4),
            "probe_processes_cpu_s": round(processes, 4),
            "encoder_cpu_s": manifest["writer"]["encoder_cpu_s"],
            "note": "CPU time of the probes' own threads (in the engine's process) and processes; their cost in "
            "throughput is measured by `traceinfer bench --probes off,default,all` and by `profile`'s overhead "
            "passes ('overhead')",
        }
        self.writer.write_manifest()
        if self.temporary:
            shutil.rmtree(self.writer.path, ignore_errors=True)
        return manifest

    def __enter__(self) -> ProbeSession:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self.close("completed")
        else:
            status = "interrupted" if issubclass(exc_type, KeyboardInterrupt) else "failed"
            self.close(status, error=f"{exc_type.__name__}: {exc}")
        return False


def attach(
    engine,
    probes: str | Sequence[str] | None = None,
    run_dir: str | Path | None = None,
    options: ProbesConfig | None = None,
    manifest: dict | None = None,
) -> ProbeSession:
    """Attach the probes ``probes`` (default: ``options.select``) to ``engine``, writing ``run_dir``.

    With ``run_dir=None`` the streams go to a temporary directory removed at close, so that the cost
    measured (e.g. by bench) includes writing. ``manifest`` adds top-level fields (workload, command)."""
    options = options or ProbesConfig()
    spec = options.select if probes is None else probes
    names = resolve_probes(spec)
    sample_hz, stack_hz = _rates(spec, options)
    temporary = run_dir is None
    path = Path(tempfile.mkdtemp(prefix="traceinfer-run-")) if temporary else Path(run_dir)
    base = {
        "engine": engine_manifest(engine),
        "device": device_info(engine.device),
        "packages": package_versions(),
        "git": git_info(),
        "host": host_info(),
        "clock": {"source": "time.perf_counter_ns", "t0_ns": None, "unix_at_t0": None},
        "engine_thread": threading.get_ident(),  # attach runs on the thread that steps the engine
        "probes": {
            "selected": spec if isinstance(spec, str) else ",".join(spec),
            "enabled": list(names),
            "sample_hz": sample_hz if {"samplers"} & set(names) else None,
            "stack_hz": stack_hz if {"threads"} & set(names) else None,
            "options": dataclasses.asdict(options),
        },
        **(manifest or {}),
    }
    # behind the GPU the engine thread packs rows for free; on a CPU the writer thread does it
    writer = RunWriter(path, base, options.flush_interval_s, pack_after_forward=engine.device.type == "cuda",
                       parquet=not temporary)  # fmt: skip
    session = ProbeSession(engine, names, writer, options, temporary)
    writer.manifest["clock"].update(t0_ns=session.t0_ns, unix_at_t0=session.t0_unix)
    try:
        if names:
            steps = StepState()
            session._subscribe(steps, "step")  # first: probes see the new step index
            ctx = ProbeContext(engine, writer, options, steps, sample_hz, stack_hz)
            for name in names:
                session.probes[name] = PROBES[name](ctx)
            for probe in session.probes.values():
                probe.start()
                for point, fn in probe.subscriptions().items():
                    session._subscribe(fn, point)
        writer.start()
        if names:
            session._subscribe(writer.on_handover, "handover")  # pack rows while the GPU runs a forward
        writer.manifest["probes"]["details"] = {n: p.info() for n, p in session.probes.items()}
        writer.write_manifest()
    except BaseException as exc:
        session.close("failed", error=f"attaching probes failed: {type(exc).__name__}: {exc}")
        raise
    return session
