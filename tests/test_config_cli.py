"""The one config (sections, precedence, errors that name the key) and the command layer."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from traceinfer.cli import build_parser, main
from traceinfer.config import SECTIONS, Config, load_config, load_section
from traceinfer.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_precedence_defaults_toml_env_options(tmp_path):
    toml = tmp_path / "t.toml"
    toml.write_text("[engine]\nblock_size = 32\nmax_num_seqs = 7\nenforce_eager = true\n"
                    "[workload]\nname = 'bench'\nnum_requests = 5\n[probes]\nsample_hz = 50\n")  # fmt: skip
    env = {"TRACEINFER_ENGINE_MAX_NUM_SEQS": "9", "TRACEINFER_ENGINE_NUM_KV_BLOCKS": "100",
           "TRACEINFER_WORKLOAD_NUM_REQUESTS": "6", "TRACEINFER_PROBES_SELECT": "all"}  # fmt: skip
    cfg = load_config(toml, {"engine": {"num_kv_blocks": 5}, "workload": {"num_requests": 8}}, environ=env)
    assert cfg.engine.block_size == 32  # toml over default
    assert cfg.engine.max_num_seqs == 9  # env over toml
    assert cfg.engine.num_kv_blocks == 5  # option over env
    assert cfg.engine.enforce_eager is True and cfg.engine.max_num_batched_tokens == 8192
    assert (cfg.workload.name, cfg.workload.num_requests) == ("bench", 8)
    assert (cfg.probes.select, cfg.probes.sample_hz) == ("all", 50.0)
    assert load_section("engine", {"block_size": 64}, toml, environ={}).block_size == 64


@pytest.mark.parametrize(
    "text, env, message",
    [
        ("[engine]\nblok_size = 3\n", {}, "unknown key engine.blok_size; known: "),
        ("[engine]\nblock_size = 'big'\n", {}, "engine.block_size from"),
        ("[engine]\nblock_size = true\n", {}, "engine.block_size from .* must be int, got True"),
        ("[engine]\ngpu_memory_utilization = false\n", {}, "engine.gpu_memory_utilization from .* must be float"),
        ("[engine]\nmax_num_seqs = 0\n", {}, "engine.max_num_seqs must be >= 1"),
        ("[engine]\ndtype = 'fp8'\n", {}, "engine.dtype from .* must be one of 'auto', 'float32'"),
        ("[engnie]\nblock_size = 3\n", {}, r"unknown section \[engnie\]; sections: engine, workload, probes"),
        ("block_size = 3\n[engine]\n", {}, r"key 'block_size' is outside any section; put it under one of \[engine\]"),
        ("[report]\nformat = 'md'\n", {}, "unknown key report.format; known: formats"),
        ("[engine]\n", {"TRACEINFER_ENGINE_ENFORCE_EAGER": "maybe"}, "engine.enforce_eager from TRACEINFER_ENGINE_ENFORCE_EAGER"),
        ("[engine]\n", {"TRACEINFER_ENGNIE_BLOCK_SIZE": "3"}, "TRACEINFER_ENGNIE_BLOCK_SIZE: unknown section"),
        ("[engine]\n", {"TRACEINFER_ENGINE_BLOK_SIZE": "3"}, "unknown key engine.blok_size"),
        ("[engine\n", {}, "is not valid TOML"),
    ],
)
def test_config_errors_name_the_key(tmp_path, text, env, message):
    toml = tmp_path / "t.toml"
    toml.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(toml, environ=env)


def test_options_are_typed_like_the_file():
    with pytest.raises(ConfigError, match="engine.block_size must be int, got True"):
        load_config(overrides={"engine": {"block_size": True}}, environ={})
    with pytest.raises(ConfigError, match="unknown option engine.blok_size"):
        load_config(overrides={"engine": {"blok_size": 3}}, environ={})
    with pytest.raises(ConfigError, match="config file .*nope.toml does not exist"):
        load_config("nope.toml", environ={})


def test_repository_config_states_the_defaults():
    """traceinfer.toml documents every default: loading it changes nothing."""
    assert load_config(REPO / "traceinfer.toml", environ={}) == Config()


def test_every_config_field_is_an_option_of_the_commands_that_read_its_section():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices
    dests = {name: {a.dest for a in p._actions} for name, p in sub.items()}
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            if not f.metadata.get("cli", True):
                continue
            users = [name for name in dests if f"{section}.{f.name}" in dests[name]]
            if section in ("engine",):
                assert users == ["profile", "bench", "generate", "top"], (section, f.name, users)
            elif section in ("probes", "output"):  # top takes the few that a watched workload needs
                assert users in (["profile"], ["profile", "top"]), (section, f.name, users)
            elif section == "telemetry":
                assert users == ["profile", "top"], (section, f.name, users)
    args = sub["profile"].parse_args(["--block-size", "32", "--no-prefix-caching", "--workload", "bench"])
    assert vars(args)["engine.block_size"] == 32 and vars(args)["engine.enable_prefix_caching"] is False
    assert vars(args)["workload.name"] == "bench" and vars(args)["engine.max_num_seqs"] is None  # not given


def test_help_and_version_answer_without_torch():
    """(How fast: scripts/bench_cli_start.py, figures in docs/benchmarks.md.)"""
    code = ("import sys; from traceinfer.cli import main\n"
            "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules and 'pandas' not in sys.modules, 'imported torch or pandas'\n")  # fmt: skip
    for argv in (["--help"], ["--version"], ["profile", "--help"], ["bench", "--help"], ["generate", "--help"],
                 ["workloads"], ["flamegraph", "--help"], ["top", "--help"]):
        proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
    version = subprocess.run([sys.executable, "-m", "traceinfer.cli", "--version"], capture_output=True, text=True)
    assert version.stdout.startswith("traceinfer ")


def test_generate_command(capsys):
    assert main(["generate", "--max-tokens", "5", "--prompt", "hello", "--prompt", "world", "--num-kv-blocks", "64",
                 "--device", "cpu"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "synthetic:tiny (synthetic random weights)" in out
    assert "2 requests, 10 output tokens in" in out and "output tok/s" in out


def test_command_errors_are_one_line(capsys):
    assert main(["generate", "--model", "/does/not/exist"]) == 2
    err = capsys.readouterr().err
    assert "is neither a directory nor a synthetic:NAME model" in err and err.count("\n") == 1
    assert main(["generate", "--device", "cpu", "--max-model-len", "5000"]) == 2  # synthetic:tiny: 4096 positions
    err = capsys.readouterr().err
    assert err == "traceinfer generate: error: engine.max_model_len=5000 is above the model's max_position_embeddings=4096\n"
