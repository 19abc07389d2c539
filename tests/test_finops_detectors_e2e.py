"""End to end: the FinOps anti-pattern rules (an untagged-spend report, a model new to a
feature, a session fanning out past its design estimate) and a budget counting allocated
shared spend raise their alerts in a backtest and reach Jira and Slack through the real
clients against the test kit's servers."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import numpy as np

from spendwatch.config import load_config
from spendwatch.detectors.base import Totals
from spendwatch.detectors.periods import period_start
from spendwatch.detectors.unattributed import Unattributed, UnattributedConfig
from spendwatch.ops.backtest import backtest
from spendwatch.testing.fake_jira import FakeJira
from spendwatch.testing.fake_slack import FakeSlack
from tests.conftest import read_alerts, write_config

T0 = 1_794_787_200  # Monday 2026-11-16, 00:00 UTC
DAY = 86400
SLACK_TOKEN = "xoxb-finops-token-123456"
JIRA_TOKEN = "jira-finops-token-123456"

RECEIVERS = """
receivers:
  - type: slack
    token: ${{FINOPS_SLACK_TOKEN}}
    channel: C0ALERTS
    base_url: {slack}
  - type: jira
    url: {jira}
    token: ${{FINOPS_JIRA_TOKEN}}
    project: PLAT
"""
"""The test kit's Slack and Jira, through the real clients (both configs below)."""

CONFIG = (
    """
source: {{type: jsonl, path: {events}}}
pricing:
  models:
    gpt-4o-mini: {{input: 0.15, output: 0.60}}
    gpt-4o: {{input: 2.50, output: 10.0}}
detectors:
  - {{name: untagged, type: unattributed, dimension: tenant, sources: [service],
     window: 1h, min_cost_usd: 0.01}}
  - {{name: new-model, type: new_value, scope: [tenant, feature], dimension: model}}
  - {{name: fan-out, type: fan_out, scope: [session], peers: [tenant, feature],
     expected: {{support: 6}}}}
"""
    + RECEIVERS
    + """routes:
  - match: {{rule: untagged}}
    receivers: [jira]
  - receivers: [slack]
delivery: {{backoff_initial: 0.05, backoff_max: 0.5, flush_timeout: 60}}
"""
)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat().replace("+00:00", "Z")


def _events(path, rng: np.random.Generator) -> None:
    """15 days: acme's support feature on gpt-4o-mini (gpt-4o from day 10), untagged batch
    spend on gpt-4o in the second week, one session making 40 calls on day 12."""
    rows = []
    for hour in range(15 * 24):
        ts = T0 + hour * 3600
        model = "gpt-4o" if ts >= T0 + 10 * DAY else "gpt-4o-mini"
        for k in range(3):
            rows.append({"ts": ts + 60 * k, "tenant": "acme", "feature": "support",
                         "service": "api", "model": model, "session": f"s{hour}-{k}"})  # fmt: skip
        if 7 * DAY <= ts - T0 < 14 * DAY:
            rows.append({"ts": ts + 300, "service": "batch", "model": "gpt-4o"})
        if ts == T0 + 12 * DAY:
            stuck = {"tenant": "acme", "feature": "support", "service": "api", "model": model}
            rows += [{**stuck, "ts": ts + 30 * j, "session": "stuck"} for j in range(40)]
    with open(path, "w") as out:
        for i, row in enumerate(sorted(rows, key=lambda r: r["ts"])):
            row = {**row, "event_id": f"e{i}", "ts": _iso(row["ts"]),
                   "input_tokens": int(rng.integers(300, 900)),
                   "output_tokens": int(rng.integers(50, 300))}  # fmt: skip
            out.write(json.dumps(row) + "\n")


def test_finops_rules_reach_jira_and_slack(tmp_path, monkeypatch):
    monkeypatch.setenv("FINOPS_SLACK_TOKEN", SLACK_TOKEN)
    monkeypatch.setenv("FINOPS_JIRA_TOKEN", JIRA_TOKEN)
    events = tmp_path / "events.jsonl"
    _events(events, np.random.default_rng(5))
    with FakeSlack(token=SLACK_TOKEN) as slack, FakeJira(token=JIRA_TOKEN, project="PLAT") as jira:
        text = CONFIG.format(events=events, slack=slack.api_url, jira=jira.url)
        config = load_config(write_config(tmp_path, text))
        out = tmp_path / "alerts.jsonl"
        summary = backtest(config, str(events), str(out), deliver=True)
        alerts = read_alerts(out)
        assert summary["undelivered"] == 0
        by_rule = {(a["rule"], a["status"]) for a in alerts}
        assert {("untagged", "firing"), ("new-model", "firing"), ("fan-out", "firing")} <= by_rule

        report = next(a for a in alerts if a["rule"] == "untagged" and a["status"] == "firing")
        assert report["scope"] == {"tenant": "unattributed"}
        assert report["episode"] == "2026-11-23T00:00:00Z"  # the second week
        assert [d["value"] for d in report["drivers"]] == ["batch"]
        assert 0.3 < report["score"] < 0.45  # a dear untagged request per three tagged
        issues = list(jira.issues.values())
        assert len(issues) == 1 and "untagged" in str(issues[0]["fields"]["summary"])

        switch = next(a for a in alerts if a["rule"] == "new-model")
        assert switch["scope"]["model"] == "gpt-4o"
        assert switch["window_start"] == "2026-11-26T00:00:00Z"  # its first request's window
        loop = next(a for a in alerts if a["rule"] == "fan-out")
        assert loop["scope"]["session"] == "stuck" and loop["observed"] >= 18
        posted = {
            m["metadata"]["event_payload"]["alert_id"] for m in slack.messages() if "metadata" in m
        }
        assert {switch["alert_id"], loop["alert_id"]} <= posted
        assert report["alert_id"] not in posted


def test_unattributed_reports_each_period_over_the_share_and_resolves_after():
    detector = Unattributed(UnattributedConfig(name="u", min_cost_usd=0))
    state = detector.new_state()
    fired = []
    for week in range(5):
        untagged = week in (1, 2)
        for hour in range(0, 7 * 24, 6):
            start = T0 + week * 7 * DAY + hour * 3600
            members = {("acme", "api"): Totals(10**9, 1, 0, 0, 1)}
            if untagged:
                members[("unattributed", "batch")] = Totals(10**9, 1, 0, 0, 1)
            fired += [(a.status, a.episode) for a in detector.observe_group(state, {}, start,
                                                                             members)]  # fmt: skip
    weeks = ["2026-11-23T00:00:00Z", "2026-11-30T00:00:00Z"]
    assert fired == [("firing", weeks[0]), ("resolved", weeks[0]), ("firing", weeks[1]),
                     ("resolved", weeks[1])]  # fmt: skip
    assert period_start(T0 + 3 * DAY, "week") == T0


ALLOCATION_CONFIG = (
    """
source: {{type: jsonl, path: {events}}}
detectors: []
budgets:
  - {{name: loaded, scope_by: [tenant], amount_usd: 10, period: day, window: 1h,
     include_allocated: true}}
  - {{name: direct, scope_by: [tenant], amount_usd: 10, period: day}}
allocation:
  - {{name: platform, dimension: tenant, shared: [shared], by: requests}}
"""
    + RECEIVERS
    + """routes:
  - match: {{rule: loaded}}
    receivers: [jira, slack]
  - receivers: [slack]
delivery: {{backoff_initial: 0.05, backoff_max: 0.5, flush_timeout: 60}}
"""
)


def test_allocated_spend_crosses_a_budget_and_reaches_jira_and_slack(tmp_path, monkeypatch):
    """acme spends $0.12 an hour itself and makes 3 of every 4 requests; the shared
    platform spends $0.40 an hour. With its share ($0.30 an hour) acme's day passes 70 %
    of $10 in hour 17, 85 % in hour 21 and 100 % in hour 24; on direct spend alone
    ($2.88) it never does. The crossings carry the split and go out through the real
    clients."""
    monkeypatch.setenv("FINOPS_SLACK_TOKEN", SLACK_TOKEN)
    monkeypatch.setenv("FINOPS_JIRA_TOKEN", JIRA_TOKEN)
    events = tmp_path / "events.jsonl"
    rows = []
    for hour in range(24):
        ts = T0 + hour * 3600
        rows += [{"ts": ts + 60 * k, "tenant": "acme", "cost_usd": 0.04} for k in range(3)]
        rows.append({"ts": ts + 240, "tenant": "globex", "cost_usd": 0.1})
        rows.append({"ts": ts + 300, "tenant": "shared", "cost_usd": 0.4})
    with open(events, "w") as out:
        for i, row in enumerate(rows):
            out.write(json.dumps({**row, "event_id": f"a{i}", "ts": _iso(row["ts"])}) + "\n")
    with FakeSlack(token=SLACK_TOKEN) as slack, FakeJira(token=JIRA_TOKEN, project="PLAT") as jira:
        text = ALLOCATION_CONFIG.format(events=events, slack=slack.api_url, jira=jira.url)
        config = load_config(write_config(tmp_path, text))
        out = tmp_path / "alerts.jsonl"
        summary = backtest(config, str(events), str(out), deliver=True)
        alerts = read_alerts(out)
        assert summary["undelivered"] == 0
        acme = [a for a in alerts if a["rule"] == "loaded" and a["scope"] == {"tenant": "acme"}]
        assert [a["threshold"] for a in acme] == [70, 85, 100]
        crossing = acme[0]
        assert crossing["window_start"] == _iso(T0 + 16 * 3600)  # $7.14 after 17 hours
        assert crossing["explain"]["allocation"] == "platform"
        direct, allocated = (
            crossing["explain"]["direct_nanos"],
            crossing["explain"]["allocated_nanos"],
        )
        assert 4 * allocated == 10 * direct, (direct, allocated)  # $0.30 to every $0.12
        assert direct + allocated == round(crossing["observed"] * 1e9)
        assert not [a for a in alerts if a["rule"] == "direct" and a["scope"]["tenant"] == "acme"]
        posted = {
            m["metadata"]["event_payload"]["alert_id"] for m in slack.messages() if "metadata" in m
        }
        assert crossing["alert_id"] in posted
        assert any("acme" in str(issue["fields"]["summary"]) for issue in jira.issues.values())
