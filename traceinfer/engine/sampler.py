"""Token sampling for a batch: greedy, temperature, top-k, top-p, per-row seeds.

Sampling is the Gumbel-max trick: token = argmax_v logits[v] / T + G_v with G_v = -log(E_v), E_v ~ Exp(1)
independent, draws from softmax(logits / T) (it is the exponential race argmax p_v / E_v in log form).
Greedy rows (temperature 0) take ``torch.argmax`` of the logits, ties to the first index, exactly: the
engine is checked token for token against HF transformers.

Seeds. The caller gives one seed per row and step (``seeds[i]``, 0 <= seed < 2**63), drawn on the host
with ``draw_seed`` from the request's own CPU generator when it has ``params.seed``, else from an engine
generator. A row's noise is a function of its seed alone, so a request's tokens depend on its own seed
sequence, never on what else is in the batch or where its row is.

Paths, chosen per row by the row's own parameters (so the choice too never depends on the batch):
- CUDA, no top-k/top-p (the common case): ``sampling_kernel.gumbel_argmax``, one pass over the logits in
  their own dtype (bf16), with Philox noise keyed by the seed: 4 us of device time at batch 1 and 76 us at
  batch 256 on an H200 (V = 151936), where the torch form, ~7 kernels reading and writing a float32 [B, V]
  copy (float copy, divide, softmax, exponential, divide, argmax), took 57 and 585 us. No host-device
  synchronization: per-row seeds and temperatures go over in one pinned, non-blocking copy. Host time is
  where it costs: two Triton launches and that copy, ~105 us a call at batch 1 on the same machine against
  ~60 us for the torch form's launches (greedy batches skip the copy: ~63 us).
- top-k or top-p rows (rare), and every row on the CPU: torch ops. The logits are scaled, filtered by the
  sort-based ``_apply_top_k_top_p``, and the noise comes from ``torch.Generator(device).manual_seed(seed)``
  per row. On CUDA a batch mixing both runs the kernel over the batch and replaces the top-k/top-p rows
  with the torch path's tokens. The two paths draw from the same distribution, not the same numbers.
"""

from __future__ import annotations

import torch

from traceinfer.engine.device import to_device
from traceinfer.engine.sampling_params import SamplingParams


def draw_seed(generator: torch.Generator | None) -> int:
    """A sampling seed in [0, 2**62) from a CPU generator (None: torch's default one); never touches the GPU."""
    return int(torch.randint(0, 2**62, (1,), generator=generator).item())


def sample(logits: torch.Tensor, params: list[SamplingParams], seeds: list[int]) -> torch.Tensor:
    """logits [B, V] (float32, bf16 or fp16) -> token ids [B] int64 on the logits' device.

    ``seeds[i]`` (0 <= seed < 2**63, checked where used) is row i's seed for this step; greedy rows ignore it."""
    if logits.dim() != 2 or not (len(params) == len(seeds) == logits.shape[0]):
        raise ValueError(f"logits {tuple(logits.shape)} need one params and one seed a row, "
                         f"got {len(params)} and {len(seeds)}")  # fmt: skip
    # one pass over the rows: host time here is per step
    temperatures: list[float] = []
    filtered: list[int] = []  # rows that need top-k/top-p (a greedy row never does: its argmax survives them)
    for i, p in enumerate(params):
        temperatures.append(p.temperature)
        if not p.greedy and (p.top_k > 0 or p.top_p < 1.0):
            filtered.append(i)
    if not logits.is_cuda or len(filtered) == len(params):
        return _sample_torch(logits, params, seeds)
    from traceinfer.engine import sampling_kernel  # imports triton: only on CUDA

    if not any(temperatures):  # all greedy: one pass, no noise
        return sampling_kernel.gumbel_argmax(logits, None)
    tokens = sampling_kernel.gumbel_argmax(logits, sampling_kernel.pack_rows(temperatures, seeds, logits.device))
    if filtered:  # the rare mixed batch: the top-k/top-p rows again, through torch
        index = to_device(filtered, torch.int64, logits.device)
        rows = logits.index_select(0, index)
        tokens.index_copy_(0, index, _sample_torch(rows, [params[i] for i in filtered], [seeds[i] for i in filtered]))
    return tokens


def _sample_torch(logits: torch.Tensor, params: list[SamplingParams], seeds: list[int]) -> torch.Tensor:
    """The torch path: Gumbel-max over the scaled, filtered float32 logits, noise from per-row generators."""
    logits = logits.float()  # [B, V]
    greedy = [p.greedy for p in params]
    if all(greedy):
        return logits.argmax(dim=-1)
    device = logits.device
    temps = to_device([1.0 if g else p.temperature for g, p in zip(greedy, params)], torch.float32, device)
    scaled = logits / temps[:, None]
    if any(not p.greedy and (p.top_k > 0 or p.top_p < 1.0) for p in params):
        scaled = _apply_top_k_top_p(scaled, params)
    noise = torch.ones_like(scaled)  # E ~ Exp(1) for the sampled rows; 1 (G = 0) for the greedy ones
    for i, (g, seed) in enumerate(zip(greedy, seeds)):
        if not g:
            if not 0 <= seed < 2**63:
                raise ValueError(f"seeds must be in [0, 2**63), got {seed}")
            noise[i].exponential_(generator=torch.Generator(device=device).manual_seed(seed))
    # G = -log(E); E = 0 (a float32 exponential can round to it) would make G infinite
    sampled = (scaled - noise.clamp_min_(torch.finfo(torch.float32).tiny).log_()).argmax(dim=-1)
    if not any(greedy):
        return sampled
    # greedy rows: argmax of the raw logits (a top-k cut could keep a later one of tied maxima)
    return torch.where(to_device(greedy, torch.bool, device), logits.argmax(dim=-1), sampled)


def _apply_top_k_top_p(logits: torch.Tensor, params: list[SamplingParams]) -> torch.Tensor:
    """logits [B, V] float32 -> the same with -inf where a row's top-k or top-p drops a token."""
    vocab = logits.shape[-1]
    device = logits.device
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    ks = to_device([p.top_k if p.top_k > 0 else vocab for p in params], torch.int64, device)
    ranks = torch.arange(vocab, device=device)[None, :]
    drop = ranks >= ks[:, None]
    top_ps = to_device([p.top_p for p in params], torch.float32, device)
    probs = sorted_logits.masked_fill(drop, float("-inf")).softmax(dim=-1)
    # drop a token when the tokens ranked above it already hold top_p of the mass (the first always stays);
    # top_p = 1 drops nothing, also where the float32 cumsum reaches 1 before the tail
    drop |= ((probs.cumsum(dim=-1) - probs) >= top_ps[:, None]) & (top_ps[:, None] < 1.0)
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.empty_like(logits).scatter_(-1, order, sorted_logits)
