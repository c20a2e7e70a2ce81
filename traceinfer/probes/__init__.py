"""Probes: subscribers to the engine's hook points that turn them into records in a run directory.

    from traceinfer.probes import attach
    session = attach(engine, "default", "runs/r1")   # off | default | all | "steps,kv,..."
    ...
    session.close()

Probe names and sets: ``PROBES`` and ``PRESETS``; stream schemas: ``traceinfer.probes.rundir.STREAMS``.
Nothing here imports traceinfer.reports: the reports read the run directory.
"""

from traceinfer.probes.base import Probe, ProbeOptions
from traceinfer.probes.rundir import STREAMS, iter_stream, read_manifest, read_stream
from traceinfer.probes.session import PRESETS, PROBES, ProbeSession, attach, resolve_probes

__all__ = [
    "PRESETS",
    "PROBES",
    "STREAMS",
    "Probe",
    "ProbeOptions",
    "ProbeSession",
    "attach",
    "iter_stream",
    "read_manifest",
    "read_stream",
    "resolve_probes",
]  # fmt: skip
