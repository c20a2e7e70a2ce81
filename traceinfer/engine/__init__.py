"""The paged-attention inference engine. It knows nothing of probes: it only calls hook points."""

from traceinfer.engine.hooks import HOOK_POINTS, Hooks
from traceinfer.engine.llm_engine import LLM, LLMEngine
from traceinfer.engine.sampling_params import SamplingParams
from traceinfer.engine.sequence import FinishReason, RequestOutput, SequenceStatus

__all__ = ["LLM", "LLMEngine", "SamplingParams", "RequestOutput", "FinishReason", "SequenceStatus", "Hooks", "HOOK_POINTS"]
