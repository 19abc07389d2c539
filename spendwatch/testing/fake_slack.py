"""A local Slack Web API (the methods spendwatch uses), for tests and benchmarks.

Speaks the real wire format: bearer token auth, JSON or form bodies, ``{"ok": ...}``
envelopes, ``ts`` strings, message metadata, thread replies, cursor paging, and
HTTP 429 with ``Retry-After`` (queue it with :meth:`FakeServer.fail`).
"""

from __future__ import annotations

import itertools
import json
import time
from typing import Any

from spendwatch.testing.fake_http import FakeServer, Request, Response, echo_line, echo_text

METHODS = (
    "auth.test",
    "chat.postMessage",
    "chat.update",
    "conversations.history",
    "conversations.replies",
)


class FakeSlack(FakeServer):
    """Channels of messages; ``token`` is the only bot token it accepts."""

    def __init__(self, token: str = "xoxb-test-token", channels: tuple[str, ...] = ("C0ALERTS",)):
        super().__init__()
        self.token = token
        self.channels: dict[str, list[dict[str, Any]]] = {c: [] for c in channels}
        self._ticks = itertools.count(1)
        self._base = int(time.time())

    @property
    def api_url(self) -> str:
        """What to configure as ``base_url``."""
        return self.url + "/api/"

    def endpoint_of(self, method: str, path: str) -> str:
        return path.rsplit("/", 1)[-1]

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
        if method not in METHODS:
            return Response(404, {"ok": False, "error": "unknown_method"})
        if request.headers.get("authorization") != f"Bearer {self.token}":
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
