"""sampler.sample on the CPU (the torch path), and the Triton kernel of sampling_kernel under the interpreter.

The oracles: ``torch.argmax(logits.float(), -1)`` for greedy rows (ties to the first index); softmax(logits / T),
cut by top-k/top-p, for the law of sampled rows, checked by a chi-square test over 20,000 seeded draws. The
draws are seeded, so each test's outcome is fixed; the limits are the chi-square quantiles at p = 1e-9 (six
sigma), so that a change of torch's generators cannot make a correct sampler fail. For the kernel, the
reference is ``reference_tokens``: the noise its docstring defines (Philox4x32-10 words, keyed by the seed,
turned into Gumbel noise) computed here in numpy float64; the kernel must pick the same token wherever the
reference's best two scores are not within float32 rounding of each other.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.interpreted import run_interpreted
from traceinfer.engine.sampler import draw_seed, sample
from traceinfer.engine.sampling_params import SamplingParams

DRAWS = 20_000
LOGITS8 = torch.tensor([1.0, 0.0, 2.0, -1.0, 0.5, 1.5, -0.5, 0.25])
CHI2_LIMIT = {7: 55.87, 5: 50.69, 3: 44.84, 2: 41.45}  # chi-square quantiles at p = 1e-9, by degrees of freedom
GREEDY = SamplingParams(temperature=0.0)


def chi_square(tokens: torch.Tensor, probs: torch.Tensor) -> float:
    """Pearson's statistic of the tokens against probs (every token drawn must have probability > 0)."""
    counts = torch.bincount(tokens.cpu(), minlength=len(probs)).double()
    expected = probs.double() * len(tokens)
    assert (counts[expected == 0] == 0).all(), f"drew a token of probability 0: {counts.tolist()}"
    keep = expected > 0
    return float(((counts[keep] - expected[keep]) ** 2 / expected[keep]).sum())


def assert_law(tokens: torch.Tensor, probs: torch.Tensor) -> None:
    dof = int((probs > 0).sum()) - 1
    stat = chi_square(tokens, probs)
    counts = torch.bincount(tokens.cpu(), minlength=len(probs))
    assert stat < CHI2_LIMIT[dof], f"chi2 {stat:.1f} ({dof} dof); counts {counts.tolist()}, expected {probs.tolist()}"


def seeds_for(n: int, offset: int = 0) -> list[int]:
    g = torch.Generator().manual_seed(offset)
    return [draw_seed(g) for _ in range(n)]


def with_ties(batch: int, vocab: int, dtype: torch.dtype, positions: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """Random logits [batch, vocab] whose maximum sits at each of positions (and at random ones) in every row."""
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(batch, vocab, generator=g) * 4).to(dtype)
    for b in range(batch):
        extra = torch.randint(0, vocab, (2,), generator=g).tolist()
        top = (logits[b].float().max() + 1).to(dtype)
        logits[b, [p % vocab for p in positions] + extra] = top
    return logits


# -- the torch path (CPU) --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_greedy_rows_are_argmax_with_ties_to_the_first_index(dtype):
    logits = with_ties(12, 1000, dtype, positions=(999, 500, 3))
    ref = torch.argmax(logits.float(), -1)
    assert sample(logits, [GREEDY] * 12, seeds_for(12)).tolist() == ref.tolist()
    # the same rows in a batch with sampled, top-k and top-p rows
    params = [GREEDY, SamplingParams(temperature=0.8), SamplingParams(top_k=5), SamplingParams(top_p=0.5)] * 3
    tokens = sample(logits, params, seeds_for(12))
    assert tokens[::4].tolist() == ref[::4].tolist()
    assert tokens.dtype == torch.int64 and tokens.shape == (12,)


@pytest.mark.parametrize("temperature", [1.0, 0.5, 2.0])
def test_temperature_rows_draw_from_softmax_of_logits_over_t(temperature):
    tokens = sample(LOGITS8.expand(DRAWS, 8), [SamplingParams(temperature=temperature)] * DRAWS, seeds_for(DRAWS))
    assert_law(tokens, (LOGITS8 / temperature).softmax(-1))


def test_each_row_keeps_its_own_temperature():
    temps = (0.5, 2.0)
    params = [SamplingParams(temperature=temps[i % 2]) for i in range(DRAWS)]
    tokens = sample(LOGITS8.expand(DRAWS, 8), params, seeds_for(DRAWS, offset=1))
    for i, t in enumerate(temps):
        assert_law(tokens[i::2], (LOGITS8 / t).softmax(-1))


def test_top_k_one_is_greedy():
    logits = torch.randn(64, 300, generator=torch.Generator().manual_seed(3)) * 3
    for t in (1.0, 5.0):
        tokens = sample(logits, [SamplingParams(temperature=t, top_k=1)] * 64, seeds_for(64))
        assert tokens.tolist() == logits.argmax(-1).tolist()


def test_top_k_and_top_p_draw_from_the_cut_distribution():
    probs = LOGITS8.softmax(-1)
    order = probs.argsort(descending=True)  # probs by rank: .379 .230 .139 .085 .066 .051 .031 .019
    # top_k = 3: the three likeliest tokens, renormalised
    kept = torch.zeros(8).index_fill_(0, order[:3], 1.0) * probs
    tokens = sample(LOGITS8.expand(DRAWS, 8), [SamplingParams(top_k=3)] * DRAWS, seeds_for(DRAWS, offset=2))
    assert_law(tokens, kept / kept.sum())
    # top_p = 0.7: a token stays while the tokens above it hold less than 0.7 (0, .379, .609: the first three)
    mass_above = probs[order].cumsum(0) - probs[order]
    kept = torch.zeros(8).index_fill_(0, order[mass_above < 0.7], 1.0) * probs
    assert int((kept > 0).sum()) == 3
    tokens = sample(LOGITS8.expand(DRAWS, 8), [SamplingParams(top_p=0.7)] * DRAWS, seeds_for(DRAWS, offset=3))
    assert_law(tokens, kept / kept.sum())


def test_a_seeded_row_does_not_depend_on_its_batch():
    g = torch.Generator().manual_seed(5)
    row = torch.randn(1, 4000, generator=g)
    mine = [SamplingParams(temperature=1.3), SamplingParams(top_k=50), SamplingParams(top_p=0.9, temperature=0.7)]
    others = [GREEDY, SamplingParams(temperature=0.4), SamplingParams(top_k=3), SamplingParams(top_p=0.2)]
    for p in mine:
        for seed in (0, 7, 2**63 - 1):
            alone = sample(row, [p], [seed]).item()
            for at in (0, 3):
                batch = torch.randn(5, 4000, generator=g)
                batch[at] = row[0]
                params = others[:at] + [p] + others[at:]
                seeds = seeds_for(5, offset=seed % 1000)
                seeds[at] = seed
                assert sample(batch, params, seeds)[at].item() == alone, (p, seed, at)
    # and the seed matters: a flat row gives many different tokens over 50 seeds
    tokens = {sample(torch.zeros(1, 1000), [SamplingParams()], [s]).item() for s in range(50)}
    assert len(tokens) > 40


def test_draw_seed_is_in_range_and_follows_its_generator():
    a = [draw_seed(torch.Generator().manual_seed(9)) for _ in range(2)]
    assert a[0] == a[1] and 0 <= a[0] < 2**62
    g = torch.Generator().manual_seed(9)
    assert draw_seed(g) == a[0] and draw_seed(g) != a[0]
    assert 0 <= draw_seed(None) < 2**62


def test_bad_arguments_are_refused():
    logits = torch.zeros(2, 8)
    with pytest.raises(ValueError, match="one params and one seed"):
        sample(logits, [GREEDY], [0, 1])
    for bad in (-1, 2**63):
        with pytest.raises(ValueError, match="seeds must be in"):
            sample(logits, [SamplingParams()] * 2, [0, bad])
    assert sample(torch.zeros(0, 8), [], []).shape == (0,)


# -- the Triton kernel, interpreted (CPU) ----------------------------------------------------------


def test_pack_rows_holds_seed_and_temperature_bits():
    sk = pytest.importorskip("traceinfer.engine.sampling_kernel")  # imports triton
    rows = sk.pack_rows([0.5, 0.0, 1.7], [3, 2**63 - 1, 0], "cpu")
    assert rows.dtype == torch.int64 and rows.shape == (3, 2)
    assert rows[:, 0].tolist() == [3, 2**63 - 1, 0]
    assert rows[:, 1].contiguous().view(torch.float64).tolist() == [0.5, 0.0, 1.7]
    for bad in (-1, 2**63):
        with pytest.raises(ValueError, match="seeds must be in"):
            sk.pack_rows([1.0], [bad], "cpu")
    assert sk.pack_rows([], [], "cpu").shape == (0, 2)


def philox4x32_10(counters: np.ndarray, seeds: np.ndarray) -> tuple[np.ndarray, ...]:
    """Philox4x32-10 (Salmon et al., SC'11) of counters (c, 0, 0, 0) under keys (seed low, seed high 32 bits).

    counters [N] and seeds [B, 1] non-negative -> four uint64 arrays [B, N] of 32-bit words."""
    mask = np.uint64(0xFFFFFFFF)
    c0 = np.broadcast_to(counters.astype(np.uint64), (len(seeds), len(counters))).copy()
    c1 = np.zeros_like(c0)
    c2 = np.zeros_like(c0)
    c3 = np.zeros_like(c0)
    seeds = seeds.astype(np.uint64)
    k0, k1 = seeds & mask, seeds >> np.uint64(32)
    for _ in range(10):
        p0, p1 = np.uint64(0xD2511F53) * c0, np.uint64(0xCD9E8D57) * c2
        c0, c1, c2, c3 = (p1 >> np.uint64(32)) ^ c1 ^ k0, p1 & mask, (p0 >> np.uint64(32)) ^ c3 ^ k1, p0 & mask
        k0, k1 = (k0 + np.uint64(0x9E3779B9)) & mask, (k1 + np.uint64(0xBB67AE85)) & mask
    return c0, c1, c2, c3


def reference_scores(logits: torch.Tensor, temperatures: list[float], seeds: list[int]) -> np.ndarray:
    """float64 [B, V]: logits + T * G with the kernel's noise as its docstring defines it: logit v takes word
    (v % BLOCK) // QUARTER of Philox(seed, (v // BLOCK) * QUARTER + v % QUARTER); w = (r + 0.5) 2^-32,
    G = -log(-log(1 - w))."""
    from traceinfer.engine.sampling_kernel import _BLOCK, _QUARTER

    x = logits.float().cpu().double().numpy()
    vocab = x.shape[1]
    v = np.arange(vocab)
    words = philox4x32_10((v // _BLOCK) * _QUARTER + v % _QUARTER, np.array(seeds, dtype=np.uint64)[:, None])
    r = np.choose((v % _BLOCK) // _QUARTER, words).astype(np.float64)  # [B, V]: each logit's word
    gumbel = -np.log(-np.log1p(-(r + 0.5) * 2.0**-32))
    return x + np.array(temperatures)[:, None] * gumbel


def check_against_reference(tokens: torch.Tensor, logits: torch.Tensor, temps: list[float], seeds: list[int]) -> int:
    """Asserts tokens == the reference's, on rows whose best two scores differ by more than float32 rounding
    (all greedy rows) -> the number of rows checked."""
    scores = reference_scores(logits, temps, seeds)
    ref = scores.argmax(-1)
    top2 = -np.sort(-scores, axis=-1)[:, :2]
    clear = (np.array(temps) == 0) | (top2[:, 0] - top2[:, 1] > 1e-4 * np.maximum(1.0, np.abs(top2[:, 0])))
    got = tokens.cpu().numpy()
    assert (got[clear] == ref[clear]).all(), f"kernel {got[clear].tolist()} reference {ref[clear].tolist()}"
    return int(clear.sum())


def test_reference_noise_draws_from_softmax():
    """The noise the kernel is checked against (below and in tests/gpu) draws from softmax(logits / T)."""
    pytest.importorskip("triton")
    for t, offset in ((1.0, 10), (0.5, 11)):
        seeds = seeds_for(DRAWS, offset=offset)
        tokens = torch.from_numpy(reference_scores(LOGITS8.expand(DRAWS, 8), [t] * DRAWS, seeds).argmax(-1))
        assert_law(tokens, (LOGITS8 / t).softmax(-1))
    # consecutive seeds (an engine's unseeded rows use base + i) are as good as random ones
    tokens = torch.from_numpy(reference_scores(LOGITS8.expand(DRAWS, 8), [1.0] * DRAWS, list(range(DRAWS))).argmax(-1))
    assert_law(tokens, LOGITS8.softmax(-1))


def interpreted_kernel_checks() -> None:
    """Run with TRITON_INTERPRET=1 set before triton is imported (test_triton_kernel_interpreted does)."""
    from traceinfer.engine import sampling_kernel as sk

    block = sk._BLOCK
    # greedy: ties across quarters, loop steps and chunks go to the first index; -inf rows to 0; NaN is largest
    logits = with_ties(4, 2 * block + 904, torch.float32, positions=(2 * block + 903, block, block - 1, 700), seed=1)
    logits[2] = float("-inf")
    logits[3, [17, 4000]] = float("nan")
    ref = torch.argmax(logits, -1).tolist()
    assert ref[2] == 0 and ref[3] == 17
    for chunk in (block, 2 * block):
        assert sk._launch(logits, None, chunk).tolist() == ref, chunk
    # a greedy row in a sampled batch is still the argmax, and the tokens match the reference noise
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(5, 2 * block + 904, generator=g) * 3
    temps, seeds = [1.0, 0.5, 0.0, 2.0, 1.0], [0, 12345, 99, 2**63 - 1, 2**40 + 3]
    tokens = sk.gumbel_argmax(logits, sk.pack_rows(temps, seeds, "cpu"))
    assert tokens[2].item() == logits[2].argmax().item()
    assert check_against_reference(tokens, logits, temps, seeds) >= 4
    assert sk._launch(logits, sk.pack_rows(temps, seeds, "cpu"), 2 * block).tolist() == tokens.tolist()
    order = [3, 0, 4, 1, 2]  # another batch order: each row's token follows it
    moved = sk.gumbel_argmax(logits[order], sk.pack_rows([temps[i] for i in order], [seeds[i] for i in order], "cpu"))
    assert moved.tolist() == tokens[order].tolist()
    # seeded draws on a small vocabulary, one program each: the reference's tokens (whose law is checked above)
    n = 24
    seeds = seeds_for(n, offset=20)
    tokens = sk.gumbel_argmax(LOGITS8.expand(n, 8), sk.pack_rows([0.7] * n, seeds, "cpu"))
    assert check_against_reference(tokens, LOGITS8.expand(n, 8), [0.7] * n, seeds) >= n - 1
    assert len(set(tokens.tolist())) >= 4


def test_triton_kernel_interpreted():
    """The kernel on float32 CPU tensors under TRITON_INTERPRET=1."""
    run_interpreted("tests.test_sampler", "interpreted_kernel_checks")
