"""End to end: a backtest over a generated stream alerts on the planted incidents only."""

from __future__ import annotations

from pathlib import Path

from spendwatch.core.timefmt import parse_rfc3339, rfc3339
from spendwatch.ops.backtest import backtest
from tests.conftest import comparable, read_alerts


def _run(detection_config, planted_file: Path, tmp_path: Path) -> list[dict]:
    config, _ = detection_config
    out = tmp_path / "alerts.jsonl"
    summary = backtest(config, str(planted_file), str(out))
    assert summary["dead_lettered"] == 0
    return read_alerts(out)


def test_planted_incidents_alert_and_nothing_else_before_them(
    detection_config, planted, planted_file, tmp_path
):
    alerts = _run(detection_config, planted_file, tmp_path)
    spike, regression = planted.incidents
    firing = [a for a in alerts if a["status"] == "firing"]

    spend = [a for a in firing if a["rule"] == "tenant-spend"]
    spike_alerts = [a for a in spend if a["scope"] == spike.scope]
    assert spike_alerts, "the ×8 request loop on one tenant must fire"
    onset = parse_rfc3339(spike_alerts[0]["window_start"])
    assert spike.start <= onset < spike.start + 3600, "detected in the window of onset"

    tokens = [a for a in firing if a["rule"] == "prompt-output-tokens"]
    assert {a["scope"]["prompt_id"] for a in tokens} == {regression.scope["prompt_id"]}
    first = parse_rfc3339(tokens[0]["window_start"])
    assert regression.start <= first < regression.start + 3600

    # Before any incident, daily peaks, weekends and the noisy tenant raise nothing.
    quiet_until = min(spike.start, regression.start)
    early = [
        a
        for a in firing
        if a["kind"] == "anomaly" and parse_rfc3339(a["window_start"]) < quiet_until
    ]
    assert early == []
    assert not [
        a
        for a in spend
        if a["scope"] == {"tenant": "initech"} and parse_rfc3339(a["window_start"]) < quiet_until
    ]


def test_every_firing_anomaly_resolves_once_with_its_fingerprint(
    detection_config, planted_file, tmp_path
):
    alerts = _run(detection_config, planted_file, tmp_path)
    anomalies = [a for a in alerts if a["kind"] == "anomaly"]
    episodes: dict[tuple[str, str], list[str]] = {}
    for alert in anomalies:
        episodes.setdefault((alert["fingerprint"], alert["episode"]), []).append(alert["status"])
    for statuses in episodes.values():
        assert statuses in (["firing"], ["firing", "resolved"])
    assert len({a["alert_id"] for a in alerts}) == len(alerts)


def test_budget_crossings_fire_each_threshold_once_per_period(
    detection_config, planted, planted_file, tmp_path
):
    alerts = _run(detection_config, planted_file, tmp_path)
    budget = [a for a in alerts if a["kind"] == "budget" and a["status"] == "firing"]
    keys = [(a["scope"]["tenant"], a["period"], a["threshold"]) for a in budget]
    assert keys and len(keys) == len(set(keys))
    spike, _ = planted.incidents
    day = rfc3339(spike.start)[:10]
    crossed = [a for a in budget if a["scope"] == spike.scope and a["period"] == day]
    assert [a["threshold"] for a in crossed] == [70, 85, 100], "the spike exhausts that day"
    for alert in budget:
        assert alert["observed"] >= alert["expected"] * alert["threshold"] / 100
        assert alert["score"] >= alert["threshold"]
        assert alert["period"] == alert["window_start"][:10]


def test_two_worker_threads_raise_the_same_alerts_as_one(detection_config, planted_file, tmp_path):
    config, _ = detection_config
    one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    backtest(config, str(planted_file), str(one))
    summary = backtest(config, str(planted_file), str(two), workers=2)
    assert summary["events"] > 0
    assert comparable(read_alerts(one)) == comparable(read_alerts(two))
