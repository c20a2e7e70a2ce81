"""The one typed configuration path: defaults < traceinfer.toml < environment < explicit options.

traceinfer.toml (read from the working directory) has one table per section, e.g.::

    [engine]
    model = "synthetic:tiny"
    block_size = 16

Environment variables are ``TRACEINFER_<SECTION>_<KEY>`` (``TRACEINFER_ENGINE_BLOCK_SIZE=32``).
Every error names the key and what it accepts.
"""

from __future__ import annotations

import os
import sys
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

from traceinfer.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DEFAULT_CONFIG_FILE = "traceinfer.toml"


@dataclass(frozen=True)
class EngineConfig:
    model: str = "synthetic:tiny"  # a HF model directory, or synthetic:tiny / synthetic:qwen3-0.6b
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # auto: float32 on CPU, bfloat16 on CUDA
    device: str = "auto"  # auto: cuda when available, else cpu
    seed: int = 0  # seeds synthetic weights and unseeded sampling
    block_size: int = 16
    num_kv_blocks: int | None = None  # fixes the KV cache size; otherwise sized from memory
    cpu_kv_cache_gib: float = 1.0  # KV cache size on CPU when num_kv_blocks is not set
    gpu_memory_utilization: float = 0.9  # share of GPU memory for weights, activations and KV cache
    max_model_len: int | None = None  # default: the model's max_position_embeddings, at most 8192
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    enable_prefix_caching: bool = True
    enable_chunked_prefill: bool = True
    attention_backend: Literal["auto", "torch", "triton", "flash_attn"] = "auto"
    enforce_eager: bool = False  # no CUDA graphs

    def __post_init__(self) -> None:
        _check_literals(self, "engine")
        positive = ("block_size", "max_num_seqs", "max_num_batched_tokens")
        for key in positive:
            if getattr(self, key) < 1:
                raise ConfigError(f"engine.{key} must be >= 1, got {getattr(self, key)}")
        for key in ("num_kv_blocks", "max_model_len"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ConfigError(f"engine.{key} must be >= 1 when set, got {value}")
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ConfigError(f"engine.gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        if self.cpu_kv_cache_gib <= 0:
            raise ConfigError(f"engine.cpu_kv_cache_gib must be > 0, got {self.cpu_kv_cache_gib}")


SECTIONS: dict[str, type] = {"engine": EngineConfig}


def _check_literals(obj, section: str) -> None:
    hints = typing.get_type_hints(type(obj))
    for f in fields(obj):
        allowed = typing.get_args(hints[f.name]) if typing.get_origin(hints[f.name]) is Literal else None
        if allowed and getattr(obj, f.name) not in allowed:
            raise ConfigError(f"{section}.{f.name} must be one of {', '.join(map(repr, allowed))}, got {getattr(obj, f.name)!r}")


def _coerce(section: str, key: str, hint, value: Any, source: str) -> Any:
    """Turn a TOML or environment value into the field's type, or name the key in an error."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return str(value)
    optional = type(None) in args
    base = next((a for a in args if a is not type(None)), hint) if origin is not None else hint
    if optional and (value is None or (isinstance(value, str) and value.lower() in ("", "none"))):
        return None
    try:
        if base is bool:
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("1", "true", "yes", "on"):
                return True
            if str(value).lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if base is int and isinstance(value, float) and not value.is_integer():
            raise ValueError(value)
        return base(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{section}.{key} from {source} must be {getattr(base, '__name__', base)}, got {value!r}") from None


def load_section(
    section: str, overrides: dict[str, Any] | None = None, path: str | Path | None = None, environ=None
):
    """Build the dataclass of ``section`` with defaults < toml < environment < ``overrides``."""
    cls = SECTIONS[section]
    hints = typing.get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    values: dict[str, Any] = {}

    file = Path(path) if path is not None else Path.cwd() / DEFAULT_CONFIG_FILE
    if file.exists():
        try:
            table = tomllib.loads(file.read_text()).get(section, {})
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{file} is not valid TOML: {exc}") from exc
        for key, value in table.items():
            if key not in names:
                raise ConfigError(f"{file}: unknown key {section}.{key}; known: {', '.join(sorted(names))}")
            values[key] = _coerce(section, key, hints[key], value, str(file))
    elif path is not None:
        raise ConfigError(f"config file {file} does not exist")

    env = os.environ if environ is None else environ
    prefix = f"TRACEINFER_{section.upper()}_"
    for var, value in env.items():
        if var.startswith(prefix):
            key = var[len(prefix) :].lower()
            if key not in names:
                raise ConfigError(f"environment variable {var}: unknown key {section}.{key}")
            values[key] = _coerce(section, key, hints[key], value, var)

    for key, value in (overrides or {}).items():
        if key not in names:
            raise ConfigError(f"unknown option {section}.{key}; known: {', '.join(sorted(names))}")
        if value is not None:
            values[key] = value
    return cls(**values)
