"""Jira receiver against the local Jira REST API, driven by the real ``jira`` client."""

from __future__ import annotations

import pytest

from spendwatch.notifiers.jira import JiraConfig, JiraNotifier, fingerprint_label, jql_quote
from spendwatch.notifiers.outbox import DeliveryConfig, Outbox
from spendwatch.testing.fake_http import Fault
from spendwatch.testing.fake_jira import FakeJira, JqlError, parse_jql
from tests.notifier_kit import anomaly_alert

TOKEN = "jira-api-token-0123456789"


@pytest.fixture(params=["Server", "Cloud"])
def jira(request):
    with FakeJira(token=TOKEN, deployment=request.param) as server:
        yield server


def notifier(server: FakeJira, **extra) -> JiraNotifier:
    email = "bot@example.com" if server.deployment == "Cloud" else None
    return JiraNotifier(
        JiraConfig(url=server.url, email=email, token=TOKEN, project="FIN", **extra)
    )


def owned(alert, owner="alice"):
    return alert.model_copy(update={"owner": owner})


def test_creates_one_issue_then_comments_and_transitions_on_resolve(jira):
    receiver = notifier(jira, resolve_transition="Done", rule_url="https://cfg.example/{rule}")
    receiver.notify(owned(anomaly_alert()))
    [issue] = jira.issues.values()
    fields = issue["fields"]
    assert fields["labels"] == ["spendwatch", fingerprint_label(anomaly_alert())]
    assert fields["priority"] == {"name": "Medium"}
    assert fields["issuetype"] == {"name": "Task"}
    assert "1,800 output tokens per request observed vs 400" in fields["description"]
    assert "[prompt\\-output\\-tokens|" not in fields["description"]
    assert "https://cfg.example/prompt-output-tokens" in fields["description"]
    key = "accountId" if jira.deployment == "Cloud" else "name"
    assert fields["assignee"] == {key: "alice"}
    receiver.notify(owned(anomaly_alert(status="resolved")))
    assert fields["status"]["name"] == "Done"
    assert len(jira.comments(issue["key"])) == 1
    search = "GET search/jql" if jira.deployment == "Cloud" else "GET search"
    assert jira.calls(search)


def test_an_open_issue_gets_a_comment_instead_of_a_new_issue(jira):
    receiver = notifier(jira)
    receiver.notify(anomaly_alert())
    receiver.notify(anomaly_alert(episode=1763251200 + 86400))  # a new episode, same condition
    assert len(jira.issues) == 1
    [issue] = jira.issues.values()
    assert len(jira.comments(issue["key"])) == 1


def test_lost_create_response_makes_one_issue(jira, tmp_path):
    outbox = Outbox(
        str(tmp_path / "o.db"), [notifier(jira)], config=DeliveryConfig(backoff_initial=0.01)
    )
    jira.fail("POST issue", Fault.lost(), Fault.http(502), Fault.http(429, retry_after=0.1))
    outbox.put(anomaly_alert())
    assert outbox.drain(timeout=10)
    assert len(jira.issues) == 1
    [issue] = jira.issues.values()
    assert jira.comments(issue["key"]) == []  # and no "firing again" comment for itself
    outbox.close()


def test_unknown_owner_still_opens_the_issue_unassigned(jira):
    notifier(jira).notify(owned(anomaly_alert(), owner="nobody@example.com"))
    [issue] = jira.issues.values()
    assert "assignee" not in issue["fields"]


def test_bad_credentials_are_not_retried_and_never_shown(jira):
    receiver = JiraNotifier(JiraConfig(url=jira.url, token="wrong-token-abcdef", project="FIN"))
    with pytest.raises(Exception) as caught:
        receiver.notify(anomaly_alert())
    assert caught.value.retryable is False
    assert "wrong-token-abcdef" not in str(caught.value)


def test_jql_values_are_escaped_and_parse_back():
    value = 'we"ird\\label'
    clauses = parse_jql(f"labels = {jql_quote(value)} AND project = FIN ORDER BY created")
    assert clauses == [("labels", "=", value), ("project", "=", "FIN")]
    with pytest.raises(JqlError):
        parse_jql(f'labels = "{value}"')
