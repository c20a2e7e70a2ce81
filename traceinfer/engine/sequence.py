"""A request as the engine sees it: tokens, KV blocks, and an explicit state machine.

    WAITING -> RUNNING -> FINISHED
                 |
                 v
             PREEMPTED -> WAITING   (preemption by recompute: blocks freed, progress reset)

Any live state can also go to FINISHED (abort, error).
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass

from traceinfer.engine.sampling_params import SamplingParams


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    PREEMPTED = "preempted"
    FINISHED = "finished"


class FinishReason(str, enum.Enum):
    LENGTH = "length"  # max_tokens or max_model_len reached
    STOP = "stop"  # a stop token
    EOS = "eos"
    ABORTED = "aborted"
    ERROR = "error"


_ALLOWED = {
    SequenceStatus.WAITING: {SequenceStatus.RUNNING, SequenceStatus.FINISHED},
    SequenceStatus.RUNNING: {SequenceStatus.PREEMPTED, SequenceStatus.FINISHED},
    SequenceStatus.PREEMPTED: {SequenceStatus.WAITING, SequenceStatus.FINISHED},
    SequenceStatus.FINISHED: set(),
}


class Sequence:
    def __init__(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        params: SamplingParams,
        priority: int = 0,
        arrival_ns: int | None = None,
    ) -> None:
        self.request_id = request_id
        self.prompt_len = len(prompt_token_ids)
        # prompt + output; the last may be a placeholder -(row + 1) for a token still being sampled
        # (traceinfer.engine.model_runner), put in place by the engine before the token is read
        self.token_ids: list[int] = list(prompt_token_ids)
        self.params = params
        self.priority = priority
        self.arrival_ns = time.perf_counter_ns() if arrival_ns is None else arrival_ns
        self.status = SequenceStatus.WAITING
        self.num_computed_tokens = 0  # tokens whose K/V are in the cache
        self.num_cached_tokens = 0  # of those, how many came from a prefix-cache hit (last schedule)
        self.block_table: list[int] = []  # physical block ids, in token order
        self.block_table_version = 0  # set by the block manager on every change, unique across sequences
        self.block_hashes: list[int] = []  # chained hashes of the full blocks of token_ids (grown lazily)
        self.num_stored_blocks = 0  # leading blocks already published to the prefix cache
        self.finish_reason: FinishReason | None = None
        self.error: str | None = None
        self.num_preemptions = 0
        self.token_times_ns: list[int] = []  # host time each output token was produced
        self.generator = None  # CPU torch.Generator of a seeded request: it draws each step's sampling seed

    # -- state machine --------------------------------------------------------------------
    def transition(self, new: SequenceStatus) -> None:
        if new not in _ALLOWED[self.status]:
            raise RuntimeError(f"request {self.request_id}: illegal transition {self.status.name} -> {new.name}")
        self.status = new

    def finish(self, reason: FinishReason, error: str | None = None) -> None:
        self.transition(SequenceStatus.FINISHED)
        self.finish_reason = reason
        self.error = error

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    # -- tokens ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.prompt_len :]

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.prompt_len

    @property
    def prompt_token_ids(self) -> list[int]:
        return self.token_ids[: self.prompt_len]

    def put_token(self, index: int, token_id: int, t_ns: int) -> None:
        """The sampled token at ``index`` of token_ids, in place of its placeholder, produced at ``t_ns``."""
        self.token_ids[index] = token_id
        self.token_times_ns.append(t_ns)


@dataclass(frozen=True)
class RequestOutput:
    """What a finished (or aborted) request returns."""

    request_id: str
    prompt_token_ids: list[int]
    token_ids: list[int]  # output tokens only
    text: str
    finished: bool
    finish_reason: str | None
    error: str | None
    arrival_ns: int
    token_times_ns: list[int]  # perf_counter_ns of each output token
    num_cached_prompt_tokens: int
    num_preemptions: int
