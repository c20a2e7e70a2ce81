"""Seeded generators: a spec -> (prompts as token ids, SamplingParams per request).

Each draws from a private ``random.Random(spec.seed)``: the same spec gives the same requests, and the
global random state is left alone. Token ids are uniform in [0, max_token_id]; MAX_TOKEN_ID (10000,
nano-vLLM's bound) lies below every model's vocabulary, and ``token_bound`` lowers it to a smaller one.
"""

from __future__ import annotations

import random

from traceinfer.engine.sampling_params import SamplingParams
from traceinfer.errors import ConfigError
from traceinfer.workloads.specs import BenchSpec, ChatbotSpec, MixedSpec, length_bounds

MAX_TOKEN_ID = 10000

Requests = tuple[list[list[int]], list[SamplingParams]]


def token_bound(vocab_size: int | None) -> int:
    """The largest token id to draw: MAX_TOKEN_ID, or the vocabulary's last id when that is lower."""
    if vocab_size is None:
        return MAX_TOKEN_ID
    if vocab_size < 1:
        raise ConfigError(f"vocab_size must be >= 1, got {vocab_size}")
    return min(MAX_TOKEN_ID, vocab_size - 1)


def _chat_request(
    rng: random.Random, spec: ChatbotSpec, prefix: list[int], tokens: range
) -> tuple[list[int], SamplingParams]:
    """One request: the shared prefix, unique tokens up to a drawn prompt length, a drawn output length."""
    prompt_len = rng.randint(*length_bounds(spec.prompt_len, spec.spread))
    # at least 1 unique token: the spec keeps its prefix below the shortest prompt
    unique = rng.choices(tokens, k=prompt_len - len(prefix))
    max_tokens = rng.randint(*length_bounds(spec.output_len, spec.spread))
    return prefix + unique, SamplingParams(temperature=spec.temperature, ignore_eos=True, max_tokens=max_tokens)


def chatbot_workload(spec: ChatbotSpec, max_token_id: int = MAX_TOKEN_ID) -> Requests:
    """Prompts (the shared prefix, then a unique part) and per-request params, as the spec says."""
    rng = random.Random(spec.seed)
    tokens = range(max_token_id + 1)
    prefix = rng.choices(tokens, k=spec.shared_prefix_len)
    requests = [_chat_request(rng, spec, prefix, tokens) for _ in range(spec.num_requests)]
    return [prompt for prompt, _ in requests], [params for _, params in requests]


def mixed_workload(spec: MixedSpec, max_token_id: int = MAX_TOKEN_ID) -> Requests:
    """Each request from a component drawn by weight, with that component's lengths and its own prefix."""
    rng = random.Random(spec.seed)
    tokens = range(max_token_id + 1)
    prefixes = [rng.choices(tokens, k=c.spec.shared_prefix_len) for c in spec.components]
    picks = rng.choices(range(len(spec.components)), [c.weight for c in spec.components], k=spec.num_requests)
    requests = [_chat_request(rng, spec.components[i].spec, prefixes[i], tokens) for i in picks]
    return [prompt for prompt, _ in requests], [params for _, params in requests]


def bench_workload(spec: BenchSpec, max_token_id: int = MAX_TOKEN_ID) -> Requests:
    """nano-vLLM's prompts, then its output lengths: a private Random draws what ``random.seed()`` would."""
    rng = random.Random(spec.seed)
    prompts = [
        [rng.randint(0, max_token_id) for _ in range(rng.randint(spec.min_input_len, spec.max_input_len))]
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


_GENERATORS = {ChatbotSpec: chatbot_workload, MixedSpec: mixed_workload, BenchSpec: bench_workload}


def generate(spec: ChatbotSpec | MixedSpec | BenchSpec, max_token_id: int = MAX_TOKEN_ID) -> Requests:
    """The requests of a generated workload's spec."""
    return _GENERATORS[type(spec)](spec, max_token_id)
