"""Bad input gets an error naming the problem and the limit; requests in flight are unaffected."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import psutil
import pytest
import torch

from traceinfer import LLM, SamplingParams
from traceinfer.cli import main
from traceinfer.errors import BackendUnavailableError, ConfigError, InvalidRequestError, ModelLoadError

GREEDY = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
NOT_A_PROMPT = "a prompt must be a str or a sequence of int token ids, got"


@pytest.fixture(scope="module")
def llm():
    return LLM("synthetic:tiny", max_model_len=64, num_kv_blocks=64)


@pytest.mark.parametrize(
    "prompt, message",
    [
        ([1] * 64, "prompt has 64 tokens; max_model_len=64 leaves room for at most 63"),
        ([], "prompt is empty"),
        ("", "prompt is empty"),
        ([5, 16384], "token id 16384 at position 1 is outside the vocabulary [0, 16384)"),
        ([5, -1], "token id -1 at position 1 is outside the vocabulary"),
        ([5, 2.5], "token at position 1 is 2.5, not an integer token id"),
        (None, f"{NOT_A_PROMPT} None"),
        (2.5, f"{NOT_A_PROMPT} 2.5"),
    ],
)
def test_bad_prompt_fails_alone(llm, prompt, message):
    engine = llm.engine
    good = engine.add_request([1, 2, 3], GREEDY)
    engine.step()  # the good request is running when the bad one arrives
    with pytest.raises(InvalidRequestError) as err:
        engine.add_request(prompt, GREEDY)
    assert message in str(err.value)
    outputs = {}
    while engine.has_unfinished():
        outputs.update({o.request_id: o for o in engine.step() if o.finished})
    assert outputs[good].finish_reason == "length" and len(outputs[good].token_ids) == 8


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(temperature=-0.1), "temperature must be >= 0"),
        (dict(temperature=float("nan")), "temperature must be >= 0"),
        (dict(top_p=0.0), "top_p must be in (0, 1]"),
        (dict(top_p=1.5), "top_p must be in (0, 1]"),
        (dict(top_k=-2), "top_k must be -1"),
        (dict(max_tokens=0), "max_tokens must be an integer >= 1"),
        (dict(seed=-1), "seed must be an integer in [0, 2**63)"),
        (dict(stop_token_ids=[-3]), "stop_token_ids must be non-negative"),
    ],
)
def test_invalid_sampling_values(kwargs, message):
    with pytest.raises(InvalidRequestError) as err:
        SamplingParams(**kwargs)
    assert message in str(err.value)


def test_generation_stops_at_max_model_len(llm):
    out = llm.generate([[7] * 60], SamplingParams(temperature=0.0, max_tokens=100, ignore_eos=True))[0]
    assert len(out.token_ids) == 4 and out.finish_reason == "length"


def test_request_larger_than_the_whole_cache_fails_alone():
    llm = LLM("synthetic:tiny", num_kv_blocks=4, block_size=16)  # the whole cache holds 64 tokens
    engine = llm.engine
    small = engine.add_request([1] * 10, GREEDY)
    big = engine.add_request([2] * 70, GREEDY)
    grows = engine.add_request([3] * 50, SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True))
    done = {}
    while engine.has_unfinished():
        done.update({o.request_id: o for o in engine.step() if o.finished})
    assert done[small].finish_reason == "length" and len(done[small].token_ids) == 8
    assert done[big].finish_reason == "error"
    assert "needs 5 KV blocks" in done[big].error and "the whole cache has 4 blocks" in done[big].error
    # 50 prompt tokens fit; the 15th output token is the 65th token, whose K/V has no room: it fails alone
    assert done[grows].finish_reason == "error" and len(done[grows].token_ids) == 15
    assert engine.block_manager.num_used_blocks == 0


def test_model_directory_problems(tmp_path, hf_checkpoint):
    with pytest.raises(ModelLoadError, match="neither a directory nor a synthetic"):
        LLM(str(tmp_path / "nope"))
    with pytest.raises(ModelLoadError, match="has no config.json"):
        LLM(str(tmp_path))
    with pytest.raises(ModelLoadError, match="unknown synthetic model 'synthetic:huge'"):
        LLM("synthetic:huge")

    path, _ = hf_checkpoint("qwen3")
    config = json.loads((path / "config.json").read_text())
    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="has no \\*.safetensors weights"):
        LLM(str(no_weights))

    unknown = tmp_path / "unknown-arch"
    unknown.mkdir()
    (unknown / "config.json").write_text(json.dumps({**config, "architectures": ["MambaForCausalLM"]}))
    with pytest.raises(ModelLoadError) as err:
        LLM(str(unknown))
    assert "MambaForCausalLM" in str(err.value) and "supported: Qwen3ForCausalLM" in str(err.value)


def test_missing_tensor_is_named(tmp_path, hf_checkpoint):
    from safetensors.torch import load_file, save_file

    path, _ = hf_checkpoint("qwen2")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((path / "config.json").read_text())
    tensors = load_file(str(path / "model.safetensors"))
    del tensors["model.layers.1.self_attn.k_proj.bias"]
    save_file(tensors, str(broken / "model.safetensors"))
    with pytest.raises(ModelLoadError, match="lack 1 tensors: model.layers.1.self_attn.qkv_proj.bias#1"):
        LLM(str(broken))


def test_backend_and_config_errors():
    with pytest.raises(BackendUnavailableError, match="needs a CUDA device"):
        LLM("synthetic:tiny", attention_backend="triton", device="cpu")
    with pytest.raises(ConfigError, match="engine.attention_backend must be one of"):
        LLM("synthetic:tiny", attention_backend="magic")
    with pytest.raises(ConfigError, match="engine.block_size must be >= 1"):
        LLM("synthetic:tiny", block_size=0)
    with pytest.raises(ConfigError, match="unknown option engine.blocksize"):
        LLM("synthetic:tiny", blocksize=16)


@pytest.mark.parametrize(
    "prompts, params, message",
    [
        ([[1, 2, 3], None, [4, 5]], GREEDY, f"prompt 1: {NOT_A_PROMPT} None"),
        ([[1, 2, 3], "hello", 2.5], GREEDY, f"prompt 2: {NOT_A_PROMPT} 2.5"),
        ([[1, 2, 3], [4, None]], GREEDY, "prompt 1: token at position 1 is None, not an integer token id"),
        ([1, 2, 2.5], GREEDY, "prompt 0: token at position 2 is 2.5, not an integer token id"),
        (None, GREEDY, f"prompt 0: {NOT_A_PROMPT} None"),
        ([[1, 2, 3], [4, 5]], [GREEDY, "greedy"], "prompt 1: params must be SamplingParams, got str"),
        ([[1, 2, 3], [1] * 64], GREEDY, "prompt 1: prompt has 64 tokens; max_model_len=64 leaves room for at most 63"),
    ],
)
def test_bad_prompt_in_generate_queues_nothing(llm, prompts, params, message):
    with pytest.raises(InvalidRequestError) as err:
        llm.generate(prompts, params)
    assert str(err.value).startswith(message)
    assert not llm.engine.has_unfinished() and not llm.engine.requests
    outputs = llm.generate([[1, 2, 3]], GREEDY)  # only its own output: nothing of the refused call runs
    assert len(outputs) == 1 and len(outputs[0].token_ids) == 8
    assert not llm.engine.has_unfinished()


def test_add_request_none_is_an_invalid_request(llm):
    with pytest.raises(InvalidRequestError) as err:
        llm.engine.add_request(None)
    assert str(err.value) == f"{NOT_A_PROMPT} None"
    assert not llm.engine.has_unfinished()


def damaged_checkpoint(hf_checkpoint, tmp_path, damage: str):
    """A real qwen3 checkpoint (save_pretrained) copied, its model.safetensors damaged."""
    path, _ = hf_checkpoint("qwen3")
    broken = tmp_path / damage
    broken.mkdir()
    for name in ("config.json", "model.safetensors"):
        (broken / name).write_bytes((path / name).read_bytes())
    weights = broken / "model.safetensors"
    data = weights.read_bytes()
    if damage == "truncated":
        weights.write_bytes(data[: len(data) // 2])
    else:  # the JSON header after its 8-byte length overwritten
        weights.write_bytes(data[:8] + b"X" * 64 + data[72:])
    return broken


@pytest.mark.parametrize("damage", ["truncated", "header"])
def test_damaged_safetensors_file_is_named(hf_checkpoint, tmp_path, damage):
    broken = damaged_checkpoint(hf_checkpoint, tmp_path, damage)
    with pytest.raises(ModelLoadError) as err:
        LLM(str(broken), device="cpu")
    message = str(err.value)
    # the reason after the colon is safetensors' own (0.8: "... incomplete metadata, file not fully covered")
    assert message.startswith(
        f"{broken / 'model.safetensors'} is not a readable safetensors file: Error while deserializing header"
    )
    assert "\n" not in message


def test_damaged_safetensors_through_the_command(hf_checkpoint, tmp_path):
    broken = damaged_checkpoint(hf_checkpoint, tmp_path, "truncated")
    proc = subprocess.run(
        [sys.executable, "-m", "traceinfer.cli", "generate", "--model", str(broken), "--device", "cpu"],
        capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.startswith(
        f"traceinfer generate: error: {broken / 'model.safetensors'} is not a readable safetensors file: "
    )
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


@pytest.mark.parametrize("device", ["gpu", "CPU", "cuda:x", "cuda0", "mps", "cpu:0", ""])
def test_device_names_outside_the_allowed_ones(device, capsys):
    message = f"engine.device must be one of auto, cpu, cuda, cuda:N, got {device!r}"
    with pytest.raises(ConfigError) as err:
        LLM("synthetic:tiny", device=device)
    assert str(err.value) == message
    assert main(["generate", "--device", device]) == 2
    assert capsys.readouterr().err == f"traceinfer generate: error: {message}\n"


@pytest.mark.skipif(torch.cuda.is_available(), reason="the message for a machine without CUDA")
def test_cuda_device_without_cuda():
    for device in ("cuda", "cuda:7"):
        with pytest.raises(ConfigError) as err:
            LLM("synthetic:tiny", device=device)
        assert str(err.value) == f"engine.device={device!r} but torch sees no CUDA device on this machine"


def gib_available(message: str) -> float:
    return float(re.search(r"this machine has (\d+\.\d) GiB available$", message).group(1))


@pytest.mark.parametrize(
    "options, asked",
    [
        (dict(cpu_kv_cache_gib=10000), "engine.cpu_kv_cache_gib=10000 asks for 10000.0 GiB of KV cache"),
        # synthetic:tiny in float32: 2 (K, V) x 4 layers x 16 tokens x 2 heads x 64 x 4 bytes = 64 KiB a block
        (dict(num_kv_blocks=10**8), "engine.num_kv_blocks=100000000 asks for 6103.5 GiB of KV cache"),
    ],
)
def test_kv_cache_larger_than_host_memory(options, asked):
    with pytest.raises(ConfigError) as err:
        LLM("synthetic:tiny", device="cpu", **options)
    message = str(err.value)
    assert message.startswith(f"{asked}; this machine has ")
    assert abs(gib_available(message) - psutil.virtual_memory().available / 2**30) < 1.0


def test_kv_cache_larger_than_host_memory_through_the_command(capsys):
    assert main(["generate", "--device", "cpu", "--cpu-kv-cache-gib", "10000"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("traceinfer generate: error: engine.cpu_kv_cache_gib=10000 asks for 10000.0 GiB of KV cache; "
                          "this machine has ") and err.count("\n") == 1  # fmt: skip


def test_generate_command_reports_failed_requests(capsys):
    long_prompt = "word " * 8  # 40 tokens: the synthetic tokenizer has one token per byte
    status = main(["generate", "--device", "cpu", "--max-model-len", "16", "--max-tokens", "4",
                   "--prompt", "hello", "--prompt", long_prompt, "--prompt", "world"])  # fmt: skip
    out, err = capsys.readouterr()
    assert status == 1
    assert err == "traceinfer generate: error: 1 of 3 requests failed\n"
    blocks = out.split("\n> ")[1:]  # one block a prompt, in order
    assert [b.splitlines()[0] for b in blocks] == ["hello", long_prompt, "world"]
    assert blocks[1].splitlines()[1] == (
        "  error: prompt has 40 tokens; max_model_len=16 leaves room for at most 15 prompt tokens and one "
        "generated token"
    )
    assert "[4 tokens, finish: length]" in blocks[0] and "[4 tokens, finish: length]" in blocks[2]
    assert "2 requests, 8 output tokens in" in out


def test_generate_command_reports_a_request_larger_than_the_cache(capsys):
    status = main(["generate", "--device", "cpu", "--num-kv-blocks", "4", "--block-size", "16", "--max-tokens", "4",
                   "--prompt", "hello", "--prompt", "x" * 70])  # fmt: skip
    out, err = capsys.readouterr()
    assert status == 1
    assert err == "traceinfer generate: error: 1 of 2 requests failed\n"
    assert (
        "  [0 tokens, finish: error]\n"
        "  error: request needs 5 KV blocks (70 tokens + 1 to generate, block_size 16) "
        "but the whole cache has 4 blocks\n"
    ) in out
    assert "2 requests, 4 output tokens in" in out


def misfit_config(hf_checkpoint, tmp_path, name: str, change: dict, remove: list[str] = ()):
    """A real qwen3 checkpoint whose config.json is changed: keys set to new values, keys removed."""
    path, _ = hf_checkpoint("qwen3")
    config = {**json.loads((path / "config.json").read_text()), **change}
    for key in remove:
        del config[key]
    model = tmp_path / name
    model.mkdir()
    (model / "config.json").write_text(json.dumps(config))
    (model / "model.safetensors").write_bytes((path / "model.safetensors").read_bytes())
    return model / "config.json"


# model_type picks the config class; a class without a field that the model reads has no such attribute
@pytest.mark.parametrize(
    "change, remove, problem",
    [
        (
            {"model_type": "gpt2"},
            ["num_key_value_heads"],
            "(model_type 'gpt2') does not fit Qwen3ForCausalLM: it has no field 'num_key_value_heads'",
        ),
        (
            {"model_type": "bert"},
            ["rms_norm_eps"],
            "(model_type 'bert') does not fit Qwen3ForCausalLM: it has no field 'rms_norm_eps'",
        ),
        (
            {"model_type": "gpt2", "architectures": ["LlamaForCausalLM"]},
            ["num_key_value_heads"],
            "(model_type 'gpt2') does not fit LlamaForCausalLM: it has no field 'num_key_value_heads'",
        ),
        (
            {"rope_parameters": {"rope_type": "default", "rope_theta": "1e4"}},
            [],
            "(model_type 'qwen3') does not fit Qwen3ForCausalLM: TypeError: unsupported operand type(s) for **",
        ),
        (
            {"model_type": "t5"},
            ["max_position_embeddings"],
            "must give max_position_embeddings as an integer >= 1, got None",
        ),
    ],
)
def test_config_that_does_not_fit_the_model(hf_checkpoint, tmp_path, change, remove, problem):
    config = misfit_config(hf_checkpoint, tmp_path, "misfit", change, remove)
    with pytest.raises(ModelLoadError) as err:
        LLM(str(config.parent), device="cpu")
    assert str(err.value).startswith(f"{config} {problem}")


def test_config_field_of_the_wrong_type(hf_checkpoint, tmp_path):
    config = misfit_config(hf_checkpoint, tmp_path, "wrong-type", {"hidden_size": "64"})
    with pytest.raises(ModelLoadError) as err:
        LLM(str(config.parent), device="cpu")
    message = str(err.value)
    assert message.startswith(str(config)) and "hidden_size" in message and "\n" not in message


def test_config_that_does_not_fit_through_the_command(hf_checkpoint, tmp_path, capsys):
    config = misfit_config(hf_checkpoint, tmp_path, "misfit", {"model_type": "gpt2"}, ["num_key_value_heads"])
    assert main(["generate", "--model", str(config.parent), "--device", "cpu"]) == 2
    assert capsys.readouterr().err == (
        f"traceinfer generate: error: {config} (model_type 'gpt2') does not fit Qwen3ForCausalLM: "
        "it has no field 'num_key_value_heads'\n"
    )
