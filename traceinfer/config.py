"""The one typed configuration path: defaults < traceinfer.toml < environment < command line.

traceinfer.toml (read from the working directory, or ``--config FILE``) has one table per section::

    [engine]
    model = "auto"
    block_size = 16

    [workload]
    name = "chatbot"

Each section is a frozen dataclass below (``SECTIONS``); every field carries its help text, and the
command line's options are derived from these fields (traceinfer.cli.options), so an option is written
once. Environment variables are ``TRACEINFER_<SECTION>_<KEY>`` (``TRACEINFER_ENGINE_BLOCK_SIZE=32``).
An unknown section or key, a key outside any section, or a value of the wrong type is an error that
names the key and what it accepts. Standard library only.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from traceinfer.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DEFAULT_CONFIG_FILE = "traceinfer.toml"
ENV_PREFIX = "TRACEINFER_"


def option(default: Any, help: str, *, flag: str | None = None, cli: bool = True) -> Any:
    """A config field with its help text. ``flag``: the command-line name (default: the field name with
    dashes); ``cli=False``: settable in traceinfer.toml and the environment only."""
    return field(default=default, metadata={"help": help, "flag": flag, "cli": cli})


@dataclass(frozen=True)
class EngineConfig:
    """[engine]: the model, the device and the engine's limits."""

    model: str = option("auto", "a HF model directory, synthetic:tiny, synthetic:qwen3-0.6b, or auto "
                        "(synthetic:qwen3-0.6b on CUDA, synthetic:tiny on CPU)")  # fmt: skip
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = option("auto", "auto: float32 on CPU, bfloat16 on CUDA")
    device: str = option("auto", "cpu, cuda, cuda:N, or auto (cuda when available)")
    seed: int = option(0, "seeds synthetic weights and unseeded sampling", flag="engine-seed")
    block_size: int = option(16, "tokens per KV block")
    num_kv_blocks: int | None = option(None, "KV blocks; fixes the KV cache size (default: sized from memory)")
    cpu_kv_cache_gib: float = option(1.0, "KV cache size on CPU when num_kv_blocks is not set")
    gpu_memory_utilization: float = option(0.9, "share of GPU memory for weights, activations and the KV cache")
    max_model_len: int | None = option(None, "longest sequence (default: the model's max_position_embeddings, "
                                       "at most 8192)")  # fmt: skip
    max_num_seqs: int = option(256, "most requests running at once")
    max_num_batched_tokens: int = option(8192, "token budget of one step (decodes + prefill chunks)")
    enable_prefix_caching: bool = option(True, "reuse KV blocks of shared prompt prefixes", flag="prefix-caching")
    enable_chunked_prefill: bool = option(True, "split long prefills across steps", flag="chunked-prefill")
    attention_backend: Literal["auto", "torch", "triton", "flash_attn"] = option("auto", "attention kernels")
    enforce_eager: bool = option(False, "no CUDA graphs")
    piecewise_graphs: bool = option(True, "with CUDA graphs, eager (prefill, mixed) steps too, as graphs around "
                                   "attention at padded token counts (triton attention)")  # fmt: skip
    async_scheduling: Literal["auto", "on", "off"] = option(
        "auto", "schedule and launch the next step while the device runs this one (auto: on with CUDA)"
    )

    def __post_init__(self) -> None:
        for f in fields(self):
            hint = typing.get_type_hints(type(self))[f.name]
            if typing.get_origin(hint) is Literal and getattr(self, f.name) not in typing.get_args(hint):
                raise ConfigError(f"engine.{f.name} must be {_type_name(hint)}, got {getattr(self, f.name)!r}")
        for key in ("block_size", "max_num_seqs", "max_num_batched_tokens"):
            _at_least(self, "engine", key, 1)
        for key in ("num_kv_blocks", "max_model_len"):
            if getattr(self, key) is not None:
                _at_least(self, "engine", key, 1)
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ConfigError(f"engine.gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        if self.cpu_kv_cache_gib <= 0:
            raise ConfigError(f"engine.cpu_kv_cache_gib must be > 0, got {self.cpu_kv_cache_gib}")


@dataclass(frozen=True)
class WorkloadConfig:
    """[workload]: which workload to run, what to change in its spec, and how requests arrive
    (traceinfer.workloads; ``traceinfer workloads`` lists every workload with its parameters). A value left
    unset keeps the workload's own, which depends on the device (smaller on a CPU, same shape)."""

    name: str | None = option(None, "the workload (unset: chatbot, or file when a file is given)", flag="workload")
    file: str | None = option(None, "a JSON Lines file of requests: prompt or prompt_token_ids, max_tokens, "
                              "optional arrival_s and sampling fields", flag="workload-file")  # fmt: skip
    num_requests: int | None = option(None, "requests in the workload")
    seed: int | None = option(None, "workload seed", flag="workload-seed")
    temperature: float | None = option(None, "sampling temperature of every request")
    prompt_len: int | None = option(None, "mean prompt tokens, shared prefix included")
    output_len: int | None = option(None, "mean output tokens")
    spread: float | None = option(None, "lengths are uniform in mean x [1 - spread, 1 + spread]")
    shared_prefix_len: int | None = option(None, "tokens of the prompt prefix every request shares (a system prompt)")
    min_input_len: int | None = option(None, "shortest prompt (bench)")
    max_input_len: int | None = option(None, "longest prompt (bench)")
    min_output_len: int | None = option(None, "fewest output tokens (bench)")
    max_output_len: int | None = option(None, "most output tokens (bench)")
    arrival: Literal["offline", "poisson", "gamma"] | None = option(
        None, "offline: every request at t=0; poisson: at --rate per second; gamma: bursty, --burstiness"
    )
    rate: float | None = option(None, "requests per second of poisson and gamma arrivals")
    burstiness: float | None = option(None, "gamma arrivals' shape: 1 is Poisson, below 1 burstier")
    max_concurrency: int | None = option(None, "most requests in flight; later arrivals wait for a slot")
    warmup: bool = option(True, "run the workload once, unprobed and untimed, before the measured run "
                          "(--no-warmup measures a cold engine: Triton compiles, allocator growth)")  # fmt: skip

    def __post_init__(self) -> None:
        for key in ("num_requests", "prompt_len", "output_len", "max_concurrency"):
            if getattr(self, key) is not None:
                _at_least(self, "workload", key, 1)
        if self.temperature is not None and self.temperature < 0:
            raise ConfigError(f"workload.temperature must be >= 0, got {self.temperature}")
        if self.spread is not None and not 0 <= self.spread < 1:
            raise ConfigError(f"workload.spread must be in [0, 1), got {self.spread}")
        for key in ("rate", "burstiness"):
            value = getattr(self, key)
            if value is not None and not value > 0:
                raise ConfigError(f"workload.{key} must be > 0, got {value}")
        if self.arrival is not None and self.arrival not in ("offline", "poisson", "gamma"):
            raise ConfigError(f"workload.arrival must be one of 'offline', 'poisson', 'gamma', got {self.arrival!r}")

    def overrides(self) -> dict[str, Any]:
        """The spec fields this config sets (name, file and warmup are not spec fields)."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name not in ("name", "file", "warmup") and getattr(self, f.name) is not None}  # fmt: skip


@dataclass(frozen=True)
class ProbesConfig:
    """[probes]: which probes watch the engine and how. A rate left unset takes the selection's: 20 Hz,
    or 100 Hz when ``all`` is selected (the overhead target of ``all`` is stated at 100 Hz)."""

    select: str = option("default", "off | default | all | a comma list of probe and set names", flag="probes")
    sample_hz: float | None = option(None, "NVML and psutil sampling rate (default 20, 100 with 'all')")
    stack_hz: float | None = option(None, "thread stack sampling rate (default 20, 100 with 'all')")
    nvtx_layers: bool = option(False, "an NVTX range per decoder layer (eager forwards only: graphs run no Python)")
    cuda_profiler_range: bool = option(True, "torch.cuda.profiler start/stop around the measured run "
                                       "(for nsys --capture-range=cudaProfilerApi)")  # fmt: skip
    memory_snapshot: bool = option(False, "record torch.cuda.memory history and write a snapshot (CUDA)")
    nsys_capture: bool = option(False, "run the profile under Nsight Systems (nsys profile -t cuda,nvtx,osrt, CUDA "
                                "graph nodes traced where nsys can), export its SQLite and read it into the run "
                                "directory: nsys's tables, GPU idle gaps by host phase, a GPU flame graph",
                                flag="nsys")  # fmt: skip
    nsys: str = option("nsys", "the nsys executable for --nsys: a name on PATH or a path", flag="nsys-path")
    torch_profiler_shapes: bool = option(False, "torch_profiler probe: record every op's input shapes")
    torch_profiler_stacks: bool = option(False, "torch_profiler probe: record every op's Python stack (costly)")
    pyspy: bool = option(False, "sample the engine's process with py-spy (adds the pyspy probe): CPU flame graphs, "
                         "whole and per engine phase")  # fmt: skip
    pyspy_path: str | None = option(None, "the py-spy executable (default: on PATH, or beside this Python)")
    pyspy_rate: int = option(100, "py-spy samples per second")
    pyspy_gil: bool = option(False, "py-spy: only samples that hold the GIL (--gil)")
    pyspy_idle: bool = option(False, "py-spy: idle threads too (--idle)")
    pyspy_native: bool = option(False, "py-spy: C and C++ frames too (--native; costs more)")
    pyspy_nonblocking: bool = option(True, "py-spy: never pause the process to read it (--nonblocking; "
                                     "--no-pyspy-nonblocking pauses it for exact stacks: +14% on the H200 bench, "
                                     "against none measurable without pausing)")  # fmt: skip
    pyspy_subprocesses: bool = option(False, "py-spy: the encoder and sampler processes too (--subprocesses)")
    flush_interval_s: float = option(0.5, "how often streams reach the disk: what a crash can lose", cli=False)
    overhead_passes: int | None = option(None, "after the profiled run, this many rounds of one unprobed and one "
                                         "probed pass (the workload as an offline batch, interleaved) measure the "
                                         "probes' cost; 0: none; unset: 2 on a GPU, 0 on a CPU (there the probes' "
                                         "helper processes share the few cores with the engine)")  # fmt: skip

    def __post_init__(self) -> None:
        for key in ("sample_hz", "stack_hz"):
            value = getattr(self, key)
            if value is not None and not 0 < value <= 1000:
                raise ConfigError(f"probes.{key} must be in (0, 1000] Hz, got {value}")
        if not 0 < self.flush_interval_s <= 60:
            raise ConfigError(f"probes.flush_interval_s must be in (0, 60] seconds, got {self.flush_interval_s}")
        if self.overhead_passes is not None:
            _at_least(self, "probes", "overhead_passes", 0)
        if not 1 <= self.pyspy_rate <= 1000:
            raise ConfigError(f"probes.pyspy_rate must be in [1, 1000] Hz, got {self.pyspy_rate}")

    @property
    def selection(self) -> str:
        """The probes to attach: ``select``, and pyspy when ``pyspy`` asks for it."""
        if self.pyspy and "pyspy" not in self.select.replace("+", ",").split(","):
            return f"{self.select},pyspy" if self.select != "off" else "pyspy"
        return self.select


@dataclass(frozen=True)
class OutputConfig:
    """[output]: where a run directory goes and what is written into it."""

    root: str = option("runs", "the folder that new run directories go into", flag="out-root")
    run_dir: str | None = option(None, "the run directory to create (default: <root>/<time>-<workload>)", flag="out")
    perfetto: bool = option(True, "write trace.json, a Perfetto timeline of the run")
    progress: bool = option(True, "show progress: a live line on a terminal, a line every 5 s otherwise")


@dataclass(frozen=True)
class ReportConfig:
    """[report]: the performance report ``profile`` writes at the end of a run (``traceinfer report`` too)."""

    formats: str = option("md,html,json", "the report's formats, a comma list of md, html, json; none: no report",
                          flag="report-formats")  # fmt: skip


@dataclass(frozen=True)
class TelemetryConfig:
    """[telemetry]: the live telemetry endpoint (traceinfer.telemetry): sliding windows of what the probes see,
    served from the watched process as JSON (/snapshot) and Prometheus text (/metrics); ``traceinfer top
    --attach`` reads it. It binds a loopback address unless ``allow_remote`` is set: it has no authentication."""

    address: str | None = option(None, "serve telemetry at [HOST:]PORT (HOST 127.0.0.1 when left out; PORT 0: any "
                                 "free port): /metrics (Prometheus) and /snapshot (JSON)", flag="telemetry")  # fmt: skip
    allow_remote: bool = option(False, "let --telemetry bind an address other than loopback (anyone who reaches it "
                                "reads the engine's figures)", flag="telemetry-allow-remote")  # fmt: skip
    window_s: float = option(30.0, "seconds of the sliding windows (percentiles, rates, shares)", flag="telemetry-window")
    linger_s: float = option(0.0, "seconds the endpoint keeps serving the final figures once the command is done "
                             "(a last scrape)", flag="telemetry-linger")  # fmt: skip

    def __post_init__(self) -> None:
        if not 1.0 <= self.window_s <= 3600.0:
            raise ConfigError(f"telemetry.window_s must be in [1, 3600] seconds, got {self.window_s}")
        if not 0.0 <= self.linger_s <= 3600.0:
            raise ConfigError(f"telemetry.linger_s must be in [0, 3600] seconds, got {self.linger_s}")


@dataclass(frozen=True)
class Config:
    engine: EngineConfig = field(default_factory=EngineConfig)
    workload: WorkloadConfig = field(default_factory=WorkloadConfig)
    probes: ProbesConfig = field(default_factory=ProbesConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    telemetry: TelemetryConfig = field(default_factory=TelemetryConfig)


#: section name -> its dataclass, in the order of Config's fields
SECTIONS: dict[str, type] = dict(typing.get_type_hints(Config))


def _at_least(obj, section: str, key: str, low: int) -> None:
    if getattr(obj, key) < low:
        raise ConfigError(f"{section}.{key} must be >= {low}, got {getattr(obj, key)}")


def unwrap(hint) -> tuple[Any, bool]:
    """A field's type without its ``| None``: (base type or Literal, whether None is allowed)."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) is not Literal and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else typing.Union[tuple(rest)]), True
    return hint, False


def _type_name(hint) -> str:
    base, optional = unwrap(hint)
    if typing.get_origin(base) is Literal:
        name = "one of " + ", ".join(map(repr, typing.get_args(base)))
    else:
        name = getattr(base, "__name__", str(base))
    return name + (" (or unset)" if optional else "")


def _coerce(section: str, key: str, hint, value: Any, source: str, from_env: bool = False) -> Any:
    """A TOML value or an option (typed: it must already be of the field's type) or an environment
    string (``from_env``: parsed) as the field's type; a ConfigError naming the key, ``source`` (a file or
    a variable; "" for an option) and what the key accepts otherwise."""
    base, optional = unwrap(hint)

    def bad() -> ConfigError:
        where = f" from {source}" if source else ""
        return ConfigError(f"{section}.{key}{where} must be {_type_name(hint)}, got {value!r}")

    if optional and from_env and value.strip().lower() in ("", "none"):
        return None
    if typing.get_origin(base) is Literal:
        if value not in typing.get_args(base):
            raise bad()
        return value
    if base is bool:
        if isinstance(value, bool):
            return value
        if from_env and value.strip().lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            return value.strip().lower() in ("1", "true", "yes", "on")
        raise bad()
    if isinstance(value, bool):  # a TOML true is not the number 1
        raise bad()
    accepted = {int: (int,), float: (int, float), str: (str,)}[base]  # as TOML or an option gives it
    if isinstance(value, accepted):
        return base(value)
    if from_env:
        try:
            return base(value)
        except ValueError:
            raise bad() from None
    raise bad()


def _known(cls: type) -> str:
    names = sorted(f.name for f in fields(cls))
    return ", ".join(names) if names else "none yet"


def _from_table(file: Path, table: dict) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for section, keys in table.items():
        if section not in SECTIONS:
            if not isinstance(keys, dict):
                raise ConfigError(f"{file}: key {section!r} is outside any section; put it under one of "
                                  f"{', '.join(f'[{s}]' for s in SECTIONS)}")  # fmt: skip
            raise ConfigError(f"{file}: unknown section [{section}]; sections: {', '.join(SECTIONS)}")
        if not isinstance(keys, dict):
            raise ConfigError(f"{file}: {section!r} must be a section ([{section}]), got a value")
        cls = SECTIONS[section]
        hints = typing.get_type_hints(cls)
        for key, value in keys.items():
            if key not in hints:
                raise ConfigError(f"{file}: unknown key {section}.{key}; known: {_known(cls)}")
            out.setdefault(section, {})[key] = _coerce(section, key, hints[key], value, str(file))
    return out


def _from_environ(environ) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for var, value in environ.items():
        if not var.startswith(ENV_PREFIX):
            continue
        rest = var[len(ENV_PREFIX) :].lower()
        section = next((s for s in SECTIONS if rest.startswith(s + "_")), None)
        if section is None:
            raise ConfigError(f"environment variable {var}: unknown section; variables are "
                              f"{ENV_PREFIX}<SECTION>_<KEY> with SECTION one of {', '.join(SECTIONS)}")  # fmt: skip
        key = rest[len(section) + 1 :]
        cls = SECTIONS[section]
        hints = typing.get_type_hints(cls)
        if key not in hints:
            raise ConfigError(f"environment variable {var}: unknown key {section}.{key}; known: {_known(cls)}")
        out.setdefault(section, {})[key] = _coerce(section, key, hints[key], value, var, from_env=True)
    return out


def load_config(
    path: str | Path | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
    environ=None,
) -> Config:
    """The whole configuration: defaults < ``path`` (default ./traceinfer.toml when present) < the
    environment < ``overrides`` ({section: {key: value}}; a value of None is "not given")."""
    layers: list[dict[str, dict[str, Any]]] = []
    file = Path(path) if path is not None else Path.cwd() / DEFAULT_CONFIG_FILE
    if file.is_file():
        try:
            table = tomllib.loads(file.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{file} is not valid TOML: {exc}") from None
        layers.append(_from_table(file, table))
    elif path is not None:
        raise ConfigError(f"config file {file} does not exist")
    layers.append(_from_environ(os.environ if environ is None else environ))
    given: dict[str, dict[str, Any]] = {}
    for section, keys in (overrides or {}).items():
        if section not in SECTIONS:
            raise ConfigError(f"unknown config section {section!r}; sections: {', '.join(SECTIONS)}")
        hints = typing.get_type_hints(SECTIONS[section])
        for key, value in keys.items():
            if key not in hints:
                raise ConfigError(f"unknown option {section}.{key}; known: {_known(SECTIONS[section])}")
            if value is not None:
                given.setdefault(section, {})[key] = _coerce(section, key, hints[key], value, "")
    layers.append(given)
    sections = {}
    for name, cls in SECTIONS.items():
        values: dict[str, Any] = {}
        for layer in layers:
            values.update(layer.get(name, {}))
        sections[name] = cls(**values)
    return Config(**sections)


def load_section(section: str, overrides: dict[str, Any] | None = None, path: str | Path | None = None, environ=None):
    """One section of ``load_config``: ``load_section("engine", {"block_size": 32})``."""
    return getattr(load_config(path, {section: overrides or {}}, environ), section)


def replace(config: Config, **sections: dict[str, Any]) -> Config:
    """``config`` with some fields of some sections changed: ``replace(c, engine={"device": "cpu"})``."""
    return dataclasses.replace(
        config, **{name: dataclasses.replace(getattr(config, name), **changes) for name, changes in sections.items()}
    )
