"""The telemetry endpoint: an HTTP server on a thread of its own (``traceinfer-telemetry-http``) in the
watched process.

    GET /metrics    Prometheus text exposition (prometheus_client, a private registry; names in METRICS)
    GET /snapshot   the JSON snapshot ``traceinfer top --attach`` draws (``?since_ns=T``: windows from T)
    GET /           what is served here

It binds and starts answering when made, so a port in use or an address it may not take fails before a model
loads, and a client that comes early hears 503 "loading" instead of waiting on a socket nobody reads. It
takes a loopback address only unless ``allow_remote`` is given: it has no authentication. Each request's
work (a fold, percentiles over the windows, the exposition) runs on its thread, never the engine's.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import socket
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, HTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from traceinfer.errors import ConfigError
from traceinfer.telemetry.metrics import METRICS
from traceinfer.telemetry.windows import Histogram, Telemetry

LOOPBACK_NAMES = ("localhost",)
DEFAULT_HOST = "127.0.0.1"


def parse_address(text: str, allow_remote: bool = False, flag: str = "--telemetry") -> tuple[str, int]:
    """``[HOST:]PORT`` -> (host, port); HOST defaults to 127.0.0.1, ``[::1]:PORT`` for IPv6. A ConfigError
    naming the problem for a bad port or a non-loopback host without ``allow_remote``."""
    text = str(text).strip()
    host, sep, port_text = text.rpartition(":")
    if not sep:
        host = DEFAULT_HOST
    host = host.strip("[]") or DEFAULT_HOST
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(f"{flag} {text!r}: expected [HOST:]PORT with PORT a number in 0-65535 (0: any free port)") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"{flag} {text!r}: PORT must be in 0-65535 (0: any free port), got {port}")
    if not allow_remote and not is_loopback(host):
        raise ConfigError(f"{flag} {text!r}: {host} is not a loopback address; the endpoint has no authentication, "
                          f"so it binds 127.0.0.1, ::1 or localhost only unless --telemetry-allow-remote is given")  # fmt: skip
    return host, port


def is_loopback(host: str) -> bool:
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name other than localhost: it may resolve anywhere


def parse_url(text: str) -> str:
    """What ``top --attach`` accepts (``http://HOST:PORT``, ``HOST:PORT`` or ``PORT``) -> the endpoint's base URL,
    ``http://HOST:PORT``; a ConfigError naming the problem otherwise."""
    raw = str(text).strip()
    hint = "expected http://HOST:PORT, HOST:PORT or PORT of a telemetry endpoint (traceinfer profile --telemetry PORT)"
    candidate = raw if "://" in raw else f"http://{raw if ':' in raw and not raw.isdigit() else f'{DEFAULT_HOST}:{raw}'}"
    try:
        u = urllib.parse.urlsplit(candidate)
        port = u.port
    except ValueError as exc:
        raise ConfigError(f"--attach {raw!r}: {exc}; {hint}") from None
    if u.scheme != "http":
        raise ConfigError(f"--attach {raw!r}: scheme {u.scheme!r} is not served (http only); {hint}")
    if not u.hostname or port is None or port == 0:
        raise ConfigError(f"--attach {raw!r}: no host and port; {hint}")
    host = f"[{u.hostname}]" if ":" in u.hostname else u.hostname
    return f"http://{host}:{port}"


class TelemetryCollector:
    """A prometheus_client collector over a Telemetry: every METRICS row as its family, read at scrape time."""

    def __init__(self, telemetry: Telemetry) -> None:
        self.telemetry = telemetry

    def collect(self):
        values = self.telemetry.cumulative()
        for name, m in METRICS.items():
            value = values[name]
            if value is None:  # absent (no GPU): no sample rather than a false 0
                continue
            doc = f"{m.help} ({m.unit})"
            if m.kind == "histogram":
                assert isinstance(value, Histogram)
                buckets = [("+Inf" if b == float("inf") else repr(float(b)), c) for b, c in value.cumulative()]
                yield HistogramMetricFamily(m.family, doc, buckets=buckets, sum_value=value.sum)
            elif m.kind == "counter":
                family = CounterMetricFamily(m.family, doc, labels=m.labels or None)
                if m.labels:
                    for label, v in sorted(value.items()):
                        family.add_metric([label], v)
                else:
                    family.add_metric([], value)
                yield family
            else:
                yield GaugeMetricFamily(m.family, doc, value=value)


class _HTTPServer(HTTPServer):
    allow_reuse_address = False

    def handle_error(self, request, client_address) -> None:
        """A client that left before its answer (a timed-out ``top``) is no error; others go to stderr."""
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)


class TelemetryServer:
    """The endpoint; binds and answers at construction (503 until ``serve()`` gives it telemetry), until
    ``close()``."""

    def __init__(self, address: tuple[str, int]) -> None:
        host, port = address
        self.telemetry: Telemetry | None = None
        self.registry = CollectorRegistry(auto_describe=False)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        server_cls = type("_Server", (_HTTPServer,), {"address_family": family})
        try:
            self._httpd = server_cls((host, port), _handler(self))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(f"--telemetry {host}:{port}: the port is in use by another process; choose "
                                  "another PORT, or 0 for any free one") from None  # fmt: skip
            raise ConfigError(f"--telemetry {host}:{port}: cannot bind: {exc.strerror or exc}") from None
        self.host, self.port = self._httpd.server_address[:2]
        self.cpu_s = 0.0
        self._thread: threading.Thread | None = threading.Thread(
            target=self._run, name="traceinfer-telemetry-http", daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def serve(self, telemetry: Telemetry) -> None:
        """Serve ``telemetry`` (replacing what was served)."""
        if self.telemetry is None:
            self.registry.register(TelemetryCollector(_Current(self)))
        self.telemetry = telemetry

    def _run(self) -> None:
        self._httpd.serve_forever(poll_interval=0.1)

    def close(self, linger_s: float = 0.0) -> None:
        """Stop serving (after ``linger_s`` more seconds of the final figures) and free the port. Safe to
        call twice; a Ctrl-C during the linger still stops the thread."""
        try:
            if linger_s > 0 and self._thread is not None and self.telemetry is not None:
                time.sleep(linger_s)
        finally:
            if self._thread is not None:
                self._httpd.shutdown()
                self._thread.join()
                self._thread = None
            self._httpd.server_close()

    def __enter__(self) -> TelemetryServer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Current:
    """The telemetry a server serves now (serve() may replace it)."""

    def __init__(self, server: TelemetryServer) -> None:
        self.server = server

    def cumulative(self):
        return self.server.telemetry.cumulative()


def _handler(server: TelemetryServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        timeout = 5  # a client that stalls cannot hold the thread longer
        server_version = "traceinfer-telemetry"

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            url = urllib.parse.urlsplit(self.path)
            telemetry = server.telemetry
            try:
                if telemetry is None:
                    self._send(503, "text/plain; charset=utf-8",
                               b"no telemetry yet: the engine is loading or warming up\n")  # fmt: skip
                elif url.path == "/metrics":
                    self._send(200, CONTENT_TYPE_LATEST, generate_latest(server.registry))
                elif url.path in ("/snapshot", "/snapshot.json"):
                    query = urllib.parse.parse_qs(url.query)
                    since = int(query["since_ns"][0]) if "since_ns" in query else None
                    body = json.dumps(telemetry.snapshot(since)).encode()
                    self._send(200, "application/json", body)
                elif url.path == "/":
                    self._send(200, "text/plain; charset=utf-8",
                               b"traceinfer telemetry: /metrics (Prometheus text), /snapshot (JSON; ?since_ns=T)\n")  # fmt: skip
                else:
                    self._send(404, "text/plain; charset=utf-8", b"not found: /metrics, /snapshot\n")
            except ValueError:
                self._send(400, "text/plain; charset=utf-8", b"since_ns must be an integer\n")
            finally:
                server.cpu_s = time.thread_time()
                if telemetry is not None:
                    telemetry.server_cpu_s = server.cpu_s

        def _send(self, code: int, content_type: str, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args) -> None:  # no line per request on the engine's terminal
            pass

    return Handler


class Endpoint:
    """What a command does with ``[telemetry]``: bind early, add the telemetry probe, serve the session's
    windows, close (after ``linger_s``). Without an address every step does nothing, so a command calls them
    unconditionally::

        endpoint = open_endpoint(config.telemetry)           # binds now: a port in use fails before a model loads
        session = attach(engine, endpoint.selection(spec), ...)
        if line := endpoint.serve(session): print(line)
        ... session.close(); endpoint.close()
    """

    def __init__(self, config, server: TelemetryServer | None) -> None:
        self.config = config
        self.server = server

    @property
    def url(self) -> str | None:
        return self.server.url if self.server else None

    def selection(self, spec: str) -> str:
        """The probe selection with the telemetry probe added when serving."""
        if self.server is None or "telemetry" in spec.replace("+", ",").split(","):
            return spec
        return "telemetry" if spec == "off" else f"{spec},telemetry"

    def serve(self, session) -> str | None:
        """Serve the telemetry probe of ``session`` (a ProbeSession); returns the line that says where."""
        if self.server is None:
            return None
        telemetry = session.probes["telemetry"].telemetry
        telemetry.resize(self.config.window_s)
        self.server.serve(telemetry)
        return (f"telemetry: {self.url}/metrics (Prometheus), {self.url}/snapshot (JSON); "
                f"watch it with: traceinfer top --attach {self.url}")  # fmt: skip

    def close(self, linger: bool = True) -> None:
        if self.server is not None:
            self.server.close(self.config.linger_s if linger else 0.0)


def open_endpoint(config) -> Endpoint:
    """``config``: a TelemetryConfig. Binds its address now (ConfigError naming the problem otherwise)."""
    if config.address is None:
        return Endpoint(config, None)
    return Endpoint(config, TelemetryServer(parse_address(config.address, config.allow_remote)))
