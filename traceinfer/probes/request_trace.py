"""Request trace: arrival, scheduling, preemption, every token, finish (streams 'requests' and 'tokens').

The engine marks no "scheduled" point of its own; a request is scheduled (admitted to the running
batch) exactly when the block manager gives it its first blocks, which it reports as op 'allocate'
(no prefix hit) or 'hit' (a prefix hit, followed by 'append' for the rest). Re-admission after a
preemption shows up the same way. TTFT, ITL, TPOT, E2E, queue and prefill time are derived from
these events by traceinfer.reports.request_analysis.
"""

from __future__ import annotations

from collections.abc import Callable

from traceinfer.engine.block_manager import BlockOp
from traceinfer.probes.base import Probe, ProbeContext
from traceinfer.rundir.schema import STREAMS

_EXTRA_COLUMNS = STREAMS["requests"].names[4:]  # after t_ns, step, request_id, event
_OP, _REQUEST = BlockOp._fields.index("op"), BlockOp._fields.index("request_id")


class RequestTraceProbe(Probe):
    name = "requests"
    description = "request lifecycle (arrival, scheduled, preempted, finished) and every output token"
    streams = ("requests", "tokens")

    def __init__(self, ctx: ProbeContext) -> None:
        super().__init__(ctx)
        self._req = ctx.writer.stream("requests").rows.append
        self._tok = ctx.writer.stream("tokens").rows.append
        self._steps = ctx.steps
        self._block_size = ctx.engine.block_manager.block_size
        self._known: set[str] = set()  # requests that arrived while attached

    def subscriptions(self) -> dict[str, Callable]:
        return {
            "add_request": self._on_arrival,
            "block": self._on_block,
            "preempt": self._on_preempt,
            "tokens": self._on_tokens,
            "finish": self._on_finish,
        }

    def _event(self, t: int, step: int | None, rid: str, event: str, **cols) -> None:
        """One 'requests' row; columns not given are null (lifecycle events are rare: a dict is fine)."""
        self._req((t, step, rid, event, *(cols.get(c) for c in _EXTRA_COLUMNS)))

    def _on_arrival(self, point: str, phase: str, t: int, f: dict) -> None:
        rid = f["request_id"]
        self._known.add(rid)
        # the request's own arrival time (a server may stamp it before add_request)
        self._event(f.get("arrival_ns", t), self._steps.step, rid, "arrival", prompt_len=f.get("prompt_len"), max_tokens=f.get("max_tokens"))

    def _on_block(self, point: str, phase: str, t: int, f: dict) -> None:
        known = self._known
        for o in f["ops"]:
            op = o[_OP]  # an index, not the attribute: ~30 ops per decode step
            if (op == "allocate" or op == "hit") and o[_REQUEST] in known:
                cached = len(o.block_ids) * self._block_size if op == "hit" else 0
                self._event(o.t_ns, o.step, o.request_id, "scheduled", cached_tokens=cached)

    def _on_preempt(self, point: str, phase: str, t: int, f: dict) -> None:
        self._event(t, self._steps.step, f["request_id"], "preempted", num_computed_tokens=f.get("num_computed_tokens"))

    def _on_tokens(self, point: str, phase: str, t: int, f: dict) -> None:  # the hot one: one call per step
        # one packed row per step (the engine builds fresh lists each step); readers expand it per token
        self._tok((t, f["step"], f["request_ids"], f["indices"], f["token_ids"]))

    def _on_finish(self, point: str, phase: str, t: int, f: dict) -> None:
        rid = f["request_id"]
        self._known.discard(rid)
        self._event(
            t,
            f.get("step"),
            rid,
            "finished",
            reason=f.get("reason"),
            num_output_tokens=f.get("num_output_tokens"),
            error=f.get("error"),
        )
