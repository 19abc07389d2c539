"""OpenTelemetry GenAI spans: exports written by the real OpenTelemetry Python SDK (its
OTLP/JSON file exporter, one ExportTraceServiceRequest per line, as the Collector's ``file``
exporter writes them) load as usage events and raise the same alerts as the equivalent
JSONL, which the test writes itself from what it told the SDK.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import orjson
import pytest
import yaml

pytest.importorskip("opentelemetry.sdk")
from opentelemetry.exporter.otlp.json.file import FileSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)

from spendwatch.config import load_config
from spendwatch.ingest.otlp import OtlpMapper, OtlpSourceConfig
from spendwatch.ingest.parser import EventParser
from spendwatch.ingest.pricing import PriceTable, PricingConfig
from spendwatch.ops.backtest import backtest

T0 = int(datetime(2026, 3, 2, tzinfo=timezone.utc).timestamp())
NS = 1_000_000_000
PRICES = {"gpt-4o-mini": {"input": 0.15, "cached_input": 0.075, "output": 0.60}}
DIMENSIONS = ["tenant", "feature", "model", "provider", "service", "environment", "session"]


def iso(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class Recorder:
    """Spans made with the SDK, and the JSONL events they stand for (written by hand)."""

    def __init__(self, service: str = "support-bot") -> None:
        self.memory = InMemorySpanExporter()
        self.provider = TracerProvider(
            resource=Resource.create(
                {"service.name": service, "deployment.environment.name": "prod"}
            )
        )
        self.provider.add_span_processor(SimpleSpanProcessor(self.memory))
        self.tracer = self.provider.get_tracer("spendwatch-tests")
        self.service = service
        self.expected: list[dict] = []

    def call(
        self,
        at: int,
        tenant: str,
        *,
        inputs: int,
        output: int,
        cached: int = 0,
        cost: float | None = None,
        conversation: str | None = None,
        agent: str | None = None,
        provider_key: str = "gen_ai.provider.name",
    ) -> None:
        attributes: dict = {
            "gen_ai.operation.name": "chat",
            "gen_ai.request.model": "gpt-4o-mini",
            "gen_ai.response.model": "gpt-4o-mini-2024-07-18",
            provider_key: "openai",
            "gen_ai.usage.input_tokens": inputs,
            "gen_ai.usage.output_tokens": output,
            "tenant.id": tenant,
            "app.feature": "answer",
        }
        if cached:
            attributes["gen_ai.usage.cache_read.input_tokens"] = cached
        if cost is not None:
            attributes["gen_ai.usage.cost.total"] = cost
        if conversation:
            attributes["gen_ai.conversation.id"] = conversation
        if agent:
            attributes["gen_ai.agent.name"] = agent
        span = self.tracer.start_span("chat gpt-4o-mini", start_time=at * NS, attributes=attributes)
        span.end(end_time=(at + 2) * NS)
        event = {
            "event_id": format(span.get_span_context().span_id, "016x"),
            "ts": iso(at),
            "tenant": tenant,
            "feature": "answer",
            "model": "gpt-4o-mini",
            "provider": "openai",
            "service": self.service,
            "environment": "prod",
            "input_tokens": inputs,
            "output_tokens": output,
        }
        if cached:
            event["cached_input_tokens"] = cached
        if cost is not None:
            event["cost_usd"] = cost
        if conversation:
            event["session"] = conversation
        if agent:
            event["labels"] = {"agent": agent}
        self.expected.append(event)

    def other(self, at: int, name: str, attributes: dict) -> None:
        """A span that is not a model call: no event."""
        span = self.tracer.start_span(name, start_time=at * NS, attributes=attributes)
        span.end(end_time=(at + 1) * NS)

    def export(self, path: Path, *, per_request: int = 7, repeat_first: bool = False) -> int:
        """Write the spans with the SDK's OTLP/JSON file exporter, ``per_request`` spans to
        an ExportTraceServiceRequest line; ``repeat_first``: the first one twice (a retry)."""
        spans = list(self.memory.get_finished_spans())
        exporter = FileSpanExporter(str(path))
        batches = [spans[i : i + per_request] for i in range(0, len(spans), per_request)]
        if repeat_first:
            batches.insert(1, batches[0])
        for batch in batches:
            exporter.export(batch)
        exporter.shutdown()
        return len(batches)


def day_of_calls(recorder: Recorder) -> None:
    """Two tenants for two days; acme spends more on the second day."""
    for hour in range(48):
        at = T0 + hour * 3600
        recorder.call(
            at,
            "acme",
            inputs=20_000,
            output=2_000 * (1 + hour // 24 * 4),
            conversation=f"conv-{hour % 3}",
            agent="triage",
        )
        recorder.call(
            at + 60,
            "globex",
            inputs=10_000,
            cached=4_000,
            output=1_000,
            cost=0.01 if hour % 2 else None,
            provider_key="gen_ai.system" if hour % 2 else "gen_ai.provider.name",
        )
        recorder.other(at + 5, "GET /answer", {"http.request.method": "GET"})
        recorder.other(
            at + 6,
            "invoke_agent triage",
            {
                "gen_ai.operation.name": "invoke_agent",
                "gen_ai.agent.name": "triage",
                "gen_ai.usage.input_tokens": 20_000,
            },
        )


def parse_lines(lines: list[bytes]):
    parser = EventParser(PriceTable(PricingConfig(models=PRICES)), DIMENSIONS, dedup_horizon=86400)
    return parser.parse(lines)


def test_an_sdk_export_maps_to_the_events_the_spans_stand_for(tmp_path: Path) -> None:
    recorder = Recorder()
    day_of_calls(recorder)
    path = tmp_path / "traces.jsonl"
    requests = recorder.export(path)
    lines = path.read_bytes().splitlines()
    assert len(lines) == requests
    assert all("resourceSpans" in json.loads(line) for line in lines)  # OTLP/JSON, as written
    where = [(line, f"traces:{n}") for n, line in enumerate(lines, start=1)]
    events, dead, skipped = OtlpMapper(OtlpSourceConfig(path=str(path))).map_json_lines(where)
    assert dead == []
    assert skipped == 2 * 48  # the HTTP and invoke_agent spans
    assert sorted((orjson.loads(e) for e in events), key=lambda e: e["event_id"]) == sorted(
        recorder.expected, key=lambda e: e["event_id"]
    )
    otlp = parse_lines(events)
    jsonl = parse_lines([orjson.dumps(e) for e in recorder.expected])
    assert otlp.dead == [] and otlp.size == 96
    assert sorted(otlp.spend_nanos.tolist()) == sorted(jsonl.spend_nanos.tolist())
    assert int(otlp.input_tokens.sum()) == 48 * 30_000


def test_protobuf_requests_map_like_their_json(tmp_path: Path) -> None:
    from google.protobuf.json_format import ParseDict
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    recorder = Recorder()
    day_of_calls(recorder)
    path = tmp_path / "traces.jsonl"
    recorder.export(path, per_request=500)
    request = json.loads(path.read_text().splitlines()[0])
    mapper = OtlpMapper()
    from_json, skipped_json = mapper.map_request(request)
    payload = ParseDict(request, ExportTraceServiceRequest()).SerializeToString()
    from_proto, skipped_proto = mapper.map_protobuf(payload)
    assert [orjson.loads(e) for e in from_proto] == from_json
    assert skipped_proto == skipped_json == 96


def test_lines_that_are_not_trace_exports_dead_letter_and_other_spans_are_skipped() -> None:
    mapper = OtlpMapper()
    lines = [
        (b"{not json", "f:1"),
        (b'{"resourceLogs": []}', "f:2"),
        (b"", "f:3"),
        (
            b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"spanId": "00f067aa0ba902b7", '
            b'"startTimeUnixNano": "1772409600000000000", "name": "SELECT", "attributes": '
            b'[{"key": "db.system", "value": {"stringValue": "postgresql"}}]}]}]}]}',
            "f:4",
        ),
    ]
    events, dead, skipped = mapper.map_json_lines(lines)
    assert events == [] and skipped == 1
    assert [(d.reason.split(":")[0:2], d.source) for d in dead] == [
        (["OTLP", " not JSON"], "f:1"),
        (["OTLP", " no resourceSpans"], "f:2"),
    ]


def test_non_usd_cost_attributes_fall_back_to_the_price_table() -> None:
    span = {
        "spanId": "00f067aa0ba902b7",
        "startTimeUnixNano": "1772409600000000000",
        "attributes": [
            {"key": "gen_ai.operation.name", "value": {"stringValue": "chat"}},
            {"key": "gen_ai.usage.input_tokens", "value": {"intValue": "10"}},
            {"key": "gen_ai.usage.cost.input", "value": {"doubleValue": 0.25}},
            {"key": "gen_ai.usage.cost.output", "value": {"doubleValue": 0.5}},
        ],
    }
    mapper = OtlpMapper()
    assert mapper.event(span, {})["cost_usd"] == 0.75
    span["attributes"].append(
        {"key": "gen_ai.usage.cost.currency", "value": {"stringValue": "EUR"}}
    )
    assert "cost_usd" not in mapper.event(span, {})
    assert mapper.event(span, {})["ts"] == "2026-03-02T00:00:00Z"


# -- through the whole flow --------------------------------------------------------------------


def config_for(tmp_path: Path, source: dict, name: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "source": source,
                "pricing": {"models": PRICES},
                "dimensions": ["tenant", "model", "session"],
                "dead_letter": {"path": str(tmp_path / f"{name}-dead.jsonl")},
                "budgets": [
                    {
                        "name": "tenant-daily",
                        "scope_by": ["tenant"],
                        "amount_usd": 0.05,
                        "period": "day",
                        "thresholds": [50, 100, 200],
                    },
                    {
                        "name": "session-daily",
                        "scope_by": ["session"],
                        "amount_usd": 0.02,
                        "period": "day",
                        "thresholds": [100],
                    },
                ],
                "receivers": [],
            }
        )
    )
    return path


def alerts_of(path: Path) -> list[dict]:
    return [
        {k: v for k, v in json.loads(line).items() if k != "detected_at"}
        for line in path.read_text().splitlines()
    ]


def test_an_sdk_export_raises_the_same_alerts_as_the_equivalent_jsonl(tmp_path: Path) -> None:
    recorder = Recorder()
    day_of_calls(recorder)
    traces = tmp_path / "traces.jsonl"
    recorder.export(traces, repeat_first=True)  # a retried export: its spans count once
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in recorder.expected))

    otlp_config = load_config(config_for(tmp_path, {"type": "otlp", "path": str(traces)}, "otlp"))
    jsonl_config = load_config(
        config_for(tmp_path, {"type": "jsonl", "path": str(events)}, "jsonl")
    )
    otlp = backtest(otlp_config, str(traces), str(tmp_path / "otlp-alerts.jsonl"))
    jsonl = backtest(jsonl_config, str(events), str(tmp_path / "jsonl-alerts.jsonl"))
    assert otlp["events"] == jsonl["events"] == 96
    assert otlp["duplicates"] == 4 and jsonl["duplicates"] == 0  # its 4 model calls
    assert otlp["spans_skipped"] == 2 * 48 + 3  # and its 3 other spans, counted again
    assert otlp["dead_lettered"] == jsonl["dead_lettered"] == 0
    alerts = alerts_of(tmp_path / "otlp-alerts.jsonl")
    assert alerts == alerts_of(tmp_path / "jsonl-alerts.jsonl")
    rules = {a["rule"] for a in alerts}
    assert rules == {"tenant-daily", "session-daily"}
    assert {a["scope"]["tenant"] for a in alerts if a["rule"] == "tenant-daily"} == {
        "acme",
        "globex",
    }


def test_an_otlp_source_needs_a_file_or_the_endpoint() -> None:
    from pydantic import ValidationError

    from spendwatch.dataflows.inputs import describe_source

    with pytest.raises(ValidationError, match="needs a path, receive: true, or both"):
        OtlpSourceConfig()
    assert describe_source(OtlpSourceConfig(path="t.jsonl")) == "otlp:t.jsonl"
    both = OtlpSourceConfig(path="t.jsonl", receive=True)
    assert describe_source(both) == "otlp:t.jsonl+POST /v1/traces"
