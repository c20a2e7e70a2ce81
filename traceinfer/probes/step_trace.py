"""Step trace: one row per engine step (stream 'steps').

Host time is split into the five stages the engine marks (schedule, prepare inputs, forward launch,
sample, postprocess) plus the rest, of which the handover of the step's events to the probes, right
after the forward's launch, is a column of its own (the probes' cost, hidden behind the GPU). The
schedule span's end carries the batch summary (sequences and tokens by kind, cached tokens, token
budget, queue lengths, free blocks). On CUDA a pair of events is recorded on the engine's stream at
the forward's begin and end; they are read while a later forward runs (or at the end), never waited
on, giving the forward's GPU time and the GPU idle gap before it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from traceinfer.probes.base import Probe, ProbeContext
from traceinfer.rundir.schema import STAGES, STREAMS

_COLUMNS = STREAMS["steps"].names
_I = {name: i for i, name in enumerate(_COLUMNS)}
_STAGE_DURS = [_I[f"{stage}_ns"] for stage in STAGES]  # hook point = column prefix
_SUMMARY = [  # schedule end fields copied into the row
    (key, _I[key])
    for key in (
        "num_seqs", "num_prefill_seqs", "num_decode_seqs", "num_batched_tokens", "num_prefill_tokens",
        "num_decode_tokens", "num_cached_tokens", "token_budget", "num_waiting", "num_running",
        "num_preempted", "num_free_blocks",
    )
]  # fmt: skip
_STEP, _T, _DUR, _OTHER = _I["step"], _I["t_ns"], _I["dur_ns"], _I["other_ns"]
_GPU, _GAP, _GRAPH, _OUTPUTS = _I["gpu_forward_ns"], _I["gpu_gap_ns"], _I["cuda_graph"], _I["num_outputs"]
_HANDOVER_START, _HANDOVER = _I["handover_start_ns"], _I["handover_ns"]


class StepTraceProbe(Probe):
    name = "steps"
    description = "per-step host time by stage, forward GPU time (CUDA events), batch and queue summary"
    streams = ("steps",)

    def __init__(self, ctx: ProbeContext) -> None:
        super().__init__(ctx)
        self._append = ctx.writer.stream("steps").rows.append
        self._cur: list | None = None
        self._rows = 0
        self._cuda = None
        device = ctx.engine.device
        if device.type == "cuda":
            import torch

            if torch.cuda.is_available():
                self._cuda = torch.cuda
                self._stream = torch.cuda.current_stream(device)
        else:
            self.reason = "no CUDA device: gpu_forward_ns and gpu_gap_ns are null"
        self._pending: deque = deque()  # [row, start event | None, end event | None], in step order
        self._pool: list = []
        self._prev_end = None
        self._fwd: list = [None, None]

    # -- subscribers -----------------------------------------------------------------------
    def subscriptions(self) -> dict[str, Callable]:
        subs: dict[str, Callable] = {"step": self._on_step, "schedule": self._on_schedule}
        if self._cuda is not None:
            subs["handover"] = self._on_handover
        for stage in STAGES:
            if stage not in subs:
                subs[stage] = self._stage(stage, _I[f"{stage}_start_ns"], _I[f"{stage}_ns"])
        return subs

    def _on_step(self, point: str, phase: str, t: int, fields: dict) -> None:
        if phase == "B":
            cur = [None] * len(_COLUMNS)
            cur[_STEP] = fields.get("step")
            cur[_T] = t
            self._cur = cur
            return
        cur = self._cur
        if cur is None:
            return
        self._cur = None
        cur[_DUR] = dur = t - cur[_T]
        cur[_OTHER] = dur - sum(cur[i] for i in _STAGE_DURS if cur[i] is not None)
        cur[_OUTPUTS] = fields.get("num_outputs")
        handover = fields.get("handover")  # measured by the engine, this probe's own work at 'handover' included
        if handover is not None:
            cur[_HANDOVER_START], cur[_HANDOVER] = handover
        if self._cuda is None:
            self._append(tuple(cur))
            self._rows += 1
            return
        self._pending.append((cur, self._fwd[0], self._fwd[1]))
        self._fwd = [None, None]

    def _on_handover(self, point: str, phase: str, t: int, fields: dict) -> None:
        self._resolve(block=False)  # the last steps' rows, while the GPU runs this step's forward

    def _on_schedule(self, point: str, phase: str, t: int, fields: dict) -> None:
        cur = self._cur
        if cur is None:
            return
        if phase == "B":
            cur[_I["schedule_start_ns"]] = t
            return
        cur[_I["schedule_ns"]] = t - cur[_I["schedule_start_ns"]]
        get = fields.get
        for key, i in _SUMMARY:
            cur[i] = get(key)

    def _stage(self, point: str, start_col: int, dur_col: int) -> Callable:
        """A stage's start and host time in the step (each stage runs at most once a step)."""
        forward = point == "forward"

        def on_stage(point: str, phase: str, t: int, fields: dict) -> None:
            cur = self._cur
            if cur is None:  # outside a step (e.g. LLMEngine.score)
                return
            if phase == "B":
                cur[start_col] = t
                if forward:
                    cur[_GRAPH] = fields.get("cuda_graph")
                    if self._cuda is not None:
                        self._fwd[0] = self._record()
            elif cur[start_col] is not None:
                if forward and self._cuda is not None:
                    self._fwd[1] = self._record()
                cur[dur_col] = t - cur[start_col]

        return on_stage

    # -- CUDA events -----------------------------------------------------------------------
    def _record(self):
        ev = self._pool.pop() if self._pool else self._cuda.Event(enable_timing=True)
        ev.record(self._stream)
        return ev

    def _resolve(self, block: bool) -> None:
        """Emit pending rows in order, as far as their forward's end event has completed."""
        pending = self._pending
        while pending:
            row, start, end = pending[0]
            if start is not None and end is not None:
                if block:
                    end.synchronize()
                elif not end.query():
                    return
                row[_GPU] = round(start.elapsed_time(end) * 1e6)
                if self._prev_end is not None:
                    row[_GAP] = round(self._prev_end.elapsed_time(start) * 1e6)
                    self._pool.append(self._prev_end)
                self._pool.append(start)
                self._prev_end = end
            pending.popleft()
            self._append(tuple(row))
            self._rows += 1

    def stop(self) -> None:
        if self._cuda is not None:
            self._resolve(block=True)

    def info(self) -> dict:
        return {**super().info(), "rows": self._rows, "gpu_timing": "cuda events" if self._cuda else None}
