"""HTTP endpoints for the orchestrator: /metrics, /healthz (alive) and /readyz (ready for traffic).

Liveness and readiness differ on purpose: a service waiting for a broker or a partition
assignment is alive (restarting it would not help) but not ready. Served from a daemon thread
so a slow scrape never stalls the consumer loop.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import structlog
from prometheus_client import CollectorRegistry, make_wsgi_app

log = structlog.get_logger(__name__)

# A loop that has not come round for this long is stuck; /healthz then fails so it gets restarted.
STALL_S = 300.0

StartResponse = Callable[[str, list[tuple[str, str]]], object]


class HealthState:
    """Flags the service loop sets and the HTTP thread reads."""

    def __init__(self) -> None:
        self.model_loaded = False
        self.assigned = False
        self.failed: str | None = None
        self._beat = time.monotonic()

    def heartbeat(self) -> None:
        self._beat = time.monotonic()

    @property
    def alive(self) -> bool:
        return self.failed is None and time.monotonic() - self._beat < STALL_S

    @property
    def ready(self) -> bool:
        return self.alive and self.model_loaded and self.assigned


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        """Scrapes every few seconds would drown the service's own log lines."""


class StatusServer:
    """The HTTP server; `port` is the bound one (useful when 0 asked for a free port)."""

    def __init__(self, registry: CollectorRegistry, state: HealthState, port: int) -> None:
        metrics_app = make_wsgi_app(registry)

        def app(environ: dict[str, object], start_response: StartResponse) -> Iterable[bytes]:
            path = environ.get("PATH_INFO", "/")
            if path == "/healthz":
                return _status(start_response, state.alive, state.failed or "alive")
            if path == "/readyz":
                return _status(start_response, state.ready, _readiness(state))
            return metrics_app(environ, start_response)

        self._server = make_server(
            "0.0.0.0", port, app, server_class=_ThreadingServer, handler_class=_QuietHandler
        )
        self.port = int(self._server.server_port)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="sd-http", daemon=True
        )

    def start(self) -> None:
        self._thread.start()
        log.info("http endpoints listening", port=self.port, paths=["/metrics", "/healthz", "/readyz"])

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _readiness(state: HealthState) -> str:
    if state.failed:
        return state.failed
    if not state.model_loaded:
        return "model not loaded"
    if not state.assigned:
        return "no partitions assigned"
    return "ready"


def _status(start_response: StartResponse, ok: bool, text: str) -> list[bytes]:
    start_response(
        "200 OK" if ok else "503 Service Unavailable",
        [("Content-Type", "text/plain; charset=utf-8")],
    )
    return [text.encode() + b"\n"]
