"""``zombie``: spend that holds while a feature's distinct daily users fall fires once the
weeks compared say so; fewer users with less spend, and weekly cycles, do not. The user
count is a HyperLogLog sketch of bounded size."""

from __future__ import annotations

import pickle

import pytest

from spendwatch.detectors.base import Totals
from spendwatch.detectors.zombie import Zombie, ZombieConfig, ZombieState

T0 = 1_794_787_200  # a Monday
NANOS = 1_000_000_000
PEERS = {"feature": "digest"}


def _days(detector, state, first_day, days, users, spend_per_day, weekend_users=None):
    alerts = []
    for day in range(first_day, first_day + days):
        count = users(day) if callable(users) else users
        if weekend_users is not None and day % 7 in (5, 6):
            count = weekend_users
        for hour in range(24):
            start = T0 + day * 86400 + hour * 3600
            cost = int(spend_per_day(day) / 24 / max(count, 1) * NANOS)
            members = {(f"u{day % 3}-{u}",): Totals(cost, 1, 0, 0, 1) for u in range(count)}
            alerts += detector.observe_group(state, PEERS, start, members)
    return alerts


def test_users_falling_while_spend_holds_is_a_zombie():
    detector = Zombie(ZombieConfig(name="z"))
    state = detector.new_state()
    fired = _days(detector, state, 0, 7, 200, lambda d: 30.0)
    fired += _days(detector, state, 7, 8, 40, lambda d: 31.0)  # a fifth of the users
    statuses = [a.status for a in fired]
    assert statuses == ["firing"], statuses
    (alert,) = fired
    assert alert.scope == PEERS and alert.expected == pytest.approx(200 * 1, rel=0.1)
    assert alert.observed < 0.5 * alert.expected and "per user" in alert.rarity
    copy = pickle.loads(pickle.dumps(state))
    assert copy.days == state.days
    assert copy.sketch.get_estimate() == state.sketch.get_estimate()


def test_fewer_users_with_less_spend_and_weekly_cycles_are_not_zombies():
    detector = Zombie(ZombieConfig(name="z"))
    shrinking = detector.new_state()
    fired = _days(detector, shrinking, 0, 7, 200, lambda d: 30.0)
    fired += _days(detector, shrinking, 7, 8, 40, lambda d: 6.0)  # spend went with them
    assert fired == []
    weekly = detector.new_state()
    assert _days(detector, weekly, 0, 21, 200, lambda d: 30.0, weekend_users=20) == []


def test_the_user_sketch_is_bounded_whatever_the_user_count():
    state = ZombieState()
    for u in range(100_000):
        state.sketch.update(f"user-{u}")
    assert state.sketch.get_estimate() == pytest.approx(100_000, rel=0.05)
    assert len(pickle.dumps(state)) < 5_000
