"""The catalog: each workload's spec at its GPU size and its CPU size, and the config's changes to it.

A spec is a frozen dataclass, validated on creation; its fields are the parameters that ``[workload]``
(traceinfer.config.WorkloadConfig) changes, under the same names. The CPU size has fewer requests and
shorter prompts and outputs, so it finishes in seconds, in the same shape: the prompt:output ratio and
the shared prefix stay (prefix_share's prefix shrinks too: a long one is its point; its question:answer
ratio stays).

Lengths are uniform integers in mean x [1 - spread, 1 + spread], a prompt's shared prefix included.
spread is 0.5 except for chatbot and code_gen, 0.4 (at CPU size their 64-token prompts hold a 32-token
prefix: 0.5 would draw prompts that are all prefix), and prefix_share, 0.03 (a 1,536-token prefix in a
~1,600-token prompt: a wider spread would cut into the prefix).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from traceinfer.config import WorkloadConfig
from traceinfer.errors import ConfigError
from traceinfer.workloads.arrivals import Arrival, check_arrival


def length_bounds(mean: int, spread: float) -> tuple[int, int]:
    """The shortest and longest length drawn around ``mean``: mean x (1 -/+ spread), rounded, at least 1."""
    return max(1, round(mean * (1 - spread))), max(1, round(mean * (1 + spread)))


def _check_requests(spec) -> None:
    """What every generated workload checks: its request count, its arrivals and its concurrency."""
    if spec.num_requests < 1:
        raise ConfigError(f"num_requests must be >= 1, got {spec.num_requests}")
    check_arrival(spec.arrival, spec.rate, spec.burstiness)
    _check_concurrency(spec)


def _check_temperature(temperature: float) -> None:
    if not temperature >= 0:
        raise ConfigError(f"temperature must be >= 0 (0 is greedy), got {temperature}")


def _check_concurrency(spec) -> None:
    if spec.max_concurrency is not None and spec.max_concurrency < 1:
        raise ConfigError(f"max_concurrency must be >= 1 (or unset: no limit), got {spec.max_concurrency}")


@dataclass(frozen=True)
class ChatbotSpec:
    """Chat-shaped requests: every prompt is one shared prefix (a system prompt, an instruction) followed by
    unique tokens, random ids; each request has its own output length and ignores EOS (the lengths, not
    the random weights, decide when it ends). chatbot, rag_qa, code_gen, summarization and prefix_share are
    this spec at different lengths; the defaults are chatbot's GPU size."""

    num_requests: int = 64
    prompt_len: int = 128  # mean, shared prefix included
    output_len: int = 256  # mean
    spread: float = 0.4  # lengths are uniform in mean x [1 - spread, 1 + spread]
    shared_prefix_len: int = 32  # two KV blocks of 16: full blocks for the prefix cache to find
    temperature: float = 0.7
    seed: int = 0
    arrival: Arrival = "poisson"
    rate: float | None = 8.0  # requests per second (poisson, gamma)
    burstiness: float = 1.0  # gamma's shape
    max_concurrency: int | None = None  # most requests in flight; None: no limit

    def __post_init__(self) -> None:
        _check_requests(self)
        _check_temperature(self.temperature)
        if self.prompt_len < 1 or self.output_len < 1:
            raise ConfigError(f"prompt_len and output_len must be >= 1, got {self.prompt_len} and {self.output_len}")
        if not 0 <= self.spread < 1:
            raise ConfigError(f"spread must be in [0, 1), got {self.spread}")
        if self.shared_prefix_len < 0:
            raise ConfigError(f"shared_prefix_len must be >= 0, got {self.shared_prefix_len}")
        shortest = length_bounds(self.prompt_len, self.spread)[0]
        if self.shared_prefix_len >= shortest:
            raise ConfigError(
                f"shared_prefix_len {self.shared_prefix_len} must be below the shortest prompt, {shortest} tokens "
                f"(prompt_len {self.prompt_len} x (1 - spread {self.spread})): lower it, raise prompt_len or "
                f"lower spread"
            )


@dataclass(frozen=True)
class Component:
    """One workload of a blend and its share of the requests."""

    name: str
    weight: float
    spec: ChatbotSpec


@dataclass(frozen=True)
class MixedSpec:
    """A blend: each request is drawn (seeded) from the components by weight and keeps that component's
    lengths, temperature and shared prefix (a prefix per component). This spec's seed draws everything:
    the components' own seeds and arrivals are not used."""

    components: tuple[Component, ...]
    num_requests: int = 64
    seed: int = 0
    arrival: Arrival = "poisson"
    rate: float | None = 8.0
    burstiness: float = 1.0
    max_concurrency: int | None = None

    def __post_init__(self) -> None:
        _check_requests(self)
        if not self.components or any(not c.weight > 0 for c in self.components):
            raise ConfigError(f"a blend needs components of weight > 0, got {self.components}")


@dataclass(frozen=True)
class BenchSpec:
    """nano-vLLM's benchmark (https://github.com/GeeeekExplorer/nano-vllm/blob/main/bench.py): prompts and
    output lengths uniform in [min, max], random ids, ignore_eos; the defaults are its numbers."""

    num_requests: int = 256
    min_input_len: int = 100
    max_input_len: int = 1024
    min_output_len: int = 100
    max_output_len: int = 1024
    seed: int = 0
    temperature: float = 0.6
    arrival: Arrival = "offline"
    rate: float | None = None
    burstiness: float = 1.0
    max_concurrency: int | None = None

    def __post_init__(self) -> None:
        _check_requests(self)
        _check_temperature(self.temperature)
        for kind in ("input", "output"):
            lo, hi = getattr(self, f"min_{kind}_len"), getattr(self, f"max_{kind}_len")
            if not 1 <= lo <= hi:
                raise ConfigError(f"min_{kind}_len/max_{kind}_len need 1 <= min <= max, got {lo}..{hi}")


@dataclass(frozen=True)
class FileSpec:
    """The requests of a JSON Lines file (traceinfer.workloads.jsonl): everything but how many may be in
    flight at once is in the file."""

    file: str
    max_concurrency: int | None = None

    def __post_init__(self) -> None:
        _check_concurrency(self)


Spec = ChatbotSpec | MixedSpec | BenchSpec | FileSpec


def _sizes(gpu, **cpu):
    """(the spec at GPU size, the spec at CPU size: ``gpu`` with the changes ``cpu``)."""
    return gpu, dataclasses.replace(gpu, **cpu)


_CHAT: dict[str, tuple[ChatbotSpec, ChatbotSpec]] = {
    "chatbot": _sizes(ChatbotSpec(), num_requests=8, prompt_len=64, output_len=128, rate=4.0),
    "rag_qa": _sizes(ChatbotSpec(prompt_len=2048, output_len=64, spread=0.5, temperature=0.3, rate=4.0),
                     num_requests=8, prompt_len=512, output_len=16),
    "code_gen": _sizes(ChatbotSpec(prompt_len=512, output_len=512, temperature=0.2, rate=4.0),
                       num_requests=8, prompt_len=64, output_len=64),
    "summarization": _sizes(ChatbotSpec(num_requests=32, prompt_len=4096, output_len=256, spread=0.5, temperature=0.3,
                                        arrival="offline", rate=None),
                            num_requests=4, prompt_len=512, output_len=32),
}  # fmt: skip

#: mixed's components and their shares of its requests
MIX: dict[str, float] = {"chatbot": 0.4, "rag_qa": 0.3, "code_gen": 0.2, "summarization": 0.1}


def _mixed(size: int, **changes) -> MixedSpec:
    """The blend at GPU (``size`` 0) or CPU (1) size: each component at that size."""
    return MixedSpec(tuple(Component(name, weight, _CHAT[name][size]) for name, weight in MIX.items()), **changes)


#: workload name -> (its spec on a GPU, its spec on a CPU); every workload but file
SPECS: dict[str, tuple[Spec, Spec]] = {
    **_CHAT,
    "prefix_share": _sizes(ChatbotSpec(num_requests=128, prompt_len=1600, output_len=64, spread=0.03,
                                       shared_prefix_len=1536, rate=16.0),
                           num_requests=16, prompt_len=208, output_len=16, shared_prefix_len=192, rate=8.0),
    "mixed": (_mixed(0, rate=8.0), _mixed(1, num_requests=8, rate=4.0)),
    "bench": _sizes(BenchSpec(), num_requests=16, min_input_len=16, max_input_len=64, min_output_len=16,
                    max_output_len=64),
}  # fmt: skip

#: every workload, in the order ``traceinfer workloads`` lists them
WORKLOADS: tuple[str, ...] = (*SPECS, "file")

DESCRIPTIONS: dict[str, str] = {
    "chatbot": "chat turns: a 32-token system prompt shared by all, a user turn, a reply twice as long",
    "rag_qa": "questions over a long retrieved context: long prompts, short answers",
    "code_gen": "code generation: a shared instruction, then as many tokens out as in",
    "summarization": "long documents in one batch, short summaries out: prefill-heavy",
    "prefix_share": "one long system prompt before every short question: the prefix cache's best case",
    "mixed": "a seeded blend of four workloads: each request keeps its workload's lengths and prefix",
    "bench": "nano-vLLM's throughput benchmark: random prompt and output lengths in [min, max], offline",
    "file": "your requests, from a JSON Lines file (--workload-file PATH)",
}


def workload_name(config: WorkloadConfig) -> str:
    """The workload ``config`` names: its name, or file when it gives a file, or chatbot."""
    return config.name or ("file" if config.file is not None else "chatbot")


def resolve(config: WorkloadConfig, on_cuda: bool) -> tuple[str, Spec]:
    """(the workload's name, its spec at GPU (``on_cuda``) or CPU size with ``config``'s changes); a
    ConfigError naming the workload when a change does not fit it."""
    name = workload_name(config)
    if name not in WORKLOADS:
        raise ConfigError(f"unknown workload {name!r}; workloads: {', '.join(WORKLOADS)}")
    if name == "file":
        if config.file is None:
            raise ConfigError("workload file reads its requests from a JSON Lines file: give --workload-file PATH "
                              "([workload] file in traceinfer.toml)")  # fmt: skip
        spec = FileSpec(config.file)
    elif config.file is not None:
        raise ConfigError(f"--workload-file {config.file} is the file workload's, but the workload is {name}, which "
                          f"generates its requests: leave --workload unset (or set it to file)")  # fmt: skip
    else:
        spec = SPECS[name][0 if on_cuda else 1]
    changes = config.overrides()
    names = [f.name for f in dataclasses.fields(spec)]
    foreign = sorted(set(changes) - set(names))
    if foreign:
        settable = sorted(set(names) & {f.name for f in dataclasses.fields(WorkloadConfig)})
        raise ConfigError(f"workload {name} has no parameter {', '.join(foreign)}; "
                          f"its parameters: {', '.join(settable)}")  # fmt: skip
    try:
        spec = dataclasses.replace(spec, **changes)
    except ConfigError as exc:
        raise ConfigError(f"workload {name}: {exc}") from None
    _check_changes_apply(name, spec, config)
    return name, spec


def _check_changes_apply(name: str, spec: Spec, config: WorkloadConfig) -> None:
    """A rate or burstiness given for arrivals that do not use it would change nothing: say so."""
    arrival = getattr(spec, "arrival", None)
    if config.rate is not None and arrival == "offline":
        raise ConfigError(f"workload {name}: rate paces poisson and gamma arrivals, and its arrival is offline "
                          f"(every request at t=0): add --arrival poisson (or gamma)")  # fmt: skip
    if config.burstiness is not None and arrival != "gamma":
        raise ConfigError(f"workload {name}: burstiness shapes gamma arrivals, and its arrival is {arrival}: "
                          f"add --arrival gamma")  # fmt: skip
