"""``type: unattributed``: the share of spend nobody owns, per period, with its sources.

Spend without a tenant (a feature, a team…) tag cannot be charged back, budgeted or
routed to anyone; left alone it grows with every new service that forgets its tags. The
input already keeps it visible: an event without a dimension's value carries
``unattributed`` for it. This rule sums, over each ``period`` (UTC week by default), the
spend of ``dimension`` = ``unattributed`` against all spend, broken down by ``sources``
(the dimensions that say where it came from: service, provider, model…). When a period
ends (its first later window arrives) it fires if the unattributed share is at least
``max_share`` and at least ``min_cost_usd``: the alert is the remediation report, its
amount, share and top sources (``drivers``, largest first, with their shares of the
unattributed spend), routed like any alert (a Jira task for the platform team). The next
period under the share resolves it.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Literal

from pydantic import Field, model_validator

from spendwatch.core.alerts import Alert, Driver
from spendwatch.core.configtypes import Dimension, Duration
from spendwatch.detectors.base import GroupRule, RuleConfig, Totals, register_detector
from spendwatch.detectors.periods import period_start
from spendwatch.ingest.events import UNATTRIBUTED
from spendwatch.ingest.pricing import NANOS_PER_USD

TOP_SOURCES = 5
MAX_SOURCES = 256
"""Distinct sources remembered per period (the smallest are folded into ``other``)."""


class UnattributedConfig(RuleConfig):
    """Spend without a value of ``dimension``, per period, against a share."""

    type: Literal["unattributed"] = "unattributed"
    scope: list[Dimension] = Field(
        default_factory=list, description="judged per value of these (default: all spend)"
    )
    dimension: Dimension = Field(default="tenant", description="whose missing values count")
    sources: list[Dimension] = Field(
        default_factory=lambda: ["service"], description="dimensions that name the sources"
    )
    metric: Literal["spend_usd"] = Field(default="spend_usd", description="spend summed")
    window: Duration = Field(default=3600)
    period: Literal["day", "week", "month"] = Field(
        default="week", description="UTC period each report covers (weeks start on Mondays)"
    )
    max_share: float = Field(default=0.05, gt=0, le=1, description="share that fires")
    min_cost_usd: float = Field(default=10.0, ge=0, description="unattributed spend needed")

    @model_validator(mode="after")
    def _disjoint(self) -> UnattributedConfig:
        dims = [*self.scope, self.dimension, *self.sources]
        if len(set(dims)) != len(dims):
            raise ValueError("scope, dimension and sources must be distinct")
        return self


class UnattributedState:
    """The period being summed: total spend, unattributed spend by source (nano-dollars),
    and the period the open episode started in."""

    __slots__ = ("by_source", "firing", "period", "total_nanos")

    def __init__(self) -> None:
        self.period: int | None = None
        self.total_nanos = 0
        self.by_source: dict[tuple[str, ...], int] = {}
        self.firing: int | None = None

    def __getstate__(self) -> tuple:
        return (self.period, self.total_nanos, self.by_source, self.firing)

    def __setstate__(self, state: tuple) -> None:
        self.period, self.total_nanos, self.by_source, self.firing = state


@register_detector("unattributed", UnattributedConfig)
class Unattributed(GroupRule):
    """Judges finished periods of a scope's spend by (dimension, sources) members."""

    config: UnattributedConfig

    def __init__(self, config: UnattributedConfig) -> None:
        super().__init__(config, config.scope, [config.dimension, *config.sources])

    def new_state(self) -> UnattributedState:
        return UnattributedState()

    def explain_group(
        self, members: Mapping[tuple[str, ...], Totals], state: UnattributedState | None = None
    ) -> dict[tuple[str, ...], dict[str, float]]:
        """Each member's spend in the window against the period's total so far."""
        state = state or UnattributedState()
        total = state.total_nanos + sum(t.spend_nanos for t in members.values())
        return {
            member: {
                "value": totals.spend_nanos / NANOS_PER_USD,
                "expected": total / NANOS_PER_USD,
                "z": float(member[0] == UNATTRIBUTED),
                "warm": 1.0,
            }
            for member, totals in members.items()
        }

    def observe_group(
        self,
        state: UnattributedState,
        peers: Mapping[str, str],
        window_start: int,
        members: Mapping[tuple[str, ...], Totals],
    ) -> list[Alert]:
        """Add a window; report the previous period when a new one starts."""
        alerts: list[Alert] = []
        start = period_start(window_start, self.config.period)
        if state.period is not None and start != state.period:
            alerts.extend(self._judge(state, peers, window_start))
            state.total_nanos, state.by_source = 0, {}
        state.period = start
        for (value, *source), totals in sorted(members.items()):
            state.total_nanos += totals.spend_nanos
            if value == UNATTRIBUTED:
                key = tuple(source)
                state.by_source[key] = state.by_source.get(key, 0) + totals.spend_nanos
        if len(state.by_source) > MAX_SOURCES:
            ranked = sorted(state.by_source.items(), key=lambda kv: (-kv[1], kv[0]))
            kept = dict(ranked[: MAX_SOURCES - 1])
            other = ("other",) * len(self.config.sources)
            kept[other] = kept.get(other, 0) + sum(v for _, v in ranked[MAX_SOURCES - 1 :])
            state.by_source = kept
        return alerts

    def _judge(
        self, state: UnattributedState, peers: Mapping[str, str], window_start: int
    ) -> list[Alert]:
        c = self.config
        unattributed = sum(state.by_source.values())
        share = unattributed / state.total_nanos if state.total_nanos > 0 else 0.0
        over = share >= c.max_share and unattributed >= c.min_cost_usd * NANOS_PER_USD
        if over:  # every period over the share is a report of its own
            alerts = []
            if state.firing is not None:
                alerts.append(self._alert(peers, "resolved", window_start, state, state.firing))
            state.firing = state.period
            alerts.append(self._alert(peers, "firing", window_start, state, state.firing))
            return alerts
        if state.firing is not None:
            alert = self._alert(peers, "resolved", window_start, state, state.firing)
            state.firing = None
            return [alert]
        return []

    def _alert(
        self,
        peers: Mapping[str, str],
        status: str,
        window_start: int,
        state: UnattributedState,
        episode: int,
    ) -> Alert:
        c = self.config
        unattributed = sum(state.by_source.values())
        share = unattributed / state.total_nanos if state.total_nanos > 0 else 0.0
        top = sorted(state.by_source.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_SOURCES]
        drivers = [
            Driver(dimension="/".join(c.sources), value="/".join(key),
                   share=round(nanos / unattributed, 4))
            for key, nanos in top
            if unattributed > 0
        ]  # fmt: skip
        since = datetime.fromtimestamp(state.period or 0, timezone.utc)
        return self.anomaly_alert(
            {**peers, c.dimension: UNATTRIBUTED},
            status,  # type: ignore[arg-type]
            window_start,
            unattributed / NANOS_PER_USD,
            state.total_nanos / NANOS_PER_USD,
            share,
            episode,
            metric="unattributed_spend_usd",
            threshold=c.max_share,
            drivers=drivers,
            rarity=f"{share:.1%} of spend in the {c.period} from {since:%Y-%m-%d} has no "
            f"{c.dimension}",
        )
