"""Unit tests of the robust, unit-cost, agent-loop and river detectors on synthetic windows."""

from __future__ import annotations

import random

import pytest
from pydantic import ValidationError

from spendwatch.detectors.base import Totals
from spendwatch.detectors.episodes import Episode
from spendwatch.detectors.peers import AgentLoop, AgentLoopConfig
from spendwatch.detectors.river_model import RiverConfig, RiverDetector, squash
from spendwatch.detectors.robust_seasonal import RobustSeasonal, RobustSeasonalConfig
from spendwatch.detectors.unit_cost import UnitCost, UnitCostConfig
from spendwatch.ingest.pricing import NANOS_PER_USD

T0 = 1_795_000_000 - 1_795_000_000 % 86400
WINDOW = 900
SCOPE = {"tenant": "acme"}


def _usd(amount: float, requests: int) -> Totals:
    return Totals(spend_nanos=int(amount * NANOS_PER_USD), requests=requests, events=requests)


def _daily(start: int) -> float:
    hour = (start % 86400) / 3600
    return 2.0 + 1.5 * (8 <= hour < 20)


def _feed(detector, state, days: float, value=_daily, rng=None, unit=0.01):
    rng = rng or random.Random(1)
    alerts = []
    for start in range(T0, T0 + int(days * 86400), WINDOW):
        usd = value(start) * rng.uniform(0.85, 1.15)
        alerts += detector.observe(state, SCOPE, start, _usd(usd, max(int(usd / unit), 1)))
    return alerts


def test_episode_confirms_and_holds_between_normal_and_anomalous():
    episode = Episode()
    assert episode.step(0, True, False, 2, 2) is None
    assert episode.step(1, True, False, 2, 2) == "firing" and episode.start == 0
    assert episode.step(2, False, False, 2, 2, clear=False) is None, "not clear: holds"
    assert episode.step(3, False, False, 2, 2) is None
    assert episode.step(4, False, False, 2, 2) == "resolved"
    assert Episode().step(0, True, True, 3, 2) == "firing", "strong fires at once"


def test_robust_seasonal_is_quiet_on_a_daily_cycle_and_fires_on_a_spike():
    detector = RobustSeasonal(RobustSeasonalConfig(name="r", scope=["tenant"], min_impact=1))
    state = detector.new_state()
    assert _feed(detector, state, 6) == [], "daily cycle with ±15 % noise is normal"
    start = T0 + 6 * 86400 + 10 * 3600
    first = detector.observe(state, SCOPE, start, _usd(3.5 * 4, 1400))
    assert first and first[0].status == "firing", "×4 is strong: no confirmation wait"
    assert first[0].expected == pytest.approx(3.5, rel=0.2)
    point = detector.explain(state, start + WINDOW, _usd(3.5, 350))
    assert point and point["expected"] == pytest.approx(3.5, rel=0.2), "the spike was not learned"


def test_robust_seasonal_needs_impact_and_accumulates_evidence():
    config = RobustSeasonalConfig(name="r", scope=["tenant"], min_impact=50)
    detector = RobustSeasonal(config)
    state = detector.new_state()
    _feed(detector, state, 6)
    start = T0 + 6 * 86400 + 10 * 3600
    assert detector.observe(state, SCOPE, start, _usd(20, 2000)) == [], "below min_impact"
    mild = RobustSeasonal(RobustSeasonalConfig(name="m", scope=["tenant"]))
    state = mild.new_state()
    _feed(mild, state, 6)
    assert mild.observe(state, SCOPE, start, _usd(5.6, 560)) == [], "one window: not decisive"
    needed = mild._threshold(state)
    (alert,) = mild.observe(state, SCOPE, start + WINDOW, _usd(5.6, 560))
    assert alert.status == "firing" and alert.evidence >= alert.threshold == pytest.approx(
        needed, abs=1e-3
    )
    assert "once in" in alert.rarity


def test_unit_cost_fires_on_dearer_requests_not_on_more_requests():
    """More requests at the usual unit cost are the spend detectors' case; dearer ones are
    unit cost, whether or not the volume rose with them (a regressed prompt that loops)."""
    config = UnitCostConfig(name="u", scope=["tenant"])
    detector = UnitCost(config)
    state = detector.new_state()
    assert _feed(detector, state, 3) == []
    start = T0 + 3 * 86400 + 10 * 3600
    volume = detector.observe(state, SCOPE, start, _usd(35.0, 3500))
    assert volume == [], "ten times the requests at the usual unit cost"
    dearer = detector.observe(state, SCOPE, start + WINDOW, _usd(3.5 * 1.6, 350))
    assert dearer and dearer[0].metric == "cost_per_request_usd"
    assert dearer[0].observed == pytest.approx(0.016)
    state = detector.new_state()
    _feed(detector, state, 3)
    (both,) = detector.observe(state, SCOPE, start, _usd(35.0 * 1.6, 3500))
    assert both.status == "firing" and both.observed == pytest.approx(0.016)


def test_unit_cost_min_requests_still_skips_thin_windows_when_asked():
    detector = UnitCost(UnitCostConfig(name="u", min_requests=50))
    state = detector.new_state()
    _feed(detector, state, 3)
    assert detector.observe(state, SCOPE, T0 + 3 * 86400, _usd(1.0, 10)) == []


def test_agent_loop_names_the_outlier_among_peers_and_resolves():
    detector = AgentLoop(AgentLoopConfig(name="loop"))
    assert detector.aggregation.dims == ("tenant", "session")
    assert detector.aggregation.route_dims == 1
    state = detector.new_state()
    members = {(f"s{i}",): Totals(requests=1 + i % 3) for i in range(200)}
    assert detector.observe_group(state, SCOPE, T0, members) == []
    members[("s7",)] = Totals(requests=40)
    (alert,) = detector.observe_group(state, SCOPE, T0 + WINDOW, members)
    assert alert.scope == {"tenant": "acme", "session": "s7"} and alert.status == "firing"
    assert detector.observe_group(state, SCOPE, T0 + 2 * WINDOW, members) == [], "once"
    members[("s7",)] = Totals(requests=2)
    detector.observe_group(state, SCOPE, T0 + 3 * WINDOW, members)
    (resolved,) = detector.observe_group(state, SCOPE, T0 + 4 * WINDOW, members)
    assert resolved.status == "resolved" and resolved.episode == alert.episode
    few = {(f"s{i}",): Totals(requests=1) for i in range(3)} | {("x",): Totals(requests=90)}
    assert detector.observe_group(detector.new_state(), SCOPE, T0, few) == [], "too few peers"
    with pytest.raises(ValidationError):
        AgentLoopConfig(name="bad", scope=["tenant"], peers=["tenant"])


def test_river_model_is_named_in_yaml_and_validated():
    config = RiverConfig(name="h", model="anomaly.HalfSpaceTrees", params={"seed": 3})
    assert type(RiverDetector(config).new_state().model).__name__ == "HalfSpaceTrees"
    for model, params in (
        ("anomaly.NoSuchModel", {}),
        ("HalfSpaceTrees", {}),
        ("anomaly.HalfSpaceTrees", {"bogus": 1}),
    ):
        with pytest.raises(ValidationError):
            RiverConfig(name="h", model=model, params=params)
    assert squash(1.0, 1.0) == 0.5 and 0 <= squash(0.0, 5.0) < squash(50.0, 5.0) <= 1


def test_river_halfspacetrees_fires_upward_only():
    config = RiverConfig(
        name="h",
        model="anomaly.HalfSpaceTrees",
        params={"n_trees": 10, "height": 6, "window_size": 48, "seed": 7},
        threshold=0.95,
    )
    detector = RiverDetector(config)
    state = detector.new_state()
    assert _feed(detector, state, 4) == []
    start = T0 + 4 * 86400 + 10 * 3600
    assert detector.observe(state, SCOPE, start, _usd(0.05, 5)) == [], "a drop is not an alert"
    spike = detector.observe(state, SCOPE, start + WINDOW, _usd(35.0, 3500))
    assert spike and spike[0].status == "firing" and spike[0].score >= 0.95


def test_agent_loop_explains_each_member_against_its_peers():
    detector = AgentLoop(AgentLoopConfig(name="loop"))
    members = {(f"s{i}",): Totals(requests=1 + i % 3) for i in range(200)}
    members[("s7",)] = Totals(requests=40)
    seen = detector.explain_group(members)
    assert seen[("s7",)]["value"] == 40 and seen[("s7",)]["expected"] == 2
    assert seen[("s7",)]["tail_probability"] <= seen[("s7",)]["allowed_probability"]
    assert seen[("s1",)]["tail_probability"] > seen[("s1",)]["allowed_probability"]
    assert seen[("s7",)]["z"] > seen[("s1",)]["z"]
    assert seen[("s7",)]["value"] >= seen[("s7",)]["upper"] > seen[("s1",)]["value"]
    few = {(f"s{i}",): Totals(requests=1) for i in range(3)}
    assert detector.explain_group(few) == {}, "too few peers to tell"
