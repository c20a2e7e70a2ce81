"""List the workloads: what each one is, its parameters at GPU and at CPU size, and how its requests arrive.

    traceinfer workloads [--json]

A command runs a workload at its GPU size when the engine runs on CUDA and at its CPU size otherwise
(fewer requests, shorter prompts and outputs, the same shape). traceinfer.toml's [workload] section,
TRACEINFER_WORKLOAD_<KEY> variables and the commands' workload options change its parameters.
"""

from __future__ import annotations

import argparse
import json

from traceinfer.cli import options

HELP = "list the workloads with their parameters at GPU and CPU size"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the catalog as JSON")


def config_flags() -> dict[str, str]:
    """[workload] key -> its command-line flag, as traceinfer.cli.options derives them for the commands."""
    parser = argparse.ArgumentParser(add_help=False)
    options.add_section(parser, "workload")
    return {a.dest.split(".", 1)[1]: a.option_strings[0] for a in parser._actions if a.dest.startswith("workload.")}


def _value(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict):
        return ", ".join(f"{k} {v:g}" for k, v in value.items())
    return str(value)


HEADER = ("parameter", "flag", "GPU", "CPU")


def _rows(entry: dict, flags: dict[str, str]) -> list[tuple[str, str, str, str]]:
    """(parameter, its flag, value at GPU size, value at CPU size) for the parameters a config sets."""
    cpu = entry["cpu"]
    return [(key, flags[key], _value(value), _value(cpu[key])) for key, value in entry["gpu"].items() if key in flags]


def format_workload(entry: dict, flags: dict[str, str], widths: list[int]) -> list[str]:
    """One workload as lines of text: its name and description, what no config sets, then a table of its
    parameters with columns ``widths`` wide."""
    lines = [f"{entry['name']}: {entry['description']}"]
    for key, value in entry["gpu"].items():
        if key not in flags:  # a blend's components: fixed, so a line of its own
            lines.append(f"  {key}: {_value(value)}, each as that workload")
    for key, flag, on_gpu, on_cpu in [HEADER, *_rows(entry, flags)]:
        lines.append(f"  {key:<{widths[0]}}  {flag:<{widths[1]}}  {on_gpu:>{widths[2]}}  {on_cpu:>{widths[3]}}")
    return lines


def format_catalog(catalog: list[dict], flags: dict[str, str]) -> str:
    """The catalog as plain text, at most 100 columns wide."""
    from traceinfer.config import ENV_PREFIX
    from traceinfer.workloads.jsonl import FIELDS

    rows = [HEADER, *(row for entry in catalog for row in _rows(entry, flags))]
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADER))]
    f = flags
    optional = [k for k in FIELDS if k not in ("prompt", "prompt_token_ids", "max_tokens")]
    out = [f"{len(catalog)} workloads. A command runs the GPU size on CUDA and the CPU size otherwise;",
           "'-' is unset (no rate: no paced arrivals; no max_concurrency: no limit).", ""]  # fmt: skip
    for entry in catalog:
        out += [*format_workload(entry, flags, widths), ""]
    out += [
        "Change a parameter (one left unset keeps the workload's own, at the device's size) in",
        "  traceinfer.toml:   a [workload] section, one key per line: prompt_len = 1024",
        f"  the environment:   {ENV_PREFIX}WORKLOAD_PROMPT_LEN=1024",
        f"  the command line:  traceinfer profile {f['name']} rag_qa {f['num_requests']} 16 {f['prompt_len']} 1024",
        f"                     {f['arrival']} gamma {f['rate']} 2 {f['burstiness']} 0.25 {f['max_concurrency']} 8",
        "Arrivals: offline (every request at t=0), poisson (at rate requests/s), gamma (bursty: burstiness",
        "  below 1 is burstier than Poisson; 0.25 doubles the gaps' variation).",
        f"The file workload: {f['file']} PATH, one JSON object per line, e.g.",
        '  {"prompt_token_ids": [9707, 11, 1879], "max_tokens": 64, "arrival_s": 0.5, "temperature": 0.7}',
        "  prompt (text) or prompt_token_ids, and max_tokens; optional:",
        f"  {', '.join(optional)}",
    ]  # fmt: skip
    return "\n".join(out)


def run(args: argparse.Namespace) -> int:
    """Print the catalog (as JSON with --json); returns the exit status."""
    from traceinfer import workloads

    catalog = workloads.describe()
    print(json.dumps(catalog, indent=2) if args.json else format_catalog(catalog, config_flags()))
    return 0
