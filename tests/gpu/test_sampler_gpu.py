"""sampler.sample and the Gumbel-max kernel of sampling_kernel on CUDA, at Qwen's vocabulary (151936).

Oracles, as in tests/test_sampler.py: ``torch.argmax(logits.float(), -1)`` for greedy rows, bit for bit with
planted ties (first index); the kernel's documented noise, recomputed in numpy (``reference_scores``), for
sampled rows; softmax(logits / T) for the law of 20,000 seeded draws (chi-square at p = 1e-9). The sampler
must not wait for the device (``torch.cuda.set_sync_debug_mode("error")``) and the kernel must replay in a
CUDA graph. One test prints the time of the old torch path against the kernel (run with -s to see it).
"""

from __future__ import annotations

import statistics
import time

import pytest
import torch

from tests.test_sampler import DRAWS, LOGITS8, assert_law, check_against_reference, seeds_for
from traceinfer.engine.sampler import sample
from traceinfer.engine.sampling_params import SamplingParams

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
sk = pytest.importorskip("traceinfer.engine.sampling_kernel")  # imports triton

DEVICE = "cuda"
VOCAB = 151936  # Qwen2/Qwen3
GREEDY = SamplingParams(temperature=0.0)


def random_logits(batch: int, dtype: torch.dtype, seed: int = 0, vocab: int = VOCAB) -> torch.Tensor:
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    return (torch.randn(batch, vocab, device=DEVICE, generator=g) * 4).to(dtype)


def plant_ties(logits: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Puts each row's maximum (its old max + 1) at several places: split, loop-step and quarter edges of
    the kernel, the last index and random ones. -> the planted first index of each row."""
    batch, vocab = logits.shape
    chunk = sk._chunk(batch, vocab)
    edges = [chunk - 1, chunk, sk._BLOCK - 1, sk._BLOCK, sk._QUARTER - 1, sk._QUARTER, vocab - 1]
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    where = torch.cat([torch.tensor(edges, device=DEVICE).expand(batch, -1) % vocab,
                       torch.randint(0, vocab, (batch, 3), device=DEVICE, generator=g)], 1)  # fmt: skip
    # row r keeps the planted indices from position r % 10 on, so that the first tie varies by row
    keep = torch.arange(where.shape[1], device=DEVICE)[None, :] >= (torch.arange(batch, device=DEVICE) % 10)[:, None]
    where = torch.where(keep, where, where[:, -1:])
    top = (logits.float().amax(-1) + 1).to(logits.dtype)
    logits.scatter_(1, where, top[:, None].expand_as(where).contiguous())
    return where.amin(1)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("batch", [1, 7, 256])
def test_greedy_is_argmax_with_ties_to_the_first_index(batch, dtype):
    logits = random_logits(batch, dtype, seed=batch)
    first = plant_ties(logits, seed=batch)
    ref = torch.argmax(logits.float(), -1)
    assert torch.equal(ref, first)
    assert torch.equal(sample(logits, [GREEDY] * batch, seeds_for(batch)), ref)
    # greedy rows in a sampled batch take the argmax too
    temps = [0.0 if i % 2 == 0 else 0.8 for i in range(batch)]
    tokens = sk.gumbel_argmax(logits, sk.pack_rows(temps, seeds_for(batch), DEVICE))
    assert torch.equal(tokens[::2], ref[::2])
    # and rows of -inf (a fully masked row) give 0, as torch.argmax does
    logits[0] = float("-inf")
    assert sample(logits, [GREEDY] * batch, seeds_for(batch))[0].item() == 0


def test_sampled_tokens_are_the_reference_noise_argmax_for_any_split():
    batch = 16
    logits = random_logits(batch, torch.bfloat16, seed=1)
    temps = [1.0, 0.6, 1.5, 0.0] * 4
    seeds = seeds_for(batch, offset=4)
    seeds[:3] = [0, 1, 2**63 - 1]
    rows = sk.pack_rows(temps, seeds, DEVICE)
    tokens = sk.gumbel_argmax(logits, rows)
    assert check_against_reference(tokens, logits, temps, seeds) >= batch - 2
    for steps in (1, 2, 4, 8):  # the noise is a function of (seed, v): the work split cannot change a token
        assert torch.equal(sk._launch(logits, rows, steps * sk._BLOCK), tokens), steps


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_small_vocabulary_draws_follow_softmax(temperature):
    tokens = sample(LOGITS8.to(DEVICE).expand(DRAWS, 8), [SamplingParams(temperature=temperature)] * DRAWS,
                    seeds_for(DRAWS, offset=30))  # fmt: skip
    assert_law(tokens, (LOGITS8 / temperature).softmax(-1))
    tokens = sample(LOGITS8.to(DEVICE).expand(DRAWS, 8), [SamplingParams(temperature=temperature)] * DRAWS,
                    list(range(DRAWS)))  # fmt: skip  # consecutive seeds, as the engine gives unseeded rows
    assert_law(tokens, (LOGITS8 / temperature).softmax(-1))


def test_full_vocabulary_draws_follow_softmax():
    """The 8 logits repeated over all 151936 entries: the token's class (v % 8) follows softmax(logits / T),
    through every split, loop step, quarter and Philox word of the kernel."""
    pattern = LOGITS8.to(DEVICE, torch.bfloat16).repeat(VOCAB // 8)[None, :]
    draws = 8192
    tokens = sample(pattern.expand(draws, VOCAB), [SamplingParams(temperature=0.7)] * draws, seeds_for(draws, 31))
    assert_law(tokens % 8, (LOGITS8.bfloat16().float() / 0.7).softmax(-1))


def test_a_seeded_row_does_not_depend_on_its_batch():
    logits = random_logits(256, torch.bfloat16, seed=2)
    params = [SamplingParams(temperature=[0.0, 0.7, 1.0, 1.3][i % 4]) for i in range(256)]
    seeds = seeds_for(256, offset=5)
    batch = sample(logits, params, seeds)
    for i in (0, 1, 2, 3, 101, 255):
        assert sample(logits[i : i + 1], params[i : i + 1], seeds[i : i + 1]).item() == batch[i].item(), i
    # with top-k/top-p rows in the batch (they take the torch path), the other rows keep their tokens
    mixed = list(params)
    mixed[10], mixed[20], mixed[30] = SamplingParams(top_k=1), SamplingParams(top_k=5), SamplingParams(top_p=0.5)
    tokens = sample(logits, mixed, seeds)
    others = [i for i in range(256) if i not in (10, 20, 30)]
    assert torch.equal(tokens[others], batch[others])
    assert logits[10, tokens[10]] == logits[10].max()  # top_k = 1 (a tie for the max may keep either)
    assert tokens[20].item() in logits[20].float().topk(5).indices.tolist()
    # the top-k/top-p rows do not depend on the batch either
    for i in (10, 20, 30):
        assert sample(logits[i : i + 1], mixed[i : i + 1], seeds[i : i + 1]).item() == tokens[i].item(), i


def test_sample_never_waits_for_the_device():
    logits = random_logits(64, torch.bfloat16, seed=3)
    batches = {
        "greedy": [GREEDY] * 64,
        "sampled": [SamplingParams(temperature=0.0 if i % 3 == 0 else 0.9) for i in range(64)],
        "mixed top-k/top-p": [SamplingParams(top_k=20), SamplingParams(top_p=0.8), *[SamplingParams()] * 6] * 8,
        "all top-p": [SamplingParams(top_p=0.9)] * 64,
    }
    for params in batches.values():  # compile and warm up outside the check
        sample(logits, params, seeds_for(64))
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for name, params in batches.items():
            sample(logits, params, seeds_for(64))
    finally:
        torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()


@pytest.mark.parametrize("sampled", [False, True])
def test_the_kernel_replays_in_a_cuda_graph(sampled):
    logits = random_logits(8, torch.bfloat16, seed=4)
    rows = sk.pack_rows([0.8] * 8, seeds_for(8), DEVICE) if sampled else None
    expected = sk.gumbel_argmax(logits, rows)  # also compiles before the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = sk.gumbel_argmax(logits, rows)
    graph.replay()
    assert torch.equal(out, expected)
    logits.copy_(random_logits(8, torch.bfloat16, seed=5))
    graph.replay()
    assert torch.equal(out, sk.gumbel_argmax(logits, rows))


def old_sample(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """The sampler before the kernel, for one temperature and no seeds: the exponential race in float32."""
    probs = (logits.float() / temperature).softmax(dim=-1)
    return (probs / torch.empty_like(probs).exponential_()).argmax(dim=-1)


def device_us(fn, calls: int = 20) -> tuple[float, float]:
    """-> (median, max) over 7 replays of the device time of one fn call, in us: fn captured ``calls``
    times in a CUDA graph, so that host time does not count (warmed up first)."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    graph.replay()
    times = []
    for _ in range(7):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1000 / calls)
    return statistics.median(times), max(times)


def host_us(fn, calls: int = 200) -> float:
    """Host wall time of one call, in us, the device drained before and after (warmed up first)."""
    for _ in range(10):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / calls * 1e6


def test_print_time_of_the_kernel_against_the_torch_path():
    for batch in (1, 256):
        logits = random_logits(batch, torch.bfloat16, seed=6)
        params = [SamplingParams(temperature=0.8)] * batch
        seeds = seeds_for(batch)
        rows = sk.pack_rows([0.8] * batch, seeds, DEVICE)
        for name, fn in (
            ("old torch path", lambda: old_sample(logits, 0.8)),
            ("kernel, sampled", lambda: sk.gumbel_argmax(logits, rows)),
            ("kernel, greedy", lambda: sk.gumbel_argmax(logits, None)),
        ):
            median, worst = device_us(fn)
            print(f"B={batch:<4} V={VOCAB} bf16  {name:<16} device {median:7.1f} us (max {worst:.1f})")
        for name, fn in (
            ("old torch path", lambda: old_sample(logits, 0.8)),
            ("sample()", lambda: sample(logits, params, seeds)),
            ("sample() greedy", lambda: sample(logits, [GREEDY] * batch, seeds)),
        ):
            print(f"B={batch:<4} V={VOCAB} bf16  {name:<16} host+device {host_us(fn):7.1f} us a call")
