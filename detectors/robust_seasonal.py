"""``type: robust_seasonal``: the precision-first production detector for sums.

A plain hourly z > 3 fires several times a day on a multi-tenant stream: Monday mornings
after a weekend, tenants whose traffic is bursty but normal, and slots with one or two
samples of history. This detector answers each of those:

* baseline: median of the last ``days`` values at this time of day and its neighbouring
  windows (``detectors/slots.py``): robust to spikes and weekends, useful after 2 days;
* spread: pooled relative MAD of the scope, floored by compound-Poisson count noise
  (``overdispersion``) so thin scopes are not judged by their busy-hour volatility;
* impact: the excess must also be ``min_ratio`` × expected and ``min_impact`` in metric
  units (dollars for spend): a tiny tenant doubling from 2 ¢ is not an incident;
* confirmation: ``confirm`` consecutive anomalous windows, unless z ≥ 2 × threshold.

Anomalous windows are not learned (a spike must not become its own baseline) until an
episode outlasts ``relearn_after`` windows: then the new level is accepted.
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
from spendwatch.detectors.slots import SlotHistory, count_noise_std

SumMetric = Literal["spend_usd", "requests", "input_tokens", "output_tokens"]


class RobustSeasonalConfig(ExplainedRuleConfig):
    """Robust seasonal detector for sum metrics; see the module docstring."""

    type: Literal["robust_seasonal"] = "robust_seasonal"
    metric: SumMetric = Field(default="spend_usd", description="what is summed per window")
    window: Duration = Field(default=900, description="tumbling event-time window")
    seasonality: Literal["none", "time_of_day"] = Field(
        default="time_of_day", description="compare with the same time of day, or with all windows"
    )
    days: int = Field(default=5, ge=1, description="days of history per time-of-day slot")
    neighbours: int = Field(
        default=1, ge=0, description="adjacent windows of the day pooled into a slot's median"
    )
    threshold: float = Field(default=5.0, gt=0, description="robust z needed")
    min_ratio: float = Field(default=1.5, ge=1.0, description="observed/expected needed")
    min_impact: float = Field(
        default=0.0, ge=0, description="observed − expected needed, in metric units (USD)"
    )
    overdispersion: float = Field(
        default=3.0, ge=0, description="count-noise variance per request unit (1 = Poisson)"
    )
    min_relative_std: float = Field(default=0.1, ge=0, description="relative noise floor")
    confirm: int = Field(default=2, ge=1, description="anomalous windows in a row to fire")
    relearn_after: int = Field(
        default=96, ge=1, description="windows an episode may last before the baseline adapts"
    )
    warmup: Duration = Field(default=2 * 86400, description="event time learned before alerting")
    residual_memory: int = Field(default=288, ge=8, description="residuals in the pooled MAD")


class RobustState(SlotsState):
    __slots__ = ("episode", "history", "per_request")

    def __init__(self, history: SlotHistory) -> None:
        self.history = history
        self.episode = Episode()
        self.per_request = 0.0


def per_request_value(metric: str, totals: Totals, value: float) -> float | None:
    """Metric units per request (1 for requests): the size of one count in the sum."""
    if metric == "requests":
        return 1.0
    if totals.requests <= 0:
        return None
    return value / totals.requests


@register_detector("robust_seasonal", RobustSeasonalConfig)
class RobustSeasonal(DetectorBase):
    config: RobustSeasonalConfig

    def __init__(self, config: RobustSeasonalConfig) -> None:
        super().__init__(config)
        self.warmup_windows = config.warmup // config.window

    def new_state(self) -> RobustState:
        c = self.config
        return RobustState(
            SlotHistory(c.window, c.days, c.residual_memory, c.seasonality != "none")
        )

    def learning(self, state: RobustState) -> bool:
        return not state.episode.active and not state.episode.pending

    def band(self, state: RobustState, window_start: int) -> tuple[float, float] | None:
        """(expected, std) for a window, or ``None`` while history is missing."""
        found = state.history.expected(window_start, self.config.neighbours)
        if found is None:
            return None
        expected, _ = found
        relative = max(state.history.relative_std(), self.config.min_relative_std)
        counts = count_noise_std(expected, state.per_request, self.config.overdispersion)
        return expected, math.hypot(relative * expected, counts)

    def explain(
        self, state: RobustState, window_start: int, totals: Totals
    ) -> dict[str, float] | None:
        value = metric_value(self.config.metric, totals)
        band = self.band(state, window_start)
        if value is None or band is None:
            return None
        expected, std = band
        z = (value - expected) / std if std > 0 else 0.0
        return {
            "value": value,
            "expected": expected,
            "std": std,
            "upper": max(  # every condition must hold: the band is the strictest
                expected + self.config.threshold * std,
                expected * self.config.min_ratio,
                expected + self.config.min_impact,
            ),
            "z": z,
            "warm": float(state.history.seen >= self.warmup_windows),
        }

    def observe(
        self, state: RobustState, scope: Mapping[str, str], window_start: int, totals: Totals
    ) -> list[Alert]:
        c = self.config
        value = metric_value(c.metric, totals)
        assert value is not None
        band = self.band(state, window_start)
        anomalous = strong = False
        expected, z = (band[0] if band else value), 0.0
        if band is not None and state.history.seen >= self.warmup_windows:
            expected, std = band
            z = (value - expected) / std if std > 0 else (math.inf if value > expected else 0.0)
            anomalous = (
                z >= c.threshold
                and value >= c.min_ratio * expected
                and value - expected >= c.min_impact
            )
            strong = z >= 2 * c.threshold
        episode = state.episode
        transition = episode.step(window_start, anomalous, strong, c.confirm, c.resolve_after)
        alerts = self.transition_alerts(
            transition, episode, scope, window_start, value, expected, z
        )
        quiet = not anomalous and not episode.pending
        if quiet or episode.firing_windows > c.relearn_after:
            state.history.learn(window_start, value, band[0] if band else None)
            unit = per_request_value(c.metric, totals, value)
            if unit is not None:
                state.per_request = (
                    unit
                    if not state.per_request
                    else (state.per_request + 0.05 * (unit - state.per_request))
                )
        return alerts
