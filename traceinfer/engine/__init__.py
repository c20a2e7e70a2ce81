"""The paged-attention inference engine. It knows nothing of probes: it only calls hook points.

Names are imported on first use (PEP 562), so ``traceinfer.engine.sampling_params`` and the hook points
can be imported without torch."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_LAZY = {
    "LLM": "traceinfer.engine.llm_engine",
    "LLMEngine": "traceinfer.engine.llm_engine",
    "SamplingParams": "traceinfer.engine.sampling_params",
    "RequestOutput": "traceinfer.engine.sequence",
    "FinishReason": "traceinfer.engine.sequence",
    "SequenceStatus": "traceinfer.engine.sequence",
    "Hooks": "traceinfer.engine.hooks",
    "HOOK_POINTS": "traceinfer.engine.hooks",
}

if TYPE_CHECKING:
    from traceinfer.engine.hooks import HOOK_POINTS, Hooks
    from traceinfer.engine.llm_engine import LLM, LLMEngine
    from traceinfer.engine.sampling_params import SamplingParams
    from traceinfer.engine.sequence import FinishReason, RequestOutput, SequenceStatus

__all__ = ["HOOK_POINTS", "LLM", "FinishReason", "Hooks", "LLMEngine", "RequestOutput", "SamplingParams", "SequenceStatus"]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'traceinfer.engine' has no attribute {name!r}")
