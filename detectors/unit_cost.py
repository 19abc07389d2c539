"""``type: unit_cost``: cost (or output tokens) per request rising while volume is normal.

A prompt edit that makes answers five times longer, or a silent switch to a pricier
model, leaves the request rate alone and raises what each request costs. Spend
detectors see it late or not at all on a big scope; this one watches the unit value
against its own robust baseline and fires when it is ``min_increase`` above it (e.g.
+20 %) with a robust z above ``threshold``, while the request count is within
``max_volume_ratio`` of its seasonal baseline. When volume alone grows (a request loop)
it stays quiet: that is the spend/request detectors' alert, and a mix shift caused by
one looping feature is not a unit-cost regression.

The noise of a mean over n requests shrinks as 1/√n, so residuals are pooled as
``relative residual × √requests`` (a per-request coefficient of variation) and a
window's spread is ``cv × expected / √requests``: a quiet night window with 30 requests
and a busy one with 3,000 are each judged by their own precision.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Literal

from pydantic import Field

from spendwatch.core.alerts import Alert
from spendwatch.core.configtypes import Duration
from spendwatch.detectors.base import (
    DetectorBase,
    ExplainedRuleConfig,
    SlotsState,
    Totals,
    metric_value,
    register_detector,
)
from spendwatch.detectors.episodes import Episode
from spendwatch.detectors.slots import SlotHistory

UnitMetric = Literal["cost_per_request_usd", "output_tokens_per_request"]


class UnitCostConfig(ExplainedRuleConfig):
    """Unit-cost regression detector; see the module docstring."""

    type: Literal["unit_cost"] = "unit_cost"
    metric: UnitMetric = Field(
        default="cost_per_request_usd", description="the unit cost judged per window"
    )
    window: Duration = Field(default=900)
    min_increase: float = Field(default=0.2, gt=0, description="relative rise needed (0.2 = +20 %)")
    threshold: float = Field(default=4.0, gt=0, description="robust z of the unit value needed")
    strong_threshold: float = Field(
        default=6.0, gt=0, description="z that fires without waiting for confirmation"
    )
    min_requests: int = Field(default=20, ge=1, description="thinner windows are not judged")
    max_volume_ratio: float = Field(
        default=1.5, ge=1.0, description="requests above this × their baseline: not unit cost"
    )
    history: int = Field(default=48, ge=4, description="recent windows in the unit baseline")
    days: int = Field(default=5, ge=1, description="days of request history per slot")
    min_relative_std: float = Field(
        default=0.03, ge=0, description="floor of the spread, relative to the expected value"
    )
    confirm: int = Field(default=2, ge=1, description="anomalous windows in a row to fire")
    relearn_after: int = Field(
        default=16, ge=1, description="episode windows after which the new level is learned"
    )
    warmup: int = Field(default=24, ge=1, description="judged windows learned before alerting")


class UnitCostState(SlotsState):
    __slots__ = ("episode", "unit", "volume")

    def __init__(self, unit: SlotHistory, volume: SlotHistory) -> None:
        self.unit = unit
        self.volume = volume
        self.episode = Episode()


@register_detector("unit_cost", UnitCostConfig)
class UnitCost(DetectorBase):
    config: UnitCostConfig

    def __init__(self, config: UnitCostConfig) -> None:
        super().__init__(config)

    def new_state(self) -> UnitCostState:
        c = self.config
        return UnitCostState(
            SlotHistory(c.window, max(1, c.history // 24), c.history, seasonal=False),
            SlotHistory(c.window, c.days, c.history, seasonal=True),
        )

    def learning(self, state: UnitCostState) -> bool:
        return not state.episode.active and not state.episode.pending

    def _unit_band(self, state: UnitCostState, requests: int) -> tuple[float, float] | None:
        found = state.unit.expected(0, 0)
        if found is None:
            return None
        expected = found[0]
        per_request_cv = state.unit.relative_std()
        relative = max(per_request_cv / math.sqrt(max(requests, 1)), self.config.min_relative_std)
        return expected, relative * expected

    def explain(
        self, state: UnitCostState, window_start: int, totals: Totals
    ) -> dict[str, float] | None:
        value = metric_value(self.config.metric, totals)
        band = self._unit_band(state, totals.requests)
        if value is None or band is None:
            return None
        expected, std = band
        volume = state.volume.expected(window_start, 1)
        return {
            "value": value,
            "expected": expected,
            "std": std,
            "upper": max(expected * (1 + self.config.min_increase), expected + std * 4),
            "z": (value - expected) / std if std > 0 else 0.0,
            "requests": float(totals.requests),
            "expected_requests": volume[0] if volume else math.nan,
            "warm": float(state.unit.seen >= self.config.warmup),
        }

    def observe(
        self, state: UnitCostState, scope: Mapping[str, str], window_start: int, totals: Totals
    ) -> list[Alert]:
        c = self.config
        value = metric_value(c.metric, totals)
        if value is None or totals.requests < c.min_requests:
            return []
        band = self._unit_band(state, totals.requests)
        volume = state.volume.expected(window_start, 1)
        anomalous = strong = False
        expected, z = value, 0.0
        if band is not None and state.unit.seen >= c.warmup:
            expected, std = band
            z = (value - expected) / std if std > 0 else 0.0
            normal_volume = volume is None or totals.requests <= c.max_volume_ratio * volume[0]
            rise = value >= (1 + c.min_increase) * expected
            anomalous = normal_volume and rise and z >= c.threshold
            strong = anomalous and z >= c.strong_threshold
            clear = value < (1 + c.min_increase / 2) * expected or z < c.threshold / 2
        else:
            clear = True
        episode = state.episode
        transition = episode.step(
            window_start, anomalous, strong, c.confirm, c.resolve_after, clear
        )
        alerts = self.transition_alerts(
            transition, episode, scope, window_start, value, expected, z
        )
        if (not anomalous and not episode.pending) or episode.firing_windows > c.relearn_after:
            self._learn_unit(state, value, band[0] if band else None, totals.requests)
        state.volume.learn(window_start, float(totals.requests), volume[0] if volume else None)
        return alerts

    @staticmethod
    def _learn_unit(
        state: UnitCostState, value: float, expected: float | None, requests: int
    ) -> None:
        """Learn the value; its residual is pooled scaled by √requests (see module doc)."""
        state.unit.learn(0, value, None)
        if expected is not None and expected > 0:
            state.unit.residuals.push(abs(value - expected) / expected * math.sqrt(requests))
