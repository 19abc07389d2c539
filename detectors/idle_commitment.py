"""``type: idle_commitment``: committed capacity paid for and not used (FOCUS exports).

A savings plan or reservation is paid whether it is used or not; FOCUS exports book the
part that went unused as its own lines (``CommitmentDiscountStatus: Unused``, with the
amortised cost in ``EffectiveCost``). A commitment sized for last quarter's traffic
quietly wastes money every hour, and no spend detector sees it: the spend is flat, just
useless. This rule watches each commitment's unused share.

Rows carry the commitment and its status as dimensions: the FOCUS source maps
``CommitmentDiscountId`` to ``labels.commitment`` and ``CommitmentDiscountStatus`` to
``labels.commitment_status`` by default (use ``cost_column: EffectiveCost``, the amortised
cost; billed cost of a prepaid commitment is 0). Per commitment the rule sums cost by
status over each ``period`` (UTC day or month); when a line of the next period arrives,
the finished period is judged: it fires when unused cost is at least ``max_unused_share``
of the commitment's cost and at least ``min_cost_usd``, naming the unused amount, and
resolves on the first later period below the share. One alert per episode, as every rule.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Literal

from pydantic import Field

from spendwatch.core.alerts import Alert, Driver
from spendwatch.core.configtypes import Dimension, Duration
from spendwatch.detectors.base import GroupRule, RuleConfig, Totals, register_detector
from spendwatch.detectors.periods import period_start
from spendwatch.ingest.pricing import NANOS_PER_USD

UNUSED = "unused"


class IdleCommitmentConfig(RuleConfig):
    """A commitment whose unused share of cost over a period passes ``max_unused_share``."""

    type: Literal["idle_commitment"] = "idle_commitment"
    scope: list[Dimension] = Field(
        default_factory=lambda: ["labels.commitment"], description="the commitment's id"
    )
    status: Dimension = Field(
        default="labels.commitment_status", description="dimension holding the FOCUS status"
    )
    metric: Literal["spend_usd"] = Field(default="spend_usd", description="cost summed")
    window: Duration = Field(default=3600)
    period: Literal["day", "month"] = Field(default="day", description="UTC period judged")
    max_unused_share: float = Field(
        default=0.2, gt=0, le=1, description="unused share of the commitment's cost that fires"
    )
    min_cost_usd: float = Field(default=1.0, ge=0, description="unused cost needed, USD")


class CommitmentState:
    """One commitment: the period being summed, its cost by status (nano-dollars), and the
    period the open episode started in (``None``: not firing)."""

    __slots__ = ("by_status", "firing", "period")

    def __init__(self) -> None:
        self.period: int | None = None
        self.by_status: dict[str, int] = {}
        self.firing: int | None = None

    def __getstate__(self) -> tuple:
        return (self.period, self.by_status, self.firing)

    def __setstate__(self, state: tuple) -> None:
        self.period, self.by_status, self.firing = state


@register_detector("idle_commitment", IdleCommitmentConfig)
class IdleCommitment(GroupRule):
    """Judges a commitment's finished periods (``observe_group``: its statuses)."""

    config: IdleCommitmentConfig

    def __init__(self, config: IdleCommitmentConfig) -> None:
        super().__init__(config, config.scope, [config.status])

    def new_state(self) -> CommitmentState:
        return CommitmentState()

    def explain_group(
        self, members: Mapping[tuple[str, ...], Totals], state: CommitmentState | None = None
    ) -> dict[tuple[str, ...], dict[str, float]]:
        """Each status's cost in the period so far, and its share of the commitment's."""
        state = state or CommitmentState()
        totals = dict(state.by_status)
        for (status,), t in members.items():
            totals[status.lower()] = totals.get(status.lower(), 0) + t.spend_nanos
        whole = sum(totals.values())
        return {
            member: {
                "value": totals.get(member[0].lower(), 0) / NANOS_PER_USD,
                "expected": whole / NANOS_PER_USD,
                "z": totals.get(member[0].lower(), 0) / whole if whole else 0.0,
                "warm": 1.0,
            }
            for member in members
        }

    def observe_group(
        self,
        state: CommitmentState,
        peers: Mapping[str, str],
        window_start: int,
        members: Mapping[tuple[str, ...], Totals],
    ) -> list[Alert]:
        """Add a window's cost by status; judge the previous period when a new one starts."""
        alerts: list[Alert] = []
        start = period_start(window_start, self.config.period)
        if state.period is not None and start != state.period:
            alerts.extend(self._judge(state, peers, window_start))
            state.by_status = {}
        state.period = start
        for (status,), totals in members.items():
            key = status.lower()
            state.by_status[key] = state.by_status.get(key, 0) + totals.spend_nanos
        return alerts

    def _judge(
        self, state: CommitmentState, peers: Mapping[str, str], window_start: int
    ) -> list[Alert]:
        c = self.config
        whole = sum(state.by_status.values())
        unused = state.by_status.get(UNUSED, 0)
        share = unused / whole if whole > 0 else 0.0
        idle = share >= c.max_unused_share and unused >= c.min_cost_usd * NANOS_PER_USD
        if idle and state.firing is None:
            state.firing = state.period
            return [self._alert(peers, "firing", window_start, state, unused, whole)]
        if not idle and state.firing is not None:
            alert = self._alert(peers, "resolved", window_start, state, unused, whole)
            state.firing = None
            return [alert]
        return []

    def _alert(
        self,
        peers: Mapping[str, str],
        status: str,
        window_start: int,
        state: CommitmentState,
        unused: int,
        whole: int,
    ) -> Alert:
        c = self.config
        share = unused / whole if whole > 0 else 0.0
        return self.anomaly_alert(
            dict(peers),
            status,  # type: ignore[arg-type]
            window_start,
            unused / NANOS_PER_USD,
            whole / NANOS_PER_USD,
            share,
            state.firing if state.firing is not None else window_start,
            metric="unused_commitment_usd",
            threshold=c.max_unused_share,
            drivers=[Driver(dimension=c.status, value="Unused", share=round(share, 4))],
            rarity=f"{share:.0%} of the commitment's cost unused in the {c.period} "
            f"from {datetime.fromtimestamp(state.period or 0, timezone.utc):%Y-%m-%d}",
        )
