"""Llama 2/3: GQA, RoPE scaled as the config says (llama3, linear, yarn ...), optional attention bias."""

from traceinfer.engine.models.common import CausalLM


class LlamaForCausalLM(CausalLM):
    architectures = ("LlamaForCausalLM",)
