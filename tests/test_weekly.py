"""Weekly factors (detectors/weekly.py): a quiet weekend is learned from two weeks, a
scope without a weekly pattern keeps factors of 1, a one-off holiday does not lower the
next week, and robust_seasonal finds a weekend spike a weekday band would hide."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest

from spendwatch.detectors.base import Totals
from spendwatch.detectors.robust_seasonal import _FIELDS, RobustSeasonal, RobustSeasonalConfig
from spendwatch.detectors.weekly import BLOCK, CELLS, WEEK, WeeklyFactor
from spendwatch.ingest.pricing import NANOS_PER_USD

WINDOW = 900
T0 = 1_795_000_000 - 1_795_000_000 % WEEK  # a week boundary (epoch weeks start Thursday)


def _weekend(start: int) -> bool:
    return ((start // 86400) + 3) % 7 >= 5  # 1970-01-01 was a Thursday


def _learn(weekly: WeeklyFactor, weeks: int, rng, weekend=1.0, noise=0.1, holiday=None):
    for i in range(weeks * WEEK // WINDOW):
        start = T0 + i * WINDOW
        level = weekend if _weekend(start) else 1.0
        if holiday is not None and holiday <= start < holiday + 86400:
            level *= 0.3
        weekly.push(start, 10.0 * level * float(rng.lognormal(-(noise**2) / 2, noise)), 10.0)


def _factors(weekly: WeeklyFactor, week: int) -> tuple[list[float], list[float]]:
    ends, days = [], []
    for cell in range(CELLS):
        start = T0 + week * WEEK + cell * BLOCK
        (ends if _weekend(start) else days).append(weekly.factor(start))
    return ends, days


@pytest.mark.parametrize("noise", [0.05, 0.4])
def test_a_quiet_weekend_is_learned_from_two_weeks(noise):
    weekly = WeeklyFactor()
    _learn(weekly, 3, np.random.default_rng(1), weekend=0.5, noise=noise)
    weekly.push(T0 + 3 * WEEK, 10.0, 10.0)  # week 3 begins: week 2 is complete
    ends, days = _factors(weekly, 3)
    assert np.median(ends) == pytest.approx(0.5, abs=0.1), ends  # the larger of two weeks
    assert np.median(days) == pytest.approx(1.0, abs=0.06), days
    assert weekly.factor(T0 + WEEK) == 1.0, "one week of history is not enough"


def test_no_weekly_pattern_keeps_factors_near_one():
    weekly = WeeklyFactor()
    _learn(weekly, 3, np.random.default_rng(2), weekend=1.0, noise=0.5)
    weekly.push(T0 + 3 * WEEK, 10.0, 10.0)
    ends, days = _factors(weekly, 3)
    assert max(abs(f - 1.0) for f in ends + days) < 0.15, (ends, days)


def test_a_holiday_does_not_lower_the_next_week():
    weekly = WeeklyFactor()
    holiday = T0 + 2 * WEEK + 86400  # the second day of the third week
    _learn(weekly, 3, np.random.default_rng(3), weekend=0.5, noise=0.05, holiday=holiday)
    weekly.push(T0 + 3 * WEEK, 10.0, 10.0)
    after = [weekly.factor(holiday + WEEK + h * BLOCK) for h in range(12)]
    assert min(after) > 0.9, after
    ends, _ = _factors(weekly, 3)
    assert np.median(ends) == pytest.approx(0.5, abs=0.08), "the weekend still learned"


def test_the_factors_survive_a_snapshot():
    weekly = WeeklyFactor()
    _learn(weekly, 3, np.random.default_rng(4), weekend=0.4, noise=0.1)
    weekly.push(T0 + 3 * WEEK, 10.0, 10.0)
    copy = pickle.loads(pickle.dumps(weekly))
    cells = [T0 + 3 * WEEK + c * BLOCK for c in range(CELLS)]
    assert [copy.factor(s) for s in cells] == [weekly.factor(s) for s in cells]
    assert min(copy.factor(s) for s in cells) < 0.6


def _usd(spend: float, requests: int) -> Totals:
    return Totals(spend_nanos=int(spend * NANOS_PER_USD), requests=requests, events=requests)


def _spend_stream(weekly: bool, rng, days: int, spike: tuple[int, int] | None) -> list[int]:
    detector = RobustSeasonal(RobustSeasonalConfig(name="r"))
    detector.weekly_enabled = weekly  # the same detector without its weekly factors
    state = detector.new_state()
    fired = []
    for i in range(days * 96):
        start = T0 + i * WINDOW
        hour = (start % 86400) / 3600
        mean = 400.0 * (0.65 + 0.35 * math.cos((hour - 14) / 24 * 2 * math.pi))
        mean *= 0.35 if _weekend(start) else 1.0
        if spike and spike[0] <= i < spike[1]:
            mean *= 2.2
        n = int(rng.poisson(mean))
        spend = float(0.002 * rng.lognormal(0.0, 0.5, n).sum())
        alerts = detector.observe(state, {"tenant": "t"}, start, _usd(spend, n))
        fired += [i for a in alerts if a.status == "firing"]
    return fired


def _explained_weekly(until: int) -> float:
    detector = RobustSeasonal(RobustSeasonalConfig(name="r"))
    state = detector.new_state()
    rng = np.random.default_rng(5)
    for i in range(until):
        start = T0 + i * WINDOW
        n = int(rng.poisson(400 * (0.35 if _weekend(start) else 1.0)))
        detector.observe(state, {"tenant": "t"}, start, _usd(0.002 * n, n))
    explained = detector.explain(state, T0 + until * WINDOW, _usd(0.0, 0))
    assert explained is not None and explained["growth"] >= 1.0
    return explained["weekly"]


def test_robust_seasonal_finds_a_weekend_spike_a_weekday_band_hides():
    """A steady tenant at 35 % on weekends: a ×2.2 hour on its third Sunday is a weekday
    level, inside the weekday band the seasonal median gives; with the two weeks' factor
    it is found within the hour, and the weekends before it raise nothing."""
    sunday = next(
        d for d in range(14, 21) if _weekend(T0 + d * 86400) and _weekend(T0 + (d - 1) * 86400)
    )
    onset = sunday * 96 + 44  # 11:00
    spike = (onset, onset + 4)
    with_weekly = _spend_stream(True, np.random.default_rng(5), 22, spike)
    without = _spend_stream(False, np.random.default_rng(5), 22, spike)
    assert [i for i in with_weekly if i < onset] == [], with_weekly
    assert _explained_weekly(onset) < 0.5, "explain shows the factor in the expectation"
    assert any(onset <= i < onset + 4 for i in with_weekly), with_weekly
    assert not any(onset <= i < onset + 4 for i in without), without


def test_a_state_from_before_the_weekly_factors_keeps_what_it_learned():
    detector = RobustSeasonal(RobustSeasonalConfig(name="r"))
    state = detector.new_state()
    for i in range(3 * 96):
        detector.observe(state, {"tenant": "t"}, T0 + i * WINDOW, _usd(0.2, 100))
    older = state.__getstate__()[: _FIELDS.index("weekly")]  # the layout before `weekly`
    restored = detector.new_state()
    restored.__setstate__(older)
    start = T0 + 3 * 96 * WINDOW
    assert restored.history.seen == state.history.seen
    assert detector.band(restored, start) == detector.band(state, start)
    assert restored.weekly.factor(start) == 1.0
    dropped = detector.new_state()
    dropped.__setstate__(older[:-1])  # any other layout: dropped, the engine relearns
    assert dropped.history is None
