"""Seasonal z-score: per scope and seasonal slot, how far a window sits above its baseline.

Baselines are river exponentially weighted means per slot (hour of day or hour of
week, falling back to hour of day and then to the scope's overall level while a
slot is still thin). Noise is one pooled variance of *relative* residuals per
scope, so a quiet night slot and a busy peak slot share what they learn about
volatility. Windows that look anomalous are not learned from (a spike must not
raise its own baseline), normal ones are learned winsorised.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Literal

from pydantic import Field
from river import stats

from spendwatch.core.alerts import Alert
from spendwatch.core.configtypes import Duration, Metric
from spendwatch.detectors.base import (
    DetectorBase,
    ExplainedRuleConfig,
    SlotsState,
    Totals,
    metric_value,
    register_detector,
)

Seasonality = Literal["none", "hour_of_day", "hour_of_week"]
_HOUR = 3600
_DAY = 86400
_EPOCH_WEEKDAY_OFFSET_HOURS = 3 * 24  # 1970-01-01 was a Thursday; make Monday 00:00 slot 0


class SeasonalZScoreConfig(ExplainedRuleConfig):
    """``type: seasonal_zscore``: alert when a window is far above its seasonal baseline."""

    type: Literal["seasonal_zscore"] = "seasonal_zscore"
    metric: Metric = Field(default="spend_usd", description="what is summed or divided per window")
    window: Duration = Field(default=3600, description="tumbling event-time window")
    seasonality: Seasonality = Field(
        default="hour_of_day", description="which slot a window's baseline comes from"
    )
    threshold: float = Field(default=4.0, gt=0, description="z-score needed to fire")
    min_ratio: float = Field(
        default=1.2, ge=1.0, description="observed/expected must also reach this (1.2 = +20 %)"
    )
    min_value: float = Field(default=0.0, ge=0, description="ignore windows below this value")
    warmup: Duration | None = Field(
        default=None,
        description="event time learned before alerting (default: two days, at least 12 windows)",
    )
    history: int = Field(
        default=8, ge=2, description="effective memory, in samples, of each slot's baseline"
    )
    relearn_after: int = Field(
        default=24,
        ge=1,
        description="windows an episode may last before the baseline adapts to the new level",
    )
    min_relative_std: float = Field(
        default=0.05, ge=0, description="noise floor, as a fraction of the expected value"
    )

    @property
    def effective_warmup(self) -> int:
        """Windows learned before alerting."""
        if self.warmup is not None:
            return self.warmup // self.window
        if self.seasonality == "none":
            return 12
        return max(12, 2 * _DAY // self.window)


class SeasonalState(SlotsState):
    """Per-scope baseline: slot means, overall level, pooled relative noise, episode."""

    __slots__ = (
        "day_slots",
        "episode_start",
        "firing_windows",
        "level",
        "noise",
        "normal_streak",
        "seen",
        "week_slots",
    )

    def __init__(self) -> None:
        self.week_slots: dict[int, stats.EWMean] = {}
        self.day_slots: dict[int, stats.EWMean] = {}
        self.level: stats.EWMean | None = None
        self.noise: stats.EWVar | None = None
        self.seen = 0
        self.episode_start: int | None = None
        self.firing_windows = 0
        self.normal_streak = 0


class Baseline:
    """Expected value and standard deviation for one window (what ``explain`` prints)."""

    __slots__ = ("expected", "std")

    def __init__(self, expected: float, std: float) -> None:
        self.expected = expected
        self.std = std

    def z(self, value: float) -> float:
        if self.std > 0:
            return (value - self.expected) / self.std
        return math.inf if value > self.expected else 0.0


@register_detector("seasonal_zscore", SeasonalZScoreConfig)
class SeasonalZScore(DetectorBase):
    """Seasonal z-score detector; see the module docstring for the model."""

    config: SeasonalZScoreConfig

    def __init__(self, config: SeasonalZScoreConfig) -> None:
        super().__init__(config)
        self.alpha = 1.0 / config.history
        self.warmup = config.effective_warmup

    def new_state(self) -> SeasonalState:
        return SeasonalState()

    def baseline(self, state: SeasonalState, window_start: int) -> Baseline | None:
        """The baseline for ``window_start``, or ``None`` before the first window."""
        if state.level is None:
            return None
        hour = window_start // _HOUR
        expected = state.level.get()
        seasonality = self.config.seasonality
        if seasonality != "none":
            day_slot = state.day_slots.get(hour % 24)
            if day_slot is not None:
                expected = day_slot.get()
            if seasonality == "hour_of_week":
                week_slot = state.week_slots.get((hour + _EPOCH_WEEKDAY_OFFSET_HOURS) % 168)
                if week_slot is not None:
                    expected = week_slot.get()
        relative_var = max(
            state.noise.get() if state.noise else 0.0, self.config.min_relative_std**2
        )
        scale = max(expected, 0.0)
        std = scale * math.sqrt(relative_var)
        if self.config.metric == "requests":
            std = math.sqrt(std * std + scale)  # counts carry at least Poisson noise
        return Baseline(expected, std)

    def learning(self, state: SeasonalState) -> bool:
        return state.episode_start is None

    def explain(
        self, state: SeasonalState, window_start: int, totals: Totals
    ) -> dict[str, float] | None:
        value = metric_value(self.config.metric, totals)
        baseline = self.baseline(state, window_start)
        if value is None or baseline is None:
            return None
        return {
            "value": value,
            "expected": baseline.expected,
            "std": baseline.std,
            "upper": baseline.expected + self.config.threshold * baseline.std,
            "z": baseline.z(value),
            "warm": float(state.seen >= self.warmup),
        }

    def observe(
        self, state: SeasonalState, scope: Mapping[str, str], window_start: int, totals: Totals
    ) -> list[Alert]:
        value = metric_value(self.config.metric, totals)
        if value is None:
            return []
        baseline = self.baseline(state, window_start)
        anomalous = False
        z = 0.0
        if baseline is not None and state.seen >= self.warmup:
            z = baseline.z(value)
            anomalous = (
                z >= self.config.threshold
                and value >= self.config.min_value
                and value >= self.config.min_ratio * baseline.expected
            )
        alerts: list[Alert] = []
        if anomalous:
            state.normal_streak = 0
            if state.episode_start is None:
                state.episode_start = window_start
                state.firing_windows = 0
                alerts.append(
                    self.anomaly_alert(
                        scope, "firing", window_start, value, baseline.expected, z, window_start
                    )
                )
            state.firing_windows += 1
        elif state.episode_start is not None:
            state.normal_streak += 1
            if state.normal_streak >= self.config.resolve_after:
                alerts.append(
                    self.anomaly_alert(
                        scope,
                        "resolved",
                        window_start,
                        value,
                        baseline.expected,
                        z,
                        state.episode_start,
                    )
                )
                state.episode_start = None
                state.normal_streak = 0
        relearn = anomalous and state.firing_windows > self.config.relearn_after
        if not anomalous or relearn:
            self._learn(state, window_start, value, baseline)
        return alerts

    def _learn(
        self, state: SeasonalState, window_start: int, value: float, baseline: Baseline | None
    ) -> None:
        alpha = self.alpha
        if baseline is not None:
            if state.seen >= self.warmup and baseline.std > 0:
                value = min(value, baseline.expected + self.config.threshold * baseline.std)
            reference = max(baseline.expected, 1e-12)
            if state.noise is None:
                state.noise = stats.EWVar(fading_factor=alpha)
            state.noise.update((value - baseline.expected) / reference)
        if state.level is None:
            state.level = stats.EWMean(fading_factor=alpha)
        state.level.update(value)
        hour = window_start // _HOUR
        if self.config.seasonality != "none":
            _update_slot(state.day_slots, hour % 24, value, alpha)
        if self.config.seasonality == "hour_of_week":
            _update_slot(state.week_slots, (hour + _EPOCH_WEEKDAY_OFFSET_HOURS) % 168, value, alpha)
        state.seen += 1


def _update_slot(slots: dict[int, stats.EWMean], slot: int, value: float, alpha: float) -> None:
    mean = slots.get(slot)
    if mean is None:
        mean = slots[slot] = stats.EWMean(fading_factor=alpha)
    mean.update(value)
