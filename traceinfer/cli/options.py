"""Command-line options derived from the config dataclasses (traceinfer.config), so each is written once.

A field becomes ``--<flag>`` (its ``flag`` metadata, else its name with dashes) with the field's help;
ints and floats are typed, Literal fields get their choices, bools get ``--x/--no-x``. An option left
out of the command line is None, which ``load`` reads as "not given", so traceinfer.toml and the
environment apply beneath it.
"""

from __future__ import annotations

import argparse
import typing
from collections.abc import Iterable
from dataclasses import fields
from typing import Literal

from traceinfer.config import SECTIONS, Config, load_config, unwrap

_SEP = "."  # dest = "<section>.<field>"


def add_config_file(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="config file (default: ./traceinfer.toml when present)")


def add_section(
    parser: argparse.ArgumentParser,
    section: str,
    only: Iterable[str] | None = None,
    skip: Iterable[str] = (),
    choices: dict[str, Iterable[str]] | None = None,
    helps: dict[str, str] | None = None,
) -> None:
    """One argument group with an option per field of ``section`` (``only`` those, none of ``skip``);
    ``choices`` gives the allowed values of str fields whose choices live outside the config, ``helps``
    a help text that names them."""
    cls = SECTIONS[section]
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(f"[{section}] (over traceinfer.toml and TRACEINFER_{section.upper()}_*)")
    wanted = set(only) if only is not None else None
    for f in fields(cls):
        if not f.metadata.get("cli", True) or f.name in skip or (wanted is not None and f.name not in wanted):
            continue
        flag = "--" + (f.metadata.get("flag") or f.name.replace("_", "-"))
        kwargs: dict = {"dest": f"{section}{_SEP}{f.name}", "metavar": f.name.upper(), "default": None, "help": _help(f, (helps or {}).get(f.name))}
        base, _ = unwrap(hints[f.name])
        if base is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
            del kwargs["metavar"]
        elif typing.get_origin(base) is Literal:
            kwargs["choices"] = list(typing.get_args(base))
            del kwargs["metavar"]
        else:
            kwargs["type"] = base
            if choices and f.name in choices:
                kwargs["choices"] = list(choices[f.name])
                del kwargs["metavar"]
        group.add_argument(flag, **kwargs)


def _help(f, text: str | None = None) -> str:
    default = f.default
    shown = "unset" if default is None else str(default).lower() if isinstance(default, bool) else default
    return f"{text or f.metadata.get('help', '')} (default: {shown})".replace("%", "%%")


def overrides(args: argparse.Namespace) -> dict[str, dict]:
    """The config fields given on the command line: {section: {field: value}}."""
    out: dict[str, dict] = {}
    for dest, value in vars(args).items():
        if _SEP in dest and value is not None:
            section, name = dest.split(_SEP, 1)
            out.setdefault(section, {})[name] = value
    return out


def load(args: argparse.Namespace, **fixed: dict) -> Config:
    """The command's configuration, loaded once: defaults < traceinfer.toml (or --config) < environment <
    command line < ``fixed`` ({section: {field: value}} the command itself sets)."""
    given = overrides(args)
    for section, values in fixed.items():
        given.setdefault(section, {}).update(values)
    return load_config(getattr(args, "config", None), given)
