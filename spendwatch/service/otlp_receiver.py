"""``POST /v1/traces``: OTLP/HTTP trace exports (JSON or protobuf) into the ``otlp`` source.

The worker's HTTP server hands each request to :func:`receive`, which maps its GenAI spans
with :class:`~spendwatch.ingest.otlp.OtlpMapper` and queues the event lines in
:data:`INBOX`; the ``otlp-http`` partition of a ``source: {type: otlp, receive: true}``
reads them and parses them with the shared parser (dead letters, dedup by span id).

Answers as OTLP/HTTP expects: 200 with an empty ``ExportTraceServiceResponse`` in the
request's encoding; 400 for a body that is not a trace export (also dead-lettered); 415
for another content type; 503 with ``Retry-After`` while the queue is full or when no
``otlp`` source with ``receive: true`` runs in this process, so the Collector retries.
``Content-Encoding: gzip`` (the Collector's default) is accepted.

Spans are acknowledged once queued: what is queued but not yet read when the process
dies is lost (the queue is not part of the recovery snapshot).
"""

from __future__ import annotations

import gzip
import threading
import zlib
from collections import deque
from typing import Any

import orjson

from spendwatch.ingest.events import DeadLetter
from spendwatch.ingest.otlp import OtlpError, OtlpMapper

PATH = "/v1/traces"
PARTITION = "otlp-http"
MAX_BODY = 64 << 20  # bytes of one request, before and after decompression
RETRY_AFTER = "2"


class TraceInbox:
    """The bounded queue between the HTTP handler threads and the ``otlp-http`` partition."""

    def __init__(self, max_pending: int = 10_000) -> None:
        self.max_pending = max_pending
        self._lock = threading.Lock()
        self._items: deque[tuple[list[bytes], list[DeadLetter], int]] = deque()
        self._consumers = 0
        self._closed = False
        self.mapper = OtlpMapper(source=PARTITION)

    def attach(self, mapper: OtlpMapper | None = None) -> None:
        """A partition reads this inbox (with its source's mapping settings)."""
        with self._lock:
            self._consumers += 1
            if mapper is not None:
                self.mapper = mapper

    def detach(self) -> None:
        with self._lock:
            self._consumers = max(self._consumers - 1, 0)

    @property
    def attached(self) -> bool:
        return self._consumers > 0

    def put(self, item: tuple[list[bytes], list[DeadLetter], int]) -> bool:
        """Queue one request's events; False when the queue is full."""
        with self._lock:
            if len(self._items) >= self.max_pending:
                return False
            self._items.append(item)
            return True

    def take(self, limit: int) -> list[tuple[list[bytes], list[DeadLetter], int]]:
        with self._lock:
            count = min(limit, len(self._items))
            return [self._items.popleft() for _ in range(count)]

    def close(self) -> None:
        """No more requests: the partition ends once it has read what is queued."""
        self._closed = True

    @property
    def finished(self) -> bool:
        with self._lock:
            return self._closed and not self._items


INBOX = TraceInbox()


def receive(handler: Any) -> None:
    """Serve one ``POST /v1/traces`` on a ``BaseHTTPRequestHandler``."""
    if handler.command != "POST":
        _reply(handler, 405, b'{"error": "POST only"}', "application/json")
        return
    kind = handler.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if kind not in ("application/json", "application/x-protobuf"):
        _reply(
            handler,
            415,
            b'{"error": "application/json or application/x-protobuf"}',
            "application/json",
        )
        return
    try:
        length = int(handler.headers.get("Content-Length") or 0)
    except ValueError:
        length = -1
    if not 0 <= length <= MAX_BODY:
        _reply(
            handler, 413, b'{"error": "body too large or no Content-Length"}', "application/json"
        )
        return
    body = handler.rfile.read(length)
    inbox = INBOX
    if not inbox.attached:
        _reply(
            handler,
            503,
            b'{"error": "no otlp source with receive: true in this process"}',
            "application/json",
            retry=True,
        )
        return
    where = f"{PARTITION}:{handler.client_address[0]}"
    try:
        payload = _decompress(body, handler.headers.get("Content-Encoding", ""))
        if kind == "application/json":
            events, skipped = _json_events(inbox.mapper, payload)
        else:
            events, skipped = inbox.mapper.map_protobuf(payload)
    except OtlpError as error:
        inbox.put(([], [DeadLetter(f"OTLP: {error}", body, where)], 0))
        _reply(handler, 400, orjson.dumps({"error": str(error)}), "application/json")
        return
    if not inbox.put((events, [], skipped)):
        _reply(handler, 503, b'{"error": "queue full"}', "application/json", retry=True)
        return
    if kind == "application/json":
        _reply(handler, 200, b"{}", "application/json")
    else:
        _reply(handler, 200, b"", "application/x-protobuf")  # an empty ExportTraceServiceResponse


def _json_events(mapper: OtlpMapper, payload: bytes) -> tuple[list[bytes], int]:
    try:
        request = orjson.loads(payload)
    except orjson.JSONDecodeError as error:
        raise OtlpError(f"not JSON: {error}") from None
    found, skipped = mapper.map_request(request)
    return [orjson.dumps(e) for e in found], skipped


def _decompress(body: bytes, encoding: str) -> bytes:
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "deflate"):
        raise OtlpError(f"unsupported Content-Encoding {encoding!r}")
    try:
        stream = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
        data = stream.decompress(body, MAX_BODY + 1)
    except (zlib.error, gzip.BadGzipFile) as error:
        raise OtlpError(f"body is not {encoding}: {error}") from None
    if len(data) > MAX_BODY:
        raise OtlpError(f"body over {MAX_BODY} bytes once decompressed")
    return data


def _reply(handler: Any, code: int, body: bytes, content_type: str, retry: bool = False) -> None:
    handler.send_response(code)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(body)))
    if retry:
        handler.send_header("Retry-After", RETRY_AFTER)
    handler.end_headers()
    handler.wfile.write(body)
