"""The ``traceinfer`` command."""

from __future__ import annotations

import argparse
import sys
import time

from traceinfer.errors import TraceinferError

DEFAULT_PROMPTS = (
    "The fastest way to find where an inference engine spends its time is",
    "A paged KV cache splits each sequence into blocks so that",
    "Continuous batching lets a server",
    "The physical floor of a decode step is set by",
)


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    """Engine options shared by every command that builds an engine (they override traceinfer.toml)."""
    g = parser.add_argument_group("engine (overrides traceinfer.toml [engine])")
    g.add_argument("--config", help="config file (default: ./traceinfer.toml when present)")
    g.add_argument("--model", help="HF model directory, or synthetic:tiny / synthetic:qwen3-0.6b")
    g.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"])
    g.add_argument("--device", help="cpu, cuda, cuda:N or auto")
    g.add_argument("--block-size", type=int)
    g.add_argument("--num-kv-blocks", type=int)
    g.add_argument("--max-model-len", type=int)
    g.add_argument("--max-num-seqs", type=int)
    g.add_argument("--max-num-batched-tokens", type=int)
    g.add_argument("--gpu-memory-utilization", type=float)
    g.add_argument("--attention-backend", choices=["auto", "torch", "triton", "flash_attn"])
    g.add_argument("--enforce-eager", action="store_true", default=None, help="no CUDA graphs")
    g.add_argument("--no-prefix-caching", dest="enable_prefix_caching", action="store_false", default=None)
    g.add_argument("--no-chunked-prefill", dest="enable_chunked_prefill", action="store_false", default=None)


def engine_options(args: argparse.Namespace) -> dict:
    """The EngineConfig fields given on the command line (argument dests are the field names)."""
    from dataclasses import fields

    from traceinfer.config import EngineConfig

    return {f.name: getattr(args, f.name) for f in fields(EngineConfig) if getattr(args, f.name, None) is not None}


def cmd_generate(args: argparse.Namespace) -> int:
    from traceinfer import LLM, SamplingParams

    llm = LLM(config_file=args.config, **engine_options(args))
    engine = llm.engine
    prompts = args.prompt or list(DEFAULT_PROMPTS)
    params = SamplingParams(
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, max_tokens=args.max_tokens,
        ignore_eos=args.ignore_eos, seed=args.sampling_seed,
    )  # fmt: skip
    print(f"model: {engine.model_label}")
    print(f"device: {engine.device}, dtype: {str(engine.dtype).removeprefix('torch.')}, attention: {engine.attention_backend}, "
          f"KV cache: {engine.block_manager.num_blocks} blocks x {engine.config.block_size} tokens")  # fmt: skip
    llm.generate(prompts[:1], SamplingParams(max_tokens=2))  # warm-up
    start = time.perf_counter()
    outputs = llm.generate(prompts, params)
    seconds = time.perf_counter() - start
    for prompt, out in zip(prompts, outputs):
        print(f"\n> {prompt if isinstance(prompt, str) else prompt[:16]}")
        print(f"  {out.text!r}")
        print(f"  [{len(out.token_ids)} tokens, finish: {out.finish_reason}]")
    total = sum(len(o.token_ids) for o in outputs)
    print(f"\n{len(outputs)} requests, {total} output tokens in {seconds:.2f} s: {total / seconds:.1f} output tok/s")
    if engine.synthetic:
        print("(synthetic random weights: the text is noise; the timing is real)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="traceinfer", description="An LLM inference engine built to be profiled.")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="generate text for prompts and report output tokens/s")
    gen.add_argument("--prompt", action="append", help="a prompt (repeat for several); default: four built-in prompts")
    gen.add_argument("--max-tokens", type=int, default=64)
    gen.add_argument("--temperature", type=float, default=0.0)
    gen.add_argument("--top-k", type=int, default=-1)
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--seed", dest="sampling_seed", type=int, help="sampling seed (the engine's seed sets synthetic weights)")
    gen.add_argument("--ignore-eos", action="store_true")
    add_engine_arguments(gen)
    gen.set_defaults(func=cmd_generate)

    from traceinfer.bench import add_bench_arguments, run_bench

    bench = sub.add_parser("bench", help="nano-vLLM's throughput benchmark, optionally against HF, with the physical floor")
    add_bench_arguments(bench)
    bench.set_defaults(func=run_bench)

    from traceinfer.profile import add_profile_arguments, run_profile

    profile = sub.add_parser("profile", help="run a workload with probes and write a run directory")
    add_profile_arguments(profile)
    profile.set_defaults(func=run_profile)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except TraceinferError as exc:
        print(f"traceinfer: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("traceinfer: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
