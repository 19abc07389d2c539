"""Plain-text facts about an alert, shared by the Slack, Jira and flag receivers.

Everything here returns *unescaped* text; each receiver escapes for its own markup
(Slack mrkdwn, Jira wiki, a terminal), because scope values, rule names and driver
values are user-controlled. Two helpers neutralise what no markup escape covers:
:func:`one_line` (control characters, line breaks and bidi overrides become a space)
and :func:`visible` (they become ``\\n``/``\\x1b``-style escapes, for terminals).
"""

from __future__ import annotations

import re

from spendwatch.core.alerts import Alert

_CONTROL = "\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069"
CONTROL = re.compile(f"[{_CONTROL}]")
"""C0 and C1 controls (ESC, CR, LF, tab, NEL, CSI...), DEL, line/paragraph separators
and the bidirectional overrides that make text display in another order."""
_CONTROL_RUN = re.compile(f"[ ]*(?:[{_CONTROL}][ ]*)+")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def one_line(text: str) -> str:
    """``text`` on one line: each run of control characters becomes one space."""
    return _CONTROL_RUN.sub(" ", text)


def visible(text: str) -> str:
    """``text`` with each control character shown as an escape (``\\n``, ``\\x1b``, ``\\u202e``)."""
    return CONTROL.sub(lambda m: _NAMED.get(m.group(0)) or _escape_code(m.group(0)), text)


def _escape_code(char: str) -> str:
    code = ord(char)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


_UNITS = {
    "spend_usd": ("$", ""),
    "cost_per_request_usd": ("$", " per request"),
    "requests": ("", " requests"),
    "input_tokens": ("", " input tokens"),
    "output_tokens": ("", " output tokens"),
    "output_tokens_per_request": ("", " output tokens per request"),
}


def amount(metric: str, value: float) -> str:
    """``value`` with the unit of ``metric``: ``$1,234.50``, ``1,840 output tokens per request``."""
    prefix, suffix = _UNITS.get(metric, ("", f" {metric}"))
    if prefix == "$":
        digits = f"{value:,.4f}" if abs(value) < 1 else f"{value:,.2f}"
    else:
        digits = f"{value:,.2f}" if abs(value) < 100 else f"{value:,.0f}"
    return f"{prefix}{digits}{suffix}"


def scope_text(alert: Alert) -> str:
    """``tenant=acme, feature=chat`` (``all`` for an unscoped rule)."""
    return ", ".join(f"{k}={v}" for k, v in alert.scope.items()) or "all"


def title(alert: Alert) -> str:
    """One line naming what happened: ``Budget tenant-daily at 85% for tenant=acme``."""
    where = scope_text(alert)
    if alert.kind == "budget":
        return f"Budget {alert.rule} crossed {alert.threshold:g}% for {where} ({alert.period})"
    if alert.kind == "forecast":
        return f"Budget {alert.rule} projected at {alert.score:.0f}% for {where} ({alert.period})"
    return f"Anomaly {alert.rule}: {alert.metric} for {where}"


def score_text(alert: Alert) -> str:
    """An anomaly's score in its own terms: a sequential rule's evidence against its
    threshold and how rare that is ("once in 8 years of this scope"), else z against the
    rule's threshold; a resolved alert only states the window's z."""
    evidence = getattr(alert, "evidence", None)
    if evidence is not None:
        rarity = getattr(alert, "rarity", None)
        text = f"z={alert.score:.1f}, evidence {evidence:g} of {alert.threshold:g}"
        return f"{text}: {rarity}" if rarity else text
    if alert.status == "resolved":
        return f"z={alert.score:.1f}"
    return f"z={alert.score:.1f}, threshold {alert.threshold:g}"


def comparison(alert: Alert) -> str:
    """Observed vs expected with units, and the score in its own terms (% of budget or z)."""
    observed = amount(alert.metric, alert.observed)
    expected = amount(alert.metric, alert.expected)
    if alert.kind == "budget":
        return (
            f"{observed} spent of a {expected} budget: {alert.score:.1f}% "
            f"(threshold {alert.threshold:g}%)"
        )
    if alert.kind == "forecast":
        return f"projected {alert.score:.0f}% of a {expected} budget ({observed} spent so far)"
    ratio = f", {alert.observed / alert.expected:.1f}x" if alert.expected > 0 else ""
    return f"{observed} observed vs {expected} expected ({score_text(alert)}{ratio})"


def window_text(alert: Alert) -> str:
    return f"{alert.window_start} to {alert.window_end}"


def driver_lines(alert: Alert, limit: int = 5) -> list[str]:
    """``model=gpt-4o (72%)`` for the top drivers."""
    return [f"{d.dimension}={d.value} ({d.share:.0%})" for d in alert.drivers[:limit]]


def owner_id(alert: Alert, receiver_type: str) -> str | None:
    """The owner's id for one receiver type (``owners: - slack: U123``), if configured."""
    ids = getattr(alert, "owner_ids", None) or {}
    return ids.get(receiver_type) if isinstance(ids, dict) else None


def scope_key(alert: Alert) -> str:
    """Stable text of the scope, for keys in receiver state."""
    return "&".join(f"{k}={v}" for k, v in sorted(alert.scope.items()))
