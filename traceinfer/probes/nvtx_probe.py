"""NVTX probe: ranges in domain ``traceinfer`` around every engine stage, for Nsight Systems.

Each stage gets a range with a colour, a category and an integer payload:

    stage            category        payload
    step             engine          step index
    schedule         scheduler       step index
    prepare          runner          query tokens
    forward          runner          query tokens   (message says "graph" or "eager")
    sample           runner          sequences sampled
    postprocess      engine          sequences
    block <call>     block_manager   -              allocate, free, preempt, cache_full_blocks (calls that
                                                    do work; the decode fast paths get no range)
    preempt          scheduler       computed tokens dropped (a mark)
    layer <i>        layer           -              (optional; eager forwards only)

Around the window the probe is attached it calls ``torch.cuda.profiler.start()/stop()``, so
``nsys profile -t cuda,nvtx,osrt --capture-range=cudaProfilerApi --capture-range-end=stop`` captures
exactly the profiled workload. Without the ``nvtx`` package the ranges are a no-op and the manifest
says so. With it but no tool attached (nsys or another NVTX injection library, which must be there
when the process starts), nvtx hands out a dummy domain whose calls do nothing; the probe then
subscribes to no hook point at all, so that leaving it on costs the engine nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from traceinfer.probes.base import Probe, ProbeContext

DOMAIN = "traceinfer"

#: stage -> (category, ARGB colour, B-event field used as payload)
STAGES: dict[str, tuple[str, int, str | None]] = {
    "step": ("engine", 0xFF4C72B0, "step"),
    "schedule": ("scheduler", 0xFFDD8452, "step"),
    "prepare": ("runner", 0xFF55A868, "num_tokens"),
    "forward": ("runner", 0xFFC44E52, "num_tokens"),
    "sample": ("runner", 0xFF8172B3, "num_seqs"),
    "postprocess": ("engine", 0xFF937860, "num_seqs"),
}
BLOCK_COLOR = 0xFF64B5CD
PREEMPT_COLOR = 0xFFFF0000
LAYER_COLOR = 0xFFCCB974


class NvtxProbe(Probe):
    name = "nvtx"
    description = (
        "NVTX ranges (domain traceinfer) per stage with payloads; cudaProfilerApi start/stop around the window"
    )

    def __init__(self, ctx: ProbeContext) -> None:
        super().__init__(ctx)
        self._domain = None
        self._attrs: dict[str, Any] = {}
        self._layer_handles: list = []
        self._profiler_started = False
        self._cuda = ctx.engine.device.type == "cuda"
        self.profiler_attached = False
        try:
            import nvtx
        except ImportError:
            if self._cuda:
                self.absent("the nvtx package is not installed (pip install nvtx): NVTX ranges are a no-op")
            else:  # ranges mark a GPU timeline for Nsight Systems: nothing to advise on a CPU run
                self.absent("no NVTX ranges (the nvtx package is not installed)")
            return
        dom = nvtx.get_domain(DOMAIN)
        self._domain = dom
        self.profiler_attached = type(dom).__name__ != "DummyDomain"
        if not self.profiler_attached:
            self.reason = "no NVTX tool attached (e.g. nsys profile): ranges would be dropped, so none are pushed"
        for stage, (category, color, _) in STAGES.items():
            self._attrs[stage] = dom.get_event_attributes(message=stage, color=color, category=category)
        self._attrs["forward_graph"] = dom.get_event_attributes(message="forward (graph)", color=STAGES["forward"][1], category="runner")  # fmt: skip
        self._attrs["forward_eager"] = dom.get_event_attributes(message="forward (eager)", color=STAGES["forward"][1], category="runner")  # fmt: skip
        self._attrs["preempt"] = dom.get_event_attributes(message="preempt", color=PREEMPT_COLOR, category="scheduler")
        self._block_attrs: dict[str, Any] = {}

    # -- ranges ----------------------------------------------------------------------------
    def subscriptions(self) -> dict[str, Callable]:
        if self._domain is None or not self.profiler_attached:
            return {}
        subs: dict[str, Callable] = {stage: self._range(stage) for stage in STAGES}
        subs["block_manager"] = self._on_block_manager
        subs["preempt"] = self._on_preempt
        return subs

    def _range(self, stage: str) -> Callable:
        dom = self._domain
        push, pop = dom.push_range, dom.pop_range
        payload_key = STAGES[stage][2]
        attrs = self._attrs[stage]
        graph, eager = self._attrs["forward_graph"], self._attrs["forward_eager"]
        forward = stage == "forward"

        def on_stage(point: str, phase: str, t: int, fields: dict) -> None:
            if phase == "E":
                pop()
                return
            a = (graph if fields.get("cuda_graph") else eager) if forward else attrs
            a.payload = fields.get(payload_key)
            push(a)

        return on_stage

    def _on_block_manager(self, point: str, phase: str, t: int, fields: dict) -> None:
        if phase == "E":
            self._domain.pop_range()
            return
        call = fields["call"]
        attrs = self._block_attrs.get(call)
        if attrs is None:
            attrs = self._block_attrs[call] = self._domain.get_event_attributes(
                message=f"block {call}", color=BLOCK_COLOR, category="block_manager"
            )
        self._domain.push_range(attrs)

    def _on_preempt(self, point: str, phase: str, t: int, fields: dict) -> None:
        attrs = self._attrs["preempt"]
        attrs.payload = fields.get("num_computed_tokens")
        self._domain.mark(attrs)

    # -- per-layer ranges and the profiler window --------------------------------------------
    def _add_layer_ranges(self) -> None:
        dom = self._domain
        layers = getattr(getattr(self.ctx.engine.model, "model", None), "layers", None) or []

        def pop(module, args, output) -> None:
            dom.pop_range()

        for i, layer in enumerate(layers):
            attrs = dom.get_event_attributes(message=f"layer {i}", color=LAYER_COLOR, category="layer")

            def push(module, args, _attrs=attrs) -> None:  # returns None: the inputs pass unchanged
                dom.push_range(_attrs)

            self._layer_handles.append(layer.register_forward_pre_hook(push))
            self._layer_handles.append(layer.register_forward_hook(pop))

    def start(self) -> None:
        if self._domain is not None and self.profiler_attached and self.ctx.options.nvtx_layers:
            self._add_layer_ranges()
        if self._cuda and self.ctx.options.cuda_profiler_range:
            import torch

            if torch.cuda.is_available():
                torch.cuda.synchronize(self.ctx.engine.device)
                torch.cuda.profiler.start()
                self._profiler_started = True

    def stop(self) -> None:
        for handle in self._layer_handles:
            handle.remove()
        self._layer_handles = []
        if self._profiler_started:
            import torch

            torch.cuda.synchronize(self.ctx.engine.device)
            torch.cuda.profiler.stop()
            self._profiler_started = False

    def info(self) -> dict:
        return {
            **super().info(),
            "domain": DOMAIN,
            "profiler_attached": self.profiler_attached,
            "ranges": self._domain is not None and self.profiler_attached,
            "layer_ranges": self.ctx.options.nvtx_layers and self._domain is not None and self.profiler_attached,
            "cuda_profiler_range": self._cuda and self.ctx.options.cuda_profiler_range,
        }
