"""Named hook points: the only way the engine talks to probes.

The engine calls ``hooks.<point>.span(...)`` around a stage or ``hooks.<point>.emit(...)``
for an instant event. A subscriber is any callable::

    def on_event(point: str, phase: Literal["B", "E", "i"], t_ns: int, fields: dict) -> None

``phase`` follows the Chrome trace-event letters (B = begin, E = end, i = instant); ``t_ns`` is
``time.perf_counter_ns()``. With no subscriber a point is falsy, ``span`` returns a shared
no-op context and ``emit`` returns at once, so call sites that build expensive payloads guard
them with ``if hooks.point:``.

Spans are delivered as they happen. The instant events that carry a step's data (``block``,
``tokens``, ``finish``) are handed over later, while the GPU runs the next step's forward (the
``handover`` point): on the host they would lengthen the step, behind the GPU they cost nothing. Such
an event carries the time it happened (``t_ns``, via ``emit_at``) and its ``step``; it reaches
subscribers within one step's host time, and in order.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import nullcontext
from typing import Literal

Phase = Literal["B", "E", "i"]
Subscriber = Callable[[str, Phase, int, dict], None]

#: Every hook point the engine calls, in the order a step reaches them.
HOOK_POINTS: tuple[str, ...] = (
    "add_request",  # i: request_id, prompt_len, max_tokens, priority, arrival_ns
    "step",  # span: step; end: num_outputs, handover ((start, duration) ns of the step's handover, or None)
    "schedule",  # span: step; end carries the scheduled batch summary
    "block_manager",  # span around a block-manager call that does work: call, request_id
    "block",  # i: ops (list of block_manager.BlockOp, each with its time and step), handed over at 'handover'
    "preempt",  # i: request_id, num_computed_tokens, blocks_freed
    "prepare",  # span: num_seqs, num_tokens (the forward's inputs)
    "forward",  # span: num_tokens, cuda_graph
    "handover",  # i, once per step with a forward: its GPU work is launched, the engine has handed over the
    # held-back events, the host has not yet waited for the GPU: probes do their per-step work here
    "sample",  # span: num_seqs
    "postprocess",  # span: num_seqs
    "tokens",  # i, once per step, handed over at the next 'handover': step, request_ids, token_ids, indices
    "finish",  # i, handed over after the step's tokens: step, request_id, reason, num_output_tokens, error
)

_NULL_SPAN = nullcontext()


class HookPoint:
    """One named point; holds its subscribers."""

    __slots__ = ("_subscribers", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self._subscribers: list[Subscriber] = []

    def __bool__(self) -> bool:
        return bool(self._subscribers)

    def emit(self, **fields) -> None:
        if not self._subscribers:
            return
        t = time.perf_counter_ns()
        for fn in self._subscribers:
            fn(self.name, "i", t, fields)

    def emit_at(self, t_ns: int, fields: dict) -> None:
        """An instant event that happened at ``t_ns`` (earlier), handed over now."""
        for fn in self._subscribers:
            fn(self.name, "i", t_ns, fields)

    def span(self, **fields):
        if not self._subscribers:
            return _NULL_SPAN
        return _Span(self.name, tuple(self._subscribers), fields)


class _Span:
    """A span with subscribers: B at enter, E at exit (also on an exception). ``with`` gives the dict
    the stage may fill with results (e.g. batch sizes) for the end event. A class, not a generator
    context manager: it is entered several times per engine step, and this costs a third as much."""

    __slots__ = ("end_fields", "fields", "name", "subs")

    def __init__(self, name: str, subs: tuple, fields: dict) -> None:
        self.name = name
        self.subs = subs
        self.fields = fields

    def __enter__(self) -> dict:
        t = time.perf_counter_ns()
        for fn in self.subs:
            fn(self.name, "B", t, self.fields)
        self.end_fields = {}
        return self.end_fields

    def __exit__(self, *exc) -> bool:
        t = time.perf_counter_ns()
        for fn in self.subs:
            fn(self.name, "E", t, self.end_fields)
        return False


class Hooks:
    """The engine's set of hook points, one attribute per name in HOOK_POINTS."""

    def __init__(self) -> None:
        for name in HOOK_POINTS:
            setattr(self, name, HookPoint(name))

    def point(self, name: str) -> HookPoint:
        if name not in HOOK_POINTS:
            raise KeyError(f"unknown hook point {name!r}; known: {', '.join(HOOK_POINTS)}")
        return getattr(self, name)

    def subscribe(self, fn: Subscriber, points: tuple[str, ...] | None = None) -> Callable[[], None]:
        """Subscribe ``fn`` to ``points`` (all by default); returns a function that unsubscribes."""
        chosen = [self.point(p) for p in (points or HOOK_POINTS)]
        for p in chosen:
            p._subscribers.append(fn)

        def unsubscribe() -> None:
            for p in chosen:
                if fn in p._subscribers:
                    p._subscribers.remove(fn)

        return unsubscribe

    def subscribed(self) -> dict[str, int]:
        """Number of subscribers per point that has any (tests use it to catch leaks)."""
        return {n: len(getattr(self, n)._subscribers) for n in HOOK_POINTS if getattr(self, n)}
