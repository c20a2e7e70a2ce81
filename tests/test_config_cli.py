"""Configuration precedence and the command line."""

from __future__ import annotations

import pytest

from traceinfer.cli import main
from traceinfer.config import load_section
from traceinfer.errors import ConfigError


def test_precedence_defaults_toml_env_options(tmp_path):
    toml = tmp_path / "t.toml"
    toml.write_text('[engine]\nblock_size = 32\nmax_num_seqs = 7\nenforce_eager = true\n')
    env = {"TRACEINFER_ENGINE_MAX_NUM_SEQS": "9", "TRACEINFER_ENGINE_NUM_KV_BLOCKS": "100"}
    cfg = load_section("engine", {"num_kv_blocks": 5}, toml, environ=env)
    assert cfg.block_size == 32  # toml over default
    assert cfg.max_num_seqs == 9  # env over toml
    assert cfg.num_kv_blocks == 5  # option over env
    assert cfg.enforce_eager is True and cfg.max_num_batched_tokens == 8192


@pytest.mark.parametrize(
    "text, env, message",
    [
        ("[engine]\nblok_size = 3\n", {}, "unknown key engine.blok_size"),
        ("[engine]\nblock_size = 'big'\n", {}, "engine.block_size from"),
        ("[engine]\nmax_num_seqs = 0\n", {}, "engine.max_num_seqs must be >= 1"),
        ("[engine]\n", {"TRACEINFER_ENGINE_ENFORCE_EAGER": "maybe"}, "engine.enforce_eager from TRACEINFER_ENGINE_ENFORCE_EAGER"),
        ("[engine\n", {}, "is not valid TOML"),
    ],
)
def test_config_errors_name_the_key(tmp_path, text, env, message):
    toml = tmp_path / "t.toml"
    toml.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_section("engine", {}, toml, environ=env)
    assert message in str(err.value)


def test_repository_default_config_loads():
    from pathlib import Path

    cfg = load_section("engine", {}, Path(__file__).parent.parent / "traceinfer.toml", environ={})
    assert cfg.model == "synthetic:tiny" and cfg.block_size == 16


def test_generate_command(capsys):
    assert main(["generate", "--max-tokens", "5", "--prompt", "hello", "--prompt", "world", "--num-kv-blocks", "64"]) == 0
    out = capsys.readouterr().out
    assert "synthetic:tiny (synthetic random weights)" in out
    assert "2 requests, 10 output tokens in" in out and "output tok/s" in out


def test_generate_command_reports_errors(capsys):
    assert main(["generate", "--model", "/does/not/exist"]) == 2
    assert "is neither a directory nor a synthetic:NAME model" in capsys.readouterr().err
