"""Parsing: every kind of bad input dead-letters with a reason; good input is priced exactly."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spendwatch.ingest.events import UNATTRIBUTED
from spendwatch.ingest.parser import EventParser
from spendwatch.ingest.pricing import ModelPrice, PriceTable, PricingConfig

PRICES = PricingConfig(
    models={"mini": ModelPrice(input=0.15, cached_input=0.075, output=0.60)},
)
WITH_FALLBACK = PricingConfig(models=PRICES.models, fallback=ModelPrice(input=5, output=15))


def parser(pricing: PricingConfig = PRICES, **kwargs) -> EventParser:
    return EventParser(PriceTable(pricing), ["tenant", "labels.team"], 3600, **kwargs)


def line(**fields) -> bytes:
    event = {"event_id": "e1", "ts": "2026-11-24T10:00:00Z", "model": "mini"}
    event.update(fields)
    event = {k: v for k, v in event.items() if v is not None}
    return json.dumps(event).encode()


GOOD = line(event_id="good", tenant="acme", input_tokens=1000, output_tokens=100)

BAD_LINES = {
    "malformed JSON": b'{"event_id": "x", "ts": ',
    "wrong type": line(input_tokens="many"),
    "negative tokens": line(output_tokens=-5),
    "zero requests": line(requests=0),
    "NaN literal": b'{"event_id":"n","ts":"2026-11-24T10:00:00Z","cost_usd":NaN}',
    "infinite number": b'{"event_id":"i","ts":"2026-11-24T10:00:00Z","cost_usd":1e999}',
    "negative cost on usage": line(cost_usd=-3.0),
    "missing ts": line(ts=None),
    "missing event_id": line(event_id=None),
    "naive timestamp": line(ts="2026-11-24T10:00:00"),
    "not a timestamp": line(ts="yesterday"),
    "unknown model without fallback": line(model="gpt-9"),
    "non-UTF-8 bytes": b'{"event_id":"u","ts":"2026-11-24T10:00:00Z","tenant":"\xff\xfe"}',
    "labels not strings": line(labels={"team": 3}),
    "top level not an object": b"[1, 2, 3]",
}


def parse_as_lines(lines: list[bytes]):
    return parser().parse(lines)


def parse_as_block(lines: list[bytes]):
    """The way files and stdin are read: one block of newline-separated events."""
    return parser().parse_block(b"\n".join(lines))


@pytest.mark.parametrize("parse", [parse_as_lines, parse_as_block])
@pytest.mark.parametrize("name", sorted(BAD_LINES))
def test_each_bad_line_dead_letters_alone_with_a_reason(name, parse):
    batch = parse([GOOD, BAD_LINES[name], GOOD.replace(b"good", b"good2")])
    assert batch.size == 2, "good neighbours are kept"
    [dead] = batch.dead
    assert dead.raw == BAD_LINES[name].strip()
    assert dead.reason and len(dead.reason) > 10
    record = dead.to_record()
    json.dumps(record)  # always serialisable, even for non-UTF-8 input
    assert ("raw" in record) != ("raw_base64" in record)


def test_reasons_say_what_is_wrong():
    reasons = {n: parser().parse([BAD_LINES[n]]).dead[0].reason for n in BAD_LINES}
    assert reasons["malformed JSON"].startswith("malformed JSON")
    assert "input_tokens" in reasons["wrong type"]
    assert "output_tokens" in reasons["negative tokens"] and ">= 0" in reasons["negative tokens"]
    assert "negative cost_usd" in reasons["negative cost on usage"]
    assert "`ts`" in reasons["missing ts"] or "ts" in reasons["missing ts"]
    assert "event_id" in reasons["missing event_id"]
    assert "timezone" in reasons["naive timestamp"]
    assert "gpt-9" in reasons["unknown model without fallback"]


def test_megabyte_line_is_dead_lettered_not_parsed():
    huge = line(tenant="x" * 1_000_000)
    batch = parser().parse([GOOD, huge])
    assert batch.size == 1
    assert "over the 65536-byte limit" in batch.dead[0].reason
    assert batch.dead[0].raw == huge


def test_credit_lines_may_be_negative_and_are_not_anomaly_input():
    credit = line(event_id="c", cost_usd=-2.5, charge_category="Credit", model=None)
    batch = parser().parse([GOOD, credit])
    assert batch.dead == []
    assert batch.spend_nanos.tolist()[1] == -2_500_000_000
    assert batch.anomaly_input.tolist() == [True, False]


def test_pricing_is_exact_nanodollars_with_cached_tokens():
    event = line(input_tokens=1000, cached_input_tokens=400, output_tokens=100)
    batch = parser().parse([event])
    # 600 uncached * 0.15 + 400 cached * 0.075 + 100 out * 0.60, per million, in nano-USD
    expected = (600 * 0.15 + 400 * 0.075 + 100 * 0.60) * 1000
    assert batch.spend_nanos.tolist() == [round(expected)]


def test_cost_usd_wins_over_the_catalog_and_fallback_is_reported():
    batch = parser(WITH_FALLBACK).parse(
        [
            line(event_id="a", cost_usd=0.25, input_tokens=10**6),
            line(event_id="b", model="gpt-9", input_tokens=1000, output_tokens=1000),
        ]
    )
    assert batch.spend_nanos.tolist() == [250_000_000, (5 + 15) * 1000 * 1000]
    assert batch.fallback_priced == {"gpt-9": 1}


def test_missing_dimensions_count_as_unattributed():
    batch = parser().parse([line(event_id="a", labels={"team": "search"}), line(event_id="b")])
    assert batch.dims["tenant"].tolist() == [UNATTRIBUTED, UNATTRIBUTED]
    assert batch.dims["labels.team"].tolist() == ["search", UNATTRIBUTED]


def test_duplicates_are_counted_once_across_batches_within_the_horizon():
    p = parser()
    first = p.parse([line(event_id="a"), line(event_id="b"), line(event_id="a")])
    assert first.size == 2 and first.duplicates == 1
    again = p.parse([line(event_id="b"), line(event_id="c")])
    assert again.size == 1 and again.duplicates == 1
    much_later = p.parse([line(event_id="a", ts="2026-11-24T13:30:00Z")])
    assert much_later.size == 1, "ids older than the horizon are forgotten"


def test_dedup_state_survives_snapshot_and_restore():
    p = parser()
    p.parse([line(event_id="a")])
    restored = parser()
    restored.restore(p.snapshot())
    assert restored.parse([line(event_id="a")]).duplicates == 1


def test_blank_lines_and_crlf_are_tolerated():
    batch = parser().parse([GOOD + b"\r", b"", b"   ", GOOD.replace(b"good", b"g2")])
    assert batch.size == 2 and batch.dead == []
    assert np.all(batch.ts == batch.ts[0])


def test_a_block_decodes_like_its_lines():
    lines = [
        line(event_id=f"e{i}", tenant=f"t{i % 3}", input_tokens=i, labels={"team": str(i % 2)})
        for i in range(50)
    ]
    by_lines, by_block = parse_as_lines(lines), parse_as_block([*lines, b""])
    assert by_block.size == by_lines.size == 50
    assert by_block.spend_nanos.tolist() == by_lines.spend_nanos.tolist()
    for dim in ("tenant", "labels.team"):
        assert by_block.dims[dim].tolist() == by_lines.dims[dim].tolist()


def test_two_events_on_one_line_of_a_block_are_dead_lettered():
    two = line(event_id="x") + b" " + line(event_id="y")
    batch = parse_as_block([GOOD, two, GOOD.replace(b"good", b"g2")])
    assert batch.size == 2
    [dead] = batch.dead
    assert dead.raw == two and "malformed JSON" in dead.reason


def test_rejected_row_of_a_block_keeps_its_own_raw_line():
    negative = line(event_id="neg", cost_usd=-1.0)
    batch = parse_as_block([GOOD, negative, GOOD.replace(b"good", b"g2")])
    [dead] = batch.dead
    assert dead.raw == negative and "negative cost_usd" in dead.reason


_VALID = st.fixed_dictionaries(
    {"event_id": st.text("abc", min_size=1, max_size=3), "ts": st.just("2026-11-24T10:00:00Z")},
    optional={
        "tenant": st.sampled_from(["acme", "globex", "", "unattributed"]),
        "model": st.sampled_from(["mini", "gpt-9"]),
        "input_tokens": st.integers(-1, 10**6),
        "cost_usd": st.sampled_from([0.5, -1.0, 0.0]),
        "charge_category": st.sampled_from(["usage", "Credit"]),
        "labels": st.dictionaries(st.sampled_from(["team", "x"]), st.sampled_from(["a", "b"])),
    },
).map(lambda event: json.dumps(event).encode())
_GARBAGE = st.binary(max_size=40).filter(lambda raw: b"\n" not in raw)
_TWO_ON_A_LINE = st.tuples(_VALID, _VALID).map(lambda pair: pair[0] + b" " + pair[1])
_PADDED = st.tuples(_VALID, st.sampled_from([b"\r", b" ", b"  \t"])).map(
    lambda pair: pair[0] + pair[1]
)
_LINES = st.lists(
    st.one_of(
        _VALID, _VALID, _VALID, _PADDED, _GARBAGE, _TWO_ON_A_LINE, st.sampled_from([b"", b"  "])
    ),
    max_size=120,
)


def _picture(batch) -> tuple:
    return (
        batch.ts.tolist(),
        batch.spend_nanos.tolist(),
        batch.input_tokens.tolist(),
        batch.anomaly_input.tolist(),
        {d: c.tolist() for d, c in batch.dims.items()},
        sorted((d.reason, d.raw) for d in batch.dead),  # which lines, not in which order
        batch.duplicates,
        batch.fallback_priced,
    )


def _one_by_one(pricing, lines) -> tuple:
    """The reference: every line parsed on its own, in order, by one parser."""
    p = parser(pricing)
    batches = [p.parse([line]) for line in lines]
    pictures = [_picture(batch) for batch in batches]

    def joined(part) -> list:
        return [item for picture in pictures for item in part(picture)]

    merged = [joined(lambda picture, k=k: picture[k]) for k in (0, 1, 2, 3)]
    dims = {d: joined(lambda picture, d=d: picture[4][d]) for d in p.dimensions}
    dead = sorted(joined(lambda picture: picture[5]))
    fallback: dict[str, int] = {}
    for batch in batches:
        for model, n in batch.fallback_priced.items():
            fallback[model] = fallback.get(model, 0) + n
    return (*merged, dims, dead, sum(b.duplicates for b in batches), fallback)


@settings(max_examples=300, deadline=None)
@given(_LINES, st.booleans())
def test_a_block_and_its_lines_always_parse_like_each_line_alone(lines, fallback):
    pricing = WITH_FALLBACK if fallback else PRICES
    reference = _one_by_one(pricing, lines)
    assert _picture(parser(pricing).parse(lines)) == reference
    assert _picture(parser(pricing).parse_block(b"\n".join(lines))) == reference
