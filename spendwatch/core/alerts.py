"""The alert model, the output contract (its fields are the JSON every receiver gets), and its
identities.

A fingerprint names the *condition* (rule + scope, plus period and threshold for
budgets) so receivers can deduplicate; an alert id names one *notification*
(fingerprint + status + episode) and is derived, never random, so a replay of
the same events produces byte-identical ids.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field

from spendwatch.core.configtypes import Severity
from spendwatch.core.timefmt import rfc3339

AlertKind = Literal["anomaly", "budget", "forecast"]
AlertStatus = Literal["firing", "resolved"]


class Driver(BaseModel):
    """A sub-scope that explains part of a deviation, with its share of the excess."""

    model_config = ConfigDict(frozen=True)

    dimension: str
    value: str
    share: float


class Alert(BaseModel):
    """One notification event, exactly the fields of the output contract (extras allowed)."""

    model_config = ConfigDict(extra="allow")

    alert_id: str
    fingerprint: str
    kind: AlertKind
    rule: str
    status: AlertStatus
    severity: Severity
    scope: dict[str, str]
    metric: str
    window_start: str
    window_end: str
    observed: float
    expected: float
    score: float
    threshold: float
    period: str | None = None
    drivers: list[Driver] = Field(default_factory=list)
    owner: str | None = None
    detected_at: str | None = None
    episode: str = Field(
        description="window start of the firing alert this notification belongs to; "
        "a resolved alert shares its firing alert's episode"
    )

    def to_json_bytes(self) -> bytes:
        """Serialise as one compact JSON line (without the newline)."""
        return orjson.dumps(self.model_dump(mode="json", exclude_none=True))

    def identity(self) -> tuple[str, str, str]:
        """What makes two notifications the same: fingerprint, status and episode."""
        return (self.fingerprint, self.status, self.episode)


def fingerprint_of(
    kind: AlertKind,
    rule: str,
    scope: Mapping[str, str],
    period: str | None = None,
    threshold: float | None = None,
) -> str:
    """Stable identity of an alert condition; independent of dict order and process."""
    material = orjson.dumps(
        [kind, rule, sorted(scope.items()), period, threshold], option=orjson.OPT_SORT_KEYS
    )
    return hashlib.sha256(material).hexdigest()[:20]


def alert_id_of(fingerprint: str, status: AlertStatus, episode: str) -> str:
    """Deterministic id of one notification: a replay yields the same id."""
    return hashlib.sha256(f"{fingerprint}|{status}|{episode}".encode()).hexdigest()[:24]


def make_alert(
    *,
    kind: AlertKind,
    rule: str,
    status: AlertStatus,
    severity: Severity,
    scope: Mapping[str, str],
    metric: str,
    window_start: int,
    window_end: int,
    observed: float,
    expected: float,
    score: float,
    threshold: float,
    episode_start: int,
    period: str | None = None,
    fingerprint_threshold: float | None = None,
    drivers: list[Driver] | None = None,
    **extra: object,
) -> Alert:
    """Build an alert from engine values (epoch-second windows); fills in both identities."""
    fingerprint = fingerprint_of(kind, rule, scope, period, fingerprint_threshold)
    episode = rfc3339(episode_start)
    return Alert(
        alert_id=alert_id_of(fingerprint, status, episode),
        fingerprint=fingerprint,
        kind=kind,
        rule=rule,
        status=status,
        severity=severity,
        scope=dict(scope),
        metric=metric,
        window_start=rfc3339(window_start),
        window_end=rfc3339(window_end),
        observed=_round(observed),
        expected=_round(expected),
        score=_round(score),
        threshold=threshold,
        period=period,
        drivers=drivers or [],
        episode=episode,
        **extra,
    )


def _round(value: float) -> float:
    """Round for readable, replay-stable output (float sums may differ in the last ulp)."""
    return float(f"{value:.10g}") if abs(value) < 1e15 else float(value)
