"""``POST /v1/traces`` on the worker's HTTP server: OTLP/HTTP exports, protobuf (gzipped, as
the Collector sends them) and JSON, encoded by the OpenTelemetry Python SDK's own encoders,
raise the same alerts as the equivalent JSONL and as the OTLP/JSON file."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from urllib.error import HTTPError
from urllib.request import Request, urlopen

import orjson
import pytest

pytest.importorskip("opentelemetry.exporter.otlp.proto.common")
from opentelemetry.exporter.otlp.json.common.trace_encoder import (
    encode_spans as encode_json,
)
from opentelemetry.exporter.otlp.proto.common.trace_encoder import (
    encode_spans as encode_protobuf,
)

from spendwatch.config import load_config
from spendwatch.ops.backtest import backtest
from spendwatch.service import otlp_receiver
from spendwatch.service.server import OpsServer
from tests.test_otlp import Recorder, alerts_of, config_for, day_of_calls


@pytest.fixture()
def server(monkeypatch):
    inbox = otlp_receiver.TraceInbox()
    monkeypatch.setattr(otlp_receiver, "INBOX", inbox)
    ops = OpsServer("127.0.0.1", 0).start()
    try:
        yield ops, inbox
    finally:
        ops.stop()


def post(ops: OpsServer, body: bytes, content_type: str, encoding: str | None = None):
    headers = {"Content-Type": content_type}
    if encoding:
        headers["Content-Encoding"] = encoding
    request = Request(
        f"http://127.0.0.1:{ops.port}/v1/traces", data=body, headers=headers, method="POST"
    )
    try:
        with urlopen(request, timeout=5) as reply:
            return reply.status, reply.read(), reply.headers
    except HTTPError as error:
        return error.code, error.read(), error.headers


def test_without_a_receiving_source_the_endpoint_asks_to_retry(server) -> None:
    ops, _ = server
    status, body, headers = post(ops, b'{"resourceSpans": []}', "application/json")
    assert status == 503 and headers["Retry-After"]
    assert b"receive: true" in body


def test_bad_bodies_are_refused_and_dead_lettered(server) -> None:
    ops, inbox = server
    inbox.attach()
    assert post(ops, b"{}", "text/plain")[0] == 415
    status, _, _ = post(ops, b"\x0a\xff\xff", "application/x-protobuf")
    assert status == 400
    status, _, _ = post(ops, b"[1, 2", "application/json")
    assert status == 400
    dead = [d for _, letters, _ in inbox.take(10) for d in letters]
    assert [d.reason.split(":")[0] for d in dead] == ["OTLP", "OTLP"]
    assert dead[1].raw == b"[1, 2"


def test_posted_spans_raise_the_same_alerts_as_the_jsonl_and_the_file(
    server, tmp_path: Path
) -> None:
    ops, inbox = server
    recorder = Recorder()
    day_of_calls(recorder)
    spans = list(recorder.memory.get_finished_spans())
    inbox.attach()  # as the otlp-http partition does when the worker starts
    batches = [spans[i : i + 10] for i in range(0, len(spans), 10)]
    for number, batch in enumerate(batches):
        if number % 2:
            body = gzip.compress(encode_protobuf(batch).SerializeToString())
            status, reply, headers = post(ops, body, "application/x-protobuf", "gzip")
            assert (status, reply, headers["Content-Type"]) == (200, b"", "application/x-protobuf")
        else:
            body = orjson.dumps(encode_json(batch).to_dict())
            status, reply, _ = post(ops, body, "application/json")
            assert (status, json.loads(reply)) == (200, {})
    # a Collector retry of the first request: its spans count once
    assert post(ops, orjson.dumps(encode_json(batches[0]).to_dict()), "application/json")[0] == 200
    inbox.detach()
    inbox.close()  # the run below reads what was queued, then ends

    empty = tmp_path / "none.jsonl"
    empty.write_text("")
    config = load_config(
        config_for(tmp_path, {"type": "otlp", "path": str(empty), "receive": True}, "http")
    )
    received = backtest(config, str(empty), str(tmp_path / "http-alerts.jsonl"))

    events = tmp_path / "events.jsonl"
    events.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in recorder.expected))
    jsonl = backtest(
        load_config(config_for(tmp_path, {"type": "jsonl", "path": str(events)}, "jsonl")),
        str(events),
        str(tmp_path / "jsonl-alerts.jsonl"),
    )
    traces = tmp_path / "traces.jsonl"
    recorder.export(traces)
    from_file = backtest(
        load_config(config_for(tmp_path, {"type": "otlp", "path": str(traces)}, "file")),
        str(traces),
        str(tmp_path / "file-alerts.jsonl"),
    )
    assert received["events"] == jsonl["events"] == from_file["events"] == 96
    first_model_calls = sum("gen_ai.request.model" in (s.attributes or {}) for s in batches[0])
    assert received["duplicates"] == first_model_calls > 0
    assert (
        received["spans_skipped"]
        == from_file["spans_skipped"] + len(batches[0]) - first_model_calls
    )
    assert received["dead_lettered"] == 0
    # the same alerts; their order within one batch follows the order the spans came in
    alerts = sorted(alerts_of(tmp_path / "http-alerts.jsonl"), key=lambda a: a["alert_id"])
    for other in ("jsonl", "file"):
        expected = alerts_of(tmp_path / f"{other}-alerts.jsonl")
        assert alerts == sorted(expected, key=lambda a: a["alert_id"]), other
    assert len(alerts) > 10
