"""Workloads for ``traceinfer profile``: pure, seeded functions -> (prompts as token ids, SamplingParams).

    chatbot : chat turns of about 128 prompt and 256 output tokens; every prompt starts with the same
              system prompt, so the prefix cache has something to find. Temperature 0.7, ignore_eos
              (the lengths, not the random weights, decide when a request ends).
    bench   : nano-vLLM's benchmark workload, from traceinfer.bench.make_workload.

On a CPU the profile command scales both down (CPU_CHATBOT, bench's CPU_WORKLOAD) to finish in seconds.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from typing import Literal

from traceinfer.bench import CPU_WORKLOAD, CUDA_WORKLOAD, WorkloadSpec, make_workload
from traceinfer.engine.sampling_params import SamplingParams
from traceinfer.errors import ConfigError

WorkloadName = Literal["chatbot", "bench"]
WORKLOADS: tuple[str, ...] = ("chatbot", "bench")
MAX_TOKEN_ID = 10000  # below every model's vocabulary, as in nano-vLLM's bench


@dataclass(frozen=True)
class ChatbotSpec:
    num_requests: int = 64
    mean_prompt_len: int = 128  # including the shared system prompt
    mean_output_len: int = 256
    spread: float = 0.5  # lengths are uniform in mean * [1 - spread, 1 + spread]
    system_prompt_len: int = 32  # shared by every request
    temperature: float = 0.7
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_requests < 1:
            raise ConfigError(f"chatbot num_requests must be >= 1, got {self.num_requests}")
        if not 0 <= self.spread < 1:
            raise ConfigError(f"chatbot spread must be in [0, 1), got {self.spread}")
        if self.mean_output_len < 1 or self.mean_prompt_len < 1:
            raise ConfigError("chatbot mean prompt and output lengths must be >= 1")
        if not 0 <= self.system_prompt_len < self.mean_prompt_len * (1 - self.spread):
            raise ConfigError(
                f"chatbot system_prompt_len={self.system_prompt_len} must be shorter than the shortest prompt "
                f"({int(self.mean_prompt_len * (1 - self.spread))} tokens)"
            )


CUDA_CHATBOT = ChatbotSpec()
CPU_CHATBOT = ChatbotSpec(num_requests=4, mean_prompt_len=64, mean_output_len=24, system_prompt_len=16)


def _span(rng: random.Random, mean: int, spread: float) -> int:
    return rng.randint(max(1, round(mean * (1 - spread))), max(1, round(mean * (1 + spread))))


def chatbot_workload(spec: ChatbotSpec = CUDA_CHATBOT) -> tuple[list[list[int]], list[SamplingParams]]:
    """Prompts (system prompt + user turn, token ids) and per-request params; same spec, same workload."""
    rng = random.Random(spec.seed)
    system = [rng.randint(0, MAX_TOKEN_ID) for _ in range(spec.system_prompt_len)]
    prompts, params = [], []
    for _ in range(spec.num_requests):
        n = _span(rng, spec.mean_prompt_len, spec.spread)
        prompts.append(system + [rng.randint(0, MAX_TOKEN_ID) for _ in range(n - len(system))])
        params.append(SamplingParams(temperature=spec.temperature, ignore_eos=True,
                                     max_tokens=_span(rng, spec.mean_output_len, spec.spread)))  # fmt: skip
    return prompts, params


@dataclass(frozen=True)
class Workload:
    name: str
    prompts: list[list[int]]
    params: list[SamplingParams]
    spec: dict  # the spec that made it, for the manifest

    @property
    def prompt_tokens(self) -> int:
        return sum(map(len, self.prompts))

    @property
    def max_output_tokens(self) -> int:
        return sum(p.max_tokens for p in self.params)


def make(name: str, on_cuda: bool, num_requests: int | None = None, seed: int | None = None) -> Workload:
    """The named workload at its CUDA or CPU size; ``num_requests`` and ``seed`` override the spec."""
    changes = {k: v for k, v in (("num_requests", num_requests), ("seed", seed)) if v is not None}
    if name == "chatbot":
        spec = dataclasses.replace(CUDA_CHATBOT if on_cuda else CPU_CHATBOT, **changes)
        prompts, params = chatbot_workload(spec)
    elif name == "bench":
        spec = dataclasses.replace(CUDA_WORKLOAD if on_cuda else CPU_WORKLOAD, **changes)
        prompts, params = make_workload(spec)
    else:
        raise ConfigError(f"unknown workload {name!r}; known: {', '.join(WORKLOADS)}")
    return Workload(name, prompts, params, {"kind": type(spec).__name__, **dataclasses.asdict(spec)})


__all__ = ["WORKLOADS", "ChatbotSpec", "Workload", "WorkloadSpec", "chatbot_workload", "make", "make_workload"]
