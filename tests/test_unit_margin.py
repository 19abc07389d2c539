"""``unit_margin``: a feature whose projected cost per request this month passes what a
request earns fires, naming its breakeven volume; a profitable one does not; months
start afresh."""

from __future__ import annotations

import math
import pickle

import pytest
from pydantic import ValidationError

from spendwatch.detectors.base import Totals
from spendwatch.detectors.periods import period_bounds
from spendwatch.detectors.unit_margin import UnitMargin, UnitMarginConfig

NOV = 1_793_491_200  # 2026-11-01T00:00:00Z
HOUR = 3600
NANOS = 1_000_000_000


def _detector(**settings) -> UnitMargin:
    return UnitMargin(UnitMarginConfig(name="m", value_per_request={"chat": 0.01}, **settings))


def _hours(detector, state, scope, start, hours, requests, usd_per_request):
    alerts = []
    for h in range(hours):
        totals = Totals(int(requests * usd_per_request * NANOS), requests, 0, 0, requests)
        alerts += detector.observe(state, scope, start + h * HOUR, totals)
    return alerts


def test_month_bounds_are_calendar_months_in_utc():
    assert period_bounds(NOV + 5 * 86400, "month") == (NOV, NOV + 30 * 86400)
    dec = NOV + 30 * 86400
    assert period_bounds(dec + 31 * 86400 - 1, "month") == (dec, dec + 31 * 86400)  # into January


def test_fixed_costs_over_too_little_volume_fire_with_the_breakeven_volume():
    detector = _detector(fixed_usd_per_month={"chat": 3000})
    state = detector.new_state()
    scope = {"feature": "chat"}
    # 100 requests an hour at $0.004: 72,000 a month, $0.0417 fixed each: unprofitable
    fired = _hours(detector, state, scope, NOV, 48, 100, 0.004)
    assert [a.status for a in fired] == ["firing"]
    (alert,) = fired
    assert alert.observed == pytest.approx(0.004 + 3000 / 72_000, rel=1e-3)
    assert alert.breakeven_requests == round(3000 / (0.01 - 0.004))
    assert "breaks even at 500,000 requests" in alert.rarity
    copy = pickle.loads(pickle.dumps(state))
    # next month: the episode ends with the month; volume ×10 is profitable
    dec = NOV + 30 * 86400
    later = _hours(detector, copy, scope, dec, 48, 1000, 0.004)
    assert [a.status for a in later] == ["resolved"]


def test_requests_dearer_than_their_value_never_break_even_and_profit_is_quiet():
    detector = _detector()
    state = detector.new_state()
    fired = _hours(detector, state, {"feature": "chat"}, NOV, 30, 50, 0.012)
    assert [a.status for a in fired] == ["firing"]
    assert fired[0].breakeven_requests is None and "no volume" in fired[0].rarity
    quiet = detector.new_state()
    assert _hours(detector, quiet, {"feature": "chat"}, NOV, 60, 50, 0.008) == []
    # a feature without a value is not judged
    assert _hours(detector, detector.new_state(), {"feature": "x"}, NOV, 60, 50, 1.0) == []


def test_settings_are_checked():
    with pytest.raises(ValidationError, match="value_by"):
        UnitMarginConfig(name="m", value_per_request={"*": 1}, value_by="model")
    with pytest.raises(ValidationError, match="negative"):
        UnitMarginConfig(name="m", value_per_request={"*": -1})
    assert math.isfinite(_detector().config.resolve_margin)
