"""Qwen3: GQA with RMSNorm on each query and key head before RoPE, no QKV bias."""

from traceinfer.engine.models.common import CausalLM


class Qwen3ForCausalLM(CausalLM):
    architectures = ("Qwen3ForCausalLM",)
    qk_norm = True
