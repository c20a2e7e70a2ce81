"""Bad input gets an error naming the problem and the limit; requests in flight are unaffected."""

from __future__ import annotations

import json

import pytest

from traceinfer import LLM, SamplingParams
from traceinfer.errors import BackendUnavailableError, ConfigError, InvalidRequestError, ModelLoadError

GREEDY = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)


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
