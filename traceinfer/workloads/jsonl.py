"""Requests from a JSON Lines file (https://jsonlines.org): one JSON object per line, blank lines skipped.

    {"prompt_token_ids": [9707, 11, 1879], "max_tokens": 64, "arrival_s": 0.0}
    {"prompt": "Summarize: ...", "max_tokens": 128, "arrival_s": 0.25, "temperature": 0.7, "seed": 1}

    prompt | prompt_token_ids  exactly one: text (tokenized by the model's tokenizer) or a non-empty list of
                               token ids (integers >= 0, below the vocabulary's size)
    max_tokens                 required: an integer >= 1
    arrival_s                  optional: seconds >= 0 after the workload starts (missing: 0)
    temperature, top_p, top_k, seed, ignore_eos, stop_token_ids
                               optional: sampling fields, as traceinfer.engine.SamplingParams takes them

A bad line is a ConfigError naming ``path:line``, what is wrong and what is allowed. ``read_requests``
checks everything but the vocabulary and reads no model; ``token_ids`` then tokenizes text prompts and
checks ids against the model's vocabulary.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from traceinfer.engine.sampling_params import SamplingParams
from traceinfer.errors import ConfigError, InvalidRequestError

#: field -> (the JSON types it takes, what it takes in words)
FIELDS: dict[str, tuple[tuple[type, ...], str]] = {
    "prompt": ((str,), "non-empty text"),
    "prompt_token_ids": ((list,), "a non-empty list of token ids (integers >= 0)"),
    "max_tokens": ((int,), "an integer >= 1"),
    "arrival_s": ((int, float), "a number of seconds >= 0"),
    "temperature": ((int, float), "a number >= 0 (0 is greedy)"),
    "top_p": ((int, float), "a number in (0, 1]"),
    "top_k": ((int,), "an integer (-1 or 0: off)"),
    "seed": ((int,), "an integer in [0, 2**63)"),
    "ignore_eos": ((bool,), "true or false"),
    "stop_token_ids": ((list,), "a list of token ids (integers >= 0)"),
}
SAMPLING_FIELDS = ("temperature", "top_p", "top_k", "seed", "ignore_eos", "stop_token_ids")


@dataclass(frozen=True)
class FileRequest:
    line: int  # its line number in the file, from 1
    prompt: str | list[int]  # text, or token ids
    params: SamplingParams
    arrival_s: float


def read_requests(path: str | Path) -> list[FileRequest]:
    """The file's requests, in file order; a ConfigError naming the path (and the line) when one is bad."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"workload file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read workload file {path}: {exc}") from None
    requests = [_parse(path, n, line) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]
    if not requests:
        raise ConfigError(f"workload file {path} holds no requests: write one JSON object per line")
    return requests


def _parse(path: str | Path, line_number: int, line: str) -> FileRequest:
    where = f"{path}:{line_number}"
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{where}: not valid JSON ({exc.msg}, column {exc.colno}); "
                          f"write one JSON object per line") from None  # fmt: skip
    if not isinstance(obj, dict):
        got = f"{type(obj).__name__} {line.strip()[:40]}"
        raise ConfigError(f"{where}: a request is a JSON object ({{...}}), got {got}")
    unknown = sorted(set(obj) - set(FIELDS))
    if unknown:
        raise ConfigError(f"{where}: unknown field {', '.join(unknown)}; fields: {', '.join(FIELDS)}")
    for key, value in obj.items():
        _check_field(where, key, value)
    if ("prompt" in obj) == ("prompt_token_ids" in obj):
        given = "both" if "prompt" in obj else "neither"
        raise ConfigError(f"{where}: give exactly one of prompt (text) and prompt_token_ids, got {given}")
    if "max_tokens" not in obj:
        raise ConfigError(f"{where}: max_tokens is required ({FIELDS['max_tokens'][1]})")
    try:
        params = SamplingParams(max_tokens=obj["max_tokens"], **{k: obj[k] for k in SAMPLING_FIELDS if k in obj})
    except InvalidRequestError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    prompt = obj["prompt"] if "prompt" in obj else obj["prompt_token_ids"]
    return FileRequest(line_number, prompt, params, float(obj.get("arrival_s", 0.0)))


def _check_field(where: str, key: str, value) -> None:
    """A ConfigError unless ``value`` has the field's type (a bool is no number) and, where this module
    rather than SamplingParams knows the limits, is within them."""
    types, allowed = FIELDS[key]
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
        raise ConfigError(f"{where}: {key} must be {allowed}, got {json.dumps(value)}")
    bad = (
        (key == "prompt" and not value)
        or (key == "prompt_token_ids" and not value)
        or (key in ("prompt_token_ids", "stop_token_ids") and not all(_is_token_id(t) for t in value))
        or (key == "arrival_s" and not (math.isfinite(value) and value >= 0))
    )
    if bad:
        raise ConfigError(f"{where}: {key} must be {allowed}, got {json.dumps(value)[:80]}")


def _is_token_id(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def token_ids(
    requests: list[FileRequest],
    path: str | Path,
    vocab_size: int | None = None,
    tokenize: Callable[[str], list[int]] | None = None,
) -> list[list[int]]:
    """Each request's prompt as token ids: text through ``tokenize``; every id below ``vocab_size`` when given."""
    prompts = []
    for r in requests:
        where = f"{path}:{r.line}"
        if isinstance(r.prompt, str):
            if tokenize is None:
                raise ConfigError(f"{where}: prompt is text, which needs the model's tokenizer, and none was given: "
                                  f"give prompt_token_ids instead, or a model that has a tokenizer")  # fmt: skip
            ids = list(tokenize(r.prompt))
            if not ids:
                raise ConfigError(f"{where}: prompt tokenizes to no tokens: give some text")
        else:
            ids = r.prompt
        if vocab_size is not None and max(ids) >= vocab_size:
            raise ConfigError(f"{where}: token id {max(ids)} is outside the model's vocabulary of {vocab_size} "
                              f"(ids 0..{vocab_size - 1})")  # fmt: skip
        prompts.append(ids)
    return prompts
