"""The engine: requests in, one scheduled step at a time, outputs out.

Offline use: ``LLM(model).generate(prompts, params)``. Online use: the step API of ``LLMEngine``
(``add_request``, ``step``, ``has_unfinished``, ``abort``).

A step schedules, launches the forward and the sampler (``ModelRunner.execute``), and moves every
scheduled sequence past its chunk at once (``_advance``): a token being sampled is a placeholder in
``Sequence.token_ids`` until its value reaches the host (``_postprocess``). With async scheduling (on a
GPU by default) a step finishes the step before it, not itself: the host schedules and launches step
N+1 while the device still runs step N, then waits for step N's tokens. The device never waits for the
host's bookkeeping; the price is that a request stopping on an EOS or stop token is computed one step
longer than it needs (a length stop is known at launch and costs nothing).
"""

from __future__ import annotations

import collections.abc
import dataclasses
import itertools
import reprlib
import time
from typing import Sequence as Seq

import torch

from traceinfer.config import EngineConfig, load_section
from traceinfer.engine.attention import select_backend
from traceinfer.engine.block_manager import BlockManager
from traceinfer.engine.device import resolve_device, resolve_dtype, resolve_model
from traceinfer.engine.hooks import Hooks
from traceinfer.engine.loader import load_hf_config, load_model
from traceinfer.engine.model_runner import Launched, ModelRunner
from traceinfer.engine.sampling_params import SamplingParams
from traceinfer.engine.scheduler import ScheduledSeq, Scheduler, SchedulerConfig, SchedulerOutput
from traceinfer.engine.sequence import FinishReason, RequestOutput, Sequence
from traceinfer.errors import ConfigError, InvalidRequestError

Prompt = str | Seq[int]


class LLMEngine:
    """The engine built from an EngineConfig; ``config`` keeps it with 'auto' device and model resolved."""

    def __init__(self, config: EngineConfig, hooks: Hooks | None = None) -> None:
        self.hooks = hooks or Hooks()
        self.device = resolve_device(config.device)
        config = dataclasses.replace(config, device=str(self.device), model=resolve_model(config.model, self.device))
        self.config = config
        self.dtype = resolve_dtype(config.dtype, self.device)
        backend = select_backend(config.attention_backend, self.device, config.block_size)
        self.attention_backend = backend.name

        hf_config = load_hf_config(config.model)
        limit = hf_config.max_position_embeddings
        if config.max_model_len is not None and config.max_model_len > limit:
            raise ConfigError(
                f"engine.max_model_len={config.max_model_len} is above the model's max_position_embeddings={limit}"
            )
        self.max_model_len = config.max_model_len or min(limit, 8192)
        if not config.enable_chunked_prefill and config.max_num_batched_tokens < self.max_model_len:
            raise ConfigError(
                f"engine.max_num_batched_tokens={config.max_num_batched_tokens} is below max_model_len="
                f"{self.max_model_len}; without chunked prefill a long prompt could never be scheduled"
            )
        loaded = load_model(config.model, hf_config, backend, self.dtype, self.device, self.max_model_len, config.seed)
        self.model = loaded.model
        self.hf_config = loaded.hf_config
        self.tokenizer = loaded.tokenizer
        self.eos_token_ids = loaded.eos_token_ids
        self.model_label = loaded.label
        self.synthetic = loaded.synthetic
        self.vocab_size = loaded.hf_config.vocab_size

        self.runner = ModelRunner(
            self.model,
            self.device,
            self.dtype,
            self.hooks,
            block_size=config.block_size,
            max_model_len=self.max_model_len,
            max_num_seqs=config.max_num_seqs,
            max_num_batched_tokens=config.max_num_batched_tokens,
            num_kv_blocks=config.num_kv_blocks,
            cpu_kv_cache_gib=config.cpu_kv_cache_gib,
            gpu_memory_utilization=config.gpu_memory_utilization,
            # graphs need a backend that reads no host-side lengths; the torch reference loops on them
            use_cuda_graphs=not config.enforce_eager and backend.name != "torch",
            piecewise_graphs=config.piecewise_graphs and backend.name == "triton",
            seed=config.seed,
        )
        self.async_scheduling = config.async_scheduling == "on" or (
            config.async_scheduling == "auto" and self.device.type == "cuda"
        )
        self._inflight: Launched | None = None  # async: the launched step whose tokens are not in yet
        self.block_manager = BlockManager(
            self.runner.num_blocks, config.block_size, config.enable_prefix_caching, self.hooks
        )
        self.scheduler = Scheduler(
            SchedulerConfig(
                max_num_seqs=config.max_num_seqs,
                max_num_batched_tokens=config.max_num_batched_tokens,
                enable_chunked_prefill=config.enable_chunked_prefill,
            ),
            self.block_manager,
            self.hooks,
        )
        self.requests: dict[str, Sequence] = {}
        self._ids = itertools.count()
        self.step_index = 0
        # instant events handed to the hooks late (see handover): (point, t_ns, fields); a
        # 'tokens' entry holds (step, sequences, token ids), its lists are built at the handover
        self._deferred: list[tuple] = []
        self._handover_span: tuple[int, int] | None = None  # (start, duration) in ns of this step's handover

    # -- requests --------------------------------------------------------------------------
    def _tokens(self, prompt: Prompt) -> list[int]:
        if isinstance(prompt, str):
            ids = self.tokenizer.encode(prompt)
        elif not isinstance(prompt, collections.abc.Sequence):
            raise InvalidRequestError(
                f"a prompt must be a str or a sequence of int token ids, got {reprlib.repr(prompt)}"
            )
        else:
            ids = list(prompt)
            for i, t in enumerate(ids):
                if not isinstance(t, int) or isinstance(t, bool):
                    raise InvalidRequestError(f"token at position {i} is {t!r}, not an integer token id")
        if not ids:
            raise InvalidRequestError("prompt is empty: a request needs at least one token")
        for i, t in enumerate(ids):
            if not 0 <= t < self.vocab_size:
                raise InvalidRequestError(
                    f"token id {t} at position {i} is outside the vocabulary [0, {self.vocab_size})"
                )
        if len(ids) >= self.max_model_len:
            raise InvalidRequestError(
                f"prompt has {len(ids)} tokens; max_model_len={self.max_model_len} leaves room for at most "
                f"{self.max_model_len - 1} prompt tokens and one generated token"
            )
        return ids

    def add_request(
        self,
        prompt: Prompt,
        params: SamplingParams | None = None,
        request_id: str | None = None,
        priority: int = 0,
        arrival_ns: int | None = None,
    ) -> str:
        """Queue a request; raises InvalidRequestError (naming the limit) without touching others."""
        return self._queue(self._request(prompt, params, request_id, priority, arrival_ns))

    def _request(
        self,
        prompt: Prompt,
        params: SamplingParams | None = None,
        request_id: str | None = None,
        priority: int = 0,
        arrival_ns: int | None = None,
    ) -> Sequence:
        """The request checked (InvalidRequestError otherwise) and made a Sequence, not yet queued."""
        params = params or SamplingParams()
        if not isinstance(params, SamplingParams):
            raise InvalidRequestError(f"params must be SamplingParams, got {type(params).__name__}")
        request_id = str(next(self._ids)) if request_id is None else str(request_id)
        if request_id in self.requests:
            raise InvalidRequestError(f"request id {request_id!r} is already in flight")
        seq = Sequence(request_id, self._tokens(prompt), params, priority, arrival_ns)
        if params.seed is not None:  # on the host: it draws each step's sampling seed (sampler.draw_seed)
            seq.generator = torch.Generator().manual_seed(params.seed)
        return seq

    def _queue(self, seq: Sequence) -> str:
        self.requests[seq.request_id] = seq
        self.scheduler.add(seq)
        if self.hooks.add_request:
            self.hooks.add_request.emit(
                request_id=seq.request_id, prompt_len=seq.prompt_len, max_tokens=seq.params.max_tokens,
                priority=seq.priority, arrival_ns=seq.arrival_ns,
            )
        return seq.request_id

    def abort(self, request_id: str) -> RequestOutput | None:
        seq = self.requests.get(str(request_id))
        if seq is None or seq.is_finished:
            return None
        self.scheduler.remove(seq)
        output = self._finish(seq, FinishReason.ABORTED)
        self.handover()
        return output

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished() or self._inflight is not None

    # -- one step --------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        """Schedule and run one step; returns the outputs of the requests that finished in it.

        With async scheduling a step launches its forward, then finishes the step launched before it: its
        outputs are that step's finished requests. To stream tokens as they come, subscribe to the ``tokens``
        hook point (one event per step, handed over behind a later forward); building a full output for every
        running request on every step would cost more host time than the step itself."""
        hooks = self.hooks
        outputs: list[RequestOutput] = []
        self.block_manager.step = self.step_index
        self._handover_span = None
        with hooks.step.span(step=self.step_index) as step_info:
            with hooks.schedule.span(step=self.step_index) as info:
                out = self.scheduler.schedule()
                if info is not None:
                    info.update(self._summary(out))
            for seq in out.failed:
                outputs.append(self._finish(seq, FinishReason.ERROR, seq.error, already_finished=True))
            launched = None
            if not out.is_empty:
                launched = self.runner.execute(out, self.step_index, self._inflight)
                self._handover_behind_forward()
            if not self.async_scheduling:
                outputs.extend(self._collect(launched, launched))
            else:
                # with nothing left to schedule, the next step launches nothing and only finishes this one
                done, self._inflight = self._inflight, launched
                outputs.extend(self._collect(done, launched))
            if out.is_empty or not self.scheduler.has_unfinished():
                self.handover()  # no next forward to hide the handover behind
            if step_info is not None:
                step_info.update(step=self.step_index, num_outputs=len(outputs), handover=self._handover_span)
        self.step_index += 1
        return outputs

    def _handover_behind_forward(self) -> None:
        """Called once the step's forward and sampler are launched: host work here hides behind the GPU.
        The engine hands over the held-back events, then the 'handover' point lets the probes do their
        per-step work. Its start and duration go to the step's end event: the probes' share of the step."""
        t0 = time.perf_counter_ns()
        self.handover()
        if self.hooks.handover:
            self.hooks.handover.emit(step=self.step_index)
        self._handover_span = (t0, time.perf_counter_ns() - t0)

    def handover(self) -> None:
        """Hand the hooks what they get late: the block ops recorded so far, then the tokens and finishes
        of the last postprocess, each with the time and step it happened in.

        The engine calls this while the GPU runs each forward, and at the end of a step that has no
        forward or leaves nothing to run; call it before detaching subscribers (ProbeSession.close does).
        """
        self.block_manager.flush_ops()
        deferred, tokens_point = self._deferred, self.hooks.tokens
        while deferred:  # one at a time: a Ctrl-C in a subscriber leaves the rest for ProbeSession.close
            point, t, fields = deferred.pop(0)
            if point is tokens_point:
                step, seqs, token_ids, positions = fields
                fields = {
                    "step": step, "request_ids": [q.request_id for q in seqs], "token_ids": token_ids,
                    "indices": [pos - q.prompt_len for q, pos in zip(seqs, positions)],
                }  # fmt: skip
            point.emit_at(t, fields)

    def _summary(self, out: SchedulerOutput) -> dict:
        return {
            "num_seqs": len(out.scheduled),
            "num_decode_seqs": out.num_decode_seqs,
            "num_prefill_seqs": len(out.scheduled) - out.num_decode_seqs,
            "num_batched_tokens": out.num_batched_tokens,
            "num_decode_tokens": out.num_decode_seqs,
            "num_prefill_tokens": out.num_batched_tokens - out.num_decode_seqs,
            "num_cached_tokens": out.num_cached_tokens,
            "num_preempted": len(out.preempted),
            "num_waiting": len(self.scheduler.waiting),
            "num_running": len(self.scheduler.running),
            "token_budget": self.config.max_num_batched_tokens,
            "num_free_blocks": self.block_manager.num_free_blocks,
        }

    def _collect(self, done: Launched | None, launched: Launched | None) -> list[RequestOutput]:
        """Wait for the tokens of ``done`` (span 'sample') and put them in place, and move the sequences of
        ``launched`` on (span 'postprocess'). Without async scheduling the two are the same step, moved on first;
        with it, ``done`` is the step before, finished first: _advance skips what its tokens stopped."""
        if done is None and launched is None:
            return []
        tokens = self.runner.wait_tokens(done) if done is not None else []
        with self.hooks.postprocess.span(num_seqs=len((done or launched).scheduled)):
            if launched is done:
                self._advance(launched)
                return self._postprocess(done, tokens)
            outputs = self._postprocess(done, tokens) if done is not None else []
            if launched is not None:
                self._advance(launched)
            return outputs

    def _advance(self, launched: Launched) -> None:
        """Move each scheduled sequence past the chunk just launched: its K/V are (being) computed, and a
        sequence that samples gets a placeholder token ``-(row + 1)`` that the next step's inputs read from
        the device. A sequence whose token is its last (max_tokens, max_model_len) leaves the scheduler now."""
        seqs, positions = launched.seqs, launched.positions
        row = 0
        for s in launched.scheduled:
            seq = s.seq
            samples = row < len(seqs) and seqs[row] is seq
            if not seq.is_finished:  # (finished by the last step's tokens: nothing more to compute)
                seq.num_computed_tokens += s.num_new_tokens
                self.block_manager.cache_full_blocks(seq)
                if samples:
                    positions.append(seq.num_tokens)
                    seq.token_ids.append(-1 - row)
                    if seq.num_output_tokens >= seq.params.max_tokens or seq.num_tokens >= self.max_model_len:
                        self.scheduler.remove(seq)
                        launched.retired.add(seq.request_id)
            elif samples:
                positions.append(-1)
            row += samples

    def _postprocess(self, launched: Launched, tokens: list[int]) -> list[RequestOutput]:
        """Put a launched step's sampled tokens in place of their placeholders; finish what they stop."""
        outputs = []
        now = time.perf_counter_ns()
        first_finish = len(self._deferred)  # this step's finishes are deferred from here on
        seqs, positions = launched.seqs, launched.positions
        skipped = set()
        for i, (seq, pos, token) in enumerate(zip(seqs, positions, tokens)):
            if not 0 <= pos < len(seq.token_ids):  # finished before its placeholder was put or was read
                skipped.add(i)
                continue
            seq.put_token(pos, token, now)
            reason = self._stop_reason(seq, token)
            if reason is not None:
                if seq.request_id not in launched.retired:
                    self.scheduler.remove(seq)
                outputs.append(self._finish(seq, reason))
        if tokens and self.hooks.tokens:
            if skipped:
                kept = [i for i in range(len(seqs)) if i not in skipped]
                seqs, positions, tokens = [seqs[i] for i in kept], [positions[i] for i in kept], [tokens[i] for i in kept]
            # one 'tokens' event per step, not one per sequence (at 256 sequences a call each would cost ~1% of
            # a step), its lists built at the handover, behind a later forward. Recorded once every token is in
            # place (a Ctrl-C halfway loses the event rather than mislabel it), ahead of the step's finishes.
            self._deferred.insert(first_finish, (self.hooks.tokens, now, (launched.step, seqs, tokens, positions)))
        return outputs

    def _stop_reason(self, seq: Sequence, token: int) -> FinishReason | None:
        p = seq.params
        if not p.ignore_eos and token in self.eos_token_ids:
            return FinishReason.EOS
        if token in p.stop_token_ids:
            return FinishReason.STOP
        if seq.num_output_tokens >= p.max_tokens or seq.num_tokens >= self.max_model_len:
            return FinishReason.LENGTH
        return None

    def _finish(self, seq: Sequence, reason: FinishReason, error: str | None = None, already_finished=False) -> RequestOutput:
        if not already_finished:
            seq.finish(reason, error)
        while seq.token_ids and seq.token_ids[-1] < 0:  # a placeholder whose token will not be kept
            seq.token_ids.pop()
        if self.hooks.finish:
            self._deferred.append((self.hooks.finish, time.perf_counter_ns(), {
                "step": self.step_index, "request_id": seq.request_id, "reason": reason.value,
                "num_output_tokens": seq.num_output_tokens, "error": seq.error,
            }))  # fmt: skip
        del self.requests[seq.request_id]
        return self._output(seq)

    def _output(self, seq: Sequence) -> RequestOutput:
        return RequestOutput(
            request_id=seq.request_id,
            prompt_token_ids=seq.prompt_token_ids,
            token_ids=seq.output_token_ids,
            text=self.tokenizer.decode(seq.output_token_ids),
            finished=seq.is_finished,
            finish_reason=seq.finish_reason.value if seq.finish_reason else None,
            error=seq.error,
            arrival_ns=seq.arrival_ns,
            token_times_ns=list(seq.token_times_ns),
            num_cached_prompt_tokens=seq.num_cached_tokens,
            num_preemptions=seq.num_preemptions,
        )

    # -- scoring ---------------------------------------------------------------------------
    @torch.inference_mode()
    def score(self, prompt: Prompt) -> torch.Tensor:
        """Logits at every prompt position, [L, V] float32, through the paged cache (no prefix reuse)."""
        seq = Sequence(f"score-{next(self._ids)}", self._tokens(prompt), SamplingParams(max_tokens=1))
        if not self.block_manager.allocate(seq, seq.num_tokens):
            raise InvalidRequestError(
                f"scoring {seq.num_tokens} tokens needs {self.block_manager.blocks_for(seq.num_tokens)} free KV blocks;"
                f" {self.block_manager.num_free_blocks} are free"
            )
        try:
            out = SchedulerOutput([ScheduledSeq(seq, seq.num_tokens)], int(seq.num_tokens == 1), seq.num_tokens)
            return self.runner.forward_logits(out, all_rows=True).float()
        finally:
            self.block_manager.free(seq)
            self.handover()


class LLM:
    """Offline batch generation: ``LLM("synthetic:tiny").generate(["Hello"], SamplingParams(...))``.

    The engine's config is ``config`` when given (a command has loaded it already), else traceinfer.toml
    (``config_file``) and the environment, with ``engine_options`` over them."""

    def __init__(
        self,
        model: str | None = None,
        hooks: Hooks | None = None,
        config_file=None,
        config: EngineConfig | None = None,
        **engine_options,
    ) -> None:
        if model is not None:
            engine_options["model"] = model
        if config is None:
            config = load_section("engine", engine_options, config_file)
        elif engine_options:
            config = dataclasses.replace(config, **engine_options)
        self.engine = LLMEngine(config, hooks)

    def generate(
        self,
        prompts: Prompt | list[Prompt],
        sampling_params: SamplingParams | list[SamplingParams] | None = None,
    ) -> list[RequestOutput]:
        """Generate for every prompt; outputs come back in prompt order. Every prompt and its params are
        checked before any is queued: an InvalidRequestError names the first bad one and queues nothing."""
        listed = isinstance(prompts, collections.abc.Sequence) and not isinstance(prompts, str)
        if not listed or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]  # one prompt; what is not a list of prompts is checked as one
        params = sampling_params if isinstance(sampling_params, list) else [sampling_params] * len(prompts)
        if len(params) != len(prompts):
            raise InvalidRequestError(f"{len(prompts)} prompts but {len(params)} sampling params")
        engine = self.engine
        seqs = []
        for i, (prompt, p) in enumerate(zip(prompts, params)):
            try:
                seqs.append(engine._request(prompt, p))
            except InvalidRequestError as exc:
                raise InvalidRequestError(f"prompt {i}: {exc}") from None
        ids = [engine._queue(seq) for seq in seqs]
        done: dict[str, RequestOutput] = {}
        while engine.has_unfinished():
            for out in engine.step():
                if out.finished:
                    done[out.request_id] = out
        return [done[r] for r in ids]
