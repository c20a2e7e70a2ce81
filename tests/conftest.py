"""Shared fixtures: tiny random HF checkpoints of each supported family, saved with save_pretrained."""

from __future__ import annotations

import pytest
import torch

ARCHS = ("qwen3", "qwen2", "llama")

_COMMON = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, vocab_size=512, max_position_embeddings=1024, rms_norm_eps=1e-6,
    eos_token_id=None, bos_token_id=None, pad_token_id=None,
)  # fmt: skip


def hf_config(arch: str):
    from transformers import LlamaConfig, Qwen2Config, Qwen3Config

    if arch == "qwen3":
        return Qwen3Config(head_dim=16, tie_word_embeddings=True, architectures=["Qwen3ForCausalLM"], **_COMMON)
    if arch == "qwen2":
        return Qwen2Config(tie_word_embeddings=False, architectures=["Qwen2ForCausalLM"], **_COMMON)
    if arch == "llama":
        rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 128}  # fmt: skip
        return LlamaConfig(head_dim=16, rope_parameters=rope, architectures=["LlamaForCausalLM"], **_COMMON)
    raise ValueError(arch)


def build_hf_model(arch: str, seed: int = 0):
    """A random model whose weights have a wide spread (std 0.4), so greedy choices are never near-ties."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(hf_config(arch), dtype=torch.float32).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
            else:
                p.normal_(0.0, 0.4)
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model


@pytest.fixture(scope="session")
def hf_checkpoint(tmp_path_factory):
    """arch -> (directory with config.json + safetensors, the HF model)."""
    cache = {}

    def get(arch: str):
        if arch not in cache:
            model = build_hf_model(arch)
            path = tmp_path_factory.mktemp(f"hf-{arch}")
            model.save_pretrained(path)
            cache[arch] = (path, model)
        return cache[arch]

    return get


@pytest.fixture(scope="session")
def prompts():
    """Mixed-length prompts of random token ids (vocab 512)."""
    g = torch.Generator().manual_seed(1234)
    return [torch.randint(0, 512, (n,), generator=g).tolist() for n in (5, 17, 33, 48, 64, 1, 16)]
