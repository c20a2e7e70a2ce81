"""The ``traceinfer`` command: one module per subcommand under traceinfer.cli, and this registry.

A subcommand module has ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> exit status``.
It imports torch, pandas and the engine inside ``run`` only, so ``traceinfer --help`` and
``--version`` answer at once. Nothing outside traceinfer.cli imports it.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from traceinfer import __version__
from traceinfer.errors import TraceinferError

#: subcommand -> module under traceinfer.cli, in the order --help lists them
COMMANDS: dict[str, str] = {
    "profile": "profile",
    "report": "report",
    "diff": "diff",
    "flamegraph": "flamegraph",
    "nsys-stats": "nsys_stats",
    "bench": "bench",
    "workloads": "workloads",
    "generate": "generate",
    "top": "top",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="traceinfer", description="An LLM inference engine built to be profiled, and the probes that profile it."
    )
    parser.add_argument("--version", action="version", version=f"traceinfer {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(f"traceinfer.cli.{module_name}")
        cmd = sub.add_parser(name, help=module.HELP, description=module.__doc__,
                             formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
        module.add_arguments(cmd)
        cmd.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = ["traceinfer", *argv]  # as typed, for the manifest
    try:
        return args.run(args)
    except TraceinferError as exc:
        print(f"traceinfer {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("traceinfer: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader of our output went away (`traceinfer workloads | head`): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
