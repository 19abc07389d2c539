"""``type: river``: any river anomaly model, named in YAML, behind the detector protocol.

    - name: tenant-hst
      type: river
      model: anomaly.HalfSpaceTrees
      params: {n_trees: 10, height: 8, window_size: 96, seed: 7}
      scope: [tenant]
      threshold: 0.95

River's anomaly models judge feature vectors, have no notion of direction, and some
(HalfSpaceTrees) expect features in [0, 1]. So the detector feeds each model the
window's value relative to the scope's own seasonal baseline (a median of recent
same-time-of-day windows, ``detectors/slots.py``), squashed into [0, 1] as
``value / (value + expected)`` (0.5 = as usual, → 1 far above, → 0 far below), and it
fires only when the model's score reaches ``threshold`` *and* the value is above the
baseline by ``min_ratio``: a collapse in spend is not a cost alert. Windows that fire
are not learned, like everywhere else.
"""

from __future__ import annotations

import copy
import importlib
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field, model_validator

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
from spendwatch.detectors.episodes import Episode
from spendwatch.detectors.slots import SlotHistory


def build_model(name: str, params: Mapping[str, Any]) -> Any:
    """``anomaly.HalfSpaceTrees`` → an instance from river, with ``params``."""
    module_name, _, class_name = name.rpartition(".")
    if not module_name or not class_name:
        raise ValueError(f"model must look like anomaly.HalfSpaceTrees, not {name!r}")
    try:
        module = importlib.import_module(f"river.{module_name}")
        cls = getattr(module, class_name)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"river has no model {name!r}") from error
    try:
        model = cls(**params)
    except TypeError as error:
        raise ValueError(f"bad params for {name}: {error}") from error
    if not (hasattr(model, "score_one") and hasattr(model, "learn_one")):
        raise ValueError(f"{name} is not an anomaly model (needs score_one and learn_one)")
    return model


class RiverConfig(ExplainedRuleConfig):
    """A river anomaly model judging a metric relative to its seasonal baseline."""

    type: Literal["river"] = "river"
    model: str = Field(description="river model path, e.g. anomaly.HalfSpaceTrees")
    params: dict[str, Any] = Field(default_factory=dict, description="constructor arguments")
    metric: Metric = Field(default="spend_usd", description="what is summed or divided per window")
    window: Duration = Field(default=900)
    threshold: float = Field(default=0.95, description="model score needed to fire")
    min_ratio: float = Field(default=1.5, ge=1.0, description="observed/expected also needed")
    min_value: float = Field(default=0.0, ge=0, description="ignore windows below this value")
    days: int = Field(default=5, ge=1, description="days of history per time-of-day slot")
    warmup: Duration = Field(default=2 * 86400, description="event time learned before alerting")
    confirm: int = Field(default=1, ge=1, description="anomalous windows in a row to fire")

    @model_validator(mode="after")
    def _model_builds(self) -> RiverConfig:
        build_model(self.model, self.params)
        if self.window <= 0 or 86400 % self.window:
            raise ValueError("window must divide one day (e.g. 5m, 15m, 1h)")
        return self


class RiverState(SlotsState):
    __slots__ = ("episode", "history", "model")

    def __init__(self, model: Any, history: SlotHistory) -> None:
        self.model = model
        self.history = history
        self.episode = Episode()


def squash(value: float, expected: float) -> float:
    """Value relative to expected, in [0, 1]: 0.5 as usual."""
    total = value + expected
    return 0.5 if total <= 0 else value / total


@register_detector("river", RiverConfig)
class RiverDetector(DetectorBase):
    config: RiverConfig

    def __init__(self, config: RiverConfig) -> None:
        super().__init__(config)
        self._prototype = build_model(config.model, config.params)
        self.warmup_windows = config.warmup // config.window

    def new_state(self) -> RiverState:
        c = self.config
        return RiverState(
            copy.deepcopy(self._prototype), SlotHistory(c.window, c.days, 8, seasonal=True)
        )

    def learning(self, state: RiverState) -> bool:
        return not state.episode.active

    def explain(
        self, state: RiverState, window_start: int, totals: Totals
    ) -> dict[str, float] | None:
        value = metric_value(self.config.metric, totals)
        found = state.history.expected(window_start, 1)
        if value is None or found is None:
            return None
        expected = found[0]
        return {
            "value": value,
            "expected": expected,
            "upper": expected * self.config.min_ratio,
            "z": float(state.model.score_one({"x": squash(value, expected)})),
            "warm": float(state.history.seen >= self.warmup_windows),
        }

    def observe(
        self, state: RiverState, scope: Mapping[str, str], window_start: int, totals: Totals
    ) -> list[Alert]:
        c = self.config
        value = metric_value(c.metric, totals)
        if value is None:
            return []
        found = state.history.expected(window_start, 1)
        expected = found[0] if found else value
        features = {"x": squash(value, expected)}
        score = float(state.model.score_one(features)) if found else 0.0
        anomalous = (
            found is not None
            and state.history.seen >= self.warmup_windows
            and score >= c.threshold
            and value >= c.min_ratio * expected
            and value >= c.min_value
        )
        episode = state.episode
        transition = episode.step(window_start, anomalous, False, c.confirm, c.resolve_after)
        alerts = self.transition_alerts(
            transition, episode, scope, window_start, value, expected, score
        )
        if not anomalous and not episode.pending:
            if found is not None:
                state.model.learn_one(features)
            state.history.learn(window_start, value, found[0] if found else None)
        return alerts
