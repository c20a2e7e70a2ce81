"""Continuous batching under a token budget, vLLM v1 style.

Each step: running requests first (decodes and unfinished prefill chunks), then waiting ones
(FCFS, or by priority: lower value first). Prefills are chunked to fit the budget and run in the
same step as decodes. When blocks run out, the newest running request (lowest priority first)
is preempted by recompute: its blocks are freed and it returns to the waiting queue.
"""

from __future__ import annotations

import bisect
import itertools
from dataclasses import dataclass, field

from traceinfer.engine.block_manager import BlockManager
from traceinfer.engine.hooks import Hooks
from traceinfer.engine.sequence import FinishReason, Sequence, SequenceStatus


@dataclass(frozen=True)
class SchedulerConfig:
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    enable_chunked_prefill: bool = True


@dataclass
class ScheduledSeq:
    seq: Sequence
    num_new_tokens: int  # query tokens this step, from seq.num_computed_tokens on

    @property
    def samples(self) -> bool:
        """True when this chunk reaches the end of the sequence, so a token is sampled."""
        return self.seq.num_computed_tokens + self.num_new_tokens == self.seq.num_tokens


@dataclass
class SchedulerOutput:
    scheduled: list[ScheduledSeq]  # decodes (one query token) first, then prefill chunks
    num_decode_seqs: int
    num_batched_tokens: int
    preempted: list[Sequence] = field(default_factory=list)
    failed: list[Sequence] = field(default_factory=list)  # finished with an error while scheduling
    num_cached_tokens: int = 0  # prompt tokens served from the prefix cache this step

    @property
    def is_empty(self) -> bool:
        return not self.scheduled


class Scheduler:
    def __init__(self, config: SchedulerConfig, block_manager: BlockManager, hooks: Hooks | None = None) -> None:
        self.config = config
        self.bm = block_manager
        self.hooks = hooks or block_manager.hooks
        self.waiting: list[Sequence] = []  # sorted by (priority, arrival, insertion)
        self._waiting_keys: list[tuple] = []
        self.running: list[Sequence] = []  # admission order
        self._counter = itertools.count()
        self._order: dict[str, tuple] = {}

    # -- queues ----------------------------------------------------------------------------
    def add(self, seq: Sequence) -> None:
        self._order[seq.request_id] = (seq.priority, seq.arrival_ns, next(self._counter))
        self._push_waiting(seq)

    def _push_waiting(self, seq: Sequence) -> None:
        key = self._order[seq.request_id]
        i = bisect.bisect(self._waiting_keys, key)
        self._waiting_keys.insert(i, key)
        self.waiting.insert(i, seq)

    def _pop_waiting(self) -> Sequence:
        self._waiting_keys.pop(0)
        return self.waiting.pop(0)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def remove(self, seq: Sequence) -> None:
        """Take a request out of whichever queue holds it and free its blocks (abort, finish)."""
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            i = self.waiting.index(seq)
            self.waiting.pop(i)
            self._waiting_keys.pop(i)
        self.bm.free(seq)
        self._order.pop(seq.request_id, None)

    # -- one step --------------------------------------------------------------------------
    def schedule(self) -> SchedulerOutput:
        budget = self.config.max_num_batched_tokens
        scheduled: list[ScheduledSeq] = []
        preempted: list[Sequence] = []
        failed: list[Sequence] = []

        # 1. running requests, oldest admission first
        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            n = min(seq.num_tokens - seq.num_computed_tokens, budget)
            while not self.bm.allocate(seq, n):
                victim = self._preemption_victim()
                if victim is seq and len(self.running) == 1:
                    self._fail_too_large(seq, failed)
                    break
                if self.running.index(victim) < i:  # already scheduled this step: take it back
                    i -= 1
                    k = next(k for k, s in enumerate(scheduled) if s.seq is victim)
                    budget += scheduled.pop(k).num_new_tokens
                self._preempt(victim, preempted)
                if victim is seq:
                    break
            else:
                scheduled.append(ScheduledSeq(seq, n))
                budget -= n
                i += 1
                continue
            # seq was preempted or failed: it left self.running, so index i now names the next one

        # 2. waiting requests, unless this step had to preempt (the cache is full)
        num_cached_tokens = 0
        while self.waiting and budget > 0 and len(self.running) < self.config.max_num_seqs and not preempted:
            seq = self.waiting[0]
            if self.bm.blocks_for(seq.num_tokens + 1) > self.bm.num_blocks:
                self._pop_waiting()
                self._fail_too_large(seq, failed)
                continue
            prefix = self.bm.find_cached_prefix(seq) if seq.num_computed_tokens == 0 else []
            num_cached = len(prefix) * self.bm.block_size
            n = seq.num_tokens - seq.num_computed_tokens - num_cached
            if n > budget:
                if not self.config.enable_chunked_prefill:
                    break
                n = budget
            if not self.bm.allocate(seq, n, prefix):
                break
            self._pop_waiting()
            seq.num_computed_tokens += num_cached
            seq.num_cached_tokens = num_cached
            num_cached_tokens += num_cached
            seq.transition(SequenceStatus.RUNNING)
            self.running.append(seq)
            scheduled.append(ScheduledSeq(seq, n))
            budget -= n

        decodes = [s for s in scheduled if s.num_new_tokens == 1]
        prefills = [s for s in scheduled if s.num_new_tokens != 1]
        return SchedulerOutput(
            scheduled=decodes + prefills,
            num_decode_seqs=len(decodes),
            num_batched_tokens=self.config.max_num_batched_tokens - budget,
            preempted=preempted,
            failed=failed,
            num_cached_tokens=num_cached_tokens,
        )

    def _preemption_victim(self) -> Sequence:
        """The running request to give up first: lowest priority (largest value), then newest."""
        return max(self.running, key=lambda s: self._order[s.request_id])

    def _preempt(self, seq: Sequence, preempted: list[Sequence]) -> None:
        self.running.remove(seq)
        blocks = len(seq.block_table)
        self.bm.free(seq, op="preempt")
        if self.hooks.preempt:
            self.hooks.preempt.emit(
                request_id=seq.request_id, num_computed_tokens=seq.num_computed_tokens, blocks_freed=blocks
            )
        seq.transition(SequenceStatus.PREEMPTED)
        seq.num_computed_tokens = 0
        seq.num_preemptions += 1
        seq.transition(SequenceStatus.WAITING)
        self._push_waiting(seq)
        preempted.append(seq)

    def _fail_too_large(self, seq: Sequence, failed: list[Sequence]) -> None:
        """The whole cache cannot hold this request: it fails alone, the rest go on."""
        if seq in self.running:
            self.running.remove(seq)
        self.bm.free(seq)
        needed = self.bm.blocks_for(seq.num_tokens + 1)
        seq.finish(
            FinishReason.ERROR,
            f"request needs {needed} KV blocks ({seq.num_tokens} tokens + 1 to generate, block_size "
            f"{self.bm.block_size}) but the whole cache has {self.bm.num_blocks} blocks",
        )
        self._order.pop(seq.request_id, None)
        failed.append(seq)
