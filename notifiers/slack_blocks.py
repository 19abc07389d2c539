"""Block Kit rendering of alerts for Slack (no I/O; escaping lives here).

Every user-controlled string (rule names, scope values, drivers, owners) goes through
:func:`escape`, so a tenant called ``<!channel>`` cannot ping a channel.
"""

from __future__ import annotations

import re
from typing import Any

from spendwatch.alerts import Alert
from spendwatch.notifiers import render

EVENT_TYPE = "spendwatch_alert"
_USER_ID = re.compile(r"^[UW][A-Z0-9]{6,}$")
_GROUP_ID = re.compile(r"^S[A-Z0-9]{6,}$")
_ICONS = {
    "critical": ":red_circle:",
    "warning": ":large_orange_circle:",
    "info": ":large_blue_circle:",
}


def escape(text: str) -> str:
    """Escape Slack mrkdwn control characters (``&``, ``<``, ``>``)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def mention(alert: Alert) -> str | None:
    """The owner as a Slack mention when we know their id, else as escaped text."""
    slack_id = render.owner_id(alert, "slack") or alert.owner
    if not slack_id:
        return None
    if _USER_ID.match(slack_id):
        return f"<@{slack_id}>"
    if _GROUP_ID.match(slack_id):
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


def blocks(alert: Alert, notes: list[str] | None = None) -> list[dict[str, Any]]:
    """The message for a firing or resolved alert."""
    resolved = alert.status == "resolved"
    icon = ":white_check_mark:" if resolved else _ICONS.get(alert.severity, "")
    state = "Resolved" if resolved else alert.severity.capitalize()
    header = f"{state}: {render.title(alert)}"
    fields = [
        _field("Rule", f"`{escape(alert.rule)}` ({alert.kind})"),
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
        {"type": "header", "text": {"type": "plain_text", "text": _clip(header, 150)}},
        {"type": "section", "text": {"type": "mrkdwn", "text": f"{icon} *{escape(header)}*"}},
        {"type": "section", "fields": fields},
    ]
    drivers = render.driver_lines(alert)
    if drivers:
        text = "*Drivers*\n" + "\n".join(f"• {escape(line)}" for line in drivers)
        result.append({"type": "section", "text": {"type": "mrkdwn", "text": text}})
    for note in notes or []:
        result.append({"type": "section", "text": {"type": "mrkdwn", "text": escape(note)}})
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


def resolved_reply(alert: Alert) -> list[dict[str, Any]]:
    """The short thread reply that says the condition cleared."""
    text = (
        f":white_check_mark: Resolved: {escape(render.title(alert))}. "
        f"{escape(render.comparison(alert))} (window {escape(render.window_text(alert))})"
    )
    return [
        {"type": "section", "text": {"type": "mrkdwn", "text": text}},
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


def _field(label: str, value: str) -> dict[str, str]:
    return {"type": "mrkdwn", "text": f"*{label}*\n{value}"}


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
