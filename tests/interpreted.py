"""Triton kernels on CPU: checks run in a fresh Python under TRITON_INTERPRET=1 (triton reads the variable
when the kernels are defined, and the test process may have imported them already)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_interpreted(module: str, *functions: str, timeout: float = 900) -> None:
    """Call ``module.function()`` for each function named, in one fresh interpreted process; the test fails
    with the process's stderr."""
    pytest.importorskip("triton")
    code = f"import {module} as t; " + "; ".join(f"t.{name}()" for name in functions)
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
