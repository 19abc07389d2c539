"""Block Kit rendering of alerts for Slack (no I/O; escaping lives here).

Every user-controlled string (rule names, scope values, drivers, owners) goes through
:func:`escape` or :func:`code`, so a tenant called ``<!channel>`` cannot ping a channel
and one called ``acme\n*ALL CLEAR*`` cannot start a bold line: the text is put on one
line, ``&<>`` become entities (no links, mentions or ``>`` quotes), and the formatting
markers are replaced by look-alikes (mrkdwn has no escape for them; inline code, where
they are inert, is used for rule names). mrkdwn objects carrying user text are
``verbatim`` (no auto-linking of URLs, channel names or mentions); notes from other
receivers go out as ``plain_text``, which Slack never parses.
"""

from __future__ import annotations

import json
import re
from typing import Any

from spendwatch.core.alerts import Alert
from spendwatch.notifiers import render

EVENT_TYPE = "spendwatch_alert"
_USER_ID = re.compile(r"^[UW][A-Z0-9]{6,}$")
_GROUP_ID = re.compile(r"^S[A-Z0-9]{6,}$")
_ICONS = {
    "critical": ":red_circle:",
    "warning": ":large_orange_circle:",
    "info": ":large_blue_circle:",
}


_LOOKALIKES = {"*": "\u2217", "~": "\u223c", "`": "\u02cb", "_": "\uff3f"}
_MARKER = re.compile(r"[*~`]|(?<![^\W_])_|_(?![^\W_])")
"""Formatting markers; ``_`` only where it can open or close italics (snake_case stays)."""


def _entities(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def escape(text: str) -> str:
    """User text as inert mrkdwn: one line, ``&<>`` as entities, markers neutralised."""
    return _MARKER.sub(lambda m: _LOOKALIKES[m.group(0)], _entities(render.one_line(text)))


def code(text: str) -> str:
    """User text as an inline code span (shown as typed, nothing inside is formatting)."""
    inner = _entities(render.one_line(text)).replace("`", _LOOKALIKES["`"])
    return f"`{inner}`" if inner.strip() else escape(text)


def plain(text: str, limit: int = 3000) -> dict[str, Any]:
    """A ``plain_text`` object: never parsed for markup, mentions or links."""
    return {"type": "plain_text", "text": _clip(render.one_line(text), limit), "emoji": True}


def mention(alert: Alert) -> str | None:
    """The owner as a Slack mention when we know their id, else as escaped text."""
    slack_id = render.owner_id(alert, "slack") or alert.owner
    if not slack_id:
        return None
    if _USER_ID.fullmatch(slack_id):  # fullmatch: "$" would let a trailing newline through
        return f"<@{slack_id}>"
    if _GROUP_ID.fullmatch(slack_id):
        return f"<!subteam^{slack_id}>"
    return escape(slack_id)


def marker(alert: Alert) -> str:
    """Text that identifies this notification in the channel (found again after a crash)."""
    return f"spendwatch alert {alert.alert_id}"


def metadata(alert: Alert) -> dict[str, Any]:
    """Message metadata carrying our ids: the exact way to recognise our own posts."""
    return {
        "event_type": EVENT_TYPE,
        "event_payload": {
            "alert_id": alert.alert_id,
            "fingerprint": alert.fingerprint,
            "status": alert.status,
        },
    }


def fallback_text(alert: Alert) -> str:
    """The notification/plain-text version of the message."""
    state = "RESOLVED" if alert.status == "resolved" else alert.severity.upper()
    return escape(f"[{state}] {render.title(alert)}: {render.comparison(alert)}")


def blocks(
    alert: Alert,
    notes: list[str] | None = None,
    *,
    actions: list[dict[str, Any]] | None = None,
    decision: str | None = None,
) -> list[dict[str, Any]]:
    """The message for a firing or resolved alert: with decision buttons (``actions``, see
    :func:`actions`) until someone decides, then with who decided what (``decision``)."""
    resolved = alert.status == "resolved"
    icon = ":white_check_mark:" if resolved else _ICONS.get(alert.severity, "")
    state = "Resolved" if resolved else alert.severity.capitalize()
    header = f"{state}: {render.title(alert)}"
    fields = [
        _field("Rule", f"{code(alert.rule)} ({alert.kind})"),
        _field("Scope", escape(render.scope_text(alert))),
        _field("Observed vs expected", escape(render.comparison(alert))),
        _field("Window", escape(render.window_text(alert))),
    ]
    if alert.period:
        fields.append(_field("Period", escape(alert.period)))
    owner = mention(alert)
    if owner:
        fields.append(_field("Owner", owner))
    result: list[dict[str, Any]] = [
        {"type": "header", "text": plain(header, 150)},
        {"type": "section", "text": _mrkdwn(f"{icon} *{escape(header)}*")},
        {"type": "section", "fields": fields},
    ]
    drivers = render.driver_lines(alert)
    if drivers:
        text = "*Drivers*\n" + "\n".join(f"• {escape(line)}" for line in drivers)
        result.append({"type": "section", "text": _mrkdwn(text)})
    for note in notes or []:
        result.append({"type": "section", "text": plain(note)})
    if decision:
        result.append({"type": "context", "elements": [_mrkdwn(decision)]})
    elif actions:
        result.append({"type": "actions", "block_id": ACTIONS_BLOCK, "elements": actions})
    result.append(
        {
            "type": "context",
            "elements": [
                {
                    "type": "mrkdwn",
                    "text": f"{marker(alert)} · fingerprint `{alert.fingerprint}`",
                }
            ],
        }
    )
    return result


ACTIONS_BLOCK = "spendwatch_decision"
ACTION_PREFIX = "spendwatch_"
ACTION_LABELS = {
    "approve": "Approve throttle",
    "reject": "Reject",
    "silence": "Silence",
    "acknowledge": "Acknowledge",
}
DONE = {
    "approve": ":white_check_mark: Throttle approved",
    "reject": ":no_entry_sign: Rejected",
    "silence": ":no_bell: Silenced",
    "acknowledge": ":eyes: Acknowledged",
}


def action_value(alert: Alert, receiver: str) -> str:
    """What a button carries: the alert episode and the receiver that posted it."""
    return json.dumps(
        {"f": alert.fingerprint, "e": alert.episode, "r": receiver}, separators=(",", ":")
    )


def actions(
    alert: Alert, receiver: str, *, approve: bool, silence_for: float
) -> list[dict[str, Any]]:
    """The decision buttons; **Approve throttle** only where a throttle is proposed."""
    value = action_value(alert, receiver)
    names = ["approve"] if approve else []
    names += ["reject", "silence", "acknowledge"]
    buttons = []
    for name in names:
        label = ACTION_LABELS[name]
        if name == "silence":
            label = f"Silence {_hours(silence_for)}"
        button: dict[str, Any] = {
            "type": "button",
            "action_id": ACTION_PREFIX + name,
            "text": plain(label, 75),
            "value": value,
        }
        if name == "approve":
            button["style"] = "primary"
            button["confirm"] = {
                "title": plain("Apply the throttle?", 100),
                "text": plain("The flag variant goes live for this scope.", 300),
                "confirm": plain("Apply", 30),
                "deny": plain("Cancel", 30),
            }
        elif name == "reject":
            button["style"] = "danger"
        buttons.append(button)
    return buttons


def decision_text(action: str, user_id: str, at: str, detail: str | None = None) -> str:
    """The line that replaces the buttons: who decided what, and when (mrkdwn)."""
    who = f"<@{user_id}>" if _USER_ID.fullmatch(user_id) else escape(user_id)
    text = f"{DONE.get(action, escape(action))} by {who} at {escape(at)}"
    return f"{text} ({escape(detail)})" if detail else text


def _hours(seconds: float) -> str:
    if seconds % 3600 == 0:
        return f"{int(seconds // 3600)} h"
    if seconds % 60 == 0:
        return f"{int(seconds // 60)} min"
    return f"{int(seconds)} s"


def resolved_reply(alert: Alert) -> list[dict[str, Any]]:
    """The short thread reply that says the condition cleared."""
    text = (
        f":white_check_mark: Resolved: {escape(render.title(alert))}. "
        f"{escape(render.comparison(alert))} (window {escape(render.window_text(alert))})"
    )
    return [
        {"type": "section", "text": _mrkdwn(text)},
        {"type": "context", "elements": [{"type": "mrkdwn", "text": marker(alert)}]},
    ]


def is_ours(message: dict[str, Any], alert: Alert) -> bool:
    """Whether a message from ``conversations.history/replies`` is this alert's post."""
    payload = (message.get("metadata") or {}).get("event_payload") or {}
    if payload.get("alert_id"):  # metadata is authoritative (an updated post keeps its own)
        return payload["alert_id"] == alert.alert_id
    return marker(alert) in str(message.get("text", "")) or marker(alert) in str(
        message.get("blocks", "")
    )


def _mrkdwn(text: str) -> dict[str, Any]:
    return {"type": "mrkdwn", "text": text, "verbatim": True}


def _field(label: str, value: str) -> dict[str, Any]:
    return _mrkdwn(f"*{label}*\n{value}")


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
