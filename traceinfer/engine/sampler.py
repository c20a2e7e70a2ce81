"""Token sampling for a batch: greedy, temperature, top-k, top-p, per-request seeds.

Sampling uses the exponential-race form of the Gumbel trick: argmax(p / E) with E ~ Exp(1) draws
from p. Seeded requests draw their E from their own generator, so their tokens do not depend on
what else is in the batch.
"""

from __future__ import annotations

import torch

from traceinfer.engine.sampling_params import SamplingParams


def sample(logits: torch.Tensor, params: list[SamplingParams], generators: list) -> torch.Tensor:
    """logits: [B, V] -> token ids [B] (int64, on the logits' device)."""
    logits = logits.float()
    greedy = [p.greedy for p in params]
    if all(greedy):
        return logits.argmax(dim=-1)
    device = logits.device
    temps = {p.temperature for p in params if not p.greedy}
    if len(temps) == 1 and not any(greedy):  # the common batch: one temperature, no host-to-device copy
        logits = logits / temps.pop()
    else:
        logits = logits / torch.tensor([1.0 if g else p.temperature for g, p in zip(greedy, params)], device=device)[:, None]
    if any(p.top_k > 0 or p.top_p < 1.0 for p in params):
        logits = _apply_top_k_top_p(logits, params)
    probs = logits.softmax(dim=-1)
    noise = torch.empty_like(probs).exponential_()
    for i, gen in enumerate(generators):
        if gen is not None:
            noise[i].exponential_(generator=gen)
    sampled = (probs / noise).argmax(dim=-1)
    if not any(greedy):
        return sampled
    # greedy rows: argmax of the unscaled logits equals argmax of the scaled ones (their temperature was 1)
    return torch.where(torch.tensor(greedy, device=device), logits.argmax(dim=-1), sampled)


def _apply_top_k_top_p(logits: torch.Tensor, params: list[SamplingParams]) -> torch.Tensor:
    vocab = logits.shape[-1]
    device = logits.device
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    ks = torch.tensor([p.top_k if p.top_k > 0 else vocab for p in params], device=device)
    ranks = torch.arange(vocab, device=device)[None, :]
    drop = ranks >= ks[:, None]
    top_ps = torch.tensor([p.top_p for p in params], device=device)
    probs = sorted_logits.masked_fill(drop, float("-inf")).softmax(dim=-1)
    # drop a token when the tokens ranked above it already hold top_p of the mass (the first always stays)
    drop |= (probs.cumsum(dim=-1) - probs) >= top_ps[:, None]
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.empty_like(logits).scatter_(-1, order, sorted_logits)
