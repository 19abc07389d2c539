"""``idle_commitment``: a commitment whose day is mostly unused fires once, names the
unused amount and resolves on the first day back in use; FOCUS rows carry the columns."""

from __future__ import annotations

import csv
import json
import pickle

import pytest

from spendwatch.config import SpendwatchConfig
from spendwatch.detectors.base import Totals
from spendwatch.detectors.idle_commitment import IdleCommitment, IdleCommitmentConfig
from spendwatch.ops.backtest import backtest

T0 = 1_794_787_200  # 2026-11-16T00:00:00Z
NANOS = 1_000_000_000
PEERS = {"labels.commitment": "sp-1"}


def _day(detector, state, day: int, used: float, unused: float) -> list:
    alerts = []
    for hour in range(24):
        members = {("Used",): Totals(int(used * NANOS), 1, 0, 0, 1)}
        if unused:
            members[("Unused",)] = Totals(int(unused * NANOS), 1, 0, 0, 1)
        start = T0 + day * 86400 + hour * 3600
        alerts += detector.observe_group(state, PEERS, start, members)
    return alerts


def test_an_idle_day_fires_when_it_is_over_and_a_used_day_resolves():
    detector = IdleCommitment(IdleCommitmentConfig(name="idle"))
    state = detector.new_state()
    assert _day(detector, state, 0, 1.0, 0.1) == []  # 9 % unused: normal
    assert _day(detector, state, 1, 0.5, 0.5) == []  # judged when day 2 starts
    (alert,) = _day(detector, state, 2, 1.0, 0.0)
    assert alert.status == "firing" and alert.scope == PEERS
    assert alert.observed == pytest.approx(12.0) and alert.expected == pytest.approx(24.0)
    assert alert.score == pytest.approx(0.5) and "50% of the commitment's cost" in alert.rarity
    assert alert.episode == "2026-11-17T00:00:00Z"
    copy = pickle.loads(pickle.dumps(state))
    (resolved,) = _day(detector, copy, 3, 1.0, 0.0)
    assert resolved.status == "resolved" and resolved.episode == alert.episode
    assert _day(detector, copy, 4, 1.0, 0.0) == []


def test_a_small_unused_amount_is_not_an_incident():
    detector = IdleCommitment(IdleCommitmentConfig(name="idle", min_cost_usd=100))
    state = detector.new_state()
    _day(detector, state, 0, 0.5, 0.5)
    assert _day(detector, state, 1, 1.0, 0.0) == []


def test_a_focus_export_with_unused_commitment_lines_fires_through_the_engine(tmp_path):
    export = tmp_path / "focus.csv"
    columns = ["ChargePeriodStart", "ChargePeriodEnd", "BilledCost", "EffectiveCost",
               "BillingCurrency", "ChargeCategory", "CommitmentDiscountId",
               "CommitmentDiscountStatus", "ServiceName", "SubAccountName"]  # fmt: skip
    with export.open("w", newline="") as out:
        writer = csv.DictWriter(out, columns)
        writer.writeheader()
        for hour in range(24 * 4):
            ts = T0 + hour * 3600
            for status in ("Used", "Unused") if 24 <= hour < 48 else ("Used",):
                writer.writerow({
                    "ChargePeriodStart": f"{_iso(ts)}", "ChargePeriodEnd": f"{_iso(ts + 3600)}",
                    "BilledCost": "0", "EffectiveCost": "2.5", "BillingCurrency": "USD",
                    "ChargeCategory": "Usage", "CommitmentDiscountId": "arn:sp/1",
                    "CommitmentDiscountStatus": status, "ServiceName": "Compute",
                    "SubAccountName": "acme",
                })  # fmt: skip
    config = SpendwatchConfig.model_validate(
        {
            "source": {"type": "focus", "path": str(export), "cost_column": "EffectiveCost"},
            "detectors": [{"name": "idle", "type": "idle_commitment", "window": "1h"}],
        }
    )
    out = tmp_path / "alerts.jsonl"
    backtest(config, str(export), str(out))
    alerts = [json.loads(line) for line in out.read_text().splitlines()]
    idle = [(a["status"], a["scope"], a["episode"]) for a in alerts if a["rule"] == "idle"]
    assert idle == [
        ("firing", {"labels.commitment": "arn:sp/1"}, "2026-11-17T00:00:00Z"),
        ("resolved", {"labels.commitment": "arn:sp/1"}, "2026-11-17T00:00:00Z"),
    ]


def _iso(ts: int) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
