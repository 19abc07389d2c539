"""``new_value``: a model new to a known tenant feature, dearer per token, from its first
request; and the engine judging a rule whose aggregation is also another rule's breakdown."""

from __future__ import annotations

import json
import pickle
from datetime import datetime, timezone

import numpy as np
import pytest

from spendwatch.config import SpendwatchConfig
from spendwatch.detectors.base import Totals
from spendwatch.detectors.new_value import NewValue, NewValueConfig
from spendwatch.ops.backtest import backtest

T0 = 1_794_787_200  # a Monday, 00:00 UTC
WINDOW = 900
DAY = 86400
NANOS = 1_000_000_000
SCOPE = {"tenant": "acme", "feature": "chat"}
PRICES = {"gpt-4o-mini": {"input": 0.15, "output": 0.60}, "gpt-4o": {"input": 2.5, "output": 10}}


def _totals(requests: int, price_per_token: float, rng: np.random.Generator) -> Totals:
    """``requests`` of heavy-tailed length at a model's price (USD per token)."""
    tokens = int(rng.lognormal(6.0, 1.0, requests).sum())
    return Totals(int(tokens * price_per_token * NANOS), requests, tokens // 2, tokens // 2)


def _feed(detector, state, days, models, rng, start=T0):
    """Windows of ``days`` where ``models`` (name -> price) answer one request each."""
    alerts = []
    for ws in range(start, start + int(days * DAY), WINDOW):
        members = {(m,): _totals(1, p, rng) for m, p in models.items()}
        alerts += [(ws, a) for a in detector.observe_group(state, SCOPE, ws, members)]
    return alerts


def test_a_dearer_model_new_to_a_known_scope_fires_on_its_first_request_and_names_it():
    detector = NewValue(NewValueConfig(name="n"))
    state = detector.new_state()
    rng = np.random.default_rng(1)
    assert _feed(detector, state, 3, {"mini": 1e-6}, rng) == []
    switch = T0 + 3 * DAY
    members = {("big",): _totals(1, 2e-6, rng)}  # one request, possibly a short one
    (alert,) = detector.observe_group(state, SCOPE, switch, members)
    assert alert.status == "firing" and alert.scope == {**SCOPE, "model": "big"}
    assert [(d.dimension, d.value) for d in alert.drivers] == [("model", "big")]
    assert alert.score == pytest.approx(alert.observed / alert.expected, rel=1e-3)
    assert alert.score > 1.9
    # the switch lasts: no second alert; accepted into the mix after a day of use
    later = _feed(detector, state, 1.5, {"big": 2e-6}, rng, start=switch + WINDOW)
    assert [a.status for _, a in later] == ["resolved"]
    assert later[0][0] - switch >= DAY
    copy = pickle.loads(pickle.dumps(state))
    assert copy.last_seen == state.last_seen and copy.firing == state.firing


def test_cheaper_models_young_scopes_and_recent_models_do_not_fire():
    rng = np.random.default_rng(2)
    detector = NewValue(NewValueConfig(name="n"))
    state = detector.new_state()
    # a young scope's second model is how it starts, not a switch
    assert _feed(detector, state, 1, {"mini": 1e-6}, rng) == []
    assert _feed(detector, state, 1, {"big": 3e-6}, rng, start=T0 + DAY) == []
    # a cheaper newcomer is not a cost incident
    assert _feed(detector, state, 2, {"big": 3e-6}, rng, start=T0 + 2 * DAY) == []
    assert _feed(detector, state, 0.1, {"nano": 0.2e-6}, rng, start=T0 + 4 * DAY) == []
    # "mini" was last used 3 days ago: known, back without an alert
    assert _feed(detector, state, 0.1, {"mini": 1e-6}, rng, start=T0 + 5 * DAY) == []


def test_a_model_unseen_for_longer_than_forget_after_is_new_again():
    rng = np.random.default_rng(3)
    detector = NewValue(NewValueConfig(name="n", forget_after="3d", resolve_after=1))
    state = detector.new_state()
    _feed(detector, state, 1, {"mini": 1e-6, "big": 3e-6}, rng)
    _feed(detector, state, 4, {"mini": 1e-6}, rng, start=T0 + DAY)
    fired = _feed(detector, state, 0.05, {"big": 3e-6}, rng, start=T0 + 5 * DAY)
    assert [a.status for _, a in fired][:1] == ["firing"]


def _events(path, rng: np.random.Generator) -> None:
    """Three days of one tenant feature on gpt-4o-mini, then a switch to gpt-4o."""
    with open(path, "w") as out:
        for i, ws in enumerate(range(T0, T0 + 4 * DAY, WINDOW)):
            model = "gpt-4o" if ws >= T0 + 3 * DAY + 3600 else "gpt-4o-mini"
            for k in range(int(rng.integers(1, 4))):
                ts = datetime.fromtimestamp(ws + 60 * k + 5, timezone.utc).isoformat()
                row = {"event_id": f"e{i}-{k}", "ts": ts, **SCOPE, "model": model,
                       "input_tokens": int(rng.integers(200, 2000)),
                       "output_tokens": int(rng.integers(50, 800))}  # fmt: skip
                out.write(json.dumps(row) + "\n")


def _new_model_alerts(tmp_path, detectors: list[dict]) -> list[tuple]:
    events = tmp_path / "events.jsonl"
    if not events.exists():
        _events(events, np.random.default_rng(4))
    config = SpendwatchConfig.model_validate(
        {
            "source": {"type": "jsonl", "path": str(events)},
            "pricing": {"models": PRICES},
            "detectors": detectors,
        }
    )
    out = tmp_path / f"alerts-{'-'.join(d['name'] for d in detectors)}.jsonl"
    backtest(config, str(events), str(out))
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    return [(a["status"], a["window_start"], a["scope"]) for a in rows if a["rule"] == "new"]


def test_a_rule_whose_aggregation_is_another_rules_breakdown_still_judges(tmp_path):
    """``new_value`` on [tenant, feature] × model is also the breakdown of a rule with
    ``drivers: [model]`` on [tenant, feature]: the breakdown must not swallow its rows."""
    rule = {"name": "new", "type": "new_value", "scope": ["tenant", "feature"]}
    spend = {"name": "spend", "type": "robust_seasonal", "scope": ["tenant", "feature"],
             "drivers": ["model"]}  # fmt: skip
    alone = _new_model_alerts(tmp_path, [rule])
    assert alone and alone[0][0] == "firing" and alone[0][2]["model"] == "gpt-4o"
    assert _new_model_alerts(tmp_path, [spend, rule]) == alone
    assert _new_model_alerts(tmp_path, [rule, spend]) == alone
