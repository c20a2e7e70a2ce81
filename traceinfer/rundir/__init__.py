"""The run directory as a contract of its own: schema, writer and reader. Imports neither the engine, the
probes nor torch; the reader needs pandas and pyarrow only for frames.

    import traceinfer
    run = traceinfer.open_run("runs/20261130-chatbot")
    run.manifest, run.streams, run.frame("steps")

Every stream's columns (type, unit, meaning): ``STREAMS`` here, and docs/run-directory.md.
"""

from traceinfer.rundir.reader import Run, iter_stream, open_run, read_manifest, read_stream
from traceinfer.rundir.schema import STREAMS, Column, StreamSchema

__all__ = ["STREAMS", "Column", "Run", "StreamSchema", "iter_stream", "open_run", "read_manifest", "read_stream"]
