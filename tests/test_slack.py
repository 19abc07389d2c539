"""Slack receiver against the local Slack Web API, driven by the real slack-sdk client."""

from __future__ import annotations

import time

import pytest

from spendwatch.notifiers.base import Delivery, MemoryState, NotifyError
from spendwatch.notifiers.outbox import DeliveryConfig, Outbox
from spendwatch.notifiers.slack import SlackConfig, SlackNotifier
from spendwatch.notifiers.slack_blocks import blocks, escape
from spendwatch.testing.fake_http import Fault
from spendwatch.testing.fake_slack import FakeSlack
from tests.notifier_kit import anomaly_alert, budget_alert

TOKEN = "xoxb-111-222-secretsecret"


@pytest.fixture
def slack():
    with FakeSlack(token=TOKEN) as server:
        yield server


def notifier(server: FakeSlack, token: str = TOKEN) -> SlackNotifier:
    return SlackNotifier(SlackConfig(token=token, channel="C0ALERTS", base_url=server.api_url))


def mrkdwn_texts(node) -> list[str]:
    """Every mrkdwn text object (plain_text is never parsed for mentions)."""
    if isinstance(node, list):
        return [t for item in node for t in mrkdwn_texts(item)]
    if isinstance(node, dict):
        found = [node["text"]] if node.get("type") == "mrkdwn" else []
        return found + [t for v in node.values() for t in mrkdwn_texts(v)]
    return []


def test_firing_message_shows_the_facts_and_escapes_user_text(slack):
    alert = anomaly_alert(prompt="<!channel> & co").model_copy(
        update={"owner": "docs-team", "owner_ids": {"slack": "U0ALICE12"}}
    )
    notifier(slack).notify(alert)
    [message] = slack.messages()
    text = " ".join(mrkdwn_texts(message["blocks"])) + message["text"]
    assert "&lt;!channel&gt; &amp; co" in text and "<!channel>" not in text
    assert "1,800 output tokens per request observed vs 400" in text and "z=12.5" in text
    assert "2025-11-16T00:00:00Z to 2025-11-16T01:00:00Z" in text
    assert "<@U0ALICE12>" in text
    assert message["metadata"]["event_payload"]["alert_id"] == alert.alert_id


def test_budget_thresholds_share_a_thread_and_resolve_updates_the_original(slack):
    receiver, state = notifier(slack), MemoryState()
    for alert in (budget_alert(70.0), budget_alert(85.0), budget_alert(100.0)):
        receiver.deliver(alert, Delivery(state=state))
    root, *replies = slack.messages()
    assert [m.get("thread_ts") for m in replies] == [root["ts"], root["ts"]]
    assert replies[1]["subtype"] == "thread_broadcast"  # the critical one shows in the channel
    assert "% of" not in root["text"] and "70%" in root["text"]
    receiver.deliver(budget_alert(85.0, status="resolved"), Delivery(state=state))
    updated = slack.messages()[1]
    assert updated["text"].startswith("[RESOLVED]") and "edited" in updated
    last = slack.messages()[-1]
    assert last["thread_ts"] == root["ts"] and "Resolved" in str(last["blocks"])
    assert len(slack.top_level()) == 1


def test_anomaly_resolve_updates_and_replies_in_its_own_thread(slack):
    receiver, state = notifier(slack), MemoryState()
    receiver.deliver(anomaly_alert(), Delivery(state=state))
    receiver.deliver(anomaly_alert(status="resolved"), Delivery(state=state))
    original, reply = slack.messages()
    assert original["text"].startswith("[RESOLVED]")
    assert reply["thread_ts"] == original["ts"]


def test_rate_limit_is_retryable_with_retry_after(slack):
    slack.fail("chat.postMessage", Fault.http(429, retry_after=3))
    with pytest.raises(NotifyError) as caught:
        notifier(slack).notify(anomaly_alert())
    assert caught.value.retryable and caught.value.retry_after == 3.0
    assert slack.messages() == []


def test_a_bad_token_is_not_retried_and_never_shown(slack):
    wrong = "xoxb-999-wrong-tokenvalue"
    with pytest.raises(NotifyError) as caught:
        notifier(slack, token=wrong).notify(anomaly_alert())
    assert not caught.value.retryable and "invalid_auth" in str(caught.value)
    assert wrong not in str(caught.value) and wrong not in repr(caught.value.__cause__)


def test_lost_response_then_retry_posts_once(slack, tmp_path):
    receiver = notifier(slack)
    outbox = Outbox(str(tmp_path / "o.db"), [receiver], config=DeliveryConfig(backoff_initial=0.01))
    slack.fail("chat.postMessage", Fault.lost(), Fault.http(500), Fault.reset())
    outbox.put(anomaly_alert())
    outbox.put(anomaly_alert(status="resolved"))
    assert outbox.drain(timeout=10)
    assert len(slack.top_level()) == 1 and len(slack.messages()) == 2
    assert len(slack.calls("conversations.history")) >= 1
    outbox.close()


def test_slow_server_times_out_and_the_retry_finds_the_post(slack, tmp_path):
    config = SlackConfig(token=TOKEN, channel="C0ALERTS", base_url=slack.api_url, timeout=1)
    outbox = Outbox(
        str(tmp_path / "o.db"), [SlackNotifier(config)], config=DeliveryConfig(backoff_initial=0.01)
    )
    slack.fail("chat.postMessage", Fault.slow(1.6))
    outbox.put(anomaly_alert())
    started = time.monotonic()
    assert outbox.drain(timeout=10)
    assert time.monotonic() - started < 8
    time.sleep(0.7)  # let the slow handler finish its (late) post
    assert len(slack.messages()) == 1
    outbox.close()


def test_escape_covers_the_three_control_characters():
    assert escape("a & <b> c") == "a &amp; &lt;b&gt; c"
    rendered = " ".join(mrkdwn_texts(blocks(budget_alert(tenant="x>y"))))
    assert "x&gt;y" in rendered and "x>y" not in rendered
