"""A threaded local HTTP server with scripted faults: the base of the fake Slack and Jira APIs.

Shipped as public test doubles (tests, conformance suite, benchmarks): the real
slack-sdk and jira clients talk to it over real sockets. Faults are queued per
endpoint and consumed in order:

* ``Fault.http(429, retry_after=1)`` / ``Fault.http(500)``: answer with that status;
* ``Fault.reset()``: drop the connection before handling (nothing happened);
* ``Fault.lost()``: handle the request (the effect happens), then drop the connection
  (the client never learns it worked: the case that creates duplicates);
* ``Fault.slow(seconds)``: wait, then handle normally;
* ``Fault.echo(status, plain=False)``: answer with that status and an error body that
  echoes the request back, ``Authorization`` and every other header included (as some
  servers and proxies do), as JSON in the API's error shape or as plain text. The bodies
  sent are kept in :attr:`FakeServer.echoed`.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass(frozen=True)
class Fault:
    kind: str
    status: int = 0
    retry_after: float | None = None
    seconds: float = 0.0
    body: Any = None
    plain: bool = False

    @classmethod
    def http(cls, status: int, retry_after: float | None = None, body: Any = None) -> Fault:
        return cls("status", status=status, retry_after=retry_after, body=body)

    @classmethod
    def reset(cls) -> Fault:
        return cls("reset")

    @classmethod
    def lost(cls) -> Fault:
        return cls("lost")

    @classmethod
    def slow(cls, seconds: float) -> Fault:
        return cls("slow", seconds=seconds)

    @classmethod
    def echo(cls, status: int, plain: bool = False) -> Fault:
        return cls("echo", status=status, plain=plain)


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    body: dict[str, Any]
    headers: dict[str, str]
    raw: bytes = b""


@dataclass
class Response:
    status: int = 200
    body: Any = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)


class FakeServer:
    """Subclasses implement :meth:`handle`; this class does sockets, faults and recording."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.echoed: list[str] = []
        self._faults: dict[str, deque[Fault]] = {}
        self._lock = threading.RLock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                server._serve(self, "GET")

            def do_POST(self) -> None:
                server._serve(self, "POST")

            def do_PUT(self) -> None:
                server._serve(self, "PUT")

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    # -- lifecycle ------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> FakeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- faults ---------------------------------------------------------------------------------

    def fail(self, endpoint: str, *faults: Fault) -> None:
        """Queue faults for the next requests to ``endpoint`` (see :meth:`endpoint_of`)."""
        with self._lock:
            self._faults.setdefault(endpoint, deque()).extend(faults)

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def calls(self, endpoint: str) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if self.endpoint_of(r.method, r.path) == endpoint]

    def endpoint_of(self, method: str, path: str) -> str:
        """The name faults are queued under; subclasses map paths to API method names."""
        return path

    def handle(self, request: Request) -> Response:
        """Answer one request (called under the server lock); subclasses speak their API."""
        return Response(404, {"error": f"no such endpoint {request.path}"})

    # -- serving --------------------------------------------------------------------------------

    def _serve(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        parts = urlsplit(handler.path)
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        request = Request(
            method=method,
            path=parts.path,
            query={k: v[-1] for k, v in parse_qs(parts.query).items()},
            body=_parse_body(raw, handler.headers.get("Content-Type", "")),
            headers={k.lower(): v for k, v in handler.headers.items()},
            raw=raw,
        )
        endpoint = self.endpoint_of(method, parts.path)
        with self._lock:
            self.requests.append(request)
            queue = self._faults.get(endpoint)
            fault = queue.popleft() if queue else None
        if fault is not None and fault.kind == "reset":
            _reset(handler)
            return
        if fault is not None and fault.kind == "slow":
            time.sleep(fault.seconds)
        if fault is not None and fault.kind == "status":
            headers = {}
            if fault.retry_after is not None:
                headers["Retry-After"] = f"{fault.retry_after:g}"
            body = fault.body if fault.body is not None else self.error_body(fault.status)
            _write(handler, Response(fault.status, body, headers))
            return
        if fault is not None and fault.kind == "echo":
            body = self.echo_body(fault.status, request, fault.plain)
            with self._lock:
                self.echoed.append(body if isinstance(body, str) else json.dumps(body))
            _write(handler, Response(fault.status, body))
            return
        with self._lock:
            response = self.handle(request)
        if fault is not None and fault.kind == "lost":
            _reset(handler)
            return
        _write(handler, response)

    def error_body(self, status: int) -> Any:
        return {"error": f"HTTP {status}"}

    def echo_body(self, status: int, request: Request, plain: bool) -> Any:
        """An error body quoting ``request`` back; subclasses use their API's error shape."""
        if plain:
            return echo_text(status, request)
        return {"error": echo_line(request), "request_headers": request.headers}


def echo_line(request: Request) -> str:
    """One line quoting the request's credentials as a careless server would."""
    return (
        f"bad request {request.method} {request.path}: "
        f"Authorization: {request.headers.get('authorization', '')}"
    )


def echo_text(status: int, request: Request) -> str:
    """A plain-text error page quoting the whole request: line, headers and body."""
    headers = "\n".join(f"{k}: {v}" for k, v in request.headers.items())
    body = request.raw.decode("utf-8", "replace")
    return f"HTTP {status} {echo_line(request)}\n{headers}\n\n{body}"


def _parse_body(raw: bytes, content_type: str) -> dict[str, Any]:
    if not raw:
        return {}
    if "json" in content_type:
        try:
            data = json.loads(raw)
        except ValueError:
            return {}
        return data if isinstance(data, dict) else {"_": data}
    return {k: v[-1] for k, v in parse_qs(raw.decode("utf-8", "replace")).items()}


def _write(handler: BaseHTTPRequestHandler, response: Response) -> None:
    if isinstance(response.body, bytes | str):
        payload = response.body.encode() if isinstance(response.body, str) else response.body
        content_type = "text/plain; charset=utf-8"
    elif response.body is None:
        payload, content_type = b"", "application/json"
    else:
        payload = json.dumps(response.body).encode()
        content_type = "application/json; charset=utf-8"
    try:
        handler.send_response(response.status)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(payload)))
        for key, value in response.headers.items():
            handler.send_header(key, value)
        handler.end_headers()
        handler.wfile.write(payload)
        handler.wfile.flush()
    except OSError:
        pass


def _reset(handler: BaseHTTPRequestHandler) -> None:
    """Close with RST: the client sees 'connection reset by peer', no response."""
    try:
        handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        handler.connection.close()
    except OSError:
        pass
    handler.close_connection = True
