"""OpenTelemetry GenAI spans (OTLP traces) mapped onto usage events.

Teams that instrument LLM calls with OpenTelemetry already export spans that carry the
usage: the GenAI semantic conventions put the model, the provider and the token counts on
each model-call span. An ``ExportTraceServiceRequest`` (OTLP/JSON: one per line in the
Collector's ``file`` exporter; or protobuf, as POSTed to ``/v1/traces``) becomes one usage
event per GenAI span, as contract JSON handed to the same parser as every other input, so
validation, dead letters and dedup are shared.

Mapping (span or resource attribute -> event field):

* span id (hex) -> ``event_id``; span start time -> ``ts``
* ``gen_ai.usage.input_tokens`` -> ``input_tokens`` (the conventions count cached input in
  it), ``gen_ai.usage.cache_read.input_tokens`` -> ``cached_input_tokens``,
  ``gen_ai.usage.output_tokens`` -> ``output_tokens``;
  ``gen_ai.usage.cache_creation.input_tokens`` is part of ``input_tokens`` too, and is
  priced as uncached input
* ``gen_ai.request.model`` (else ``gen_ai.response.model``) -> ``model``
* ``gen_ai.provider.name`` (else the deprecated ``gen_ai.system``) -> ``provider``
* ``gen_ai.conversation.id`` -> ``session``; ``gen_ai.agent.name`` -> ``labels.agent``
* resource ``service.name`` -> ``service``; ``deployment.environment.name`` (else the older
  ``deployment.environment``) -> ``environment``
* ``attributes`` (tenant, feature, prompt_id by default) -> those dimensions, looked up on
  the span first, then on its resource
* the proposed ``gen_ai.usage.cost.*`` attributes (USD) -> ``cost_usd`` when present
  (``gen_ai.usage.cost.total``, else the sum of the others); else, or when
  ``gen_ai.usage.cost.currency`` is not USD, the price table prices the tokens

Only spans of model-call operations (``gen_ai.operation.name`` in ``operations``; or no
operation name but ``gen_ai.usage.*`` tokens) become events. Other spans (HTTP, database,
``invoke_agent`` and ``execute_tool``, whose tokens are those of the model calls under
them) are counted as skipped, not dead-lettered.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from typing import Any, Literal

import orjson
from pydantic import Field, model_validator

from spendwatch.core.configtypes import Dimension, StrictModel
from spendwatch.ingest.events import DeadLetter

MODEL_OPERATIONS = ["chat", "text_completion", "generate_content", "embeddings"]
DEFAULT_ATTRIBUTES: dict[str, str] = {
    "tenant": "tenant.id",
    "feature": "app.feature",
    "prompt_id": "gen_ai.prompt.name",
}
COST_PREFIX = "gen_ai.usage.cost."
TOKENS = (
    ("gen_ai.usage.input_tokens", "input_tokens"),
    ("gen_ai.usage.cache_read.input_tokens", "cached_input_tokens"),
    ("gen_ai.usage.output_tokens", "output_tokens"),
)
FIRST_OF = (
    (("gen_ai.request.model", "gen_ai.response.model"), "model"),
    (("gen_ai.provider.name", "gen_ai.system"), "provider"),
    (("gen_ai.conversation.id",), "session"),
)
RESOURCE_FIRST_OF = (
    (("service.name",), "service"),
    (("deployment.environment.name", "deployment.environment"), "environment"),
)


class OtlpSourceConfig(StrictModel):
    """``type: otlp``: OpenTelemetry GenAI spans, OTLP/JSON with one ExportTraceServiceRequest
    per line (the Collector's ``file`` exporter), and/or OTLP/HTTP ``POST /v1/traces``."""

    type: Literal["otlp"] = "otlp"
    path: str | None = Field(
        default=None, description="OTLP/JSON traces file (one export request per line)"
    )
    receive: bool = Field(
        default=False,
        description="also accept OTLP/HTTP POST /v1/traces (JSON or protobuf) on the "
        "worker's HTTP server (server.port)",
    )
    follow: bool = Field(default=False, description="keep reading as the file grows")
    poll_interval: float = Field(
        default=0.5, gt=0, le=3600, description="seconds between polls at EOF"
    )
    batch_lines: int = Field(
        default=256, ge=1, le=1_000_000, description="export requests mapped and parsed together"
    )
    operations: list[str] = Field(
        default_factory=lambda: list(MODEL_OPERATIONS),
        description="gen_ai.operation.name values whose spans are model calls (events)",
    )
    attributes: dict[Dimension, str] = Field(
        default_factory=lambda: dict(DEFAULT_ATTRIBUTES),
        description="dimension (standard or labels.KEY) -> span or resource attribute name",
    )

    @model_validator(mode="after")
    def _somewhere(self) -> OtlpSourceConfig:
        if self.path is None and not self.receive:
            raise ValueError("an otlp source needs a path, receive: true, or both")
        return self


class OtlpError(ValueError):
    """A payload that is not an OTLP trace export; the message is the dead-letter reason."""


class OtlpMapper:
    """Turns OTLP trace export requests into usage-event JSON lines."""

    def __init__(self, config: OtlpSourceConfig | None = None, source: str = "") -> None:
        self.config = config or OtlpSourceConfig(receive=True)
        self.source = source
        self._operations = frozenset(self.config.operations)
        self._attributes = list(self.config.attributes.items())

    def map_json_lines(
        self, lines: Iterable[tuple[bytes, str]]
    ) -> tuple[list[bytes], list[DeadLetter], int]:
        """(event lines, dead letters, spans skipped) of OTLP/JSON lines, each with where
        it came from (``file:line``) for its dead letter."""
        events: list[bytes] = []
        dead: list[DeadLetter] = []
        skipped = 0
        for line, where in lines:
            if not line.strip():
                continue
            try:
                request = orjson.loads(line)
                found, not_genai = self.map_request(request)
            except orjson.JSONDecodeError as error:
                dead.append(DeadLetter(f"OTLP: not JSON: {error}", line, where))
                continue
            except OtlpError as error:
                dead.append(DeadLetter(f"OTLP: {error}", line, where))
                continue
            events.extend(orjson.dumps(e) for e in found)
            skipped += not_genai
        return events, dead, skipped

    def map_protobuf(self, payload: bytes) -> tuple[list[bytes], int]:
        """(event lines, spans skipped) of a protobuf ExportTraceServiceRequest."""
        from google.protobuf.json_format import MessageToDict
        from google.protobuf.message import DecodeError
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
        )

        try:
            message = ExportTraceServiceRequest.FromString(payload)
        except DecodeError as error:
            raise OtlpError(f"not an ExportTraceServiceRequest: {error}") from None
        # the JSON mapping of protobuf writes ids in base64, which map_request also reads
        found, skipped = self.map_request(MessageToDict(message))
        return [orjson.dumps(e) for e in found], skipped

    def map_request(self, request: Any) -> tuple[list[dict[str, Any]], int]:
        """(usage events, spans skipped) of one ExportTraceServiceRequest (OTLP/JSON)."""
        if not isinstance(request, dict):
            raise OtlpError("not an ExportTraceServiceRequest (a JSON object)")
        resource_spans = request.get("resourceSpans", request.get("resource_spans"))
        if resource_spans is None:
            raise OtlpError("no resourceSpans: not an ExportTraceServiceRequest")
        events: list[dict[str, Any]] = []
        skipped = 0
        for block in _list(resource_spans, "resourceSpans"):
            resource = _attributes((block.get("resource") or {}).get("attributes"))
            scopes = block.get("scopeSpans", block.get("scope_spans")) or []
            for scope in _list(scopes, "scopeSpans"):
                for span in _list(scope.get("spans") or [], "spans"):
                    event = self.event(span, resource)
                    if event is None:
                        skipped += 1
                    else:
                        events.append(event)
        return events, skipped

    def event(self, span: Mapping[str, Any], resource: Mapping[str, Any]) -> dict[str, Any] | None:
        """The usage event of one span, or None when it is not a model call."""
        attributes = _attributes(span.get("attributes"))
        operation = attributes.get("gen_ai.operation.name")
        if operation is None:
            if not any(name in attributes for name, _ in TOKENS):
                return None
        elif str(operation) not in self._operations:
            return None
        event: dict[str, Any] = {
            "event_id": _span_id(span),
            "ts": _time(span.get("startTimeUnixNano", span.get("start_time_unix_nano"))),
        }
        for name, field in TOKENS:
            if name in attributes:
                event[field] = attributes[name]
        for names, field in FIRST_OF:
            value = _first(attributes, names)
            if value is not None:
                event[field] = str(value)
        for names, field in RESOURCE_FIRST_OF:
            value = _first(resource, names)
            if value is not None:
                event[field] = str(value)
        labels: dict[str, str] = {}
        agent = attributes.get("gen_ai.agent.name")
        if agent is not None:
            labels["agent"] = str(agent)
        for dimension, name in self._attributes:
            value = attributes.get(name, resource.get(name))
            if value is None:
                continue
            if dimension.startswith("labels."):
                labels[dimension[len("labels.") :]] = str(value)
            else:
                event[dimension] = str(value)
        if labels:
            event["labels"] = labels
        cost = _cost(attributes)
        if cost is not None:
            event["cost_usd"] = cost
        return event


def _list(value: Any, name: str) -> list[Any]:
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise OtlpError(f"{name} is not a list of objects")
    return value


def _attributes(values: Any) -> dict[str, Any]:
    """OTLP ``KeyValue`` list -> plain dict (AnyValue unwrapped)."""
    if not values:
        return {}
    if not isinstance(values, list):
        raise OtlpError("attributes is not a list")
    out: dict[str, Any] = {}
    for item in values:
        if isinstance(item, dict) and isinstance(item.get("key"), str):
            out[item["key"]] = _value(item.get("value"))
    return out


def _value(value: Any) -> Any:
    if not isinstance(value, dict) or not value:
        return None
    for kind in ("stringValue", "string_value", "boolValue", "bool_value"):
        if kind in value:
            return value[kind]
    for kind in ("intValue", "int_value"):
        if kind in value:
            raw = value[kind]  # int64 is a JSON string in the protobuf JSON mapping
            try:
                return int(raw)
            except (TypeError, ValueError):
                return raw  # the parser dead-letters it with its usual reason
    for kind in ("doubleValue", "double_value"):
        if kind in value:
            return value[kind]
    if "arrayValue" in value:
        return [_value(v) for v in (value["arrayValue"] or {}).get("values", [])]
    if "kvlistValue" in value:
        return _attributes((value["kvlistValue"] or {}).get("values"))
    return None


def _first(attributes: Mapping[str, Any], names: Iterable[str]) -> Any:
    for name in names:
        value = attributes.get(name)
        if value is not None and value != "":
            return value
    return None


def _span_id(span: Mapping[str, Any]) -> str:
    """The span id as 16 hex digits (OTLP/JSON writes hex, protobuf's JSON mapping base64)."""
    raw = span.get("spanId", span.get("span_id"))
    if not isinstance(raw, str) or not raw:
        raise OtlpError("a span without spanId")
    if len(raw) == 16:
        try:
            bytes.fromhex(raw)
            return raw.lower()
        except ValueError:
            pass
    try:
        decoded = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise OtlpError(f"spanId {raw!r} is neither hex nor base64") from None
    if len(decoded) != 8:
        raise OtlpError(f"spanId {raw!r} is not 8 bytes")
    return decoded.hex()


def _time(nanos: Any) -> str:
    try:
        value = int(nanos)
    except (TypeError, ValueError):
        raise OtlpError(f"startTimeUnixNano {nanos!r} is not a number") from None
    if value <= 0:
        raise OtlpError("a span without startTimeUnixNano")
    seconds, rest = divmod(value, 1_000_000_000)
    moment = datetime.fromtimestamp(seconds, tz=timezone.utc)
    fraction = f".{rest // 1000:06d}" if rest >= 1000 else ""  # microseconds, as Python keeps
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + fraction + "Z"


def _cost(attributes: Mapping[str, Any]) -> float | None:
    """USD of the proposed ``gen_ai.usage.cost.*`` attributes: the total, else the parts."""
    currency = attributes.get(COST_PREFIX + "currency")
    if currency is not None and str(currency).upper() != "USD":
        return None
    total = attributes.get(COST_PREFIX + "total")
    if isinstance(total, (int, float)) and not isinstance(total, bool):
        return float(total)
    parts = [
        v
        for k, v in attributes.items()
        if k.startswith(COST_PREFIX) and isinstance(v, (int, float)) and not isinstance(v, bool)
    ]
    return float(sum(parts)) if parts else None
