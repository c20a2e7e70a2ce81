"""traceinfer: an LLM inference engine built to be profiled, and the probes and reports that profile it."""

from traceinfer.engine import LLM, LLMEngine, RequestOutput, SamplingParams

__version__ = "0.1.0"
__all__ = ["LLM", "LLMEngine", "SamplingParams", "RequestOutput", "__version__"]
