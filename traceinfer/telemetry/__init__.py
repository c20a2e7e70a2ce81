"""Live telemetry: sliding windows of what the probes see, served from the watched process.

    telemetry = Telemetry(window_s=30)          # fed by the 'telemetry' probe (traceinfer.probes.telemetry)
    snap = telemetry.snapshot()                 # a plain dict: what `traceinfer top` draws and /snapshot serves
    server = TelemetryServer(parse_address("9400"))   # binds 127.0.0.1:9400 at once (a port in use fails here)
    server.serve(telemetry)                     # /metrics (Prometheus, names in METRICS), /snapshot (JSON)
    ...
    server.close()

One table of metric names (``METRICS``) is shared by /metrics and ``top``. Layer L2 capture: standard library,
prometheus_client, psutil and pynvml; nothing here draws.
"""

from traceinfer.telemetry.metrics import METRICS, PREFIX, Metric
from traceinfer.telemetry.server import Endpoint, TelemetryServer, open_endpoint, parse_address, parse_url
from traceinfer.telemetry.windows import Telemetry

__all__ = ["METRICS", "PREFIX", "Endpoint", "Metric", "Telemetry", "TelemetryServer", "open_endpoint", "parse_address",
           "parse_url"]
