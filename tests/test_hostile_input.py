"""Single hostile or careless lines: none may stop, silence or corrupt the engine.

Each test is one row of the hostile-input table: the line, and what the product must do
with it (a dead letter with a reason, the same alerts as without it, exact sums).
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spendwatch.config import load_config
from spendwatch.core.timefmt import parse_rfc3339
from spendwatch.ingest.decoding import BlockDecoder
from spendwatch.ingest.events import EventBounds
from spendwatch.ingest.parser import STREAM_TIME_QUORUM, EventParser
from spendwatch.ingest.pricing import PriceTable, PricingConfig
from spendwatch.ops import demo
from spendwatch.ops.backtest import backtest
from tests.conftest import DETECTION_CONFIG, comparable, read_alerts, write_config

CLI = [sys.executable, "-m", "spendwatch.cli"]
TS = "2026-11-16T01:00:00Z"
PRICES = PricingConfig.model_validate(
    {"models": {"m": {"input": 1.0, "output": 2.0}}, "fallback": {"input": 1.0, "output": 2.0}}
)


def _line(**fields) -> bytes:
    return json.dumps({"event_id": "e1", "ts": TS, "tenant": "acme", **fields}).encode()


def _parser(**kwargs) -> EventParser:
    return EventParser(PriceTable(PRICES), ["tenant"], 3600, **kwargs)


def _config(tmp_path: Path, extra: str = "") -> Path:
    text = DETECTION_CONFIG.format(
        dead_letter=tmp_path / "dead.jsonl",
        alerts=tmp_path / "run-alerts.jsonl",
        pricing=demo.pricing_yaml(),
    )
    return write_config(tmp_path, extra + text)


def _backtest(tmp_path: Path, lines: list[bytes], name: str = "events") -> tuple[dict, list, list]:
    events = tmp_path / f"{name}.jsonl"
    events.write_bytes(b"\n".join(lines) + b"\n")
    config = load_config(_config(tmp_path))
    alerts, dead = tmp_path / f"{name}.alerts.jsonl", tmp_path / f"{name}.dead.jsonl"
    summary = backtest(config, str(events), str(alerts), dead_letter=str(dead))
    records = [json.loads(r) for r in dead.read_text().splitlines()] if dead.exists() else []
    return summary, read_alerts(alerts), records


@pytest.fixture(scope="module")
def small_stream() -> demo.DemoStream:
    return demo.generate(days=2, scale=0.3, seed=11)


# -- row 1: nesting past the decoder's recursion limit ------------------------------------


def test_a_deeply_nested_line_is_a_dead_letter_not_a_crash(tmp_path, small_stream):
    deep = _line(x=None).replace(b'"x": null', b'"x": ' + b"[" * 1000 + b"]" * 1000)
    lines = [*small_stream.lines[:100], deep, *small_stream.lines[100:200]]
    summary, _, dead = _backtest(tmp_path, lines)
    assert summary["events"] == 200
    [record] = dead
    assert record["reason"] == "malformed JSON: nested too deeply"


def test_a_restarted_worker_does_not_replay_into_a_poison_line(tmp_path, small_stream):
    deep = b'{"event_id":"d","ts":"' + TS.encode() + b'","x":' + b"[" * 5000 + b"]" * 5000 + b"}"
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"\n".join([deep, *small_stream.lines[:500], deep]) + b"\n")
    config = _config(tmp_path, f"source:\n  type: jsonl\n  path: {events}\n")
    for _ in range(2):  # the second start resumes from the state the first one left
        run = subprocess.run(
            [*CLI, "run", "--config", str(config), "--state-dir", str(tmp_path / "state")],
            capture_output=True,
            timeout=300,
        )
        assert run.returncode == 0, run.stderr.decode()[-2000:]
    records = (tmp_path / "dead.jsonl").read_text().splitlines()
    # one dead letter per poison line; the restart resumed past them, writing none again
    assert [json.loads(r)["reason"] for r in records] == ["malformed JSON: nested too deeply"] * 2


# -- rows 2 and 3: counts that would overflow or wrap a sum -----------------------------


@pytest.mark.parametrize("tokens", [10**30, 2**63, 10**17, 10**16])
def test_absurd_token_counts_are_dead_letters(tokens):
    lines = [_line(model="m", input_tokens=tokens), _line(event_id="ok", model="m")]
    batch = _parser().parse(lines)
    assert batch.size == 1
    [dead] = batch.dead
    assert "out of range" in dead.reason or "<=" in dead.reason


def test_ten_huge_events_cannot_turn_a_budget_negative(tmp_path, small_stream):
    huge = [_line(event_id=f"h{i}", model="gpt-4o", output_tokens=10**16) for i in range(10)]
    _, alerts, dead = _backtest(tmp_path, [*small_stream.lines[:300], *huge])
    assert len(dead) == 10
    assert all(a["observed"] >= 0 for a in alerts if a["kind"] == "budget")


def test_money_at_the_bounds_sums_exactly(tmp_path):
    """Many events at the largest admitted cost in one window: exact, no int64 wrap."""
    bounds = EventBounds()
    count = 20_000  # 20,000 × $1M = $2·10¹⁰ = 2·10¹⁹ nano-dollars, past int64
    lines = [
        _line(event_id=f"b{i}", cost_usd=bounds.max_cost_usd, ts=f"2026-11-16T01:{i % 60:02d}:00Z")
        for i in range(count)
    ]
    closing = [_line(event_id=f"c{i}", cost_usd=0.0, ts="2026-11-18T00:00:00Z") for i in range(3)]
    _, alerts, dead = _backtest(tmp_path, [*lines, *closing])
    assert not dead
    expected = Decimal(count) * Decimal(str(bounds.max_cost_usd))
    crossings = [a for a in alerts if a["kind"] == "budget" and a["scope"] == {"tenant": "acme"}]
    assert crossings
    assert max(Decimal(str(a["observed"])) for a in crossings) == expected


def test_a_cost_over_the_bound_is_a_dead_letter():
    batch = _parser(bounds=EventBounds(max_cost_usd=100.0)).parse(
        [_line(cost_usd=100.5), _line(event_id="e2", cost_usd=1e308), _line(event_id="ok")]
    )
    assert batch.size == 1
    assert [d.reason.split(":")[0] for d in batch.dead] == ["cost out of range"] * 2


# -- rows 4 and 5: event time ---------------------------------------------------------------


@pytest.mark.parametrize(
    "ts", ["9999-12-31T23:59:59Z", "1970-01-01T00:00:00Z", "0001-01-01T00:00:00+01:00"]
)
def test_timestamps_outside_2000_2100_are_dead_letters(ts):
    batch = _parser().parse([_line(ts=ts), _line(event_id="ok")])
    assert batch.size == 1
    [dead] = batch.dead
    assert dead.reason.startswith("timestamp out of range")


def test_one_far_future_event_changes_no_alert(tmp_path, planted):
    """A client whose clock is centuries (or years) ahead must not silence alerting."""
    lines = planted.lines
    _, clean, _ = _backtest(tmp_path, lines, "clean")
    assert len(clean) >= 3
    middle = len(lines) // 2
    for name, ts in (("far", "2999-06-01T00:00:00Z"), ("near", "2031-06-01T00:00:00Z")):
        future = _line(event_id=f"future-{name}", ts=ts, model="gpt-4o", input_tokens=10)
        summary, alerts, _ = _backtest(tmp_path, [*lines[:middle], future, *lines[middle:]], name)
        assert summary["late_events"] == 0
        kept = [a for a in alerts if not a["window_start"].startswith(ts[:4])]
        assert comparable(kept) == comparable(clean), name


def test_live_input_rejects_events_ahead_of_the_wall_clock():
    now = parse_rfc3339("2026-11-17T00:00:00Z")
    parser = _parser(wall_clock=lambda: now)
    ahead = _line(ts="2026-11-17T00:20:00Z")  # 20 min ahead of the wall clock
    fine = _line(event_id="ok", ts="2026-11-17T00:05:00Z")  # within the 10 min skew
    batch = parser.parse([ahead, fine])
    assert batch.size == 1
    assert batch.dead[0].reason.startswith("future timestamp")


def test_the_stream_clock_needs_a_quorum_of_events():
    parser = _parser()
    early = [_line(event_id=f"a{i}", ts=TS) for i in range(5)]
    assert parser.parse(early).stream_time == parse_rfc3339(TS)
    ahead = "2030-01-01T00:00:00Z"
    jump = [_line(event_id=f"j{i}", ts=ahead) for i in range(STREAM_TIME_QUORUM - 1)]
    assert parser.parse(jump).stream_time == parse_rfc3339(TS)  # too few to move it
    third = [_line(event_id="j-last", ts=ahead)]
    assert parser.parse(third).stream_time == parse_rfc3339(ahead)  # a quorum agrees


# -- row 7: an output naming the input ---------------------------------------------------


@pytest.mark.parametrize("flag", ["--alerts-out", "--dead-letter"])
def test_an_output_equal_to_the_input_is_refused(tmp_path, small_stream, flag):
    events = tmp_path / "u.jsonl"
    events.write_bytes(b"\n".join(small_stream.lines[:50]) + b"\n")
    before = events.read_bytes()
    outputs = {"--alerts-out": str(tmp_path / "a.jsonl"), "--dead-letter": str(tmp_path / "d")}
    outputs[flag] = str(events)
    args = [*CLI, "backtest", "--config", str(_config(tmp_path)), "--input", str(events)]
    for name, path in outputs.items():
        args += [name, path]
    result = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert f"{flag} {events} is the input file" in result.stderr
    assert events.read_bytes() == before


# -- ordinary file quirks ------------------------------------------------------------------


def test_a_byte_order_mark_is_skipped_and_blank_lines_are_counted(tmp_path, small_stream):
    lines = [b"\xef\xbb\xbf" + small_stream.lines[0], b"", b"   ", *small_stream.lines[1:40]]
    summary, _, dead = _backtest(tmp_path, lines)
    assert dead == []
    assert summary["events"] == 40
    assert summary["blank_lines"] == 2


def test_dead_letter_and_state_files_are_owner_only(tmp_path, small_stream):
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"\n".join([b"{bad", *small_stream.lines[:100]]) + b"\n")
    config = _config(tmp_path, f"source:\n  type: jsonl\n  path: {events}\n")
    state = tmp_path / "state"
    run = subprocess.run(
        [*CLI, "run", "--config", str(config), "--state-dir", str(state)],
        capture_output=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr.decode()[-2000:]
    assert stat.S_IMODE(os.stat(tmp_path / "dead.jsonl").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(state).st_mode) == 0o700
    parts = list(state.glob("part-*.sqlite3"))
    assert parts and all(stat.S_IMODE(os.stat(p).st_mode) == 0o600 for p in parts)


# -- fuzz: arbitrary bytes never escape the decoder ----------------------------------------

_fragments = st.sampled_from(
    [
        b"{",
        b"}",
        b"[",
        b"]",
        b'"event_id":"x",',
        b'"ts":"2026-11-16T00:00:00Z"',
        b'"input_tokens":1' + b"0" * 40,
        b'"cost_usd":1e400',
        b"\n",
        b"\xef\xbb\xbf",
        b"\xff",
        b"\x00",
        b'"labels":{"a":{"b":[',
    ]
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    chunks=st.lists(st.one_of(_fragments, st.binary(max_size=40)), max_size=60),
    depth=st.integers(0, 3000),
)
def test_arbitrary_bytes_become_events_or_dead_letters(chunks, depth):
    block = b"".join(chunks) + b"\n" + b"[" * depth + b"\n" + _line(event_id="anchor")
    parser = _parser()
    batch = parser.finish(BlockDecoder(PriceTable(PRICES), ["tenant"]).decode_block(block))
    lines = [line for line in block.split(b"\n") if line.strip()]
    assert batch.size + len(batch.dead) + batch.duplicates == len(lines)
    assert batch.size >= 1  # the valid anchor line always survives its neighbours
    assert np.all(batch.spend_nanos >= 0)


def test_made_up_model_names_do_not_grow_the_fallback_counter_without_bound():
    from collections import Counter

    from spendwatch.core.stats import MAX_FALLBACK_MODELS, OTHER_MODELS, count_fallback

    counter: Counter = Counter()
    new = count_fallback(counter, {f"model-{i}": 1 for i in range(5 * MAX_FALLBACK_MODELS)})
    assert len(new) == MAX_FALLBACK_MODELS and len(counter) == MAX_FALLBACK_MODELS + 1
    assert counter[OTHER_MODELS] == 4 * MAX_FALLBACK_MODELS
    assert sum(counter.values()) == 5 * MAX_FALLBACK_MODELS  # every event still counted
    assert count_fallback(counter, {"model-0": 2, "model-x": 1}) == []
    assert counter["model-0"] == 3 and counter[OTHER_MODELS] == 4 * MAX_FALLBACK_MODELS + 1
