"""End to end: a backtest delivers exactly the alerts it raised to Slack, Jira and the flag
file, each once, while the servers fail the first attempts."""

from __future__ import annotations

import json
from collections import Counter

from spendwatch.config import load_config
from spendwatch.ops import demo
from spendwatch.ops.backtest import backtest
from spendwatch.testing.fake_http import Fault
from spendwatch.testing.fake_jira import FakeJira
from spendwatch.testing.fake_slack import FakeSlack
from tests.conftest import DETECTION_CONFIG, read_alerts, write_config

SLACK_TOKEN = "xoxb-e2e-token-123456"
JIRA_TOKEN = "jira-e2e-token-123456"

RECEIVERS = """
receivers:
  - type: slack
    token: ${{E2E_SLACK_TOKEN}}
    channel: C0ALERTS
    base_url: {slack}
  - type: jira
    url: {jira}
    token: ${{E2E_JIRA_TOKEN}}
    project: FIN
    resolve_transition: Done
  - type: feature_flag
    path: {tmp}/flags.json
    mode: apply
routes:
  - match: {{kind: anomaly, scope: {{prompt_id: "*"}}}}
    receivers: [jira]
    continue: true
  - match: {{kind: budget}}
    receivers: [flags]
    continue: true
  - receivers: [slack]
owners:
  - scope: {{prompt_id: "summarize@*"}}
    owner: docs-team@example.com
    jira: alice
delivery:
  backoff_initial: 0.05
  backoff_max: 0.5
  flush_timeout: 60
"""


def test_backtest_delivers_each_alert_once_despite_failures(planted_file, tmp_path, monkeypatch):
    monkeypatch.setenv("E2E_SLACK_TOKEN", SLACK_TOKEN)
    monkeypatch.setenv("E2E_JIRA_TOKEN", JIRA_TOKEN)
    with FakeSlack(token=SLACK_TOKEN) as slack, FakeJira(token=JIRA_TOKEN) as jira:
        slack.fail(
            "chat.postMessage", Fault.http(429, retry_after=0.2), Fault.http(500), Fault.lost()
        )
        jira.fail("POST issue", Fault.http(503), Fault.lost())
        detection = DETECTION_CONFIG.format(
            dead_letter=tmp_path / "dead.jsonl",
            alerts=tmp_path / "audit.jsonl",
            pricing=demo.pricing_yaml(),
        )
        rules = detection[: detection.index("receivers:")]  # the suite's rules, our receivers
        text = rules + RECEIVERS.format(tmp=tmp_path, slack=slack.api_url, jira=jira.url)
        config = load_config(write_config(tmp_path, text))
        out = tmp_path / "alerts.jsonl"
        summary = backtest(config, str(planted_file), str(out), deliver=True)
        alerts = read_alerts(out)

        ids = [a["alert_id"] for a in alerts]
        assert len(ids) == len(set(ids)) == summary["alerts"] and summary["undelivered"] == 0
        kinds = Counter(a["kind"] for a in alerts)
        assert kinds["anomaly"] and kinds["budget"]

        # Slack: every alert exactly once (metadata carries the alert id of each post).
        posted = Counter(
            m["metadata"]["event_payload"]["alert_id"] for m in slack.messages() if "metadata" in m
        )
        assert posted == Counter(ids)

        # Jira: prompt anomalies only, one issue per condition, each alert recorded once.
        prompt = [a for a in alerts if a["kind"] == "anomaly" and "prompt_id" in a["scope"]]
        assert prompt
        assert len(jira.issues) == len({a["fingerprint"] for a in prompt})
        texts = " ".join(
            str(i["fields"]["description"]) + " ".join(jira.comments(k))
            for k, i in jira.issues.items()
        )
        for alert in prompt:
            assert texts.count(f"spendwatch alert {alert['alert_id']}") == 1
        owners = {a["owner"] for a in alerts if a["scope"].get("prompt_id", "").startswith("summ")}
        assert owners <= {"docs-team@example.com"}

    # Flags: the throttles left are the budget thresholds not resolved by a period rollover.
    firing = {
        a["fingerprint"]: a for a in alerts if a["kind"] == "budget" and a["status"] == "firing"
    }
    for a in alerts:
        if a["kind"] == "budget" and a["status"] == "resolved":
            firing.pop(a["fingerprint"], None)
    expected: dict[str, str] = {}
    for a in firing.values():
        variant = "block" if a["threshold"] >= 100 else "degrade" if a["threshold"] >= 85 else None
        if variant and expected.get(a["scope"]["tenant"]) != "block":
            expected[a["scope"]["tenant"]] = variant
    flag = json.loads((tmp_path / "flags.json").read_text())["flags"]["llm-spend-throttle"]
    branches = flag.get("targeting", {}).get("if", [None])[:-1]
    actual: dict[str, str] = {}
    for condition, variant in zip(branches[::2], branches[1::2], strict=True):
        for test in condition.get("or", [condition]):
            actual.setdefault(test["=="][1], variant)
    assert actual == expected


def test_get_flow_with_explicit_receivers_has_delivered_when_the_run_returns(
    detection_config, planted_file, tmp_path
):
    from bytewax.testing import run_main

    from spendwatch.dataflows.flow import get_flow
    from spendwatch.notifiers.file import FileConfig, FileNotifier

    config, _ = detection_config
    source = config.source.model_copy(update={"path": str(planted_file)})
    out = tmp_path / "direct.jsonl"
    run_main(
        get_flow(
            config.model_copy(update={"source": source}),
            receivers=lambda: [FileNotifier(FileConfig(path=str(out)))],
        )
    )
    ids = [a["alert_id"] for a in read_alerts(out)]
    assert len(ids) >= 5 and len(ids) == len(set(ids))
