"""Renderers: analyzed results and run tables -> text, JSON, traces. They import neither the engine nor the
probes, and open no run directory themselves."""
