"""The worker's HTTP endpoints: Prometheus metrics, health, readiness and a read-only API.

``GET /metrics``  Prometheus text format.
``GET /healthz``  200 while the process serves requests.
``GET /readyz``   200 while the dataflow runs, 503 while starting, reloading or stopping.
``GET /budgets``  current spend per budget scope and period, with percent of the amount.
``GET /alerts``   recent alerts, newest first (``?limit=N``, default 100).
``GET /scopes/<rule>?dim=value``  the current baseline of a detector's scopes.
``GET /silences``  silences of the config and those set from Slack, with ``active``.
``POST /slack/actions``  Slack's interactivity requests (decision buttons), signed with the
app's signing secret (``spendwatch.notifiers.slack_actions``).
``POST /v1/traces``  OTLP/HTTP trace exports for ``source: {type: otlp, receive: true}``
(``spendwatch.service.otlp_receiver``).
``GET /costs``, ``/unit-costs``, ``/anomalies``, ``/openapi.json``, ``PUT /budgets/<name>/<scope>``
and the status page ``GET /``: see ``spendwatch.service.api`` and ``statuspage``.

Everything is served from copies (``spendwatch.core.liveview``), never from live engine
state. The one change, a budget amount, needs the bearer token ``server.api_token``.

In a cluster each process holds the state of its own shards. The query endpoints of any
process answer for the whole cluster: they ask the other processes (``?local=1``, a
short timeout) and merge; a process that does not answer is named in ``unreachable``.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.error import HTTPError
from urllib.parse import SplitResult, parse_qsl, unquote, urlsplit
from urllib.request import urlopen

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from spendwatch.core import liveview
from spendwatch.core.logging import get_logger
from spendwatch.notifiers import slack_actions
from spendwatch.service import api, otlp_receiver, statuspage
from spendwatch.service.metrics import build_registry

log = get_logger("spendwatch.http")
PEER_TIMEOUT = 2.0  # seconds a cluster query waits for each other process


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
            budgets, extra, _ = self._gather(url, query, "budgets", view.budgets())
            self._json(200, {"budgets": sorted(budgets, key=liveview.budget_order), **extra})
        elif path == "/alerts":
            try:
                limit = int(query.get("limit", "100"))
            except ValueError:
                self._json(400, {"error": "limit must be an integer"})
                return
            alerts, extra, _ = self._gather(url, query, "alerts", view.recent_alerts(limit))
            if "processes" in extra:  # newest first across the processes too
                alerts.sort(key=lambda alert: alert.get("detected_at", ""), reverse=True)
            self._json(200, {"alerts": alerts[: max(limit, 0)], **extra})
        elif path.startswith("/scopes/"):
            rule = unquote(path[len("/scopes/") :])
            match = {k: v for k, v in query.items() if k != "local"}
            own = view.scopes(rule, match)
            rows, extra, elsewhere = self._gather(url, query, "scopes", own or [])
            if own is None and not elsewhere:
                self._json(404, {"error": f"no detector state for rule {rule!r}"})
            else:
                self._json(200, {"rule": rule, "scopes": rows, **extra})
        elif path == "/silences":
            body = api.SilencesResponse(silences=api.silences_of(view))
            self._json(200, body.model_dump(exclude_none=True))
        elif path in ("/costs", "/unit-costs", "/anomalies", "/status.json", "/openapi.json", "/"):
            self._cost_guard(url, query, path)
        else:
            self._json(404, {"error": "not found"})

    def _cost_guard(self, url: SplitResult, query: dict[str, str], path: str) -> None:
        """The cost-guard API (``spendwatch.service.api``) and the status page."""
        if path == "/costs":
            api.costs(self, url, query, unit=False)
        elif path == "/unit-costs":
            api.costs(self, url, query, unit=True)
        elif path == "/anomalies":
            api.anomalies(self, url, query)
        elif path == "/status.json":
            api.status(self, url, query)
        elif path == "/openapi.json":
            self._json(200, api.openapi())
        else:
            self._send(200, statuspage.PAGE, "text/html; charset=utf-8")

    def do_PUT(self) -> None:
        self._change()

    def do_POST(self) -> None:
        path = urlsplit(self.path).path
        if path == otlp_receiver.PATH:
            otlp_receiver.receive(self)  # OTLP/HTTP traces into the otlp source
        elif path == slack_actions.PATH:
            self._slack_action()
        else:
            self._change()

    def _slack_action(self) -> None:
        """``POST /slack/actions``: a click on a decision button, verified before anything."""
        approvals = liveview.current().approvals
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0 or length > slack_actions.MAX_BODY:
            self._json(413, {"error": "request body too large"})
            return
        body = self.rfile.read(length) if length else b""
        if approvals is None:
            self._json(503, {"error": "not ready for decisions"})
            return
        answer = approvals.handle_http(body, {k: v for k, v in self.headers.items()})
        if answer.body is None:
            self._send(answer.status, b"", "text/plain; charset=utf-8")
        else:
            self._json(answer.status, answer.body)

    def _change(self) -> None:
        """``PUT``/``POST /budgets/<name>/<scope>``: a budget amount set at run time."""
        url = urlsplit(self.path)
        if url.path.startswith("/budgets/"):
            api.set_budget_amount(self, url, dict(parse_qsl(url.query)))
        else:
            self._json(404, {"error": "not found"})

    def _gather(
        self, url: SplitResult, query: dict[str, str], field: str, own: list
    ) -> tuple[list, dict[str, Any], bool]:
        """This process's rows plus, unless asked for ``local=1``, every peer's rows; and
        whether any peer answered (a peer answers 404 for a rule it holds no scope of)."""
        rows: list = list(own)
        extra: dict[str, Any] = {}
        answered = False
        if query.get("local") == "1" or not self.server.peers:
            return rows, extra, answered
        local = "&".join(filter(None, [url.query, "local=1"]))
        unreachable = []
        for peer in self.server.peers:
            try:
                with urlopen(f"http://{peer}{url.path}?{local}", timeout=PEER_TIMEOUT) as reply:
                    body = orjson.loads(reply.read())
                rows.extend(body.get(field, []))
                answered = True
            except HTTPError as error:
                if error.code != 404:  # 404: the peer holds no scope of this rule
                    unreachable.append(peer)
            except (OSError, ValueError):
                unreachable.append(peer)
        extra["processes"] = 1 + len(self.server.peers) - len(unreachable)
        if unreachable:
            extra["unreachable"] = unreachable
        return rows, extra, answered

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
    peers: Sequence[str] = ()


class OpsServer:
    """The HTTP server on its own daemon thread; ``port`` 0 picks a free port.

    ``peers`` are the ``host:port`` of the other processes' servers in a cluster.
    """

    def __init__(self, host: str, port: int, peers: Sequence[str] = ()) -> None:
        self._server = _Server((host, port), _Handler)
        self._server.registry = build_registry()
        self._server.peers = tuple(peers)
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
