"""Hostile scope values, rule names, drivers and owners, rendered by every receiver.

Each hostile string is planted in one user-controlled field of an alert and rendered
next to the same alert with a benign value there. The attacker must not be able to add
markup: a bold/italic/strike/code span, a line, a quote, a link or mention (Slack), a
wiki span, link or line break (Jira), a terminal escape or a second line (console).
Comparing with the benign rendering tells the receiver's own markup from the attacker's.
"""

from __future__ import annotations

import io
import json
import re
from typing import Any

import pytest

from spendwatch.core.alerts import Alert, Driver
from spendwatch.notifiers import slack_blocks as sb
from spendwatch.notifiers.console import ConsoleConfig, ConsoleNotifier, json_line, render_line
from spendwatch.notifiers.jira import JiraConfig, JiraNotifier, summary
from spendwatch.notifiers.slack import SlackConfig, SlackNotifier
from spendwatch.testing.fake_jira import FakeJira
from spendwatch.testing.fake_slack import FakeSlack
from tests.notifier_kit import anomaly_alert, budget_alert

HOSTILE = {
    "bold-line": "acme\n*ALL CLEAR* nothing to see",
    "crlf": "acme\r\n*ALL CLEAR*",
    "line-separator": "acme\u2028*ALL CLEAR*\u2029x",
    "nel": "acme\u0085_ALL CLEAR_",
    "bold": "*ALL CLEAR*",
    "italic": "_ALL CLEAR_",
    "strike": "~ALL CLEAR~",
    "code": "`ALL CLEAR`",
    "code-block": "```ALL\nCLEAR```",
    "quote": "> ALL CLEAR",
    "quote-after-newline": "acme\n> ALL CLEAR",
    "channel": "<!channel>",
    "here": "<!here|here>",
    "user": "<@U12345678>",
    "subteam": "<!subteam^S1234567>",
    "channel-link": "<#C1234567>",
    "link": "<http://x|y>",
    "entity": "&lt;!channel&gt;",
    "mixed": "a*b_c~d`e>f<g&h",
    "ansi": "acme\x1b[31mRED\x1b[0m",
    "osc-title": "acme\x1b]0;pwned\x07",
    "c1-csi": "acme\u009b31mRED",
    "bidi": "acme\u202eRALC LLA",
    "nul-del": "acme\x00\x7f",
    "jira-heading": "acme\nh1. ALL CLEAR",
    "jira-break": "acme\\\\ALL CLEAR",
    "jira-link": "[ALL CLEAR|http://x]",
    "jira-macro": "{code}ALL CLEAR{code}",
    "jira-mono": "{{ALL CLEAR}}",
    "jira-spans": "-ALL- +CLEAR+ ??now?? ^up^ ~down~ !http://x/i.png!",
    "jira-list": "acme\n# one\n* two",
    "jira-rule": "acme\n----\nx",
    "long": "A" * 1000,
    "long-emoji": "💸" * 300,
}
BENIGN = {"scope": "acme", "rule": "tenant-daily", "driver": "gpt-4o", "owner": "docs-team"}
WHERE = sorted(BENIGN)
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def planted(where: str, text: str, kind: str = "budget", status: str = "firing") -> Alert:
    base = budget_alert(status=status) if kind == "budget" else anomaly_alert(status=status)
    values = {**BENIGN, where: text}
    update: dict[str, Any] = {
        "rule": values["rule"],
        "drivers": [Driver(dimension="model", value=values["driver"], share=0.72)],
        "owner": values["owner"],
    }
    scope_key = next(iter(base.scope))
    update["scope"] = {scope_key: values["scope"]}
    return base.model_copy(update=update)


# -- Slack ------------------------------------------------------------------------------------


def text_objects(node: Any) -> list[dict[str, Any]]:
    if isinstance(node, list):
        return [t for item in node for t in text_objects(item)]
    if isinstance(node, dict):
        found = [node] if node.get("type") in ("mrkdwn", "plain_text") else []
        return found + [t for v in node.values() for t in text_objects(v)]
    return []


def slack_renderings(alert: Alert) -> list[dict[str, Any]]:
    """Every text Slack gets for ``alert``: blocks, the resolved reply, the fallback text."""
    objects = text_objects(sb.blocks(alert, notes=[f"Proposed: throttle {alert.scope}"]))
    objects += text_objects(sb.resolved_reply(alert))
    return [*objects, {"type": "mrkdwn", "text": sb.fallback_text(alert), "fallback": True}]


def outside_code(text: str) -> str:
    """mrkdwn with inline code spans emptied (nothing inside them is formatting)."""
    return re.sub(r"`[^`\n]*`", "``", text)


def markup(text: str) -> dict[str, int]:
    """How much mrkdwn markup ``text`` carries, outside code spans."""
    bare = outside_code(text)
    return {
        "*": bare.count("*"),
        "~": bare.count("~"),
        "`": text.count("`"),
        "_": len(re.findall(r"(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])", bare)),
        "lines": text.count("\n"),
        "<": text.count("<"),
        "quote": sum(line.lstrip().startswith(">") for line in text.split("\n")),
    }


@pytest.mark.parametrize("where", WHERE)
@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_slack_shows_hostile_text_without_its_markup(name, where):
    for kind in ("budget", "anomaly"):
        hostile = slack_renderings(planted(where, HOSTILE[name], kind))
        benign = slack_renderings(planted(where, BENIGN[where], kind))
        assert len(hostile) == len(benign)
        for got, reference in zip(hostile, benign, strict=True):
            text = got["text"]
            assert got["type"] == reference["type"]
            assert CONTROL.search(text.replace("\n", "")) is None, f"control in {text!r}"
            if got["type"] == "plain_text":
                assert "\n" not in text and CONTROL.search(text) is None
                continue
            assert markup(text) == markup(reference["text"]), text
            assert "<" not in text, f"link or mention in {text!r}"
            assert re.search(r"&(?!amp;|lt;|gt;)", text) is None, f"raw & in {text!r}"
            if not got.get("fallback") and text != reference["text"]:
                assert got.get("verbatim") is True  # no auto-linking of user text


def test_the_reported_tenant_cannot_print_a_bold_all_clear_line():
    alert = planted("scope", "acme\n*ALL CLEAR* nothing to see")
    for obj in slack_renderings(alert):
        text = obj["text"]
        assert "\nALL" not in text and "\n*ALL" not in text
        if obj["type"] == "mrkdwn":  # plain_text shows "*ALL CLEAR*" as typed, not bold
            assert "*ALL CLEAR*" not in outside_code(text)


def test_an_owner_id_with_a_trailing_newline_is_no_mention():
    alert = budget_alert().model_copy(
        update={"owner": "x", "owner_ids": {"slack": "U12345678\n<!channel>"}}
    )
    assert sb.mention(alert) == "U12345678 &lt;!channel&gt;"
    ok = budget_alert().model_copy(update={"owner_ids": {"slack": "U12345678"}})
    assert sb.mention(ok) == "<@U12345678>"


def test_slack_receives_the_escaped_message_over_the_wire():
    token = "xoxb-1-hostile-render"
    with FakeSlack(token=token) as server:
        config = SlackConfig(token=token, channel="C0ALERTS", base_url=server.api_url)
        SlackNotifier(config).notify(planted("scope", HOSTILE["bold-line"]))
        [message] = server.messages()
    for obj in text_objects(message["blocks"]):
        assert "\n*ALL" not in obj["text"] and "\nALL" not in obj["text"]
        if obj["type"] == "mrkdwn":
            assert "*ALL CLEAR*" not in outside_code(obj["text"])
    assert "\n" not in message["text"] and "*ALL" not in message["text"]


# -- Jira -------------------------------------------------------------------------------------


def jira_receiver() -> JiraNotifier:
    return JiraNotifier(JiraConfig(url="http://127.0.0.1:9", token="unused-token", project="FIN"))


def unescaped_wiki(text: str) -> dict[str, int]:
    """Wiki markup not neutralised by a backslash (and forced line breaks)."""
    spans = 0
    for match in re.finditer(r"(?<!\\)[-+?]", text):
        before = text[match.start() - 1] if match.start() else " "
        after = text[match.end()] if match.end() < len(text) else " "
        spans += not (before.isalnum() and after.isalnum())
    return {
        "marks": len(re.findall(r"(?<!\\)[*_{}\[\]|^~!#]", text)),
        "spans": spans,
        "breaks": text.count("\\\\"),
        "lines": text.count("\n"),
    }


@pytest.mark.parametrize("where", WHERE)
@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_jira_summary_is_one_clean_line_within_the_limit(name, where):
    for kind in ("budget", "anomaly"):
        text = summary(planted(where, HOSTILE[name], kind))
        assert "\n" not in text and CONTROL.search(text) is None
        assert len(text.encode("utf-16-le")) // 2 <= 255
        assert text == text.strip() and "  " not in text


@pytest.mark.parametrize("where", WHERE)
@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_jira_wiki_text_has_no_hostile_markup(name, where):
    receiver = jira_receiver()
    for kind in ("budget", "anomaly"):
        hostile, benign = planted(where, HOSTILE[name], kind), planted(where, BENIGN[where], kind)
        for render in (receiver._description, receiver._fired_again, receiver._resolved_comment):
            got, reference = render(hostile), render(benign)
            assert CONTROL.search(got.replace("\n", "")) is None, got
            assert unescaped_wiki(got) == unescaped_wiki(reference), got


def test_jira_gets_a_one_line_summary_over_the_wire():
    with FakeJira(token="jira-hostile-token") as server:
        config = JiraConfig(url=server.url, token="jira-hostile-token", project="FIN", timeout=5)
        JiraNotifier(config).notify(planted("scope", HOSTILE["bold-line"] + "x" * 400))
        [issue] = server.issues.values()
    title = issue["fields"]["summary"]
    assert "\n" not in title and len(title) <= 255 and title.endswith("…")
    assert "acme *ALL CLEAR* nothing to see" in title  # plain text: shown as typed
    assert "\\*ALL CLEAR\\*" in issue["fields"]["description"]


# -- console ----------------------------------------------------------------------------------


@pytest.mark.parametrize("where", WHERE)
@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_console_lines_carry_no_control_character(name, where):
    for kind in ("budget", "anomaly"):
        alert = planted(where, HOSTILE[name], kind)
        for line in (render_line(alert), json_line(alert)):
            assert CONTROL.search(line) is None, repr(line)
            assert "\x1b" not in line and "\n" not in line
        assert json.loads(json_line(alert)) == json.loads(alert.to_json_bytes())


@pytest.mark.parametrize("format", ["text", "json"])
def test_the_console_prints_one_line_per_alert_whatever_the_tenant(format):
    stream = io.StringIO()
    receiver = ConsoleNotifier(ConsoleConfig(format=format), stream=stream)
    for text in HOSTILE.values():
        receiver.notify(planted("scope", text))
    assert stream.getvalue().count("\n") == len(HOSTILE)
    assert CONTROL.search(stream.getvalue().replace("\n", "")) is None


def test_the_console_shows_what_it_neutralised():
    line = render_line(planted("scope", "acme\n\x1b[31mRED"))
    assert "acme\\n\\x1b[31mRED" in line
