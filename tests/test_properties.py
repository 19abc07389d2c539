"""Invariants under any batching and any arrival order within the allowed lateness.

The real parser, pre-aggregator and shard engines run the events; a recording
detector (a real implementation of the detector protocol) captures what each
closed window contained.
"""

from __future__ import annotations

import itertools
import json
from collections import defaultdict

from hypothesis import given, settings
from hypothesis import strategies as st

from spendwatch.dataflows.aggregate import PreAggregator
from spendwatch.dataflows.engine import EnginePlan, ShardEngine
from spendwatch.detectors.base import Aggregation, Totals, WindowDetector
from spendwatch.detectors.budget import BudgetConfig, BudgetRule
from spendwatch.ingest.parser import EventParser
from spendwatch.ingest.pricing import PriceTable, PricingConfig

T0 = 1_795_000_000 - 1_795_000_000 % 86400  # a midnight
LATENESS = 600
WINDOW = 300
SHARDS = 3


class RecordingDetector(WindowDetector):
    def __init__(self, dims: tuple[str, ...], zero_fill: bool = False) -> None:
        self.name = "recorder"
        self.aggregation = Aggregation(dims=dims, window=WINDOW)
        self.zero_fill = zero_fill
        self.seen: list[tuple[tuple, int, Totals]] = []

    def new_state(self) -> list:
        return []

    def observe(self, state, scope, window_start, totals):
        key = tuple(sorted(scope.items()))
        assert not state or state[-1] < window_start, "windows of a scope arrive in order"
        state.append(window_start)
        self.seen.append((key, window_start, totals))
        return []


events_strategy = st.lists(
    st.tuples(
        st.integers(0, 2 * 86400 - 1),  # event time offset: two days
        st.sampled_from(["acme", "globex", "initech"]),
        st.integers(1, 3_000_000_000),  # nano-dollars
        st.integers(0, LATENESS - 1),  # arrival jitter, within the lateness
    ),
    min_size=1,
    max_size=120,
)


def _lines(events) -> list[bytes]:
    return [
        json.dumps(
            {
                "event_id": f"e{i}",
                "ts": f"{_iso(T0 + offset)}",
                "tenant": tenant,
                "cost_usd": nanos / 1e9,
            }
        ).encode()
        for i, (offset, tenant, nanos, _) in enumerate(events)
    ]


def _iso(epoch: int) -> str:
    from spendwatch.core.timefmt import rfc3339

    return rfc3339(epoch)


def _arrival(events, lines):
    order = sorted(range(len(events)), key=lambda i: (events[i][0] + events[i][3], i))
    return [lines[i] for i in order]


def _cut(items, cuts):
    bounds = sorted({c % (len(items) + 1) for c in cuts} | {0, len(items)})
    return [items[a:b] for a, b in itertools.pairwise(bounds) if b > a]


def _run(plan: EnginePlan, batches) -> list:
    parser = EventParser(PriceTable(PricingConfig()), ["tenant"], 3600)
    aggregator = PreAggregator(plan.aggregations, SHARDS)
    engines = {str(s): ShardEngine(plan) for s in range(SHARDS)}
    alerts = []
    for lines in batches:
        for key, (max_ts, rows) in aggregator.route(parser.parse(lines)):
            alerts.extend(engines[key].on_message(max_ts, rows))
    for engine in engines.values():
        alerts.extend(engine.flush())
    return alerts


@settings(max_examples=60, deadline=None)
@given(events=events_strategy, cuts=st.lists(st.integers(0, 10_000), max_size=8))
def test_window_sums_equal_brute_force_for_any_batching_and_order(events, cuts):
    lines = _lines(events)
    recorder = RecordingDetector(("tenant",))
    plan = EnginePlan([recorder], [], LATENESS, 30 * 86400)
    _run(plan, _cut(_arrival(events, lines), cuts))

    expected: dict[tuple, list[int]] = defaultdict(lambda: [0, 0])
    for offset, tenant, nanos, _ in events:
        window_start = (T0 + offset) // WINDOW * WINDOW
        cell = expected[((("tenant", tenant),), window_start)]
        cell[0] += nanos
        cell[1] += 1
    observed = {(scope, ws): [t.spend_nanos, t.events] for scope, ws, t in recorder.seen}
    assert len(observed) == len(recorder.seen), "each window is judged once"
    assert observed == dict(expected)


@settings(max_examples=60, deadline=None)
@given(
    events=events_strategy,
    cuts=st.lists(st.integers(0, 10_000), max_size=8),
    amount=st.integers(1, 40),
)
def test_each_budget_threshold_fires_once_per_period_whatever_the_batching(events, cuts, amount):
    lines = _lines(events)
    budget = BudgetConfig(
        name="daily",
        scope_by=["tenant"],
        amount_usd=amount,
        period="day",
        thresholds=[50, 100, 150],
        window="5m",
    )
    plan = EnginePlan([], [BudgetRule(budget)], LATENESS, 30 * 86400)
    canonical = _run(plan, [sorted(lines, key=lambda raw: json.loads(raw)["ts"])])
    shuffled = _run(plan, _cut(_arrival(events, lines), cuts))

    def firing(alerts):
        return sorted(
            (a.fingerprint, a.window_start, a.threshold, a.period)
            for a in alerts
            if a.status == "firing"
        )

    assert firing(shuffled) == firing(canonical)
    keys = [(a.scope["tenant"], a.period, a.threshold) for a in shuffled if a.status == "firing"]
    assert len(keys) == len(set(keys))
    totals: dict[tuple[str, str], int] = defaultdict(int)
    for offset, tenant, nanos, _ in events:
        totals[(tenant, _iso(T0 + offset)[:10])] += nanos
    should_fire = {
        (tenant, day, threshold)
        for (tenant, day), nanos in totals.items()
        for threshold in (50, 100, 150)
        if nanos * 100 >= threshold * amount * 1e9
    }
    assert set(keys) == should_fire


def test_events_later_than_the_lateness_still_count_toward_budgets():
    budget = BudgetConfig(name="b", amount_usd=10, period="day", thresholds=[100], window="5m")
    recorder = RecordingDetector(())
    plan = EnginePlan([recorder], [BudgetRule(budget)], LATENESS, 30 * 86400)
    # three events two hours on (the stream clock's quorum) close the first window
    early = [{"offset": 0, "cost": 6.0}] + [{"offset": 7200 + i, "cost": 1.0} for i in range(3)]
    late = [{"offset": 10, "cost": 5.0}]  # two hours late: its window is long closed
    batches = [
        [
            json.dumps(
                {"event_id": f"{n}{i}", "ts": _iso(T0 + e["offset"]), "cost_usd": e["cost"]}
            ).encode()
            for i, e in enumerate(group)
        ]
        for n, group in (("a", early), ("b", late))
    ]
    alerts = _run(plan, batches)
    [crossing] = [a for a in alerts if a.status == "firing"]
    assert crossing.observed == 11.0  # the 7200 s window is still open
    assert crossing.window_start == _iso(T0)  # the late event's own window
    assert sum(t.events for _, _, t in recorder.seen) == 4, "detectors never see late data"
