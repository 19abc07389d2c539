"""``type: console``: one readable line per alert on stdout (or JSON).

Scope values, rule names and drivers are user-controlled: a newline in them would
forge a second line, an ESC a terminal escape sequence. Text lines show every control
character as an escape (``\\n``, ``\\x1b``); JSON lines escape the ones JSON leaves raw
(DEL, the C1 controls such as CSI, line separators and bidi overrides) as ``\\uXXXX``.
"""

from __future__ import annotations

import sys
from typing import Literal, TextIO

from pydantic import Field

from spendwatch.core.alerts import Alert
from spendwatch.core.configtypes import StrictModel
from spendwatch.notifiers import render
from spendwatch.notifiers.base import Notifier, register_notifier


class ConsoleConfig(StrictModel):
    """Print alerts on stdout: one readable line each, or the JSON object."""

    type: Literal["console"] = "console"
    name: str = Field(default="console", description="receiver name used by routes")
    format: Literal["text", "json"] = Field(default="text", description="text: one line each")


def render_line(alert: Alert) -> str:
    """One human line: status, rule, scope, observed vs expected, score, window."""
    scope = ",".join(f"{k}={v}" for k, v in alert.scope.items()) or "all"
    if alert.kind == "budget" and alert.status == "resolved":
        detail = (
            f"period {alert.period} ended at ${alert.observed:,.2f} of ${alert.expected:,.2f} "
            f"({alert.score:.1f}%, threshold {alert.threshold:g}%)"
        )
    elif alert.kind == "budget":
        detail = (
            f"${alert.observed:,.2f} of ${alert.expected:,.2f} ({alert.score:.1f}% >= "
            f"{alert.threshold:g}%) period {alert.period}"
        )
    elif alert.kind == "forecast":
        detail = f"projected {alert.score:.0f}% of ${alert.expected:,.2f} in {alert.period}"
    else:
        detail = (
            f"{render.amount(alert.metric, alert.observed)} vs expected "
            f"{render.amount(alert.metric, alert.expected)} "
            f"({render.score_text(alert)})"
        )
    marker = "FIRING" if alert.status == "firing" else "RESOLVED"
    drivers = ""
    if alert.drivers:
        drivers = " drivers: " + ", ".join(
            f"{d.dimension}={d.value} {d.share:.0%}" for d in alert.drivers
        )
    owner = f" owner {alert.owner}" if alert.owner else ""
    return render.visible(
        f"[{marker:8}] {alert.severity:8} {alert.kind}/{alert.rule} {scope}: {detail} "
        f"window {alert.window_start}..{alert.window_end}{drivers}{owner}"
    )


def json_line(alert: Alert) -> str:
    """The alert's JSON on one line, with no raw character a terminal acts on."""
    return render.CONTROL.sub(lambda m: f"\\u{ord(m.group(0)):04x}", alert.to_json_bytes().decode())


@register_notifier("console", ConsoleConfig)
class ConsoleNotifier(Notifier):
    def __init__(self, config: ConsoleConfig, stream: TextIO | None = None) -> None:
        self.name = config.name
        self.config = config
        self.stream = stream or sys.stdout

    def notify(self, alert: Alert) -> None:
        line = json_line(alert) if self.config.format == "json" else render_line(alert)
        self.stream.write(line + "\n")
        self.stream.flush()
