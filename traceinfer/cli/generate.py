"""Generate text for a few prompts on the engine and report output tokens/s.

    traceinfer generate --prompt "Hello" --max-tokens 32 [engine options]
"""

from __future__ import annotations

import argparse
import sys
import time

from traceinfer.cli import options

HELP = "generate text for prompts and report output tokens/s"
DEFAULT_PROMPTS = (
    "The fastest way to find where an inference engine spends its time is",
    "A paged KV cache splits each sequence into blocks so that",
    "Continuous batching lets a server",
    "The physical floor of a decode step is set by",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("generate")
    g.add_argument("--prompt", action="append", help="a prompt (repeat for several); default: four built-in prompts")
    g.add_argument("--max-tokens", type=int, default=64)
    g.add_argument("--temperature", type=float, default=0.0)
    g.add_argument("--top-k", type=int, default=-1)
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--seed", dest="sampling_seed", type=int, help="sampling seed (--engine-seed sets synthetic weights)")
    g.add_argument("--ignore-eos", action="store_true")
    options.add_config_file(parser)
    options.add_section(parser, "engine")


def run(args: argparse.Namespace) -> int:
    from traceinfer.engine.device import freeze_gc
    from traceinfer.engine.llm_engine import LLM
    from traceinfer.engine.sampling_params import SamplingParams
    from traceinfer.errors import InvalidRequestError

    params = SamplingParams(
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, max_tokens=args.max_tokens,
        ignore_eos=args.ignore_eos, seed=args.sampling_seed,
    )  # fmt: skip
    llm = LLM(config=options.load(args).engine)
    freeze_gc()
    engine = llm.engine
    prompts = args.prompt or list(DEFAULT_PROMPTS)
    print(f"model: {engine.model_label}")
    print(f"device: {engine.device}, dtype: {str(engine.dtype).removeprefix('torch.')}, attention: {engine.attention_backend}, "
          f"KV cache: {engine.block_manager.num_blocks} blocks x {engine.config.block_size} tokens")  # fmt: skip
    try:
        llm.generate(prompts[:1], SamplingParams(max_tokens=2))  # warm-up
    except InvalidRequestError:
        pass  # the prompt is refused again below, and reported with the others
    # the step API, so that a prompt the engine refuses fails alone, as a request that fails in flight does
    start = time.perf_counter()
    ids: dict[int, str] = {}
    refused: dict[int, str] = {}
    for i, prompt in enumerate(prompts):
        try:
            ids[i] = engine.add_request(prompt, params)
        except InvalidRequestError as exc:
            refused[i] = str(exc)
    done = {}
    while engine.has_unfinished():
        done.update({o.request_id: o for o in engine.step() if o.finished})
    seconds = time.perf_counter() - start
    failed = len(refused)
    for i, prompt in enumerate(prompts):
        print(f"\n> {prompt}")
        if i in refused:
            print(f"  error: {refused[i]}")
            continue
        out = done[ids[i]]
        print(f"  {out.text!r}")
        print(f"  [{len(out.token_ids)} tokens, finish: {out.finish_reason}]")
        if out.error is not None:
            print(f"  error: {out.error}")
            failed += 1
    total = sum(len(o.token_ids) for o in done.values())
    print(f"\n{len(done)} requests, {total} output tokens in {seconds:.2f} s: {total / seconds:.1f} output tok/s")
    if engine.synthetic:
        print("(synthetic random weights: the text is noise; the timing is real)")
    if failed:
        print(f"traceinfer generate: error: {failed} of {len(prompts)} requests failed", file=sys.stderr)
        return 1
    return 0
