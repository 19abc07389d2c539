"""Forecast alerts: days before a budget is exhausted, once per period, and not on track."""

from __future__ import annotations

import random
from pathlib import Path
from zoneinfo import ZoneInfo

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from spendwatch.config import load_config
from spendwatch.core.timefmt import parse_rfc3339
from spendwatch.detectors.budget import BudgetConfig, BudgetRule, period_of
from spendwatch.detectors.forecast import SlotClock, SpendModel
from spendwatch.ingest.parser import EventParser
from spendwatch.ingest.pricing import NANOS_PER_USD, PriceTable, PricingConfig
from spendwatch.ops import demo
from spendwatch.ops.backtest import backtest
from tests.conftest import read_alerts, write_config

NOV_1 = int(parse_rfc3339("2026-11-01T00:00:00Z"))
WINDOW = 300


def _hourly_usd(hour_start: int) -> float:
    """A daily cycle: 0.5 $/h at night, 2.5 $/h in the afternoon, weekends at 60 %."""
    hour = (hour_start // 3600) % 24
    weekend = (hour_start // 86400 + 3) % 7 >= 5
    return (1.5 - (1.0 if hour < 6 else -1.0 if 12 <= hour < 18 else 0.0)) * (
        0.6 if weekend else 1.0
    )


def _noisy(start: int) -> float:
    """±30 % hour-to-hour noise, the same on every run."""
    return _hourly_usd(start) * random.Random(start // 3600).uniform(0.7, 1.3)


def _run(amount: float, days: int = 30, **extra) -> list:
    rule = BudgetRule(BudgetConfig(name="monthly", amount_usd=amount, forecast=True, **extra))
    state = rule.new_state()
    alerts = []
    for start in range(NOV_1, NOV_1 + days * 86400, WINDOW):
        nanos = int(_noisy(start) / 12 * NANOS_PER_USD)
        alerts.extend(rule.add(state, {}, start, nanos))
    return alerts


def _month_total() -> float:
    return sum(_noisy(h) for h in range(NOV_1, NOV_1 + 30 * 86400, 3600))


def test_overspend_is_forecast_days_before_the_budget_runs_out():
    amount = 0.75 * _month_total()  # exhausted around day 22
    alerts = _run(amount)
    forecast = [a for a in alerts if a.kind == "forecast"]
    crossed = next(a for a in alerts if a.kind == "budget" and a.threshold == 100)
    assert len(forecast) == 1, "once per period"
    (alert,) = forecast
    assert alert.status == "firing" and alert.period == "2026-11" and alert.threshold == 100
    lead = parse_rfc3339(crossed.window_start) - parse_rfc3339(alert.window_start)
    assert lead >= 10 * 86400, f"only {lead / 86400:.1f} days of notice"
    assert alert.score >= 100 and alert.observed < amount
    assert alert.model_extra["projected_usd"] >= amount


def test_a_budget_on_track_gets_no_forecast_and_confidence_matters():
    assert not [a for a in _run(1.1 * _month_total()) if a.kind == "forecast"]
    tight = 0.97 * _month_total()
    sure = [a for a in _run(tight, forecast_confidence=0.99) if a.kind == "forecast"]
    loose = [a for a in _run(tight, forecast_confidence=0.6) if a.kind == "forecast"]
    assert loose and (not sure or sure[0].window_start > loose[0].window_start)


def test_forecast_resolves_when_the_period_ends_and_model_survives_rollover():
    rule = BudgetRule(BudgetConfig(name="daily", amount_usd=20, period="day", forecast=True))
    state = rule.new_state()
    alerts = []
    for start in range(NOV_1, NOV_1 + 3 * 86400, WINDOW):
        alerts.extend(rule.add(state, {}, start, int(_hourly_usd(start) / 12 * NANOS_PER_USD)))
        alerts.extend(rule.expire(state, {}, start))
        assert not rule.disposable(state, start, 8 * 86400)
    firing = [a for a in alerts if a.kind == "forecast" and a.status == "firing"]
    assert [a.period for a in firing] == ["2026-11-02", "2026-11-03"], "day 1 only learns"
    for alert in firing:  # ~36 $ a weekday: the 20 $ cap is foreseen before it is hit
        crossed = next(
            a
            for a in alerts
            if a.kind == "budget" and a.period == alert.period and a.threshold == 100
        )
        assert alert.window_start < crossed.window_start
    resolved = [a for a in alerts if a.kind == "forecast" and a.status == "resolved"]
    assert [a.period for a in resolved] == ["2026-11-02"]
    _, _, end = period_of(NOV_1 + 86400, "day", "UTC")
    assert parse_rfc3339(resolved[0].window_end) == end


def test_backtest_forecasts_a_weekly_budget_before_the_stream_ends(
    planted, planted_file, tmp_path: Path
):
    # 2 % above what acme spends in the stream's five weekdays: 100 % falls on the weekend
    amount = _acme_spend(planted_file) * 1.02
    path = write_config(
        tmp_path,
        f"""
dead_letter: {{path: {tmp_path / "dead.jsonl"}}}
{demo.pricing_yaml()}
budgets:
  - name: acme-weekly
    scope: {{tenant: acme}}
    amount_usd: {amount:.2f}
    period: week
    thresholds: [100]
    forecast: true
""",
    )
    out = tmp_path / "alerts.jsonl"
    backtest(load_config(path), str(planted_file), str(out))
    alerts = read_alerts(out)
    assert [a["kind"] for a in alerts] == ["forecast"], "100 % is never reached in the stream"
    notice = planted.end - parse_rfc3339(alerts[0]["window_end"])
    assert notice >= 86400, "at least a day before the stream (and the spend) ends"


def _acme_spend(path: Path) -> float:
    prices = PricingConfig(**yaml.safe_load(demo.pricing_yaml())["pricing"])
    parser = EventParser(PriceTable(prices), ["tenant"], 3600)
    batch = parser.parse(path.read_bytes().splitlines())
    column = batch.dims["tenant"]
    acme = column.codes == column.code_of("acme")
    return float(batch.spend_nanos[acme].sum()) / NANOS_PER_USD


def _old_remaining(model: SpendModel, now: int, end: int) -> float:
    """Hour by hour, as the projection is defined (UTC slots)."""
    fallback = sum(model.slots.values()) / len(model.slots) if model.slots else 0.0
    total = 0.0
    for hour in range(now, end, 3600):
        weekday = (hour // 86400 + 3) % 7
        slot = (hour // 3600) % 24 + (24 if weekday >= 5 else 0)
        expected = model.expected_slot(slot)
        total += fallback if expected is None else expected
    return total


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(st.integers(0, 47), st.floats(0, 1e9), max_size=48),
    st.integers(0, 24 * 60),
    st.integers(0, 24 * 40),
)
def test_projection_by_slot_counts_equals_hour_by_hour(slots, start_hour, hours):
    model = SpendModel()
    model.slots = dict(slots)
    now = 1_790_000_000 - 1_790_000_000 % 3600 + start_hour * 3600
    expected = _old_remaining(model, now, now + hours * 3600)
    assert abs(model.remaining(now, now + hours * 3600) - expected) <= 1e-6 * max(expected, 1)


def test_slots_follow_the_budget_timezone_and_its_daylight_saving():
    clock = SlotClock(ZoneInfo("America/New_York"))
    assert clock.slot(int(parse_rfc3339("2026-11-24T14:00:00Z"))) == 9  # Tuesday, 9 am EST
    assert clock.slot(int(parse_rfc3339("2026-11-28T14:00:00Z"))) == 24 + 9  # Saturday
    # Sunday 1 November 2026: clocks go back, the local day has 25 hours and two 1 ams.
    day = clock.hours_per_slot(
        int(parse_rfc3339("2026-11-01T04:00:00Z")), int(parse_rfc3339("2026-11-02T05:00:00Z"))
    )
    assert sum(day) == 25 and day[24 + 1] == 2 and day[24 + 2] == 1
    assert sum(day[:24]) == 0, "all of it is weekend"
