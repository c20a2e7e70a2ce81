"""Probes: subscribers to the engine's hook points that turn them into records in a run directory.

    from traceinfer.probes import attach
    session = attach(engine, "default", "runs/r1")   # off | default | all | "steps,kv,..."
    ...
    session.close()

Probe names and sets: ``PROBES`` and ``PRESETS``; stream schemas: ``traceinfer.rundir.STREAMS``.
Probes write through traceinfer.rundir; nothing here imports the analyzers, renderers or commands.
"""

from traceinfer.probes.base import Probe
from traceinfer.probes.session import PRESETS, PROBES, ProbeSession, attach, resolve_probes

__all__ = ["PRESETS", "PROBES", "Probe", "ProbeSession", "attach", "resolve_probes"]
