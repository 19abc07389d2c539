"""``fan_out``: a session far above its feature's design estimate fires once, names the
estimate, resolves when the session ends; ordinary sessions and unknown features do not."""

from __future__ import annotations

import pickle

import pytest
from pydantic import ValidationError

from spendwatch.detectors.base import Totals
from spendwatch.detectors.fan_out import FanOut, FanOutConfig

T0 = 1_794_787_200
WINDOW = 900
PEERS = {"tenant": "acme", "feature": "support"}


def _detector(**settings) -> FanOut:
    return FanOut(FanOutConfig(name="f", expected={"support": 12}, **settings))


def _calls(n: int) -> Totals:
    return Totals(n * 10**6, n, 0, 100 * n, n)


def test_a_session_three_times_its_estimate_fires_once_and_resolves_when_it_ends():
    detector = _detector()
    state = detector.new_state()
    fired = []
    for k in range(6):  # 8 calls a window: 16, 24, 32, 40 > 36 = 3 × 12
        members = {("s-loop",): _calls(8), ("s-ok",): _calls(3 if k < 2 else 0)}
        fired += detector.observe_group(state, PEERS, T0 + k * WINDOW, members)
    assert [(a.status, a.scope["session"]) for a in fired] == [("firing", "s-loop")]
    (alert,) = fired
    assert alert.observed == 40 and alert.expected == 12 and alert.score == pytest.approx(40 / 12)
    assert "design estimate of 12" in alert.rarity
    copy = pickle.loads(pickle.dumps(state))
    later = T0 + 6 * WINDOW + 2 * 3600 + WINDOW  # idle past the session's ttl
    ended = detector.observe_group(copy, PEERS, later, {("s-new",): _calls(1)})
    assert [(a.status, a.scope["session"]) for a in ended] == [("resolved", "s-loop")]
    assert ("s-loop",) not in copy.units and ("s-new",) in copy.units


def test_features_without_an_estimate_are_not_judged_and_bounds_hold():
    detector = _detector(max_sessions=10)
    state = detector.new_state()
    other = {"tenant": "acme", "feature": "search"}
    assert detector.observe_group(state, other, T0, {("s",): _calls(500)}) == []
    members = {(f"s{i}",): _calls(1) for i in range(50)}
    assert detector.observe_group(state, PEERS, T0, members) == []
    assert len(state.units) == 10
    with_default = FanOut(FanOutConfig(name="f", expected={"*": 2}))
    assert with_default.estimate(other) == 2


def test_settings_are_checked():
    with pytest.raises(ValidationError, match="design_by"):
        FanOutConfig(name="f", expected={"x": 1}, design_by="model")
    with pytest.raises(ValidationError, match="positive"):
        FanOutConfig(name="f", expected={"x": 0})
