"""Model families, chosen by the ``architectures`` field of config.json."""

from __future__ import annotations

from traceinfer.engine.models.common import CausalLM
from traceinfer.engine.models.llama import LlamaForCausalLM
from traceinfer.engine.models.qwen2 import Qwen2ForCausalLM
from traceinfer.engine.models.qwen3 import Qwen3ForCausalLM
from traceinfer.errors import ModelLoadError

MODEL_REGISTRY: dict[str, type[CausalLM]] = {
    arch: cls for cls in (Qwen3ForCausalLM, Qwen2ForCausalLM, LlamaForCausalLM) for arch in cls.architectures
}


def model_class(config) -> type[CausalLM]:
    archs = list(getattr(config, "architectures", None) or [])
    for arch in archs:
        if arch in MODEL_REGISTRY:
            return MODEL_REGISTRY[arch]
    raise ModelLoadError(
        f"architectures {archs or '(missing)'} in config.json: none is supported; supported: {', '.join(MODEL_REGISTRY)}"
    )
