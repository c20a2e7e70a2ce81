"""traceinfer: an LLM inference engine built to be profiled, and the probes and reports that profile it.

    import traceinfer
    run = traceinfer.open_run("runs/20261130-chatbot")     # reads a run directory; never imports torch
    llm = traceinfer.LLM("synthetic:tiny")                  # the engine (imports torch on first use)

The engine's names are imported on first use (PEP 562), so reading runs and ``traceinfer --help`` stay light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_LAZY = {
    "LLM": "traceinfer.engine.llm_engine",
    "LLMEngine": "traceinfer.engine.llm_engine",
    "SamplingParams": "traceinfer.engine.sampling_params",
    "RequestOutput": "traceinfer.engine.sequence",
    "open_run": "traceinfer.rundir.reader",
    "Run": "traceinfer.rundir.reader",
}

if TYPE_CHECKING:
    from traceinfer.engine.llm_engine import LLM, LLMEngine
    from traceinfer.engine.sampling_params import SamplingParams
    from traceinfer.engine.sequence import RequestOutput
    from traceinfer.rundir.reader import Run, open_run

__all__ = ["LLM", "LLMEngine", "RequestOutput", "Run", "SamplingParams", "__version__", "open_run"]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'traceinfer' has no attribute {name!r}")
