"""Decisions from Slack against a running worker: real signed requests (slack-sdk's signature
code) to ``POST /slack/actions`` and Socket Mode envelopes over a real WebSocket, with the
fake Slack and Jira servers of the test kit. Approve writes the flag variant, reject and
acknowledge record, silence suppresses later alerts and survives a restart; forged, stale,
unknown-user and repeated clicks change nothing."""

from __future__ import annotations

import copy
import json
import os
import signal
import sqlite3
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlencode

import pytest
from slack_sdk.signature import SignatureVerifier

from spendwatch.notifiers.slack_blocks import ACTION_PREFIX, ACTIONS_BLOCK
from spendwatch.testing.fake_jira import FakeJira
from spendwatch.testing.fake_slack import FakeSlack
from tests.workers import CLI, free_port, http_get, wait_for

SLACK_TOKEN = "xoxb-approvals-bot-token-0042"
APP_TOKEN = "xapp-1-approvals-app-token-0042"
SIGNING = "8f742231b10e8888abcd99yyyzzz85a5"
JIRA_TOKEN = "jira-approvals-token-0042"
ALICE, BOB, MALLORY = "U0ALICE01", "U0BOB0001", "U0MALLORY"
GROUP = "S0FINOPS1"
TENANTS = ("acme", "beta", "gamma", "delta")

CONFIG = """
source: {{type: jsonl, path: {events}, follow: true, poll_interval: 0.1}}
engine: {{allowed_lateness: 30s, snapshot_interval: 0.2, shutdown_grace: 5, max_future_skew: 1h}}
dead_letter: {{path: {tmp}/dead.jsonl}}
pricing: {{fallback: {{input: 1.0, output: 1.0}}}}
budgets:
  - {{name: tenant-daily, scope_by: [tenant], amount_usd: 100, period: day,
     thresholds: [85, 100], window: 60}}
receivers:
  - type: slack
    token: ${{T_SLACK_TOKEN}}
    signing_secret: ${{T_SLACK_SIGNING_SECRET}}
    app_token: ${{T_SLACK_APP_TOKEN}}
    channel: C0ALERTS
    base_url: {slack}
  - type: feature_flag
    path: {tmp}/flags.json
    mode: propose
  - type: jira
    url: {jira}
    token: ${{T_JIRA_TOKEN}}
    project: FIN
routes:
  - match: {{kind: budget}}
    receivers: [flags, jira, slack]
    approvers: [{alice}, {group}]
server: {{port: {port}}}
delivery: {{backoff_initial: 0.05, backoff_max: 0.5}}
"""


def _event(n: int, tenant: str, ts: float, cost: float) -> str:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(ts))
    return json.dumps({"event_id": f"e{n}", "ts": stamp, "tenant": tenant, "cost_usd": cost})


def _append(path: Path, lines: list[str]) -> None:
    with path.open("a") as handle:
        handle.write("".join(line + "\n" for line in lines))


def _clock_events(start: int, at: float) -> list[str]:
    """Zero-cost events that move the watermark to ``at`` (its 3rd-largest event time)."""
    return [_event(start + i, "clock", at + i, 0.0) for i in range(3)]


def _start(config: Path, state: Path) -> subprocess.Popen:
    env = {
        **os.environ,
        "T_SLACK_TOKEN": SLACK_TOKEN,
        "T_SLACK_SIGNING_SECRET": SIGNING,
        "T_SLACK_APP_TOKEN": APP_TOKEN,
        "T_JIRA_TOKEN": JIRA_TOKEN,
    }
    command = [*CLI, "run", "--config", str(config), "--state-dir", str(state)]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)


def _stop(worker: subprocess.Popen) -> str:
    worker.send_signal(signal.SIGTERM)
    _, stderr = worker.communicate(timeout=60)
    assert worker.returncode == 0, stderr.decode()[-3000:]
    return stderr.decode()


def _tenant_of(message: dict) -> str:
    return next(t for t in TENANTS if f"tenant={t}" in json.dumps(message["blocks"]))


def _buttons(message: dict) -> dict[str, dict]:
    blocks = [b for b in message["blocks"] if b.get("block_id") == ACTIONS_BLOCK]
    return {e["action_id"].removeprefix(ACTION_PREFIX): e for b in blocks for e in b["elements"]}


def _payload(slack: FakeSlack, message: dict, action: str, user: str) -> dict:
    button = _buttons(message)[action]
    return {
        "type": "block_actions",
        "team": {"id": "T0TEAM", "domain": "example"},
        "user": {"id": user, "username": user.lower(), "team_id": "T0TEAM"},
        "api_app_id": "A0APP",
        "container": {
            "type": "message",
            "message_ts": message["ts"],
            "channel_id": "C0ALERTS",
            "is_ephemeral": False,
        },
        "trigger_id": "1.2.3",
        "channel": {"id": "C0ALERTS", "name": "alerts"},
        "message": message,
        "response_url": slack.response_url(f"{user}/{action}"),
        "actions": [
            {
                "action_id": button["action_id"],
                "block_id": ACTIONS_BLOCK,
                "value": button["value"],
                "type": "button",
                "action_ts": f"{time.time():.6f}",
            }
        ],
    }


def _post(port: int, payload: dict, *, secret: str = SIGNING, age: float = 0) -> int:
    body = urlencode({"payload": json.dumps(payload)})
    timestamp = str(int(time.time() - age))
    signature = SignatureVerifier(secret).generate_signature(timestamp=timestamp, body=body)
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/slack/actions",
        data=body.encode(),
        method="POST",
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Slack-Request-Timestamp": timestamp,
            "X-Slack-Signature": signature,
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status
    except urllib.error.HTTPError as error:
        return error.code


def _flag_scopes(path: Path) -> dict[str, str]:
    """tenant → variant in the live flag file."""
    if not path.exists():
        return {}
    flag = json.loads(path.read_text())["flags"].get("llm-spend-throttle", {})
    branches = flag.get("targeting", {}).get("if", [None])[:-1]
    found: dict[str, str] = {}
    for condition, variant in zip(branches[::2], branches[1::2], strict=True):
        for test in condition.get("or", [condition]):
            found[test["=="][1]] = variant
    return found


def _rows(outbox: Path, sql: str) -> list[tuple]:
    conn = sqlite3.connect(f"file:{outbox}?mode=ro", uri=True)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def _decisions(outbox: Path) -> list[tuple]:
    return _rows(outbox, "SELECT action, user_id, via, outcome FROM decisions ORDER BY id")


@pytest.fixture
def servers():
    groups = {GROUP: [BOB]}
    slack = FakeSlack(token=SLACK_TOKEN, app_token=APP_TOKEN, groups=groups)
    with slack, FakeJira(token=JIRA_TOKEN) as jira:
        yield slack, jira


def test_decisions_from_slack_over_http_and_socket_mode(servers, tmp_path):
    slack, jira = servers
    port = free_port()
    events, state = tmp_path / "events.jsonl", tmp_path / "state"
    config = tmp_path / "config.yaml"
    config.write_text(
        CONFIG.format(
            events=events,
            tmp=tmp_path,
            slack=slack.api_url,
            jira=jira.url,
            port=port,
            alice=ALICE,
            group=GROUP,
        )
    )
    now = time.time()
    # Every event of the test (from 10 minutes before `now` to 12 after) falls in one UTC
    # day: a day's end resolves the budgets, and a resolve replaces the buttons (run just
    # after midnight, it did). Within the hour of skew the worker accepts.
    day = now - now % 86400
    now = min(max(now, day + 601), day + 86400 - 721)
    base = now - 600
    # Each tenant spends $90 of $100: the 85 % threshold proposes `degrade` for it.
    _append(events, [_event(i, t, base + i, 90.0) for i, t in enumerate(TENANTS)])
    _append(events, _clock_events(100, base + 300))
    flags, outbox = tmp_path / "flags.json", state / "outbox.sqlite"
    worker = _start(config, state)
    try:
        posted = wait_for(
            lambda: len(slack.top_level()) == 4 and {_tenant_of(m): m for m in slack.top_level()},
            timeout=30,
        )
        messages = copy.deepcopy(posted)  # as the clickers saw them (updates change the fake's)
        for message in messages.values():
            assert set(_buttons(message)) == {"approve", "reject", "silence", "acknowledge"}
            assert _buttons(message)["silence"]["text"]["text"] == "Silence 4 h"
        assert json.loads((tmp_path / "flags.json.proposed.json").read_text())
        assert _flag_scopes(flags) == {}  # proposed only
        wait_for(lambda: len(jira.issues) == 4)

        # Forged (another app's secret) and stale (6 minutes old) requests: 401, no effect.
        acme = messages["acme"]
        assert _post(port, _payload(slack, acme, "approve", ALICE), secret="not-the-secret") == 401
        assert _post(port, _payload(slack, acme, "approve", ALICE), age=360) == 401
        # Someone not on the allow-list: answered in Slack, nothing changes.
        assert _post(port, _payload(slack, acme, "approve", MALLORY)) == 200
        wait_for(lambda: any("not allowed" in r.get("text", "") for r in slack.responses))
        assert _flag_scopes(flags) == {} and _decisions(outbox) == []

        # Alice approves acme's throttle: the live flag file gets the variant.
        assert _post(port, _payload(slack, acme, "approve", ALICE)) == 200
        assert wait_for(lambda: _flag_scopes(flags)) == {"acme": "degrade"}
        updated = wait_for(
            lambda: next(
                (m for m in slack.top_level() if m["ts"] == acme["ts"] and "edited" in m), None
            )
        )
        assert not _buttons(updated)
        line = json.dumps(updated["blocks"])
        assert f"Throttle approved by <@{ALICE}>" in line and "degrade" in line

        # A second click on the decided alert: "already decided", nothing changes.
        assert _post(port, _payload(slack, acme, "reject", BOB)) == 200
        wait_for(lambda: any("Already decided" in r.get("text", "") for r in slack.responses))
        assert _flag_scopes(flags) == {"acme": "degrade"}

        # Bob (in the approvers' user group) rejects beta's: recorded, not applied.
        assert _post(port, _payload(slack, messages["beta"], "reject", BOB)) == 200
        wait_for(lambda: len(_decisions(outbox)) == 2)
        # Alice silences gamma: listed by GET /silences.
        assert _post(port, _payload(slack, messages["gamma"], "silence", ALICE)) == 200
        silences = wait_for(lambda: json.loads(http_get(port, "/silences")[1])["silences"])
        [silence] = silences
        assert silence["source"] == "slack" and silence["active"]
        assert silence["match"]["scope"] == {"tenant": "gamma"}
        status = json.loads(http_get(port, "/status.json")[1])
        assert status["silences"] == silences  # the status page shows it too

        # Acknowledge over Socket Mode: the same handler, the envelope acked by its id.
        wait_for(lambda: slack.connected())
        envelope = slack.push(_payload(slack, messages["delta"], "acknowledge", ALICE))
        assert slack.acked(envelope)
        wait_for(lambda: len(_decisions(outbox)) == 4)
        assert _flag_scopes(flags) == {"acme": "degrade"}

        decisions = _decisions(outbox)
        assert [(a, u, v) for a, u, v, _ in decisions] == [
            ("approve", ALICE, "http"),
            ("reject", BOB, "http"),
            ("silence", ALICE, "http"),
            ("acknowledge", ALICE, "socket_mode"),
        ]
        assert decisions[0][3] == "applied: flag llm-spend-throttle set to degrade"
        assert decisions[1][3].startswith("rejected:") and decisions[3][3] == "acknowledged"
        # Every decision is commented on its alert's Jira issue.
        def commented() -> list[str]:
            return [c for key in jira.issues for c in jira.comments(key) if "in Slack by" in c]

        assert len(wait_for(lambda: len(commented()) == 4 and commented())) == 4
        assert any("Throttle approved in Slack by u0alice01" in c for c in commented())
    finally:
        stderr = _stop(worker)

    # After a restart the silence holds: gamma crosses 100 % later and is not sent.
    sent_before = len(slack.messages())
    later = now + 120
    _append(events, [_event(200, "gamma", later, 20.0), _event(201, "beta", later, 20.0)])
    _append(events, _clock_events(300, later + 600))
    worker = _start(config, state)
    try:
        again = wait_for(lambda: json.loads(http_get(port, "/silences")[1])["silences"])
        assert again == silences
        stored = wait_for(
            lambda: (
                rows := _rows(
                    outbox,
                    "SELECT json_extract(payload, '$.scope.tenant'), silenced FROM alerts "
                    "WHERE json_extract(payload, '$.threshold') = 100",
                )
            )
            and len(rows) == 2
            and dict(rows)
        )
        assert stored["gamma"] and stored["gamma"].startswith("silenced from Slack by")
        assert stored["beta"] is None  # not silenced: posted
        [new] = wait_for(lambda: slack.messages()[sent_before:])  # in beta's budget thread
        assert "tenant=beta" in json.dumps(new["blocks"]) and new["thread_ts"]
        time.sleep(0.5)  # gamma's would have been delivered by now
        assert len(slack.messages()) == sent_before + 1
    finally:
        stderr += _stop(worker)

    # No secret in the logs or in the outbox database.
    dump = "\n".join(sqlite3.connect(outbox).iterdump())
    for secret in (SLACK_TOKEN, APP_TOKEN, SIGNING, JIRA_TOKEN):
        assert secret not in stderr and secret not in dump
    logged = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    decided = [
        (e["action"], e["user"], e["fingerprint"]) for e in logged if e.get("event") == "decision"
    ]
    audited = _rows(outbox, "SELECT action, user_id, fingerprint FROM decisions ORDER BY id")
    assert decided == audited and len(decided) == 4
    refused = [e["reason"] for e in logged if e.get("event") == "decision refused"]
    assert sorted(refused) == ["already decided", "not an approver"]
    stale = [e for e in logged if e.get("event") == "slack request refused"]
    assert len(stale) == 2
