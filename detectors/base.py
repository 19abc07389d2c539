"""The detector protocol, the window totals it judges, and the registry keyed by YAML ``type:``.

A detector is pure: it receives one closed window of one scope at a time, in
window order, together with the per-scope state it created, and returns alerts.
The engine owns windowing, ordering, state storage and snapshots.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, NamedTuple

from pydantic import Field, model_validator

from spendwatch.core.alerts import Alert, make_alert
from spendwatch.core.configtypes import RATIO_METRICS, Dimension, Severity, StrictModel
from spendwatch.ingest.pricing import NANOS_PER_USD


class Totals(NamedTuple):
    """Sums of one (scope, window); money in integer nano-dollars."""

    spend_nanos: int = 0
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    events: int = 0
    # Per-request evidence of thin scopes, over the window's single-request events only
    # (an event standing for many calls carries their sums, not each call's value):
    single_requests: int = 0
    """Requests that came as events of one request each (the count of the sums below)."""
    log_output: float = 0.0
    """Σ log(output tokens) over single-request events (tokens floored at 1)."""
    log_cost: float = 0.0
    """Σ log(cost in nano-dollars) over single-request events (floored at 1)."""
    log_output_sq: float = 0.0
    """Σ log² of the same output tokens (the spread within the window)."""
    log_cost_sq: float = 0.0

    def add(self, other: Totals) -> Totals:
        return Totals(*(a + b for a, b in zip(self, other, strict=True)))


SUM_FIELDS = 5
"""The leading integer sums of :class:`Totals` (what the series store keeps)."""


ZERO = Totals()


def metric_value(metric: str, totals: Totals) -> float | None:
    """The value of ``metric`` for a window; ``None`` when a ratio has no requests."""
    if metric == "spend_usd":
        return totals.spend_nanos / NANOS_PER_USD
    if metric == "requests":
        return float(totals.requests)
    if metric == "input_tokens":
        return float(totals.input_tokens)
    if metric == "output_tokens":
        return float(totals.output_tokens)
    if totals.requests <= 0:
        return None
    if metric == "cost_per_request_usd":
        return totals.spend_nanos / NANOS_PER_USD / totals.requests
    if metric == "output_tokens_per_request":
        return totals.output_tokens / totals.requests
    raise ValueError(f"unknown metric {metric!r}")


@dataclass(frozen=True)
class Aggregation:
    """How events are summed before a rule sees them: dimensions, window, filter, credits.

    Rules with equal aggregations share one pre-aggregation pass.
    """

    dims: tuple[str, ...]
    window: int
    match: tuple[tuple[str, str], ...] = ()
    include_credits: bool = False
    route_dims: int | None = None
    """Route rows by their first ``route_dims`` values only (default: all), so breakdown
    rows (scope + a driver dimension) and peer groups land on their parent's shard."""

    def routing_key(self, scope: tuple[str, ...]) -> tuple[str, ...]:
        return scope if self.route_dims is None else scope[: self.route_dims]


class Detector(ABC):
    """What every rule of ``detectors:`` is to the engine: an aggregation and per-key state.

    Two kinds exist, and the engine dispatches on the kind: a :class:`WindowDetector`
    judges one scope's closed window at a time; a :class:`GroupDetector` judges all
    members of a peer group in a window together (a session against the other sessions
    of its tenant), because its members are too short-lived to have a history.
    """

    name: str
    aggregation: Aggregation
    zero_fill: bool
    """Whether a window without events counts as zero (sums) or is skipped (ratios)."""
    drivers: tuple[str, ...] = ()
    """Dimensions whose breakdown explains an alert (see ``detectors/drivers.py``)."""

    @abstractmethod
    def new_state(self) -> Any:
        """Fresh per-scope (or per-group) state (picklable)."""

    def learning(self, state: Any) -> bool:
        """Whether the scope is in its normal regime (breakdown baselines may learn)."""
        return True


class Baseline(NamedTuple):
    """Expected value of the next window and its standard deviation, in the metric's unit."""

    expected: float
    std: float


class WindowDetector(Detector):
    """A rule judging closed windows of one aggregation, scope by scope."""

    @abstractmethod
    def observe(
        self, state: Any, scope: Mapping[str, str], window_start: int, totals: Totals
    ) -> list[Alert]:
        """Judge one closed window of one scope (windows arrive in order)."""

    def observe_empty(
        self, state: Any, scope: Mapping[str, str], starts: Sequence[int]
    ) -> list[Alert]:
        """Judge a run of windows without events of one scope (``starts``, in order), as a
        zero-filled rule must: exactly what ``observe`` with zero totals returns for each.

        The engine calls this for the quiet stretches of a scope, which are most of the
        windows when scopes are many and thin; a detector overrides it only where it can
        do the same work for the whole run at once with identical results.
        """
        alerts: list[Alert] = []
        observe = self.observe
        for start in starts:
            found = observe(state, scope, start, ZERO)
            if found:
                alerts.extend(found)
        return alerts

    def explain(self, state: Any, window_start: int, totals: Totals) -> dict[str, float] | None:
        """Value, expected, band and score of a window *before* it is observed (for
        ``explain`` and reports); ``None`` when the detector cannot tell yet."""
        return None

    def baseline(self, state: Any, window_start: int) -> Baseline | None:
        """What the window starting at ``window_start`` will be judged against, before any
        of its data (the query API's ``/scopes``); ``None`` when not known yet."""
        return None

    def windows_seen(self, state: Any) -> int | None:
        """How many windows of this scope the detector has learned from."""
        return getattr(state, "seen", None)


class GroupDetector(Detector):
    """A rule judging every member of a peer group per window (``agent_loop``).

    The aggregation's first ``peer_dims`` dimensions name the group (rows are routed by
    them, so a group is judged on one shard); the rest name a member. State is per
    group. Members are never zero-filled: a session that made no call is not a member.
    """

    peer_dims: int
    zero_fill = False

    @abstractmethod
    def observe_group(
        self,
        state: Any,
        peers: Mapping[str, str],
        window_start: int,
        members: Mapping[tuple[str, ...], Totals],
    ) -> list[Alert]:
        """Judge every member of one peer group in one window (windows arrive in order)."""

    @abstractmethod
    def explain_group(
        self, members: Mapping[tuple[str, ...], Totals], state: Any = None
    ) -> dict[tuple[str, ...], dict[str, float]]:
        """Each member's value, expected, band and score in this window, before judging
        (``state``: the group's, when the rule learns across windows)."""

    def keep_state(self, state: Any) -> bool:
        """Whether a group's state must be kept after a window (an episode is open): groups
        come and go by the thousand, so state that says nothing is dropped."""
        return True


@dataclass(frozen=True)
class DetectorType:
    config_class: type
    build: Callable[[Any], Detector]


DETECTOR_TYPES: dict[str, DetectorType] = {}


def register_detector(type_name: str, config_class: type) -> Callable[[type], type]:
    """Class decorator: make a detector available as ``type: <type_name>`` in YAML."""

    def decorate(cls: type) -> type:
        DETECTOR_TYPES[type_name] = DetectorType(config_class, cls)
        cls.type_name = type_name
        return cls

    return decorate


def zero_fills(metric: str) -> bool:
    return metric not in RATIO_METRICS


class RuleConfig(StrictModel):
    """Settings every windowed detector has; each type adds its own (``type``, ``window``...)."""

    name: str = Field(min_length=1, description="rule name, unique; appears in alerts")
    scope: list[Dimension] = Field(default_factory=list, description="dimensions to key on")
    resolve_after: int = Field(default=2, ge=1, description="normal windows that end an episode")
    severity: Severity = Field(default="warning", description="severity of its alerts")
    max_scopes: int = Field(
        default=25_000,
        ge=1,
        description="per shard: beyond this many scopes the longest-quiet ones are forgotten "
        "(bounded memory when a scope dimension explodes, e.g. one scope per user; a seasonal "
        "scope holds 3-6 KB, so 25,000 is about 0.1 GB per rule and shard)",
    )

    @model_validator(mode="after")
    def _window_divides_a_day(self) -> RuleConfig:
        window = getattr(self, "window", 0)
        if window <= 0 or 86400 % window:
            raise ValueError("window must divide one day (e.g. 5m, 15m, 1h)")
        return self


class ExplainedRuleConfig(RuleConfig):
    """A rule whose alerts name the sub-scopes behind the deviation."""

    drivers: list[Dimension] = Field(
        default_factory=list, description="dimensions whose breakdown explains each alert"
    )


class SlotsState:
    """Pickles a ``__slots__`` class as the tuple of its slots (compact snapshots)."""

    __slots__ = ()

    def __getstate__(self) -> tuple:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __setstate__(self, state: tuple) -> None:
        for name, value in zip(self.__slots__, state, strict=True):
            setattr(self, name, value)


class ConfiguredRule:
    """Construction from a config with ``name``, ``scope``, ``window`` and ``metric``, and the
    anomaly alerts of its episodes; shared by both kinds of detector."""

    type_name: ClassVar[str]

    def __init__(self, config: Any) -> None:
        self.config = config
        self.name = config.name
        self.aggregation = Aggregation(dims=tuple(config.scope), window=config.window)
        self.zero_fill = zero_fills(config.metric)
        scope = set(config.scope)
        self.drivers = tuple(d for d in getattr(config, "drivers", ()) if d not in scope)

    def transition_alerts(
        self,
        transition: str | None,
        episode: Any,
        scope: Mapping[str, str],
        window_start: int,
        value: float,
        expected: float,
        score: float,
        **extra: object,
    ) -> list[Alert]:
        """The alert an episode step calls for: one when it fires, one when it resolves.

        ``extra`` (e.g. a sequential test's evidence and rarity) goes on the firing alert.
        """
        if transition == "firing":
            return [
                self.anomaly_alert(
                    scope, "firing", window_start, value, expected, score, episode.start, **extra
                )
            ]
        if transition == "resolved":
            start = episode.end()
            return [
                self.anomaly_alert(scope, "resolved", window_start, value, expected, score, start)
            ]
        return []

    def anomaly_alert(
        self,
        scope: Mapping[str, str],
        status: Literal["firing", "resolved"],
        window_start: int,
        value: float,
        expected: float,
        score: float,
        episode_start: int,
        **extra: object,
    ) -> Alert:
        """An anomaly alert of this rule for one window (an infinite z is reported as 1e9).

        A sequential rule's ``threshold`` is its evidence threshold (``extra`` may say so).
        """
        threshold = extra.pop("threshold", getattr(self.config, "threshold", 0.0))
        metric = extra.pop("metric", self.config.metric)
        return make_alert(
            kind="anomaly",
            rule=self.name,
            status=status,
            severity=self.config.severity,
            scope=scope,
            metric=metric,
            window_start=window_start,
            window_end=window_start + self.config.window,
            observed=value,
            expected=expected,
            score=score if math.isfinite(score) else 1e9,
            threshold=threshold,
            episode_start=episode_start,
            **extra,
        )


class DetectorBase(ConfiguredRule, WindowDetector):
    """A window detector built from its rule config (most detector types)."""


class GroupRule(ConfiguredRule, GroupDetector):
    """A group detector built from its rule config: ``peers`` name the group (rows are
    routed by them), ``members`` the rest of the aggregation; never zero-filled."""

    def __init__(self, config: Any, peers: Sequence[str], members: Sequence[str]) -> None:
        super().__init__(config)
        self.peer_dims = len(peers)
        self.aggregation = Aggregation(
            dims=(*peers, *members), window=config.window, route_dims=self.peer_dims
        )
        self.zero_fill = False


def driver_aggregation(parent: Aggregation, dimension: str) -> Aggregation:
    """The breakdown of ``parent`` by one more dimension, routed with its parent scope."""
    return Aggregation(
        dims=(*parent.dims, dimension),
        window=parent.window,
        match=parent.match,
        include_credits=parent.include_credits,
        route_dims=len(parent.dims),
    )
