"""A big run directory for timing the analyzers: a 10-minute GPU bench-like run, generated without a GPU.

    python scripts/make_big_run.py OUT [--minutes 10] [--tokens 10_000_000] [--seed 0]

What it writes: a completed run directory (manifest.json, a JSON Lines journal and a Parquet file per
stream) of streams steps, requests, tokens, kv_events, gc, host_samples and gpu_samples, shaped like
``traceinfer profile`` of a Qwen3-0.6B-sized model on an H200 with the default probes: one step every
~5 ms, 1 to 256 sequences a step (requests arrive at a rate that swings over minutes, with a burst that
fills the batch and queues requests), exactly ``--tokens`` output tokens over about ``--minutes``.

How: the engine's own block manager and sequences (traceinfer.engine.block_manager, sequence) run the
requests on a simulated clock, with no model, under the Scheduler's policy (running requests first,
then waiting ones in arrival order, under the token budget and max_num_seqs, prefills chunked; when
blocks run out, the newest request is preempted by recompute): each step schedules, "runs" a forward
whose GPU time is a function of the batch, samples one token per sequence at the end of its prompt,
publishes full blocks to the prefix cache and frees finished requests, in the engine's order. So the
KV log is a real block manager's (it replays exactly; hits on 8 shared system prompts; evictions once
the cache has cycled), and the streams requests, tokens and kv_events are written by the project's own
probes (RequestTraceProbe, KVEventProbe), handed each step's ops, tokens and finishes at the handover as
LLMEngine.handover hands them. An H200's cache (--kv-blocks 65,536) holds this workload, so a few
preemptions are also forced (1 step in --preempt-every), the request held out for up to 40 steps.
Steps, GC pauses and the host and GPU samples are built from the simulated timeline in the schema's
column order. The Scheduler class itself is not used: a step of it costs several times this loop, and
10M tokens would take over ten minutes.

Everything goes through the project's RunWriter: journals as a run appends them (its encoder process
writes them), then at close the Parquet files and the manifest that names them, as a run closes
(RunWriter is fast enough: its close converts the journals in about 90 s, at about 4 GB of memory).
The manifest says the run was generated (``generated``). Seeded: the same arguments give the same
streams; only the clock's origin (perf_counter_ns at generation) differs. 10M tokens take about 3.5
minutes on this 2-core machine.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from traceinfer.config import ProbesConfig
from traceinfer.engine.block_manager import BlockManager, BlockOp
from traceinfer.engine.hooks import Hooks
from traceinfer.engine.sampling_params import SamplingParams
from traceinfer.engine.sequence import Sequence
from traceinfer.probes.base import ProbeContext, StepState
from traceinfer.probes.kv_events import KVEventProbe
from traceinfer.probes.request_trace import RequestTraceProbe
from traceinfer.rundir import STREAMS
from traceinfer.rundir.writer import RunWriter

VOCAB = 151_936  # Qwen3's vocabulary
BLOCK_SIZE = 16
MAX_NUM_SEQS = 256
TOKEN_BUDGET = 8192
FIRST_STEP = 1041  # the warm-up ran steps before the probes attached
US = 1_000  # ns
_NAMES = {s: STREAMS[s].names for s in STREAMS}
_new_op = tuple.__new__


def _row(stream: str, **values) -> tuple:
    """A row of ``stream`` in its schema's column order; columns not given are null."""
    return tuple(values.get(c) for c in _NAMES[stream])


# -- the workload ----------------------------------------------------------------------------
def arrival_times(n: int, seconds: float, rng: np.random.Generator) -> np.ndarray:
    """n arrival offsets (s) over 97% of ``seconds``: a rate swinging +-50% with a 2.5-minute period, and a
    burst at twice the rate for 1/30 of the run at 60% (the batch fills and requests queue)."""
    span = 0.97 * seconds
    grid = np.linspace(0.0, span, 200_001)
    rate = 1.0 + 0.5 * np.sin(2 * np.pi * grid / 150.0)
    rate[(grid >= 0.6 * seconds) & (grid < 0.6 * seconds + seconds / 30)] *= 2.0
    cdf = np.concatenate([[0.0], np.cumsum((rate[1:] + rate[:-1]) / 2)])
    cdf /= cdf[-1]
    return np.sort(np.interp(rng.random(n), cdf, grid))


@dataclass(frozen=True)
class Workload:
    """The requests, as arrays (one element per request, in arrival order); prompts are drawn at arrival."""

    arrival_s: np.ndarray
    system_id: np.ndarray  # -1: no system prompt
    user_len: np.ndarray
    output_len: np.ndarray
    max_tokens: np.ndarray
    systems: list[list[int]]


def workload(tokens: int, seconds: float, rng: np.random.Generator) -> Workload:
    """Output lengths (lognormal, median 420, 1-2,048) summing to ``tokens`` exactly; 70% of prompts start
    with one of 8 system prompts (256-1,536 tokens, the first the most used): the prefix cache hits on
    them; 15% of requests stop before their max_tokens."""
    systems = [rng.integers(0, VOCAB, size=int(n)).tolist() for n in rng.integers(256, 1537, size=8)]
    weights = 1.0 / np.arange(1, 9)
    lens = np.clip(rng.lognormal(math.log(420), 0.7, size=tokens // 100 + 64), 1, 2048).astype(np.int64)
    cum = np.cumsum(lens)
    n = int(np.searchsorted(cum, tokens)) + 1
    lens = lens[:n].copy()
    lens[-1] = tokens - (int(cum[n - 2]) if n > 1 else 0)
    with_system = rng.random(n) < 0.7
    system_id = np.where(with_system, rng.choice(8, size=n, p=weights / weights.sum()), -1)
    user_len = np.where(with_system, np.clip(rng.lognormal(math.log(120), 0.9, size=n), 8, 4000),
                        np.clip(rng.lognormal(math.log(500), 0.8, size=n), 8, 6000)).astype(np.int64)  # fmt: skip
    stops = rng.random(n) < 0.15
    max_tokens = np.where(stops, lens + rng.integers(1, 512, size=n), lens)
    return Workload(arrival_times(n, seconds, rng), system_id, user_len, lens, max_tokens, systems)


# -- the simulated engine --------------------------------------------------------------------
class Simulation:
    """The engine's step loop on a simulated clock: the Scheduler's policy (running requests first, oldest
    admission first; then waiting ones, FCFS, under the token budget and max_num_seqs, prefills chunked)
    over the engine's BlockManager and Sequences. The probes for requests, tokens and kv_events get what
    the engine would hand them, when it would (LLMEngine.handover)."""

    def __init__(self, writer: RunWriter, kv_blocks: int, seed: int, preempt_every: int) -> None:
        self.rand = random.Random(seed)
        self.tokens_rng = np.random.default_rng(seed + 1)
        hooks = Hooks()
        # the block manager records its ops only while 'block' has a subscriber; they are taken from
        # pending_ops here (restamped on the simulated clock) instead of through flush_ops
        hooks.subscribe(lambda *a: None, ("block",))
        self.bm = BlockManager(kv_blocks, BLOCK_SIZE, True, hooks)
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []  # admission order
        self.targets: dict[str, int] = {}  # request -> output tokens it stops at
        self.state = StepState()
        ctx = ProbeContext(engine=SimpleNamespace(block_manager=self.bm), writer=writer, options=ProbesConfig(),
                           steps=self.state, sample_hz=20.0, stack_hz=0.0)  # fmt: skip
        self.kv_probe = KVEventProbe(ctx)
        self.req_probe = RequestTraceProbe(ctx)
        self.kv_probe.start()  # the snapshot row, stamped with the real clock before the simulated run
        self.steps_out = writer.stream("steps").rows.append
        self.preempt_every = preempt_every
        self.now = time.perf_counter_ns()
        self.deferred: list[tuple] = []  # tokens and finishes of the last postprocess, for the next handover
        self.held: list[tuple[int, Sequence]] = []  # preempted requests and the step they may return at
        self.prev_gpu_end: int | None = None
        self.step_t: list[int] = []
        self.step_end: list[int] = []
        self.gpu_busy: list[int] = []
        self.graph_steps = 0
        self.prompt_tokens = 0
        self.finish_reasons: set[str] = set()

    def _stamp(self, first: int, start: int, end: int) -> None:
        """Restamp the block ops recorded since index ``first`` evenly over [start, end] of the simulated clock."""
        ops = self.bm.pending_ops
        n = len(ops) - first
        for j in range(n):
            op = ops[first + j]
            ops[first + j] = _new_op(BlockOp, (start + (end - start) * (j + 1) // (n + 1), *op[1:]))

    def _handover(self) -> None:
        """What LLMEngine.handover does: the block ops so far, then the last postprocess's tokens and finishes."""
        ops, self.bm.pending_ops = self.bm.pending_ops, []
        if ops:
            fields = {"ops": ops}
            self.kv_probe._on_block("block", "i", ops[-1].t_ns, fields)
            self.req_probe._on_block("block", "i", ops[-1].t_ns, fields)
        for kind, t, fields in self.deferred:
            if kind == "tokens":
                self.req_probe._on_tokens("tokens", "i", t, fields)
            else:
                self.req_probe._on_finish("finish", "i", t, fields)
        self.deferred = []

    def run(self, w: Workload, t_start: int) -> None:
        prompt_rng = np.random.default_rng(int(self.rand.random() * 2**32))
        step, t, i, n = FIRST_STEP, t_start, 0, len(w.arrival_s)
        arrivals = (t_start + w.arrival_s * 1e9).astype(np.int64).tolist()
        while i < n or self.running or self.waiting or self.held:
            if not self.running and not self.waiting:
                for _, seq in self.held:  # nothing else runs: no reason to keep them out
                    self.waiting.appendleft(seq)
                self.held = []
                if not self.waiting:
                    t = max(t, arrivals[i])  # idle until the next arrival
            while i < n and arrivals[i] <= t:
                rid = str(i)
                user = prompt_rng.integers(0, VOCAB, size=int(w.user_len[i])).tolist()
                prompt = w.systems[w.system_id[i]] + user if w.system_id[i] >= 0 else user
                max_tokens = int(w.max_tokens[i])
                seq = Sequence(
                    rid, prompt, SamplingParams(max_tokens=max_tokens, ignore_eos=True), arrival_ns=arrivals[i]
                )
                self.targets[rid] = int(w.output_len[i])
                self.prompt_tokens += len(prompt)
                self.waiting.append(seq)
                self.req_probe._on_arrival("add_request", "i", arrivals[i], {
                    "request_id": rid, "prompt_len": len(prompt), "max_tokens": max_tokens, "arrival_ns": arrivals[i]})  # fmt: skip
                i += 1
            if self.held and min(s for s, _ in self.held) <= step:
                back = [seq for s, seq in self.held if s <= step]
                self.held = [(s, seq) for s, seq in self.held if s > step]
                self.waiting.extendleft(reversed(back))  # preempted requests go first, as their arrival is older
            self._step(step, t)
            t = self.step_end[-1] + 3 * US + self.rand.randrange(4 * US)  # the driver between steps
            step += 1
        self._handover()

    def _preempt(self, seq: Sequence, step: int) -> None:
        """Preemption by recompute, as Scheduler._preempt does it; the request is held out for a few steps."""
        computed = seq.num_computed_tokens
        self.bm.free(seq, op="preempt")
        self.req_probe._on_preempt(
            "preempt", "i", self.now, {"request_id": seq.request_id, "num_computed_tokens": computed}
        )
        seq.num_computed_tokens = 0
        seq.num_preemptions += 1
        self.held.append((step + 1 + self.rand.randrange(40), seq))

    def _schedule(self, step: int) -> tuple[list, int, int, int]:
        """Scheduler.schedule's policy: (decodes + prefill chunks, decodes, batched tokens, cached tokens, preempted)."""
        bm, bs = self.bm, BLOCK_SIZE
        preempted = 0
        if self.preempt_every and len(self.running) > 16 and self.rand.randrange(self.preempt_every) == 0:
            self._preempt(self.running.pop(), step)  # the newest admission: the scheduler's victim
            preempted = 1
        budget = TOKEN_BUDGET
        decodes, prefills = [], []
        i = 0
        while i < len(self.running) and budget > 0:  # oldest admission first
            seq = self.running[i]
            computed = seq.num_computed_tokens
            n = min(len(seq.token_ids) - computed, budget)
            if computed + n > len(seq.block_table) * bs:
                while not bm.allocate(seq, n):  # out of blocks: preempt the newest request, as the scheduler does
                    victim = self.running.pop()
                    self._preempt(victim, step)
                    preempted += 1
                    if victim is seq:
                        break
                if seq not in self.running[i : i + 1]:
                    continue
            (decodes if n == 1 else prefills).append((seq, n))
            budget -= n
            i += 1
        cached_total = 0
        while self.waiting and budget > 0 and len(self.running) < MAX_NUM_SEQS and not preempted:
            seq = self.waiting[0]
            prefix = bm.find_cached_prefix(seq) if seq.num_computed_tokens == 0 else []
            num_cached = len(prefix) * bs
            n = min(len(seq.token_ids) - seq.num_computed_tokens - num_cached, budget)
            if not bm.allocate(seq, n, prefix):
                break
            self.waiting.popleft()
            seq.num_computed_tokens += num_cached
            seq.num_cached_tokens = num_cached
            cached_total += num_cached
            self.running.append(seq)
            (decodes if n == 1 else prefills).append((seq, n))
            budget -= n
        return decodes + prefills, len(decodes), TOKEN_BUDGET - budget, cached_total, preempted

    def _step(self, step: int, t: int) -> None:
        r, bm, bs = self.rand, self.bm, BLOCK_SIZE
        self.state.step = bm.step = step
        sched_start = t + 5 * US + r.randrange(3 * US)
        self.now = sched_start
        first = len(bm.pending_ops)
        scheduled, n_decode, batched, cached, preempted = self._schedule(step)
        n_seqs = len(scheduled)
        prefill = batched - n_decode
        n_ops = len(bm.pending_ops) - first
        sched_ns = int((35 * US + 450 * n_seqs + 1500 * n_ops) * r.uniform(0.9, 1.2))
        self._stamp(first, sched_start, sched_start + sched_ns)
        prep_start = sched_start + sched_ns + 4 * US
        prep_ns = int((110 * US + 1100 * n_seqs + 4 * prefill) * r.uniform(0.9, 1.15))
        fwd_start = prep_start + prep_ns + 3 * US
        graph = prefill == 0  # decode-only steps replay a CUDA graph
        fwd_ns = int((90 * US + 100 * n_seqs) if graph else (1100 * US + 4 * US * n_seqs))
        gpu_start = fwd_start + 25 * US
        if self.prev_gpu_end is not None:
            gpu_start = max(gpu_start, self.prev_gpu_end + 2 * US)
        gpu_ns = int(((2600 if graph else 2800) * US + 25 * US * n_decode + 600 * prefill) * r.uniform(0.985, 1.015))
        gap = gpu_start - self.prev_gpu_end if self.prev_gpu_end is not None else None
        self.prev_gpu_end = gpu_start + gpu_ns
        hand_start = fwd_start + fwd_ns + 2 * US
        handed = len(bm.pending_ops) + sum(len(f["request_ids"]) if k == "tokens" else 1 for k, _, f in self.deferred)
        self.now = hand_start
        self._handover()  # behind the forward, as the engine does it
        hand_ns = int((20 * US + 250 * handed) * r.uniform(0.9, 1.3))
        sample_start = hand_start + hand_ns + 4 * US
        sample_end = max(sample_start + 60 * US, self.prev_gpu_end + 45 * US) + 80 * n_seqs
        post_start = sample_end + 3 * US
        now = self.now = post_start + US
        # postprocess, in LLMEngine._postprocess's order
        first = len(bm.pending_ops)
        sampled, token_ids, indices, finished = [], [], [], []
        draws = self.tokens_rng.integers(0, VOCAB, size=n_seqs).tolist()
        targets = self.targets
        for k, (seq, n) in enumerate(scheduled):
            computed = seq.num_computed_tokens + n
            seq.num_computed_tokens = computed
            if min(computed // bs, len(seq.block_table)) > seq.num_stored_blocks:
                bm.cache_full_blocks(seq)
            tokens = seq.token_ids
            if computed != len(tokens):
                continue  # a prefill chunk short of the prompt's end samples nothing
            tokens.append(draws[k])
            index = len(tokens) - seq.prompt_len - 1
            rid = seq.request_id
            sampled.append(rid)
            token_ids.append(draws[k])
            indices.append(index)
            target = targets[rid]
            if index + 1 >= target:
                self.running.remove(seq)
                bm.free(seq)  # a 'free' op
                del targets[rid]
                finished.append(
                    (len(bm.pending_ops) - 1, rid, index + 1, "length" if target == seq.params.max_tokens else "stop")
                )
        n_post = len(bm.pending_ops) - first
        post_ns = int((25 * US + 1300 * n_seqs + 3 * US * n_post) * r.uniform(0.9, 1.2))
        self._stamp(first, post_start, post_start + post_ns)
        if sampled:
            self.deferred.append(
                ("tokens", now, {"step": step, "request_ids": sampled, "indices": indices, "token_ids": token_ids})
            )
        for op_index, rid, num_output, reason in finished:
            self.deferred.append(("finish", bm.pending_ops[op_index].t_ns + 500, {
                "step": step, "request_id": rid, "reason": reason, "num_output_tokens": num_output, "error": None}))  # fmt: skip
            self.finish_reasons.add(reason)
        end = post_start + post_ns + 8 * US
        if not self.running and not self.waiting and not self.held:
            self.now = end
            self._handover()  # nothing left to hide it behind
        dur = end - t
        stages = sched_ns + prep_ns + fwd_ns + (sample_end - sample_start) + post_ns
        self.graph_steps += graph
        self.steps_out(_row(
            "steps", step=step, t_ns=t, dur_ns=dur,
            schedule_start_ns=sched_start, schedule_ns=sched_ns, prepare_start_ns=prep_start, prepare_ns=prep_ns,
            forward_start_ns=fwd_start, forward_ns=fwd_ns, sample_start_ns=sample_start,
            sample_ns=sample_end - sample_start, postprocess_start_ns=post_start, postprocess_ns=post_ns,
            other_ns=dur - stages, handover_start_ns=hand_start, handover_ns=hand_ns, gpu_forward_ns=gpu_ns,
            gpu_gap_ns=gap, cuda_graph=graph, num_outputs=len(finished), num_seqs=n_seqs,
            num_prefill_seqs=n_seqs - n_decode, num_decode_seqs=n_decode, num_batched_tokens=batched,
            num_prefill_tokens=prefill, num_decode_tokens=n_decode, num_cached_tokens=cached,
            token_budget=TOKEN_BUDGET, num_waiting=len(self.waiting) + len(self.held), num_running=len(self.running),
            num_preempted=preempted, num_free_blocks=bm.num_free_blocks,
        ))  # fmt: skip
        self.step_t.append(t)
        self.step_end.append(end)
        self.gpu_busy.append(gpu_ns)


# -- what the samplers and the GC probe would have seen ----------------------------------------
def side_streams(writer: RunWriter, sim: Simulation, rng: np.random.Generator) -> None:
    """gc, host_samples (20 Hz) and gpu_samples (20 Hz) over the simulated timeline."""
    starts = np.asarray(sim.step_t, dtype=np.int64)
    ends = np.asarray(sim.step_end, dtype=np.int64)
    busy = np.asarray(sim.gpu_busy, dtype=np.int64)
    t0, t1 = int(starts[0]) - 200 * 1_000_000, int(ends[-1]) + 100 * 1_000_000

    def step_at(t: int) -> tuple[int | None, bool]:
        k = int(np.searchsorted(starts, t, side="right")) - 1
        return (FIRST_STEP + k, bool(t < ends[k])) if k >= 0 else (None, False)

    gc = writer.stream("gc").rows.append
    t, count = t0, 0
    while True:
        t += int(rng.exponential(1.5e9))
        if t >= t1:
            break
        count += 1
        gen = 2 if count % 97 == 0 else 1 if count % 10 == 0 else 0
        dur = int(rng.uniform(*((8e6, 40e6), (1e6, 3e6), (1.5e5, 9e5))[2 - gen]))
        step, in_step = step_at(t)
        gc(_row("gc", t_ns=t, dur_ns=dur, generation=gen, collected=int(rng.integers(0, 4000)), uncollectable=0,
                step=step, in_step=in_step, thread="MainThread"))  # fmt: skip

    host, gpu = writer.stream("host_samples").rows.append, writer.stream("gpu_samples").rows.append
    period = 50_000_000  # 20 Hz
    times = np.arange(t0, t1, period, dtype=np.int64)
    cum_busy = np.concatenate([[0], np.cumsum(busy)])
    k = np.searchsorted(starts, times, side="right")
    busy_at = cum_busy[k]
    user = sys_s = 0.0
    vol = invol = 0
    for j, t in enumerate(times.tolist()):
        step, _ = step_at(t)
        util = 0.0 if j == 0 else min(100.0, 100.0 * (busy_at[j] - busy_at[j - 1]) / period)
        cpu = float(rng.normal(101.0, 3.0)) if step is not None else float(rng.uniform(0, 5))
        user += cpu / 100 * 0.05 * 0.9
        sys_s += cpu / 100 * 0.05 * 0.1
        vol += int(rng.integers(0, 40))
        invol += int(rng.integers(0, 6))
        host(_row("host_samples", t_ns=t, step=step, cpu_percent=cpu, rss_bytes=3_400_000_000 + 40 * j * 4096,
                  num_threads=7, ctx_switches_voluntary=vol, ctx_switches_involuntary=invol,
                  cpu_user_s=round(user, 2), cpu_system_s=round(sys_s, 2)))  # fmt: skip
        pcie = j % 10 == 0
        gpu(_row("gpu_samples", t_ns=t + 300_000, step=step, gpu_util_pct=float(round(util)),
                 mem_util_pct=float(round(util * 0.55)), mem_used_bytes=131_000_000_000,
                 power_w=round(120 + 5.2 * util + float(rng.normal(0, 8)), 1), sm_clock_mhz=1980.0,
                 mem_clock_mhz=3201.0, temperature_c=float(round(38 + 0.25 * util + j * 1e-4)),
                 pcie_rx_bytes_s=float(rng.uniform(2e7, 9e7)) if pcie else None,
                 pcie_tx_bytes_s=float(rng.uniform(1e6, 8e6)) if pcie else None))  # fmt: skip


def manifest(args: argparse.Namespace, kv_blocks: int) -> dict:
    clock_ns, unix = time.perf_counter_ns(), time.time()
    return {
        "generated": {
            "by": "scripts/make_big_run.py",
            "args": {"minutes": args.minutes, "tokens": args.tokens, "seed": args.seed, "kv_blocks": kv_blocks},
            "note": "simulated: the engine's scheduler and block manager on a simulated clock, no model or GPU",
        },
        "command": ["traceinfer", "profile", "--workload", "bench-like (generated)"],
        "engine": {
            "model": "synthetic:qwen3-0.6b (synthetic random weights)",
            "synthetic": True,
            "device": "cuda",
            "dtype": "bfloat16",
            "attention_backend": "triton",
            "num_kv_blocks": kv_blocks,
            "block_size": BLOCK_SIZE,
            "max_model_len": 40960,
            "cuda_graphs": True,
            "model_shapes": {
                "num_layers": 28,
                "num_heads": 16,
                "num_kv_heads": 8,
                "head_dim": 128,
                "matmul_params": 440_401_920,
                "weight_bytes": 1_192_099_840,
                "dtype_bytes": 2,
            },
        },
        "device": {"type": "cuda", "str": "cuda:0", "name": "NVIDIA H200", "cpu_count": 16},
        "clock": {"source": "time.perf_counter_ns", "t0_ns": clock_ns, "unix_at_t0": unix},
        "workload": {
            "name": "bench-like",
            "arrival": "poisson",
            "seed": args.seed,
            "max_num_seqs": MAX_NUM_SEQS,
            "max_num_batched_tokens": TOKEN_BUDGET,
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the run directory to write (new or empty)")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--tokens", type=int, default=10_000_000, help="output tokens in all")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kv-blocks", type=int, default=65_536, help="KV blocks (an H200's for Qwen3-0.6B)")
    parser.add_argument(
        "--preempt-every", type=int, default=2000, help="force a preemption on 1 step in this many (0: never)"
    )
    args = parser.parse_args()
    t_begin = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    seconds = args.minutes * 60.0
    requests = workload(args.tokens, seconds, rng)
    writer = RunWriter(args.out, manifest(args, args.kv_blocks), pack_after_forward=False)
    writer.start()
    try:
        sim = Simulation(writer, args.kv_blocks, args.seed, args.preempt_every)
        t_start = time.perf_counter_ns() + 50_000_000
        sim.run(requests, t_start)
        side_streams(writer, sim, rng)
        t_end = sim.step_end[-1]
        wall_s = (t_end - t_start) / 1e9
        writer.manifest["probes"] = {
            "selected": "default", "enabled": ["nvtx", "steps", "requests", "kv", "gc", "samplers"], "sample_hz": 20.0,
            "details": {"requests": sim.req_probe.info(), "kv": sim.kv_probe.info()},
        }  # fmt: skip
        writer.manifest["results"] = {
            "seconds": wall_s, "requests": len(requests.arrival_s), "failed_requests": 0,
            "prompt_tokens": sim.prompt_tokens, "output_tokens": args.tokens,
            "output_tok_s": args.tokens / wall_s, "total_tok_s": (args.tokens + sim.prompt_tokens) / wall_s,
            "engine_steps": len(sim.step_t), "graph_steps": sim.graph_steps,
            "finish_reasons": sorted(sim.finish_reasons), "arrival": "poisson",
        }  # fmt: skip
        writer.manifest["timing"] = {"t0_ns": t_start, "t_end_ns": t_end, "wall_s": wall_s}
        writer.manifest["error"] = None
        print(f"simulated {len(sim.step_t):,} steps, {len(requests.arrival_s):,} requests in "
              f"{time.perf_counter() - t_begin:.1f} s; closing (journals -> Parquet) ...", flush=True)  # fmt: skip
    except BaseException:
        writer.close("failed")
        raise
    m = writer.close("completed")
    rows = ", ".join(f"{k} {v['rows']:,}" for k, v in m["streams"].items())
    print(f"wrote {args.out} in {time.perf_counter() - t_begin:.1f} s: {rows}")
    print(f"  {wall_s:.1f} s of run, {args.tokens / wall_s:,.0f} output tok/s; "
          f"open it with traceinfer.open_run({str(args.out)!r})")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
