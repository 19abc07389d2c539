"""State that must stop growing once its horizon is full, however long the run."""

from __future__ import annotations

import gc
import random
import tracemalloc

import pytest

from spendwatch.dataflows.engine import SERIES_FIELDS, EnginePlan, ShardEngine
from spendwatch.detectors import budget
from spendwatch.detectors.budget import BudgetConfig, BudgetRule, period_of

DAY = 86400
T0 = 1_795_000_000 - 1_795_000_000 % DAY
WINDOW = 900


def test_the_period_memo_holds_a_few_periods_after_a_year_of_windows():
    """Every window asks for its period: remembering each window would grow for years."""
    zones = ["UTC", "Europe/Berlin", "America/New_York"]
    for zone in zones:  # the time zones' own data is loaded once, outside the measure
        period_of(T0, "month", zone)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for start in range(T0, T0 + 365 * DAY, WINDOW):
        for zone in zones:
            period_of(start, "month", zone)
            period_of(start, "day", zone)
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    # (a memo per window held 25 MB here; other threads of the suite may allocate a little)
    assert held < 1024 * 1024, f"{held / 1024:.0f} KiB after 35 k windows"
    for zone in zones:
        for period in ("month", "day"):
            assert len(budget._recent_periods[(period, zone)]) <= budget.PERIODS_REMEMBERED


ZONES = ["UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe"]


@pytest.mark.parametrize("period", ["hour", "day", "week", "month"])
@pytest.mark.parametrize("zone", ZONES)
def test_the_remembered_period_is_the_one_computed(period, zone):
    """Across DST changes too: a remembered period answers exactly as the computation."""
    dice = random.Random(f"{period}{zone}")
    epochs = [T0 + dice.randrange(0, 400 * DAY) for _ in range(300)]
    epochs += [e + offset for e in epochs[:50] for offset in (-1, 0, 1, 3599, 3600)]
    for epoch in epochs + sorted(epochs):
        assert period_of(epoch, period, zone) == budget._period_bounds(epoch, period, zone)


def test_a_sparse_scope_keeps_only_the_series_horizon_of_event_time():
    """A scope with one window a day keeps 7 days of it, not a step count's worth (672)."""
    rule = BudgetRule(BudgetConfig(name="b", scope_by=["tenant"], amount_usd=1e9, window=WINDOW))
    plan = EnginePlan(
        detectors=[],
        budgets=[rule],
        allowed_lateness=0,
        scope_idle_ttl=10**9,
        series_horizon=7 * DAY,
        series_resolution=WINDOW,
    )
    engine = ShardEngine(plan)
    for day in range(60):
        start = T0 + day * DAY
        rows = [(0, ("busy",), start + w * WINDOW, 10, 1, 0, 0, 1) for w in range(96)]
        rows.append((0, ("sparse",), start, 10, 1, 0, 0, 1))
        engine.on_message(start + DAY, rows)
    series = engine.series[rule.aggregation]
    bound = T0 + 60 * DAY
    for scope in ("busy", "sparse"):
        starts = list(series[(scope,)][::SERIES_FIELDS])
        assert starts[0] >= bound - 7 * DAY, scope
    assert len(series[("sparse",)]) == 7 * SERIES_FIELDS
    assert len(series[("busy",)]) == 7 * 96 * SERIES_FIELDS
