"""Dedup by each event's own time: late duplicates are caught, what cannot be checked is
counted, and the outcome does not depend on how the input is cut into batches or where
a snapshot is restored."""

from __future__ import annotations

import itertools
import json
import random
from datetime import datetime, timedelta, timezone

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from spendwatch.ingest.events import DedupWindow, id_keys
from spendwatch.ingest.parser import EventParser
from spendwatch.ingest.pricing import PriceTable, PricingConfig

T0 = datetime(2026, 11, 24, tzinfo=timezone.utc)
HOUR = 3600


def parser(horizon: int = 6 * HOUR, lateness: int = 120) -> EventParser:
    return EventParser(PriceTable(PricingConfig()), ["tenant"], horizon, allowed_lateness=lateness)


def line(event_id: str, hours: float, cost: float = 0.01) -> bytes:
    ts = (T0 + timedelta(hours=hours)).isoformat().replace("+00:00", "Z")
    return json.dumps({"event_id": event_id, "ts": ts, "cost_usd": cost}).encode()


def test_a_duplicate_hours_late_is_caught_while_its_bucket_is_held():
    p = parser(horizon=6 * HOUR)
    p.parse([line("first", 0.2)] + [line(f"e{h}", h) for h in range(1, 5)])
    again = p.parse([line("first", 0.2)])  # 4 h after the stream left its hour
    assert again.size == 0 and again.duplicates == 1 and again.unchecked == 0


def test_an_event_older_than_the_horizon_is_admitted_and_counted_unchecked():
    p = parser(horizon=2 * HOUR)
    p.parse([line("old", 0.1)] + [line(f"e{h}", h) for h in range(1, 8)])
    late = p.parse([line("old", 0.1), line("older", 0.5)])
    assert late.size == 2 and late.duplicates == 0 and late.unchecked == 2
    assert late.late == 2
    assert p.tally["dedup_unchecked"] == 2


def test_a_far_future_event_does_not_age_the_window():
    p = parser(horizon=2 * HOUR)
    p.parse([line("a", 0.1), line("b", 0.2), line("c", 0.3), line("wrong-clock", 24 * 365)])
    assert p.parse([line("a", 0.1)]).duplicates == 1


def _dirty_lines(seed: int, count: int = 3000) -> list[bytes]:
    rng = random.Random(seed)
    lines: list[tuple[float, bytes]] = []
    for n in range(count):
        hours = n * 12 / count
        position = float(n)
        if rng.random() < 0.05:
            position += rng.uniform(100, 1500)  # hours late
        lines.append((position, line(f"id-{n}", hours, cost=rng.randint(1, 999) / 1000)))
        if rng.random() < 0.05:
            lines.append((position + rng.uniform(1, 1200), line(f"id-{n}", hours)))
    lines.sort(key=lambda item: item[0])
    return [raw for _, raw in lines]


def _replay(lines: list[bytes], cuts: list[int], restore_at: set[int]) -> tuple:
    p = parser(horizon=3 * HOUR)
    kept: list[float] = []
    spend = 0
    counts = np.zeros(3, dtype=np.int64)
    bounds = [0, *cuts, len(lines)]
    for index, (lo, hi) in enumerate(itertools.pairwise(bounds)):
        if index in restore_at:  # a restart: a fresh parser from the snapshot
            state = p.snapshot()
            p = parser(horizon=3 * HOUR)
            p.restore(state)
        batch = p.parse(lines[lo:hi])
        kept.extend(batch.ts.tolist())
        spend += int(batch.spend_nanos.sum())
        counts += (batch.duplicates, batch.late, batch.unchecked)
    return sorted(kept), spend, counts.tolist(), p.tally


def test_the_outcome_does_not_depend_on_batching_or_restores():
    lines = _dirty_lines(seed=3)
    reference = _replay(lines, list(range(1, len(lines))), set())  # event by event
    rng = random.Random(9)
    for _ in range(4):
        cuts = sorted(rng.sample(range(1, len(lines)), rng.randint(2, 60)))
        restores = set(rng.sample(range(len(cuts) + 1), min(5, len(cuts))))
        assert _replay(lines, cuts, restores) == reference
    whole = _replay(lines, [], set())
    assert whole == reference
    _, _, (duplicates, late, unchecked), _ = reference
    assert duplicates > 100 and late > 100 and unchecked > 0


def test_a_snapshot_of_two_generations_still_restores():
    p = parser(horizon=HOUR)
    legacy = (T0.timestamp(), ["a"], ["b"])
    p.restore({"dedup": legacy, "stream_clock": []})
    batch = p.parse([line("a", 0.5), line("b", 0.6), line("c", 0.7)])
    assert batch.size == 1 and batch.duplicates == 2


def test_ids_take_at_most_16_bytes_each():
    window = DedupWindow(48 * HOUR)
    count = 200_000
    keys = id_keys([f"evt-{n:012d}" for n in range(count)])
    ts = T0.timestamp() + np.arange(count, dtype=np.float64) * (48 * HOUR / count)
    for lo in range(0, count, 5000):
        fresh, _, additions = window.check(
            ts[lo : lo + 5000], keys[lo : lo + 5000], np.ones(5000, dtype=bool)
        )
        assert fresh.all()
        window.commit(additions)
    assert window.size == count
    assert window.nbytes / count <= 16


@settings(max_examples=200, deadline=None)
@given(
    largest=st.lists(st.floats(0, 5000, allow_nan=False), max_size=3),
    values=st.lists(st.floats(0, 5000, allow_nan=False), max_size=60),
    lateness=st.sampled_from([0.0, 30.0, 300.0]),
)
def test_vectorised_late_count_and_clock_equal_the_event_by_event_pass(largest, values, lateness):
    import heapq

    from spendwatch.ingest.parser import _late_and_clock, _running_quorum

    heapq.heapify(largest)
    array = np.array(values, dtype=np.float64)
    before, heap = _running_quorum(largest, array)
    late, fast_heap = _late_and_clock(largest, array, lateness)
    assert late == int((array < before - lateness).sum())
    assert sorted(fast_heap) == sorted(heap)
