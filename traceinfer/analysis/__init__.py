"""Analyzers: pure functions from run-directory tables (pandas DataFrames) or plain values to tables or
dataclasses. They import neither the engine nor the probes, and draw nothing: renderers do that."""
