"""Budgets: cumulative spend per (budget, scope, period) against configured thresholds.

Each threshold fires at most once per period: the crossed thresholds are part of
the state, and totals are integer nano-dollars, so neither batching nor ordering
nor a restore from a snapshot can make a threshold fire twice. When a period ends
(the watermark passes it) its crossed thresholds are resolved, which lets
throttling receivers restore normal service for the new period.

A closed period is remembered for ``correction_periods`` more period lengths, so that a
correction booked later for it (a FOCUS ``ChargeClass: Correction`` row, late usage) updates
its total instead of opening it afresh: every threshold it had crossed gets a ``resolved``
alert with the corrected total (``correction: true``, an episode of its own), a threshold the
correction newly crosses fires and resolves, and none fires twice.

With ``forecast: true`` a budget also projects its period-end spend from a seasonal
model of the scope's hourly spend (``detectors/forecast.py``) and fires one
``kind: forecast`` alert per period when the projection's lower bound at
``forecast_confidence`` reaches the budget while actual spend is still below it.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, field_validator, model_validator

from spendwatch.core.alerts import Alert, alert_id_of, make_alert
from spendwatch.core.configtypes import Dimension, Duration, Severity, StrictModel
from spendwatch.detectors.base import Aggregation, SlotsState
from spendwatch.detectors.forecast import SlotClock, SpendModel
from spendwatch.ingest.pricing import NANOS_PER_USD

if TYPE_CHECKING:
    from spendwatch.dataflows.allocation import Allocator

Period = Literal["hour", "day", "week", "month"]


class BudgetConfig(StrictModel):
    """A spend budget: fixed ``scope`` values and/or one budget per value of ``scope_by``."""

    name: str = Field(min_length=1, description="rule name, unique; appears in alerts")
    scope: dict[Dimension, str] = Field(
        default_factory=dict, description="fixed dimension values, e.g. {tenant: acme}"
    )
    scope_by: list[Dimension] = Field(
        default_factory=list, description="one budget per value of these dimensions"
    )
    amount_usd: float = Field(gt=0, description="budget per period (default for scope_by)")
    overrides: dict[str, float] = Field(
        default_factory=dict,
        description="amount per scope_by value (values joined by '/' for several dimensions)",
    )
    period: Period = Field(default="month", description="budget period; resets at its start")
    thresholds: list[float] = Field(
        default_factory=lambda: [70.0, 85.0, 100.0],
        min_length=1,
        description="percent of the amount at which to alert, each once per period",
    )
    timezone: str = Field(default="UTC", description="IANA timezone the periods follow")
    window: Duration = Field(
        default=300, description="resolution of the crossing window reported in alerts"
    )
    severity: Severity | None = Field(
        default=None, description="default: info below 85 %, warning below 100 %, else critical"
    )
    max_scopes: int = Field(
        default=500_000,
        ge=1,
        description="per shard: beyond this many scope_by values (users, sessions…) the "
        "lowest spenders of the open period are forgotten (bounded memory)",
    )
    correction_periods: int = Field(
        default=2,
        ge=0,
        le=24,
        description="a closed period keeps taking corrections (late spend, FOCUS Correction "
        "rows) for this many more period lengths, updating its resolved alerts; 0: forget "
        "it at once",
    )
    forecast: bool = Field(
        default=False,
        description="alert (kind: forecast) when the period-end projection crosses the budget",
    )
    forecast_confidence: float = Field(
        default=0.9, gt=0.5, lt=1.0, description="probability the projection must reach 100 %"
    )
    forecast_min_history: Duration = Field(
        default=86400, description="hours of spend learned before forecasting"
    )
    forecast_history: int = Field(
        default=7, ge=1, description="effective memory, in samples, of each hourly slot"
    )
    include_allocated: bool = Field(
        default=False,
        description="count shared spend spread to each value by the `allocation:` rule of "
        "one of this budget's dimensions (direct + allocated); false: direct spend only, "
        "the shared value keeps its own total",
    )

    @field_validator("thresholds")
    @classmethod
    def _thresholds(cls, value: list[float]) -> list[float]:
        if any(t <= 0 for t in value):
            raise ValueError("thresholds are percentages and must be positive")
        if len(set(value)) != len(value):
            raise ValueError("thresholds must be distinct")
        return sorted(value)

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as error:
            raise ValueError(f"unknown timezone {value!r}") from error
        return value

    @field_validator("overrides")
    @classmethod
    def _overrides(cls, value: dict[str, float]) -> dict[str, float]:
        for key, amount in value.items():
            if not amount > 0:
                raise ValueError(f"override for {key!r} must be a positive amount")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> BudgetConfig:
        if self.window <= 0 or 3600 % self.window:
            raise ValueError("window must divide one hour (e.g. 1m, 5m, 15m, 1h)")
        if self.overrides and not self.scope_by:
            raise ValueError("overrides need scope_by")
        if set(self.scope) & set(self.scope_by):
            raise ValueError("a dimension cannot be both in scope and in scope_by")
        return self


class PeriodState(SlotsState):
    """Spend and crossed thresholds of one scope in one period."""

    __slots__ = ("allocated_nanos", "crossed", "end", "forecast", "start", "total_nanos")

    def __init__(self, start: int, end: int) -> None:
        self.start = start
        self.end = end
        self.total_nanos = 0
        self.crossed: list[float] = []
        self.forecast = False
        self.allocated_nanos = 0  # the part of total_nanos spread from a shared value

    def __setstate__(self, state: tuple) -> None:
        if len(state) == 5:  # snapshots from before allocation
            state = (0, *state)
        super().__setstate__(state)


class BudgetState(SlotsState):
    """Open periods of one budget scope, keyed by period key, and recently closed ones."""

    __slots__ = ("closed", "model", "periods")

    def __init__(self) -> None:
        self.periods: dict[str, PeriodState] = {}
        self.model: SpendModel | None = None
        self.closed: dict[str, PeriodState] | None = None  # allocated when a period closes

    def __setstate__(self, state: tuple) -> None:
        if len(state) == 2:  # snapshots from before closed periods were kept
            state = (None, *state)
        super().__setstate__(state)


class BudgetRule:
    """Evaluates one :class:`BudgetConfig`; pure, state passed in by the engine.

    With an ``allocation`` (``include_allocated: true``) the rule's aggregation keys the
    allocated dimension last and routes by the others, so one shard holds every value of
    a group (and sees the shared value's window next to the usage that splits it); a fixed
    ``scope`` value of that dimension becomes a filter applied after the split
    (:meth:`keeps`), since its share depends on the other values' usage.
    """

    def __init__(self, config: BudgetConfig, allocation: Allocator | None = None) -> None:
        self.config = config
        self.name = config.name
        self.allocation = allocation
        dims = tuple(config.scope_by) + tuple(sorted(config.scope))
        match = tuple(sorted(config.scope.items()))
        route_dims = None
        self._keep: str | None = None
        if allocation is not None:
            spread = allocation.dimension
            dims = (*(d for d in dims if d != spread), spread)
            match = tuple((d, v) for d, v in match if d != spread)
            self._keep = config.scope.get(spread)
            route_dims = len(dims) - 1
        self.aggregation = Aggregation(
            dims=dims,
            window=config.window,
            match=match,
            include_credits=True,
            route_dims=route_dims,
        )
        self._zone = ZoneInfo(config.timezone)
        self._clock = SlotClock(self._zone)

    def new_state(self) -> BudgetState:
        return BudgetState()

    def keeps(self, scope: tuple[str, ...]) -> bool:
        """Whether a scope (allocated dimension last) is one this budget counts."""
        return self._keep is None or scope[-1] == self._keep

    def amount_usd(self, scope: Mapping[str, str]) -> float:
        if self.config.overrides:
            key = "/".join(scope[d] for d in self.config.scope_by)
            return self.config.overrides.get(key, self.config.amount_usd)
        return self.config.amount_usd

    def add(
        self,
        state: BudgetState,
        scope: Mapping[str, str],
        window_start: int,
        spend_nanos: int,
        allocated_nanos: int = 0,
    ) -> list[Alert]:
        """Add a window's spend (late windows too) and fire newly crossed thresholds;
        ``allocated_nanos`` is the part of ``spend_nanos`` spread from a shared value."""
        key, start, end = period_of(window_start, self.config.period, self.config.timezone)
        if state.closed and key in state.closed:
            closed = state.closed[key]
            closed.allocated_nanos += allocated_nanos
            return self._correct(scope, key, closed, window_start, spend_nanos)
        period = state.periods.get(key)
        if period is None:
            period = state.periods[key] = PeriodState(start, end)
        period.total_nanos += spend_nanos
        period.allocated_nanos += allocated_nanos
        amount = self.amount_usd(scope)
        amount_nanos = amount * NANOS_PER_USD
        alerts = []
        for threshold in self.config.thresholds:
            if threshold in period.crossed:
                continue
            if period.total_nanos * 100 >= threshold * amount_nanos:
                period.crossed.append(threshold)
                alerts.append(
                    self._alert(scope, "firing", key, period, threshold, amount, window_start)
                )
        if self.config.forecast:
            alerts.extend(self._forecast(state, scope, key, period, window_start, spend_nanos))
        return alerts

    def _correct(
        self,
        scope: Mapping[str, str],
        key: str,
        period: PeriodState,
        window_start: int,
        spend_nanos: int,
    ) -> list[Alert]:
        """Spend booked for a period already closed (and resolved): update its total."""
        if spend_nanos == 0:
            return []
        period.total_nanos += spend_nanos
        amount = self.amount_usd(scope)
        amount_nanos = amount * NANOS_PER_USD
        end_window = period.end - self.config.window
        alerts = [
            self._corrected(
                self._alert(scope, "resolved", key, period, threshold, amount, end_window), period
            )
            for threshold in period.crossed
        ]
        for threshold in self.config.thresholds:
            if threshold in period.crossed or period.total_nanos * 100 < threshold * amount_nanos:
                continue
            period.crossed.append(threshold)
            for status, at in (("firing", window_start), ("resolved", end_window)):
                alert = self._alert(scope, status, key, period, threshold, amount, at)
                alerts.append(alert.model_copy(update={"correction": True}))
        return alerts

    @staticmethod
    def _corrected(alert: Alert, period: PeriodState) -> Alert:
        """A resolution re-sent with a corrected total: its own episode (the first one's
        with the corrected total in nano-dollars), so it is stored and delivered, once."""
        episode = f"{alert.episode}#correction-{period.total_nanos}"
        return alert.model_copy(
            update={
                "episode": episode,
                "alert_id": alert_id_of(alert.fingerprint, alert.status, episode),
                "correction": True,
                "corrects_episode": alert.episode,
            }
        )

    def _forecast(
        self,
        state: BudgetState,
        scope: Mapping[str, str],
        key: str,
        period: PeriodState,
        window_start: int,
        spend_nanos: int,
    ) -> list[Alert]:
        """Learn the window's spend; once per period, alert when the projection crosses."""
        config = self.config
        if state.model is None:
            state.model = SpendModel()
        model = state.model
        if not model.add(window_start, spend_nanos, 1.0 / config.forecast_history, self._clock):
            return []
        if period.forecast or model.hours * 3600 < config.forecast_min_history:
            return []
        amount = self.amount_usd(scope)
        amount_nanos = amount * NANOS_PER_USD
        if period.total_nanos >= amount_nanos:
            return []
        assert model.hour_start is not None
        before_hour = period.total_nanos - model.hour_nanos
        projected = model.lower_bound(
            before_hour, model.hour_start, period.end, config.forecast_confidence, self._clock
        )
        if projected < amount_nanos:
            return []
        period.forecast = True
        spend = period.total_nanos / NANOS_PER_USD
        return [
            make_alert(
                kind="forecast",
                rule=self.name,
                status="firing",
                severity=config.severity or "warning",
                scope=scope,
                metric="spend_usd",
                window_start=window_start,
                window_end=window_start + config.window,
                observed=spend,
                expected=amount,
                score=100.0 * projected / amount_nanos,
                threshold=100.0,
                period=key,
                episode_start=period.start,
                projected_usd=round(projected / NANOS_PER_USD, 6),
                confidence=config.forecast_confidence,
            )
        ]

    def bound(self, states: dict[tuple[str, ...], BudgetState]) -> int:
        """Keep at most ``max_scopes`` states: evict the lowest spenders, down to 90 %.

        Caps per user or session see hundreds of thousands of values a day, most of them
        spending cents; forgetting those (they restart from zero if they return) costs
        little, while the few near their cap are the highest spenders and always kept.
        Short periods also free everything at each rollover.
        """
        limit = self.config.max_scopes
        if len(states) <= limit:
            return 0
        keep = max(int(limit * 0.9), 1)

        def spent(scope: tuple[str, ...]) -> int:
            return sum(p.total_nanos for p in states[scope].periods.values())

        victims = heapq.nsmallest(len(states) - keep, states, key=spent)
        for scope in victims:
            del states[scope]
        return len(victims)

    def disposable(self, state: BudgetState, watermark: float, idle: int) -> bool:
        """Whether a scope's state can go: no open period and no recent spend model."""
        if state.periods or state.closed:  # closed ones still take corrections
            return False
        model = state.model
        return model is None or model.hour_start is None or watermark - model.hour_start > idle

    def expire(self, state: BudgetState, scope: Mapping[str, str], watermark: float) -> list[Alert]:
        """Close periods that ended before the watermark; resolve their crossed thresholds."""
        alerts = []
        keep = self.config.correction_periods
        if state.closed:
            for key in [
                k for k, p in state.closed.items() if p.end + keep * (p.end - p.start) <= watermark
            ]:
                del state.closed[key]
        for key in [k for k, p in state.periods.items() if p.end <= watermark]:
            period = state.periods.pop(key)
            if keep and period.end + keep * (period.end - period.start) > watermark:
                if state.closed is None:
                    state.closed = {}
                state.closed[key] = period
            amount = self.amount_usd(scope)
            if period.forecast:
                alerts.append(self._forecast_resolved(scope, key, period, amount))
            for threshold in period.crossed:
                alerts.append(
                    self._alert(
                        scope,
                        "resolved",
                        key,
                        period,
                        threshold,
                        amount,
                        period.end - self.config.window,
                    )
                )
        return alerts

    def _forecast_resolved(
        self, scope: Mapping[str, str], key: str, period: PeriodState, amount: float
    ) -> Alert:
        return make_alert(
            kind="forecast",
            rule=self.name,
            status="resolved",
            severity=self.config.severity or "warning",
            scope=scope,
            metric="spend_usd",
            window_start=period.end - self.config.window,
            window_end=period.end,
            observed=period.total_nanos / NANOS_PER_USD,
            expected=amount,
            score=100.0 * period.total_nanos / (amount * NANOS_PER_USD),
            threshold=100.0,
            period=key,
            episode_start=period.start,
        )

    def total_usd(self, state: BudgetState, period_key: str) -> float:
        period = state.periods.get(period_key)
        return period.total_nanos / NANOS_PER_USD if period else 0.0

    def severity(self, threshold: float) -> Severity:
        if self.config.severity is not None:
            return self.config.severity
        if threshold >= 100:
            return "critical"
        return "warning" if threshold >= 85 else "info"

    def _alert(
        self,
        scope: Mapping[str, str],
        status: Literal["firing", "resolved"],
        key: str,
        period: PeriodState,
        threshold: float,
        amount: float,
        window_start: int,
    ) -> Alert:
        spend = period.total_nanos / NANOS_PER_USD
        extra: dict[str, object] = {}
        if self.allocation is not None:  # what of the total is direct and what allocated
            extra["explain"] = {
                "direct_nanos": period.total_nanos - period.allocated_nanos,
                "allocated_nanos": period.allocated_nanos,
                "allocation": self.allocation.name,
            }
        return make_alert(
            kind="budget",
            rule=self.name,
            status=status,
            severity=self.severity(threshold),
            scope=scope,
            metric="spend_usd",
            window_start=window_start,
            window_end=window_start + self.config.window,
            observed=spend,
            expected=amount,
            score=100.0 * spend / amount,
            threshold=threshold,
            period=key,
            fingerprint_threshold=threshold,
            episode_start=period.start,
            **extra,
        )


PERIODS_REMEMBERED = 8
"""Periods of each (period, timezone) remembered by :func:`period_of` (the most recent)."""

_recent_periods: dict[tuple[str, str], list[tuple[str, int, int]]] = {}


def period_of(epoch: int, period: Period, timezone: str) -> tuple[str, int, int]:
    """(key, start, end) of the period containing ``epoch``, in the budget's timezone.

    Every window of every budget scope asks, so the answer is remembered, by the period's
    bounds rather than by the window: a handful of entries however long the run (keyed by
    window, a memo would grow by one entry per window of event time).
    """
    memo_key = (period, timezone)
    recent = _recent_periods.get(memo_key, [])
    for found in recent:
        if found[1] <= epoch < found[2]:
            return found
    found = _period_bounds(epoch, period, timezone)
    if found[1] <= epoch < found[2]:  # replaced whole: threads of one process share it
        _recent_periods[memo_key] = [found, *recent[: PERIODS_REMEMBERED - 1]]
    return found


def _period_bounds(epoch: int, period: Period, timezone: str) -> tuple[str, int, int]:
    zone = ZoneInfo(timezone)
    moment = datetime.fromtimestamp(epoch, tz=zone)
    if period == "hour":
        start = moment.replace(minute=0, second=0, microsecond=0)
        key = start.strftime("%Y-%m-%dT%H")
        end = start + timedelta(hours=1)
    elif period == "day":
        start = moment.replace(hour=0, minute=0, second=0, microsecond=0)
        key = start.strftime("%Y-%m-%d")
        end = start + timedelta(days=1)
    elif period == "week":
        start = (moment - timedelta(days=moment.weekday())).replace(
            hour=0, minute=0, second=0, microsecond=0
        )
        iso = start.isocalendar()
        key = f"{iso[0]}-W{iso[1]:02d}"
        end = start + timedelta(days=7)
    else:
        start = moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        key = start.strftime("%Y-%m")
        end = (start + timedelta(days=32)).replace(day=1)
    # Re-localise so DST changes inside the period give the wall-clock boundary.
    start = start.replace(tzinfo=None).replace(tzinfo=zone)
    end = end.replace(tzinfo=None).replace(tzinfo=zone)
    return key, int(start.timestamp()), int(end.timestamp())
