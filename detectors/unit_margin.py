"""``type: unit_margin``: a feature whose requests cost more than they are worth this month.

Spend detectors say spend is unusual; budgets say it is large. Neither says it is
*unprofitable*: a feature whose model cost per request has crept above what a request
earns loses money on every call, however normal its spend looks. Operators know what a
request is worth (revenue per request, or per user-month divided by the requests a user
makes) and what the feature costs regardless of volume (a reserved endpoint, a vector
store): this rule takes both from YAML, per value of ``value_by`` (default ``feature``).

Per scope and calendar month (UTC) it sums the spend and requests so far, projects the
month's requests from the share of the month elapsed (since the scope's first window,
for a scope that starts mid-month), and computes the projected cost
per request, (fixed + variable spend) / requests. It fires when that exceeds the value
of a request, once at least ``min_requests`` requests and ``min_elapsed`` of the month
have been seen; the alert names the breakeven volume, fixed / (value − variable cost
per request) requests a month, or says that no volume breaks even (each request costs
more than it is worth). It resolves when the projection is back below the value by
``resolve_margin``, and at the month's end (each month is judged afresh).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Literal

from pydantic import Field, model_validator

from spendwatch.core.alerts import Alert
from spendwatch.core.configtypes import Dimension, Duration
from spendwatch.detectors.base import DetectorBase, RuleConfig, Totals, register_detector
from spendwatch.detectors.periods import period_bounds
from spendwatch.ingest.pricing import NANOS_PER_USD


class UnitMarginConfig(RuleConfig):
    """Projected cost per request this month against what a request is worth."""

    type: Literal["unit_margin"] = "unit_margin"
    scope: list[Dimension] = Field(
        default_factory=lambda: ["feature"], description="what earns: feature, tenant…"
    )
    value_by: Dimension = Field(
        default="feature", description="scope dimension whose value picks the value per request"
    )
    value_per_request: dict[str, float] = Field(
        description='USD a request earns, by value of value_by ("*" for any other)'
    )
    fixed_usd_per_month: dict[str, float] = Field(
        default_factory=dict,
        description='USD a month the scope costs whatever its volume, by value ("*": others)',
    )
    metric: Literal["spend_usd"] = Field(default="spend_usd", description="cost summed")
    window: Duration = Field(default=3600)
    min_requests: int = Field(default=100, ge=1, description="requests this month before judging")
    min_elapsed: Duration = Field(default=86400, description="part of the month seen first")
    resolve_margin: float = Field(
        default=0.05, ge=0, lt=1, description="projection this far below the value resolves"
    )

    @model_validator(mode="after")
    def _consistent(self) -> UnitMarginConfig:
        if self.value_by not in self.scope:
            raise ValueError("value_by must be one of scope")
        if any(
            v < 0 for v in [*self.value_per_request.values(), *self.fixed_usd_per_month.values()]
        ):
            raise ValueError("values and fixed costs cannot be negative")
        return self


class MarginState:
    """One scope's month: its start, spend (nano-dollars) and requests so far, and since
    when it has been firing (``None``: not firing)."""

    __slots__ = ("firing", "fixed", "month", "requests", "since", "spend_nanos", "value")

    def __init__(self) -> None:
        self.value: float | None = None  # the scope's value per request and fixed cost
        self.fixed = 0.0
        self.month = 0
        self.since = 0  # the scope's first window this month (a scope may start mid-month)
        self.spend_nanos = 0
        self.requests = 0
        self.firing: int | None = None

    def __getstate__(self) -> tuple:
        return (
            self.month, self.since, self.spend_nanos, self.requests, self.firing, self.value,
            self.fixed,
        )  # fmt: skip

    def __setstate__(self, state: tuple) -> None:
        (self.month, self.since, self.spend_nanos, self.requests, self.firing, self.value,
         self.fixed) = state  # fmt: skip


@register_detector("unit_margin", UnitMarginConfig)
class UnitMargin(DetectorBase):
    config: UnitMarginConfig

    def __init__(self, config: UnitMarginConfig) -> None:
        super().__init__(config)
        self.zero_fill = False  # an empty window changes neither sum

    def new_state(self) -> MarginState:
        return MarginState()

    def _lookup(self, table: Mapping[str, float], scope: Mapping[str, str]) -> float | None:
        return table.get(scope.get(self.config.value_by, ""), table.get("*"))

    def projection(self, state: MarginState, window_end: int) -> dict[str, float] | None:
        """The month so far and its projection (``None`` before the rule may judge)."""
        c = self.config
        value = state.value
        if value is None or state.requests < c.min_requests:
            return None
        start, end = period_bounds(state.month, "month")
        elapsed = window_end - max(start, state.since)
        if elapsed < c.min_elapsed:
            return None
        fixed = state.fixed
        variable = state.spend_nanos / NANOS_PER_USD / state.requests
        projected_requests = state.requests * (end - max(start, state.since)) / elapsed
        cost = variable + fixed / projected_requests
        breakeven = fixed / (value - variable) if value > variable else math.inf
        return {
            "value": cost,
            "expected": value,
            "variable": variable,
            "projected_requests": projected_requests,
            "breakeven_requests": breakeven,
        }

    def _add(
        self, state: MarginState, scope: Mapping[str, str], window_start: int, totals: Totals
    ) -> list[Alert]:
        """Start a new month when the window is past the last one (resolving its alert)."""
        month, _ = period_bounds(window_start, "month")
        alerts: list[Alert] = []
        if month != state.month:
            if state.firing is not None:
                alerts.append(self._resolved(state, scope, window_start))
            state.month, state.spend_nanos, state.requests, state.firing = month, 0, 0, None
            state.since = window_start
        state.spend_nanos += totals.spend_nanos
        state.requests += totals.requests
        return alerts

    def explain(
        self, state: MarginState, window_start: int, totals: Totals
    ) -> dict[str, float] | None:
        """The month's projection with this window added (on a copy of the state)."""
        trial = MarginState()
        trial.__setstate__(state.__getstate__())
        self._add(trial, {}, window_start, totals)
        seen = self.projection(trial, window_start + self.config.window)
        if seen is None:
            return None
        breakeven = seen["breakeven_requests"]
        return {**seen, "breakeven_requests": breakeven if math.isfinite(breakeven) else -1.0}

    def observe(
        self, state: MarginState, scope: Mapping[str, str], window_start: int, totals: Totals
    ) -> list[Alert]:
        c = self.config
        state.value = self._lookup(c.value_per_request, scope)
        state.fixed = self._lookup(c.fixed_usd_per_month, scope) or 0.0
        alerts = self._add(state, scope, window_start, totals)
        seen = self.projection(state, window_start + c.window)
        if seen is None:
            return alerts
        cost, value = seen["value"], seen["expected"]
        if state.firing is None and cost > value:
            state.firing = window_start
            alerts.append(self._alert(scope, "firing", window_start, seen, window_start))
        elif state.firing is not None and cost < value * (1 - self.config.resolve_margin):
            alerts.append(self._alert(scope, "resolved", window_start, seen, state.firing))
            state.firing = None
        return alerts

    def _resolved(self, state: MarginState, scope: Mapping[str, str], window_start: int) -> Alert:
        """The month ended while firing: resolved with the month's final figures."""
        seen = self.projection(state, period_bounds(state.month, "month")[1]) or {
            "value": 0.0,
            "expected": 0.0,
            "breakeven_requests": math.inf,
            "projected_requests": float(state.requests),
        }
        return self._alert(scope, "resolved", window_start, seen, state.firing or 0)

    def _alert(
        self,
        scope: Mapping[str, str],
        status: str,
        window_start: int,
        seen: Mapping[str, float],
        episode: int,
    ) -> Alert:
        breakeven = seen["breakeven_requests"]
        if math.isfinite(breakeven):
            rarity = (
                f"breaks even at {breakeven:,.0f} requests a month "
                f"(projected {seen['projected_requests']:,.0f})"
            )
        else:
            rarity = "no volume breaks even: each request costs more than it earns"
        return self.anomaly_alert(
            scope,
            status,  # type: ignore[arg-type]
            window_start,
            seen["value"],
            seen["expected"],
            seen["value"] / seen["expected"] if seen["expected"] else 0.0,
            episode,
            metric="cost_per_request_usd",
            threshold=1.0,
            rarity=rarity,
            breakeven_requests=None if not math.isfinite(breakeven) else round(breakeven),
        )
