"""A local Slack Web API (the methods spendwatch uses), for tests and benchmarks.

Speaks the real wire format: bearer token auth, JSON or form bodies, ``{"ok": ...}``
envelopes, ``ts`` strings, message metadata, thread replies, cursor paging, and
HTTP 429 with ``Retry-After`` (queue it with :meth:`FakeServer.fail`).

For decisions on alerts it also serves what an app's interactivity meets: user groups
(``usergroups.users.list``), ``response_url`` posts (kept in :attr:`FakeSlack.responses`)
and Socket Mode: ``apps.connections.open`` with the app-level token returns a ``ws://``
URL of this server, where a real WebSocket (RFC 6455 handshake and frames, pings
answered) says ``hello``; :meth:`FakeSlack.push` sends an envelope to every connected
client and :meth:`FakeSlack.acked` tells which envelopes were acknowledged.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import struct
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler
from typing import Any

from spendwatch.testing.fake_http import FakeServer, Request, Response, echo_line, echo_text

METHODS = (
    "auth.test",
    "chat.postMessage",
    "chat.update",
    "conversations.history",
    "conversations.replies",
    "usergroups.users.list",
    "apps.connections.open",
)
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
LINK_PATH = "/link"
RESPONSE_PATH = "/actions/"


class FakeSlack(FakeServer):
    """Channels of messages; ``token`` is the only bot token it accepts."""

    def __init__(
        self,
        token: str = "xoxb-test-token",
        channels: tuple[str, ...] = ("C0ALERTS",),
        app_token: str = "xapp-test-token",
        groups: dict[str, list[str]] | None = None,
    ):
        super().__init__()
        self.token = token
        self.app_token = app_token
        self.groups = dict(groups or {})
        self.channels: dict[str, list[dict[str, Any]]] = {c: [] for c in channels}
        self.responses: list[dict[str, Any]] = []
        self._sockets: list[_Socket] = []
        self._acks: set[str] = set()
        self._socket_lock = threading.Condition()
        self._ticks = itertools.count(1)
        self._base = int(time.time())

    @property
    def api_url(self) -> str:
        """What to configure as ``base_url``."""
        return self.url + "/api/"

    def endpoint_of(self, method: str, path: str) -> str:
        if path.startswith(RESPONSE_PATH):
            return "response_url"
        return path.rsplit("/", 1)[-1]

    def response_url(self, name: str = "1/abc") -> str:
        """A ``response_url`` for a payload: posts to it land in :attr:`responses`."""
        return f"{self.url}{RESPONSE_PATH}T0TEAM/{name}"

    def error_body(self, status: int) -> Any:
        if status == 429:
            return {"ok": False, "error": "ratelimited"}
        return "<html><body>Internal Server Error</body></html>"

    def echo_body(self, status: int, request: Request, plain: bool) -> Any:
        if plain:
            return echo_text(status, request)
        return {"ok": False, "error": echo_line(request), "request_headers": request.headers}

    # -- inspection -----------------------------------------------------------------------------

    def messages(self, channel: str = "C0ALERTS") -> list[dict[str, Any]]:
        """Every message in ``channel``, thread replies included, oldest first."""
        return list(self.channels.get(channel, []))

    def top_level(self, channel: str = "C0ALERTS") -> list[dict[str, Any]]:
        return [m for m in self.messages(channel) if m.get("thread_ts", m["ts"]) == m["ts"]]

    # -- API ------------------------------------------------------------------------------------

    def handle(self, request: Request) -> Response:
        method = self.endpoint_of(request.method, request.path)
        if method == "response_url":
            self.responses.append(dict(request.body))
            return Response(200, "ok")
        if method not in METHODS:
            return Response(404, {"ok": False, "error": "unknown_method"})
        token = self.app_token if method == "apps.connections.open" else self.token
        if request.headers.get("authorization") != f"Bearer {token}":
            return Response(200, {"ok": False, "error": "invalid_auth"})
        args = {**request.query, **request.body}
        handler = getattr(self, "_" + method.replace(".", "_"))
        return Response(200, handler(args))

    def _auth_test(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "user_id": "U0SPENDWATCH", "team_id": "T0TEAM", "bot_id": "B0BOT"}

    def _chat_postMessage(self, args: dict[str, Any]) -> dict[str, Any]:
        channel = args.get("channel")
        if channel not in self.channels:
            return {"ok": False, "error": "channel_not_found"}
        if not args.get("text") and not args.get("blocks"):
            return {"ok": False, "error": "no_text"}
        ts = self._ts()
        message: dict[str, Any] = {
            "type": "message",
            "user": "U0SPENDWATCH",
            "bot_id": "B0BOT",
            "text": args.get("text", ""),
            "ts": ts,
            "blocks": _json_arg(args.get("blocks")) or [],
        }
        metadata = _json_arg(args.get("metadata"))
        if metadata:
            message["metadata"] = metadata
        thread_ts = args.get("thread_ts")
        if thread_ts:
            parent = self._find(channel, thread_ts)
            if parent is None:
                return {"ok": False, "error": "thread_not_found"}
            message["thread_ts"] = thread_ts
            parent["reply_count"] = parent.get("reply_count", 0) + 1
            parent.setdefault("thread_ts", thread_ts)
            if _truthy(args.get("reply_broadcast")):
                message["subtype"] = "thread_broadcast"
        self.channels[channel].append(message)
        return {"ok": True, "channel": channel, "ts": ts, "message": message}

    def _chat_update(self, args: dict[str, Any]) -> dict[str, Any]:
        channel, ts = args.get("channel"), args.get("ts")
        if channel not in self.channels:
            return {"ok": False, "error": "channel_not_found"}
        message = self._find(channel, ts)
        if message is None:
            return {"ok": False, "error": "message_not_found"}
        if "text" in args:
            message["text"] = args["text"]
        if "blocks" in args:
            message["blocks"] = _json_arg(args["blocks"]) or []
        message["edited"] = {"user": "U0SPENDWATCH", "ts": self._ts()}
        return {"ok": True, "channel": channel, "ts": ts, "text": message["text"]}

    def _conversations_history(self, args: dict[str, Any]) -> dict[str, Any]:
        channel = args.get("channel")
        if channel not in self.channels:
            return {"ok": False, "error": "channel_not_found"}
        oldest = float(args.get("oldest") or 0)
        visible = [
            m
            for m in self.channels[channel]
            if float(m["ts"]) > oldest
            and (m.get("thread_ts", m["ts"]) == m["ts"] or m.get("subtype") == "thread_broadcast")
        ]
        return self._page(list(reversed(visible)), args)  # newest first, like Slack

    def _conversations_replies(self, args: dict[str, Any]) -> dict[str, Any]:
        channel, ts = args.get("channel"), args.get("ts")
        if channel not in self.channels:
            return {"ok": False, "error": "channel_not_found"}
        if self._find(channel, ts) is None:
            return {"ok": False, "error": "thread_not_found"}
        thread = [m for m in self.channels[channel] if m["ts"] == ts or m.get("thread_ts") == ts]
        return self._page(thread, args)

    def _usergroups_users_list(self, args: dict[str, Any]) -> dict[str, Any]:
        group = args.get("usergroup")
        if group not in self.groups:
            return {"ok": False, "error": "no_such_subteam"}
        return {"ok": True, "users": list(self.groups[group])}

    def _apps_connections_open(self, args: dict[str, Any]) -> dict[str, Any]:
        host, port = self._httpd.server_address[:2]
        return {"ok": True, "url": f"ws://{host}:{port}{LINK_PATH}?ticket={uuid.uuid4()}"}

    # -- Socket Mode ----------------------------------------------------------------------------

    def _serve(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        upgrade = handler.headers.get("Upgrade", "").lower() == "websocket"
        if method == "GET" and upgrade and handler.path.startswith(LINK_PATH):
            self._websocket(handler)
        else:
            super()._serve(handler, method)

    def connected(self) -> int:
        """How many Socket Mode clients are connected now."""
        with self._socket_lock:
            return sum(1 for s in self._sockets if s.open)

    def push(self, payload: dict[str, Any], kind: str = "interactive") -> str:
        """Send an envelope (e.g. a block_actions payload) to the connected clients; its id."""
        envelope_id = str(uuid.uuid4())
        envelope = {
            "envelope_id": envelope_id,
            "type": kind,
            "accepts_response_payload": False,
            "payload": payload,
        }
        with self._socket_lock:
            sockets = [s for s in self._sockets if s.open]
        for sock in sockets:
            sock.send_text(json.dumps(envelope))
        return envelope_id

    def acked(self, envelope_id: str, timeout: float = 5.0) -> bool:
        """Whether a client acknowledged ``envelope_id`` (waits up to ``timeout``)."""
        deadline = time.monotonic() + timeout
        with self._socket_lock:
            while envelope_id not in self._acks:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._socket_lock.wait(left)
            return True

    def _websocket(self, handler: BaseHTTPRequestHandler) -> None:
        key = handler.headers.get("Sec-WebSocket-Key", "")
        accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
        handler.wfile.write(
            (
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
            ).encode()
        )
        handler.wfile.flush()
        sock = _Socket(handler)
        with self._socket_lock:
            self._sockets.append(sock)
        hello = {"type": "hello", "num_connections": 1, "connection_info": {"app_id": "A0APP"}}
        sock.send_text(json.dumps(hello))
        try:
            while True:
                frame = sock.read()
                if frame is None:
                    break
                opcode, data = frame
                if opcode == 0x8:  # close
                    sock.send(0x8, data[:2])
                    break
                if opcode == 0x9:  # ping
                    sock.send(0xA, data)
                elif opcode == 0x1:
                    try:
                        message = json.loads(data)
                    except ValueError:
                        continue
                    if isinstance(message, dict) and message.get("envelope_id"):
                        with self._socket_lock:
                            self._acks.add(str(message["envelope_id"]))
                            self._socket_lock.notify_all()
        finally:
            sock.open = False
        handler.close_connection = True

    # -- helpers --------------------------------------------------------------------------------

    def _page(self, messages: list[dict[str, Any]], args: dict[str, Any]) -> dict[str, Any]:
        limit = int(args.get("limit") or 100)
        start = int(args.get("cursor") or 0)
        page = messages[start : start + limit]
        if not _truthy(args.get("include_all_metadata")):
            page = [{k: v for k, v in m.items() if k != "metadata"} for m in page]
        more = start + limit < len(messages)
        return {
            "ok": True,
            "messages": page,
            "has_more": more,
            "response_metadata": {"next_cursor": str(start + limit) if more else ""},
        }

    def _find(self, channel: str, ts: Any) -> dict[str, Any] | None:
        return next((m for m in self.channels[channel] if m["ts"] == ts), None)

    def _ts(self) -> str:
        return f"{self._base}.{next(self._ticks):06d}"


def _json_arg(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return None
    return value


def _truthy(value: Any) -> bool:
    return value in (True, 1, "1", "true", "True")


class _Socket:
    """The server side of one WebSocket: frames in (masked by the client) and out."""

    def __init__(self, handler: BaseHTTPRequestHandler) -> None:
        self.rfile = handler.rfile
        self.wfile = handler.wfile
        self.open = True
        self._lock = threading.Lock()

    def send_text(self, text: str) -> None:
        self.send(0x1, text.encode())

    def send(self, opcode: int, data: bytes) -> None:
        header = bytes([0x80 | opcode])
        if len(data) < 126:
            header += bytes([len(data)])
        elif len(data) < 1 << 16:
            header += bytes([126]) + struct.pack("!H", len(data))
        else:
            header += bytes([127]) + struct.pack("!Q", len(data))
        with self._lock:
            try:
                self.wfile.write(header + data)
                self.wfile.flush()
            except OSError:
                self.open = False

    def read(self) -> tuple[int, bytes] | None:
        """One whole message (continuation frames joined), or None when the peer is gone."""
        opcode, chunks = None, []
        while True:
            head = self.rfile.read(2)
            if len(head) < 2:
                return None
            fin, code = head[0] & 0x80, head[0] & 0x0F
            masked, length = head[1] & 0x80, head[1] & 0x7F
            if length == 126:
                length = struct.unpack("!H", self.rfile.read(2))[0]
            elif length == 127:
                length = struct.unpack("!Q", self.rfile.read(8))[0]
            mask = self.rfile.read(4) if masked else b"\0\0\0\0"
            data = bytes(b ^ mask[i % 4] for i, b in enumerate(self.rfile.read(length)))
            if code >= 0x8:  # control frames may come between fragments
                return code, data
            opcode = code if opcode is None else opcode
            chunks.append(data)
            if fin:
                return opcode, b"".join(chunks)
