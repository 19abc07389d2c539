"""The decision handler on a real outbox, flag file and Slack receiver (the fake Slack API):
buttons only where clicks can arrive, silences kept across reopening the outbox and matched
literally, no approval of a throttle whose budget alert already resolved."""

from __future__ import annotations

import json
import time

import pytest

from spendwatch.core.alerts import Alert, make_alert
from spendwatch.notifiers.base import Delivery
from spendwatch.notifiers.flags import FlagConfig, FlagNotifier
from spendwatch.notifiers.outbox import DeliveryConfig, Outbox
from spendwatch.notifiers.router import Dispatcher, RouteConfig
from spendwatch.notifiers.slack import SlackConfig, SlackNotifier
from spendwatch.notifiers.slack_actions import Approvals
from spendwatch.notifiers.slack_blocks import ACTION_PREFIX, ACTIONS_BLOCK
from spendwatch.testing.fake_slack import FakeSlack

TOKEN = "xoxb-unit-actions-token"
SECRET = "unit-actions-signing-secret"
ALICE = "U0ALICE01"


def _alert(
    tenant: str, status: str = "firing", at: float | None = None, threshold: float = 85.0
) -> Alert:
    start = int(at if at is not None else time.time() - 3600) // 60 * 60
    return make_alert(
        kind="budget",
        rule="tenant-daily",
        status=status,
        severity="warning",
        scope={"tenant": tenant},
        metric="spend_usd",
        window_start=start,
        window_end=start + 60,
        observed=90.0,
        expected=100.0,
        score=90.0,
        threshold=threshold,
        episode_start=start - start % 86400,
        period=time.strftime("%Y-%m-%d", time.gmtime(start)),
        fingerprint_threshold=threshold,
    )


@pytest.fixture
def slack():
    with FakeSlack(token=TOKEN) as server:
        yield server


def _outbox(path, slack: FakeSlack, tmp_path) -> Outbox:
    receivers = {
        "slack": SlackNotifier(
            SlackConfig(
                token=TOKEN, channel="C0ALERTS", base_url=slack.api_url, signing_secret=SECRET
            )
        ),
        "flags": FlagNotifier(FlagConfig(path=str(tmp_path / "flags.json"))),
    }
    routes = [RouteConfig(receivers=["flags", "slack"], approvers=[ALICE])]
    return Outbox(
        str(path),
        receivers,
        dispatcher=Dispatcher(list(receivers), routes),
        config=DeliveryConfig(backoff_initial=0.01),
    )


def _click(slack: FakeSlack, alert: Alert, action: str, user: str = ALICE) -> dict:
    message = next(m for m in slack.top_level() if alert.fingerprint in json.dumps(m["blocks"]))
    [block] = [b for b in message["blocks"] if b.get("block_id") == ACTIONS_BLOCK]
    button = next(e for e in block["elements"] if e["action_id"] == ACTION_PREFIX + action)
    return {
        "type": "block_actions",
        "user": {"id": user, "username": "alice"},
        "container": {"type": "message", "channel_id": "C0ALERTS", "message_ts": message["ts"]},
        "actions": [{"action_id": button["action_id"], "value": button["value"]}],
    }


def _action_ids(message: dict) -> list[str]:
    return [
        e["action_id"].removeprefix(ACTION_PREFIX)
        for b in message["blocks"]
        if b.get("block_id") == ACTIONS_BLOCK
        for e in b["elements"]
    ]


def test_buttons_only_when_clicks_can_arrive_and_approve_only_for_a_proposal(slack):
    plain = SlackNotifier(SlackConfig(token=TOKEN, channel="C0ALERTS", base_url=slack.api_url))
    plain.deliver(_alert("acme"), Delivery(proposals={"flags": "flag x to degrade"}))
    interactive = SlackNotifier(
        SlackConfig(
            token=TOKEN, channel="C0ALERTS", base_url=slack.api_url, app_token="xapp-1-x"
        )
    )
    interactive.deliver(_alert("beta"), Delivery())
    interactive.deliver(_alert("gamma"), Delivery(proposals={"flags": "flag x to degrade"}))
    first, second, third = slack.top_level()
    assert _action_ids(first) == []
    assert _action_ids(second) == ["reject", "silence", "acknowledge"]
    assert _action_ids(third) == ["approve", "reject", "silence", "acknowledge"]


def test_a_silence_from_slack_outlives_the_outbox_and_matches_its_scope_literally(
    slack, tmp_path
):
    path = tmp_path / "outbox.sqlite"
    outbox = _outbox(path, slack, tmp_path)
    try:
        clicked = _alert("a*c")
        outbox.put(clicked)
        assert outbox.drain(timeout=10)
        approvals = Approvals(outbox)
        assert approvals.decide(_click(slack, clicked, "silence"), via="http") is None
        assert [d.action for d in outbox.decisions()] == ["silence"]
        approvals.wait()  # the message update, before the outbox closes
    finally:
        outbox.close()

    reopened = _outbox(path, slack, tmp_path)
    try:
        [silence] = reopened.stored_silences()
        assert silence.created_by == ALICE
        later = time.time() + 120
        same, lookalike = _alert("a*c", at=later, threshold=100), _alert("abc", at=later)
        reopened.put(same)
        reopened.put(lookalike)
        reasons = dict(reopened.stored())
        assert reasons[same.alert_id] and reasons[same.alert_id].startswith("silenced from Slack")
        assert reasons[lookalike.alert_id] is None  # `*` in the scope value is no glob
    finally:
        reopened.close()


def test_no_approval_once_the_budget_alert_resolved(slack, tmp_path):
    outbox = _outbox(tmp_path / "outbox.sqlite", slack, tmp_path)
    try:
        firing = _alert("acme")
        outbox.put(firing)
        assert outbox.drain(timeout=10)
        click = _click(slack, firing, "approve")  # the button as shown before the resolve
        outbox.put(firing.model_copy(update={"status": "resolved", "alert_id": "r-1"}))
        assert outbox.drain(timeout=10)
        reply = Approvals(outbox).decide(click, via="http")
        assert reply is not None and "Nothing was changed" in reply["text"]
        assert outbox.decisions() == []  # released: nothing recorded as decided
        assert not (tmp_path / "flags.json").exists()  # the live file was never written
        assert (tmp_path / "flags.json.proposed.json").exists()
    finally:
        outbox.close()


def test_receiver_approvers_decide_without_routes_and_others_are_refused(slack, tmp_path):
    receivers = {
        "slack": SlackNotifier(
            SlackConfig(
                token=TOKEN,
                channel="C0ALERTS",
                base_url=slack.api_url,
                signing_secret=SECRET,
                approvers=["U0CAROL01"],
            )
        )
    }
    outbox = Outbox(str(tmp_path / "outbox.sqlite"), receivers)  # no routes: every receiver
    try:
        alert = _alert("acme")
        outbox.put(alert)
        assert outbox.drain(timeout=10)
        approvals = Approvals(outbox)
        refused = approvals.decide(_click(slack, alert, "acknowledge", ALICE), via="http")
        assert refused is not None and "not allowed" in refused["text"]
        assert outbox.decisions() == []
        click = _click(slack, alert, "acknowledge", "U0CAROL01")
        assert approvals.decide(click, via="http") is None
        [decision] = outbox.decisions()
        assert (decision.user_id, decision.outcome) == ("U0CAROL01", "acknowledged")
        approvals.wait()
        [message] = slack.top_level()
        assert _action_ids(message) == [] and "Acknowledged by <@U0CAROL01>" in json.dumps(
            message["blocks"]
        )
    finally:
        outbox.close()


def test_silences_set_from_slack_are_pruned_a_retention_after_they_end(tmp_path):
    from datetime import datetime, timezone

    from spendwatch.notifiers.router import Match, SilenceConfig

    now = [1_800_000_000.0]
    outbox = Outbox(
        str(tmp_path / "outbox.sqlite"),
        {},
        config=DeliveryConfig(retention=30 * 86400),
        clock=lambda: now[0],
    )
    try:
        def silence(end: float) -> SilenceConfig:
            return SilenceConfig(
                match=Match(rule=["r"]),
                start=datetime.fromtimestamp(end - 3600, tz=timezone.utc),
                end=datetime.fromtimestamp(end, tz=timezone.utc),
                reason="from slack",
            )

        outbox.add_silence(silence(now[0] + 3600))
        outbox.add_silence(silence(now[0] + 10 * 86400))
        now[0] += 31 * 86400  # the first ended 31 days ago, the second 21
        outbox.prune()
        [kept] = outbox.stored_silences()
        assert kept.end.timestamp() == 1_800_000_000.0 + 10 * 86400
    finally:
        outbox.close()
