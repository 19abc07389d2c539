"""The worker's HTTP endpoints: Prometheus metrics, health, readiness and a read-only API.

``GET /metrics``  Prometheus text format.
``GET /healthz``  200 while the process serves requests.
``GET /readyz``   200 while the dataflow runs, 503 while starting, reloading or stopping.
``GET /budgets``  current spend per budget scope and period, with percent of the amount.
``GET /alerts``   recent alerts, newest first (``?limit=N``, default 100).
``GET /scopes/<rule>?dim=value``  the current baseline of a detector's scopes.

Everything is served from copies (``spendwatch.liveview``), never from live engine
state, and nothing is writable: the API is safe to expose to dashboards.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from spendwatch import liveview
from spendwatch.logging import get_logger
from spendwatch.metrics import build_registry

log = get_logger("spendwatch.http")


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        query = dict(parse_qsl(url.query))
        path = url.path.rstrip("/") or "/"
        view = liveview.current()
        if path == "/metrics":
            self._send(200, generate_latest(self.server.registry), CONTENT_TYPE_LATEST)
        elif path == "/healthz":
            self._json(200, {"status": "ok"})
        elif path == "/readyz":
            ready = view.ready.is_set()
            self._json(200 if ready else 503, {"ready": ready})
        elif path == "/budgets":
            self._json(200, {"budgets": view.budgets()})
        elif path == "/alerts":
            try:
                limit = int(query.get("limit", "100"))
            except ValueError:
                self._json(400, {"error": "limit must be an integer"})
                return
            self._json(200, {"alerts": view.recent_alerts(limit)})
        elif path.startswith("/scopes/"):
            rule = unquote(path[len("/scopes/") :])
            rows = view.scopes(rule, query)
            if rows is None:
                self._json(404, {"error": f"no detector state for rule {rule!r}"})
            else:
                self._json(200, {"rule": rule, "scopes": rows})
        else:
            self._json(404, {"error": "not found"})

    def _json(self, code: int, body: Any) -> None:
        self._send(code, orjson.dumps(body), "application/json")

    def _send(self, code: int, body: bytes, content_type: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # scrapes every few seconds would drown the worker's own log


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    registry: CollectorRegistry


class OpsServer:
    """The HTTP server on its own daemon thread; ``port`` 0 picks a free port."""

    def __init__(self, host: str, port: int) -> None:
        self._server = _Server((host, port), _Handler)
        self._server.registry = build_registry()
        self.host, self.port = self._server.server_address[:2]
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="spendwatch-http", daemon=True
        )

    def start(self) -> OpsServer:
        self._thread.start()
        log.info("http listening", host=self.host, port=self.port)
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
