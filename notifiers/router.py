"""Routing, owners and silences: which receivers get an alert, who owns it, and whether to send.

Routing is an **ordered list** (simpler than Alertmanager's tree, same ``continue``
idea): routes are tried top to bottom; the first route whose ``match`` fits the alert
contributes its receivers, and evaluation stops there unless that route says
``continue: true``, in which case later matching routes add theirs too. With no
``routes:`` at all every alert goes to every receiver; with routes, an alert no route
matches is stored and logged as unrouted (end the list with a catch-all route).

Owners: the first ``owners:`` entry whose scope patterns fit fills ``alert.owner``
(and ``owner_ids`` per receiver type, e.g. a Slack user id and a Jira account id).

Silences judge **event time**: an alert is silenced when its match fits and its
``window_start`` lies in ``[start, end)``, so a backtest silences exactly what a live
run would. A resolved alert follows its firing alert: silenced if the firing one was.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import lru_cache
from typing import Annotated

from pydantic import ConfigDict, Field, StringConstraints, field_validator, model_validator

from spendwatch.core.alerts import Alert, AlertKind, AlertStatus
from spendwatch.core.configtypes import Severity, StrictModel

SlackId = Annotated[str, StringConstraints(pattern=r"^[UWS][A-Z0-9]{2,}$")]
"""A Slack user id (``U…``, ``W…``) or user group id (``S…``): approvers are ids, not names."""


@lru_cache(maxsize=4096)
def _glob(pattern: str) -> tuple[bool, str]:
    """(is a glob, pattern): plain strings compare exactly, without fnmatch's cost."""
    return any(c in pattern for c in "*?["), pattern


def glob_match(value: str, pattern: str) -> bool:
    """Case-sensitive glob match (``*``, ``?``, ``[...]``) of one value."""
    is_glob, pattern = _glob(pattern)
    return fnmatch.fnmatchcase(value, pattern) if is_glob else value == pattern


class Match(StrictModel):
    """Conditions on an alert; all given ones must hold (lists mean any of)."""

    kind: list[AlertKind] = Field(default_factory=list, description="any of these kinds")
    severity: list[Severity] = Field(default_factory=list, description="any of these severities")
    status: list[AlertStatus] = Field(default_factory=list, description="firing and/or resolved")
    rule: list[str] = Field(default_factory=list, description="rule name globs, any of")
    scope: dict[str, str] = Field(
        default_factory=dict,
        description="dimension: glob; the alert's scope must have each dimension and match it",
    )

    @field_validator("kind", "severity", "status", "rule", mode="before")
    @classmethod
    def _one_or_many(cls, value: object) -> object:
        return [value] if isinstance(value, str) else value

    def matches(self, alert: Alert) -> bool:
        if self.kind and alert.kind not in self.kind:
            return False
        if self.severity and alert.severity not in self.severity:
            return False
        if self.status and alert.status not in self.status:
            return False
        if self.rule and not any(glob_match(alert.rule, p) for p in self.rule):
            return False
        for dimension, pattern in self.scope.items():
            value = alert.scope.get(dimension)
            if value is None or not glob_match(value, pattern):
                return False
        return True


class RouteConfig(StrictModel):
    """One entry of ``routes:``; see the module docstring for the evaluation order."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    match: Match = Field(default_factory=Match, description="empty: matches every alert")
    receivers: list[str] = Field(min_length=1, description="receiver names to deliver to")
    continue_: bool = Field(
        default=False, alias="continue", description="keep evaluating later routes"
    )
    approvers: list[SlackId] = Field(
        default_factory=list,
        description="Slack user ids (U…/W…) or user group ids (S…) allowed to approve, reject, "
        "silence or acknowledge this route's alerts from their Slack message",
    )


class OwnerConfig(StrictModel):
    """One entry of ``owners:``: scope globs (and optionally rule globs) to an owner."""

    scope: dict[str, str] = Field(
        default_factory=dict, description="dimension: glob, e.g. {prompt_id: 'summarize@*'}"
    )
    rule: list[str] = Field(default_factory=list, description="rule name globs, any of")
    owner: str = Field(min_length=1, description="email, team or Slack user id shown on alerts")
    slack: str | None = Field(default=None, description="Slack user/group id to mention")
    jira: str | None = Field(default=None, description="Jira account id (Cloud) or user name")

    @field_validator("rule", mode="before")
    @classmethod
    def _one_or_many(cls, value: object) -> object:
        return [value] if isinstance(value, str) else value

    def matches(self, alert: Alert) -> bool:
        return Match(rule=self.rule, scope=self.scope).matches(alert)


class SilenceConfig(StrictModel):
    """One entry of ``silences:``: planned spend that should be recorded but not sent."""

    match: Match = Field(description="which alerts the silence covers")
    start: datetime = Field(description="event time the silence starts (RFC 3339; UTC if naive)")
    end: datetime = Field(description="event time it ends (exclusive)")
    reason: str = Field(min_length=1, description="why (shown in logs and the outbox)")
    created_by: str | None = Field(default=None, description="who asked for it")

    @field_validator("start", "end")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)

    @model_validator(mode="after")
    def _ordered(self) -> SilenceConfig:
        if self.end <= self.start:
            raise ValueError("silence end must be after its start")
        return self

    def covers(self, alert: Alert) -> bool:
        moment = datetime.fromisoformat(alert.window_start.replace("Z", "+00:00"))
        return self.start <= moment < self.end and self.match.matches(alert)


@dataclass(frozen=True)
class Plan:
    """What to do with one alert: the alert (owner filled in), receivers, silence reason."""

    alert: Alert
    receivers: list[str]
    silenced_by: str | None = None


class Dispatcher:
    """Applies owners, silences and routes to an alert; pure and cheap (no I/O)."""

    def __init__(
        self,
        receivers: Sequence[str],
        routes: Sequence[RouteConfig] = (),
        owners: Sequence[OwnerConfig] = (),
        silences: Sequence[SilenceConfig] = (),
    ) -> None:
        known = set(receivers)
        for index, route in enumerate(routes):
            unknown = [r for r in route.receivers if r not in known]
            if unknown:
                raise ValueError(f"routes[{index}] names unknown receiver(s): {', '.join(unknown)}")
        self.receivers = list(receivers)
        self.routes = list(routes)
        self.owners = list(owners)
        self.silences = list(silences)

    @classmethod
    def from_config(cls, config: object, receivers: Sequence[str] | None = None) -> Dispatcher:
        """Build from a :class:`~spendwatch.config.SpendwatchConfig` (duck-typed)."""
        names = receivers if receivers is not None else [r.name for r in config.receivers]
        return cls(
            names,
            getattr(config, "routes", ()),
            getattr(config, "owners", ()),
            getattr(config, "silences", ()),
        )

    def route(self, alert: Alert) -> list[str]:
        """Receiver names for ``alert`` in first-seen order, without repeats."""
        if not self.routes:
            return list(self.receivers)
        chosen: list[str] = []
        for route in self.routes:
            if route.match.matches(alert):
                chosen.extend(r for r in route.receivers if r not in chosen)
                if not route.continue_:
                    break
        return chosen

    def approvers(self, alert: Alert, receiver: str) -> list[str]:
        """Who may decide on ``alert`` as delivered to ``receiver``: the ``approvers`` of the
        routes that sent it there (evaluated as :meth:`route` does), in order, no repeats."""
        chosen: list[str] = []
        for route in self.routes:
            if route.match.matches(alert):
                if receiver in route.receivers:
                    chosen.extend(a for a in route.approvers if a not in chosen)
                if not route.continue_:
                    break
        return chosen

    def owner(self, alert: Alert) -> Alert:
        """``alert`` with ``owner`` (and ``owner_ids``) filled from the first matching entry."""
        if alert.owner is not None:
            return alert
        for entry in self.owners:
            if entry.matches(alert):
                update: dict[str, object] = {"owner": entry.owner}
                ids = {k: v for k, v in (("slack", entry.slack), ("jira", entry.jira)) if v}
                if ids:
                    update["owner_ids"] = ids
                return alert.model_copy(update=update)
        return alert

    def silence(self, alert: Alert) -> SilenceConfig | None:
        return next((s for s in self.silences if s.covers(alert)), None)

    def plan(self, alert: Alert) -> Plan:
        alert = self.owner(alert)
        silence = self.silence(alert)
        return Plan(alert, self.route(alert), silence.reason if silence else None)
