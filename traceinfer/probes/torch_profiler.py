"""torch.profiler probe: a Kineto trace of the attached window, with a record_function range per engine stage.

While attached it runs ``torch.profiler.profile`` (CPU activity, plus CUDA when the engine is on CUDA; no
shapes and no stacks unless ``torch_profiler_shapes``/``_stacks`` ask) and opens a range, nested as the hook points nest, for each stage:

    step                                   one per engine step
      schedule
        block <call>                       block-manager calls that do work: allocate, free, ... (as NVTX)
      prepare
      forward (graph) | forward (eager)    from the span's ``cuda_graph`` field, as the NVTX probe names it
        layer.<i>                          per decoder layer with ProbesConfig.nvtx_layers (eager forwards only)
      sample
      postprocess

The handover is an instant hook point, not a span: its work (the other probes' subscribers) shows as the
step's own time between the forward and the sample. At stop the probe closes whatever range is still open
(a Ctrl-C mid-step), stops the profiler and writes the Chrome trace, gzip-compressed, to
``torch_trace.json.gz`` in the run directory (traceinfer.rundir.schema.TORCH_TRACE; Kineto's post-processing
and the export take ~1 s per 100k events, after the run); open it at
https://ui.perfetto.dev, or read it as flame graphs with traceinfer.ingest.kineto (``cpu_stacks``,
``gpu_stacks``). The probe is costly (the profiler times every aten op), so it is in no preset: select
it by name (``--probes default,torch_profiler``).

Ranges are opened and closed in separate hook callbacks with torch's own pair of operators, as
``torch.autograd.profiler.record_function`` does inside its ``__enter__``/``__exit__``:
``torch.ops.profiler._record_function_enter_new(name, None)`` returns a handle,
``torch.ops.profiler._record_function_exit._RecordFunction(handle)`` closes it (under
``DisableTorchFunctionSubclass``, which makes the exit ~5x cheaper). They are recorded as
``user_annotation`` events, which is what the readers take for ranges (``_RecordFunctionFast`` is cheaper
but its events are plain ``cpu_op``s).
"""

from __future__ import annotations

import gzip
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from traceinfer.probes.base import Probe, ProbeContext
from traceinfer.rundir.schema import TORCH_TRACE

#: the stage hook points that get a range, in the order a step reaches them
STAGES = ("step", "schedule", "prepare", "forward", "sample", "postprocess")


def _gzip_counting_events(src: Path, dst: Path) -> int:
    """Gzip ``src`` into ``dst`` and count its trace events on the way (a torch-written trace has one
    ``"ph":`` key per event; inside a JSON string the quotes would be escaped). torch's own .gz export
    compresses line by line at level 9: 30x slower than this (15 s for 400k events)."""
    key = b'"ph":'
    events, tail = 0, b""
    with src.open("rb") as fin, gzip.open(dst, "wb", compresslevel=6) as fout:
        while chunk := fin.read(1 << 20):
            fout.write(chunk)
            events += (tail + chunk).count(key)  # a key cut by the chunk boundary is counted once
            tail = chunk[-(len(key) - 1) :]
    return events


class TorchProfilerProbe(Probe):
    name = "torch_profiler"
    description = (
        "torch.profiler (Kineto) trace of the window with a record_function range per step, stage and "
        "(nvtx_layers) layer, written to torch_trace.json.gz; costly: in no preset"
    )

    def __init__(self, ctx: ProbeContext) -> None:
        super().__init__(ctx)
        import torch

        self._torch = torch
        self._enter = torch.ops.profiler._record_function_enter_new
        self._exit_op = torch.ops.profiler._record_function_exit._RecordFunction
        self._no_torch_function = torch._C.DisableTorchFunctionSubclass
        self._open: list[tuple[str, Any]] = []  # (hook point or "layer", handle), innermost last
        self._layer_handles: list = []
        self._prof = None
        self._cuda = ctx.engine.device.type == "cuda" and torch.cuda.is_available()
        self.ranges = 0
        self.trace: str | None = None
        self.events: int | None = None
        self.trace_bytes: int | None = None
        self.export_s: float | None = None
        self.export_cpu_s: float | None = None
        if torch._C._autograd._profiler_enabled():  # one profiler per process: Kineto refuses a second
            self.absent("another torch profiler is already running in this process")

    # -- ranges ----------------------------------------------------------------------------
    def _push(self, key: str, name: str) -> None:
        self._open.append((key, self._enter(name, None)))
        self.ranges += 1

    def _pop(self, key: str) -> None:
        """Close the innermost range opened for ``key`` and anything still open inside it (a layer whose
        forward raised never reaches its post hook)."""
        if not any(k == key for k, _ in self._open):
            return
        with self._no_torch_function():
            while self._open:
                k, handle = self._open.pop()
                self._exit_op(handle)
                if k == key:
                    return

    def subscriptions(self) -> dict[str, Callable]:
        if not self.available:
            return {}
        subs: dict[str, Callable] = {stage: self._range(stage) for stage in STAGES}
        subs["block_manager"] = self._on_block_manager
        return subs

    def _range(self, stage: str) -> Callable:
        push, pop = self._push, self._pop
        forward = stage == "forward"

        def on_stage(point: str, phase: str, t: int, fields: dict) -> None:
            if phase == "E":
                pop(stage)
            elif phase == "B":
                name = stage if not forward else "forward (graph)" if fields.get("cuda_graph") else "forward (eager)"
                push(stage, name)

        return on_stage

    def _on_block_manager(self, point: str, phase: str, t: int, fields: dict) -> None:
        if phase == "E":
            self._pop("block_manager")
        elif phase == "B":
            self._push("block_manager", f"block {fields['call']}")

    def _add_layer_ranges(self) -> None:
        layers = getattr(getattr(self.ctx.engine.model, "model", None), "layers", None) or []

        def pop(module, args, output) -> None:
            self._pop("layer")

        for i, layer in enumerate(layers):

            def push(module, args, _name=f"layer.{i}") -> None:  # returns None: the inputs pass unchanged
                self._push("layer", _name)

            self._layer_handles.append(layer.register_forward_pre_hook(push))
            self._layer_handles.append(layer.register_forward_hook(pop))

    # -- the profiler window -----------------------------------------------------------------
    def start(self) -> None:
        if not self.available:
            return
        profiler = self._torch.profiler
        activities = [profiler.ProfilerActivity.CPU]
        if self._cuda:
            activities.append(profiler.ProfilerActivity.CUDA)
            self._torch.cuda.synchronize(self.ctx.engine.device)
        self._prof = profiler.profile(
            activities=activities, record_shapes=self.ctx.options.torch_profiler_shapes, with_stack=self.ctx.options.torch_profiler_stacks
        )
        self._prof.start()
        if self.ctx.options.nvtx_layers:
            self._add_layer_ranges()

    def stop(self) -> None:
        for handle in self._layer_handles:
            handle.remove()
        self._layer_handles = []
        with self._no_torch_function():  # ranges a Ctrl-C left open, innermost first
            while self._open:
                self._exit_op(self._open.pop()[1])
        prof, self._prof = self._prof, None
        if prof is None:
            return
        if self._cuda:
            self._torch.cuda.synchronize(self.ctx.engine.device)  # the last kernels' records
        t0, c0 = time.perf_counter(), time.process_time()
        prof.stop()
        path = self.ctx.writer.path / TORCH_TRACE
        plain = path.with_suffix("")  # torch_trace.json
        try:
            prof.export_chrome_trace(str(plain))
            self.events = _gzip_counting_events(plain, path)
        finally:
            plain.unlink(missing_ok=True)
        self.export_s = round(time.perf_counter() - t0, 4)
        self.export_cpu_s = round(time.process_time() - c0, 4)
        self.trace = path.name
        self.trace_bytes = path.stat().st_size

    def info(self) -> dict[str, Any]:
        return {
            **super().info(),
            "trace": self.trace,
            "events": self.events,
            "trace_bytes": self.trace_bytes,
            "ranges": self.ranges,
            "layer_ranges": bool(self.ctx.options.nvtx_layers) and self.available,
            "activities": ["cpu", "cuda"] if self._cuda else ["cpu"],
            "shapes": self.ctx.options.torch_profiler_shapes,
            "stacks": self.ctx.options.torch_profiler_stacks,
            "export_s": self.export_s,  # stop + write the trace (after the run, not in it)
            "export_cpu_s": self.export_cpu_s,
            "note": "its cost in the run is inline (the profiler times every op): measure it with bench "
            "--probes off,torch_profiler",
        }
