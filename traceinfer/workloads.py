"""Workloads: pure, seeded functions -> (prompts as token ids, SamplingParams per request).

    chatbot : chat turns of about 128 prompt and 256 output tokens; every prompt starts with the same
              system prompt, so the prefix cache has something to find. Temperature 0.7, ignore_eos
              (the lengths, not the random weights, decide when a request ends).
    bench   : nano-vLLM's benchmark exactly (https://github.com/GeeeekExplorer/nano-vllm/blob/main/bench.py):
              ``random.seed(0)``; 256 prompts of ``randint(100, 1024)`` random token ids in [0, 10000];
              then one ``max_tokens = randint(100, 1024)`` per request; ignore_eos; temperature 0.6.

Each has a spec at its GPU size and a smaller one for a CPU, to finish in seconds. The ``[workload]``
section (traceinfer.config.WorkloadConfig) picks one and changes fields of its spec. No torch here.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass

from traceinfer.config import WorkloadConfig
from traceinfer.engine.sampling_params import SamplingParams
from traceinfer.errors import ConfigError

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


@dataclass(frozen=True)
class BenchSpec:
    num_requests: int = 256
    min_input_len: int = 100
    max_input_len: int = 1024
    min_output_len: int = 100
    max_output_len: int = 1024
    seed: int = 0
    temperature: float = 0.6

    def __post_init__(self) -> None:
        if self.num_requests < 1:
            raise ConfigError(f"bench num_requests must be >= 1, got {self.num_requests}")
        for kind in ("input", "output"):
            lo, hi = getattr(self, f"min_{kind}_len"), getattr(self, f"max_{kind}_len")
            if not 1 <= lo <= hi:
                raise ConfigError(f"bench min_{kind}_len/max_{kind}_len need 1 <= min <= max, got {lo}..{hi}")
        if self.temperature < 0:
            raise ConfigError(f"bench temperature must be >= 0, got {self.temperature}")


#: workload name -> (spec on a GPU, spec on a CPU)
SPECS: dict[str, tuple[ChatbotSpec | BenchSpec, ChatbotSpec | BenchSpec]] = {
    "chatbot": (ChatbotSpec(), ChatbotSpec(num_requests=4, mean_prompt_len=64, mean_output_len=24, system_prompt_len=16)),
    "bench": (BenchSpec(), BenchSpec(num_requests=16, min_input_len=16, max_input_len=64, min_output_len=16, max_output_len=64)),
}  # fmt: skip
WORKLOADS: tuple[str, ...] = tuple(SPECS)


def _span(rng: random.Random, mean: int, spread: float) -> int:
    return rng.randint(max(1, round(mean * (1 - spread))), max(1, round(mean * (1 + spread))))


def chatbot_workload(spec: ChatbotSpec) -> tuple[list[list[int]], list[SamplingParams]]:
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


def bench_workload(spec: BenchSpec) -> tuple[list[list[int]], list[SamplingParams]]:
    """nano-vLLM's prompts and per-request params; a private Random gives the same draws as random.seed()."""
    rng = random.Random(spec.seed)
    prompts = [
        [rng.randint(0, MAX_TOKEN_ID) for _ in range(rng.randint(spec.min_input_len, spec.max_input_len))]
        for _ in range(spec.num_requests)
    ]
    params = [
        SamplingParams(
            temperature=spec.temperature,
            ignore_eos=True,
            max_tokens=rng.randint(spec.min_output_len, spec.max_output_len),
        )
        for _ in range(spec.num_requests)
    ]
    return prompts, params


_GENERATORS = {ChatbotSpec: chatbot_workload, BenchSpec: bench_workload}


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


def spec_for(config: WorkloadConfig, on_cuda: bool) -> ChatbotSpec | BenchSpec:
    """The named workload's spec at its GPU or CPU size, with the fields ``config`` sets changed."""
    if config.name not in SPECS:
        raise ConfigError(f"unknown workload {config.name!r}; workloads: {', '.join(WORKLOADS)}")
    spec = SPECS[config.name][0 if on_cuda else 1]
    changes = config.overrides()
    names = {f.name for f in dataclasses.fields(spec)}
    foreign = sorted(set(changes) - names)
    if foreign:
        raise ConfigError(f"workload {config.name} has no parameter {', '.join(foreign)}; "
                          f"its parameters: {', '.join(sorted(names))}")  # fmt: skip
    return dataclasses.replace(spec, **changes)


def generate(spec: ChatbotSpec | BenchSpec) -> tuple[list[list[int]], list[SamplingParams]]:
    return _GENERATORS[type(spec)](spec)


def make(config: WorkloadConfig, on_cuda: bool) -> Workload:
    """The workload ``config`` names, at its GPU or CPU size, with the changes ``config`` makes."""
    spec = spec_for(config, on_cuda)
    prompts, params = generate(spec)
    return Workload(config.name, prompts, params, {"kind": type(spec).__name__, **dataclasses.asdict(spec)})
