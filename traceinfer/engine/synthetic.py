"""Embedded synthetic models: real architectures with deterministic, seeded random weights.

They need no download, so the quickstart, CI and benchmarks run anywhere; every output that
uses one says "synthetic". Shapes of ``synthetic:qwen3-0.6b`` are those of Qwen3-0.6B.
"""

from __future__ import annotations

import zlib

import torch
from torch import nn

from traceinfer.errors import ModelLoadError

PREFIX = "synthetic:"

_SHAPES: dict[str, dict] = {
    # a few layers: seconds on a laptop CPU; vocab above 10,000 so nano-vLLM's bench prompts are valid
    "tiny": dict(
        hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, head_dim=64, vocab_size=16384, max_position_embeddings=4096,
    ),
    "qwen3-0.6b": dict(
        hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
        num_key_value_heads=8, head_dim=128, vocab_size=151936, max_position_embeddings=40960,
    ),
}  # fmt: skip


def is_synthetic(model: str) -> bool:
    return model.startswith(PREFIX)


def synthetic_config(model: str):
    from transformers import Qwen3Config

    name = model[len(PREFIX) :]
    if name not in _SHAPES:
        raise ModelLoadError(f"unknown synthetic model {model!r}; known: {', '.join(PREFIX + n for n in _SHAPES)}")
    return Qwen3Config(
        architectures=["Qwen3ForCausalLM"],
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
        tie_word_embeddings=True,
        eos_token_id=_SHAPES[name]["vocab_size"] - 1,
        **_SHAPES[name],
    )


@torch.no_grad()
def init_synthetic_weights(model: nn.Module, seed: int = 0) -> None:
    """Fill every parameter from a generator seeded by (seed, parameter name): order-independent."""
    for name, param in model.named_parameters():
        if name.endswith("norm.weight"):
            param.fill_(1.0)
            continue
        gen = torch.Generator(device=param.device).manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
        std = 0.02 if param.dim() > 1 else 0.0
        param.normal_(0.0, std, generator=gen) if std else param.zero_()
