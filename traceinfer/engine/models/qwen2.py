"""Qwen2 (and Qwen2.5): GQA with a bias on the Q, K and V projections."""

from traceinfer.engine.models.common import CausalLM


class Qwen2ForCausalLM(CausalLM):
    architectures = ("Qwen2ForCausalLM",)
    qkv_bias = True
