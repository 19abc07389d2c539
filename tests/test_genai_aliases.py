"""OpenTelemetry GenAI attribute names are accepted as aliases of the usage-event fields."""

from __future__ import annotations

import orjson

from spendwatch.ingest.genai import apply_aliases
from spendwatch.ingest.parser import EventParser
from spendwatch.ingest.pricing import PriceTable, PricingConfig

PRICES = PricingConfig.model_validate({"models": {"gpt-4o-mini": {"input": 1.0, "output": 2.0}}})


def parser() -> EventParser:
    return EventParser(PriceTable(PRICES), ["model", "provider", "tenant"], dedup_horizon=3600)


def line(**fields: object) -> bytes:
    return orjson.dumps(fields)


def test_otel_attribute_names_price_and_attribute_like_the_canonical_fields() -> None:
    otel = line(
        event_id="a",
        ts="2026-01-01T00:00:00Z",
        tenant="acme",
        **{
            "gen_ai.usage.input_tokens": 1_000_000,
            "gen_ai.usage.output_tokens": 500_000,
            "gen_ai.request.model": "gpt-4o-mini",
            "gen_ai.provider.name": "openai",
        },
    )
    canonical = line(
        event_id="b",
        ts="2026-01-01T00:00:00Z",
        tenant="acme",
        input_tokens=1_000_000,
        output_tokens=500_000,
        model="gpt-4o-mini",
        provider="openai",
    )
    batch = parser().parse([otel, canonical])
    assert batch.dead == []
    assert batch.input_tokens.tolist() == [1_000_000, 1_000_000]
    assert batch.output_tokens.tolist() == [500_000, 500_000]
    assert batch.spend_nanos.tolist() == [2_000_000_000, 2_000_000_000]
    assert batch.dims["model"].tolist() == ["gpt-4o-mini", "gpt-4o-mini"]
    assert batch.dims["provider"].tolist() == ["openai", "openai"]


def test_deprecated_gen_ai_system_names_the_provider() -> None:
    batch = parser().parse(
        [line(event_id="a", ts="2026-01-01T00:00:00Z", cost_usd=1.0, **{"gen_ai.system": "aws"})]
    )
    assert batch.dims["provider"].tolist() == ["aws"]


def test_provider_name_wins_over_system_and_canonical_fields_win_over_aliases() -> None:
    both = apply_aliases(
        line(
            **{
                "gen_ai.system": "old",
                "gen_ai.provider.name": "new",
                "model": "mine",
                "gen_ai.request.model": "theirs",
            }
        )
    )
    assert orjson.loads(both) == {"provider": "new", "model": "mine"}


def test_lines_without_aliases_and_non_objects_are_left_alone() -> None:
    plain = b'{"event_id":"a","ts":"2026-01-01T00:00:00Z"}'
    assert apply_aliases(plain) is plain
    assert apply_aliases(b'["gen_ai.system"]') == b'["gen_ai.system"]'
    assert apply_aliases(b'{"gen_ai.system": ') == b'{"gen_ai.system": '


def test_an_invalid_aliased_event_dead_letters_with_its_original_bytes() -> None:
    bad = b'{"event_id":"a","ts":"2026-01-01T00:00:00Z","gen_ai.usage.input_tokens":-5}'
    batch = parser().parse([bad])
    assert batch.size == 0
    assert [d.raw for d in batch.dead] == [bad]
    assert "input_tokens" in batch.dead[0].reason


def test_cache_reads_response_model_conversation_and_agent_have_aliases_too() -> None:
    event = orjson.loads(
        apply_aliases(
            line(
                event_id="c",
                ts="2026-01-01T00:00:00Z",
                labels={"team": "search"},
                **{
                    "gen_ai.usage.input_tokens": 100,
                    "gen_ai.usage.cache_read.input_tokens": 40,
                    "gen_ai.response.model": "gpt-4o-mini-2024-07-18",
                    "gen_ai.conversation.id": "conv-7",
                    "gen_ai.agent.name": "triage",
                },
            )
        )
    )
    assert event["cached_input_tokens"] == 40
    assert event["model"] == "gpt-4o-mini-2024-07-18"
    assert event["session"] == "conv-7"
    assert event["labels"] == {"team": "search", "agent": "triage"}
    both = orjson.loads(
        apply_aliases(
            line(**{"gen_ai.request.model": "gpt-4o-mini", "gen_ai.response.model": "other"})
        )
    )
    assert both == {"model": "gpt-4o-mini"}  # the requested model wins, as for OTLP spans
