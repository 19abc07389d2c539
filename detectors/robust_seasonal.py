"""``type: robust_seasonal``: the precision-first production detector for sums.

A plain hourly z > 3 fires several times a day on a multi-tenant stream: Monday mornings
after a weekend, tenants whose traffic is bursty but normal, slots with one or two
samples of history, and slots that are usually empty. This detector answers each:

* baseline: median of the last ``days`` values at this time of day and its neighbouring
  windows (``detectors/slots.py``): robust to spikes and weekends, useful after 2 days.
  A mostly empty slot has median 0; its expected value is the median shrunk toward the
  scope's overall level (one window's worth of prior, at most one request's:
  ``LEVEL_PRIOR_REQUESTS``), so "rate ≈ 0" is a state with its own uncertainty, never a
  division by zero, and a busy scope's night is not pulled toward its day;
* noise, learned per scope: variance = a·μ + b·μ², the compound-Poisson term of the
  requests making up the sum (a = per-request size × ``overdispersion``) plus the scope's
  own burstiness b (the exponentially weighted mean of (e² − aμ)/μ² over normal windows,
  shrunk toward ``min_relative_std``² while the scope is young: empirical Bayes), and the
  lag-one correlation of its surprises (hourly burstiness spans four 15-minute windows:
  correlated evidence must not be added up as if it were independent);
* surprise: a window's value against a gamma law of that mean and variance (the
  continuous twin of the negative binomial; Wilson–Hilferty), a z ≈ N(0, 1) under the
  null however skewed a thin scope is; a window without a request is read by its own
  chance under the count's law (``sequential.empty_z``), not as the gamma law's minimum;
* the count apart: a sum moves with its request count or with its requests' sizes, and
  only the sizes are heavy-tailed. The scope's own count profile (the mean count per
  window at this time of day, over about four days), count growth (its own trend: sizes
  that grow are not more requests) and count noise (a second variance fit, on counts)
  let a loop of ordinary requests be judged by its count, whose evidence
  the spend's burstiness would dilute (a ×9 loop of heavy-tailed agent calls reads as
  z ≈ 2 on its spend alone, as z ≈ 5 on its count); the larger of the two tests counts,
  corrected for the choice;
* evidence: the z's feed a grid of CUSUMs (``detectors/sequential.py``); the scope fires
  when the evidence crosses the threshold that ``false_alarms_per_scope_per_month``
  implies, and the window is also ``min_ratio`` × expected and ``min_impact`` above it
  (a tiny tenant doubling from 2 ¢ is not an incident).

Anomalous windows are not learned (a spike must not become its own baseline) until an
episode outlasts ``relearn_after`` windows: then the new level is accepted.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
from pydantic import Field

from spendwatch.core.alerts import Alert
from spendwatch.core.configtypes import Duration
from spendwatch.detectors import robust_columns, sequential
from spendwatch.detectors.base import (
    Baseline,
    DetectorBase,
    ExplainedRuleConfig,
    Totals,
    metric_value,
    register_detector,
)
from spendwatch.detectors.episodes import Episode
from spendwatch.detectors.robust_columns import QUIET_WINDOWS, QuietRows, count_cells, step
from spendwatch.detectors.slots import SlotHistory
from spendwatch.detectors.weekly import BLOCK, WeeklyFactor

_DAY = 86400

STRONG_Z = 3.5
"""A window at least this surprising is not learned while its evidence is weighed."""
TREND_WINDOWS = 32.0
"""Memory of the growth ratio, in windows (8 h of 15-minute windows)."""
TREND_Z = 2.0
"""A window this surprising is not followed by the trend (an incident's are, one by one)."""
TREND_PRIOR_REQUESTS = 50.0
"""Requests' worth of "no growth" the trend is shrunk toward: a thin scope's ratio of a
few requests is noise, and a trend floored at 1 would turn that noise into growth."""
TREND_MAX = 4.0
"""Most growth the trend may carry before an episode's relearning takes over."""

LEVEL_PRIOR_REQUESTS = 1.0
"""Most requests' worth of information the scope's level adds to a time of day's history.

A slot's median and a count cell are shrunk toward the scope's level (its mean over the
whole day) so that a mostly empty slot is not "rate 0". The prior is one window of that
level, a gamma prior of shape = its requests; past one request it is capped there (a
shape of 1: "about the level, give or take 100 %"). Uncapped, a busy scope's level, four
times its night-time rate, was worth a day of each night cell's four days of history and
raised its expected count ×1.5–2 (with the noise learned from that miss): a ×5 night-time
loop read as z ≈ 1."""

COUNT_MEMORY_DAYS = 4.0
"""Memory of a scope's count profile, in days: each time of day learns its mean count per
window from its windows of the last days."""

COUNT_WINSOR = 9.0
"""A count's squared miss is learned up to this many variances (3σ): a count is not heavy-
tailed, and a loop too young to be held back must not widen its own band at once."""

SumMetric = Literal["spend_usd", "requests", "input_tokens", "output_tokens"]


def level_prior(level: float, per_request: float) -> float:
    """Windows of the scope's ``level`` a slot's history is shrunk toward: one, or fewer where
    one window of the level is more than ``LEVEL_PRIOR_REQUESTS`` requests of
    ``per_request`` (see there). The rows (``robust_columns``) repeat this arithmetic."""
    cap = LEVEL_PRIOR_REQUESTS * per_request
    return cap / level if 0.0 < cap < level else 1.0


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
    false_alarms_per_scope_per_month: float = Field(
        default=0.03,
        gt=0,
        description="false alarms a normal scope may raise per month: sets the evidence needed",
    )
    min_ratio: float = Field(default=1.5, ge=1.0, description="observed/expected needed")
    min_impact: float = Field(
        default=0.0, ge=0, description="observed − expected needed, in metric units (USD)"
    )
    overdispersion: float = Field(
        default=3.0, ge=0, description="count-noise variance per request unit (1 = Poisson)"
    )
    min_relative_std: float = Field(
        default=0.1, ge=0, description="relative noise a young scope assumes (and the floor)"
    )
    prior_weight: float = Field(
        default=96.0, ge=0, description="windows of evidence the noise prior is worth"
    )
    noise_memory: int = Field(
        default=288, ge=8, description="memory of the learned noise, in windows"
    )
    relearn_after: int = Field(
        default=96, ge=1, description="windows an episode may last before the baseline adapts"
    )
    warmup: Duration = Field(default=2 * 86400, description="event time learned before alerting")
    residual_memory: int = Field(default=8, ge=8, description="unused; kept for old configs")


_FIELDS = (
    "calibration",
    "corr",
    "cusum",
    "episode",
    "fit",
    "history",
    "last_z",
    "level",
    "per_request",
    "trend_expected",
    "trend_value",
    "weekly",
    "count_fit",
    "counts",
    "count_trend_value",
    "count_trend_expected",
)
"""The state's fields, in snapshot order (later fields last: older snapshots lack them)."""
COLD_FIELDS = tuple(name for name in _FIELDS if name != "episode")
"""The fields that live in a row while a scope is cold (``detectors/robust_columns.py``);
its episode stays an object: a cold scope's episode is the default one, which an empty
window leaves as it is."""


class RobustState:
    """One scope's state: objects while the scope is busy (hot), a row of arrays while it is
    quiet (cold, ``detectors/robust_columns.py``). A cold state's fields come back on first
    use (``__getattr__`` finds them missing and thaws the row), so code reading a state
    needs no care; a snapshot, a baseline or the windows seen of a cold state read the row
    in place."""

    __slots__ = (*_FIELDS, "_cold")
    COLD_FIELDS = COLD_FIELDS

    def __init__(self, history: SlotHistory, grid_size: int) -> None:
        self.history = history
        self.episode = Episode()
        self.per_request = 0.0
        self.level = 0.0  # EW mean of every window's value (the empty slots' prior)
        self.fit = sequential.VarianceFit()  # var = A·(count noise) + B·μ²
        self.corr = sequential.Shrunk()  # lag-one correlation of the z's
        self.last_z = 0.0
        self.cusum = [0.0] * grid_size
        self.calibration = sequential.TailCalibration()  # the scope's own null tail
        self.trend_value = 0.0  # EW sums of learned values and of their seasonal medians:
        self.trend_expected = 0.0  # their ratio (≥ 1) is the scope's recent growth
        self.weekly = WeeklyFactor()  # the last two weeks' level at this hour of the week
        self.count_fit = sequential.VarianceFit()  # var(count) = A·(count) + B·count²
        self.counts = count_profile(history)  # mean count per window, slot by slot
        self.count_trend_value = 0.0  # EW sums of learned counts and of their profile's:
        self.count_trend_expected = 0.0  # their ratio (≥ 1) is the count's recent growth
        self._cold: tuple[QuietRows, int] | None = None

    def __getattr__(self, name: str) -> object:
        """A field of a cold state: thaw the row (only called for fields not set)."""
        if name == "_cold":
            return None
        cold = self._cold
        if cold is None or name not in COLD_FIELDS:
            raise AttributeError(name)
        cold[0].thaw(self)
        return object.__getattribute__(self, name)

    def __del__(self) -> None:
        cold = self._cold
        if cold is not None:
            cold[0].release(cold[1])

    def __reduce_ex__(self, protocol: object) -> tuple:
        """A cold state pickles as its store (once per snapshot: pickle keeps one copy of
        an object many refer to) and its row; a hot one as its fields."""
        cold = self._cold
        if cold is None:
            return super().__reduce_ex__(protocol)  # type: ignore[arg-type]
        return (_cold_state, (cold[0], cold[1], self.episode))

    def __getstate__(self) -> tuple:
        cold = self._cold
        if cold is None:
            return tuple(getattr(self, name) for name in _FIELDS)
        fields = cold[0].fields(cold[1])
        return tuple(self.episode if name == "episode" else fields[name] for name in _FIELDS)

    def __setstate__(self, state: tuple) -> None:
        # A snapshot from before the weekly factors, the count profile or the count's trend
        # keeps what it learned and starts those empty; one with other fields is dropped by
        # the engine.
        self._cold = None
        if len(state) in (len(_FIELDS) - 5, len(_FIELDS) - 4, len(_FIELDS) - 2):
            history = state[_FIELDS.index("history")]
            fresh = (WeeklyFactor(), sequential.VarianceFit(), count_profile(history), 0.0, 0.0)
            state = (*state, *fresh[len(state) - len(_FIELDS) :])
        if len(state) != len(_FIELDS):
            state = (None,) * len(_FIELDS)
        for name, value in zip(_FIELDS, state, strict=True):
            setattr(self, name, value)


def _cold_state(store: QuietRows, row: int, episode: Episode) -> RobustState:
    """A cold state from a snapshot: its episode, and its row in the restored store."""
    state = RobustState.__new__(RobustState)
    state.episode = episode
    state._cold = (store, row)
    return state


def count_profile(history: SlotHistory) -> array:
    """An empty count profile (``robust_columns.count_cells``), -1 where nothing is known."""
    return array("f", [-1.0]) * count_cells(history.window)


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
        self.alpha = 1.0 / config.noise_memory
        self.threshold = sequential.threshold_for_budget(
            config.false_alarms_per_scope_per_month, config.window
        )
        self.weekly_enabled = config.seasonality == "time_of_day" and config.window <= BLOCK
        # a profile cell's weight per window: one window a day, or every window of a day
        seasonal = config.seasonality == "time_of_day"
        per_cell = 1 if seasonal else max(86400 / config.window, 1.0)
        self.count_weight = 1.0 / (COUNT_MEMORY_DAYS * per_cell)
        self.cell_windows = float(per_cell)  # windows a day adds to a profile cell
        self.count_day = config.window / 86400  # days a window adds to the profile's

    def new_state(self) -> RobustState:
        c = self.config
        history = SlotHistory(c.window, c.days, 8, c.seasonality != "none")
        return RobustState(history, len(sequential.GRID))

    def learning(self, state: RobustState) -> bool:
        return not state.episode.active and max(state.cusum) < self._threshold(state) / 2

    def _threshold(self, state: RobustState) -> float:
        """The evidence this scope needs: the budget's, on the scope's calibrated tail."""
        return state.calibration.threshold(self.threshold, self.config.window)

    def band(self, state: RobustState, window_start: int) -> tuple[float, float] | None:
        """(expected, variance) for a window, or ``None`` while history is missing."""
        values = state.history.pooled(window_start, self.config.neighbours)
        if not values:
            return None
        count = len(values)
        mid = count // 2
        median = values[mid] if count % 2 else 0.5 * (values[mid - 1] + values[mid])
        # A thin slot's sums are skewed (mostly 0 or 1 request): its median sits below its
        # mean, and a gamma law needs the mean. The mean without the top eighth of values
        # is as robust to a past spike as the median, and is the mean where counts are small.
        kept = values[: max(count - max(count // 8, 1), 1)]
        center = max(median, sum(kept) / len(kept))
        prior = level_prior(state.level, state.per_request)
        expected = (center * count + prior * state.level) / (count + prior)
        # an empty slot: the Jeffreys posterior of a rate with no count in `count` windows
        # (half a request over count + 1 windows), so rate ≈ 0 keeps its uncertainty
        expected = max(expected, 0.5 * state.per_request / (count + 1)) * self._trend(state)
        expected *= self._weekly(state, window_start)
        return expected, self._variance(state, expected)

    def _weekly(self, state: RobustState, window_start: int) -> float:
        """The weekly factor of this hour of the week (``detectors/weekly.py``), 1 where
        windows are longer than its cells or the rule has no seasonality."""
        if not self.weekly_enabled:
            return 1.0
        return state.weekly.factor(window_start)

    def _trend(self, state: RobustState) -> float:
        """Recent growth the seasonal medians have not caught up with yet (≥ 1).

        A launch that doubles a feature's volume over a day, or a tenant growing 3 % a
        day, is normal: the medians of the last days lag it by days. The ratio of the
        recently learned values to their medians (exponentially weighted sums, a memory
        of ``TREND_WINDOWS``) follows such a ramp, because its windows are each only a
        little above the last. A jump is not followed: a window ``TREND_Z`` above its
        band is left out, so an incident on a thin scope, whose windows are not far out
        enough one by one to be held back from the medians, cannot become its own
        baseline. Only growth counts: a holiday or a weekend is low on its own
        and must not make the next normal day look like a spike."""
        prior = TREND_PRIOR_REQUESTS * max(state.per_request, 0.0)
        if state.trend_expected + prior <= 0:
            return 1.0
        ratio = (state.trend_value + prior) / (state.trend_expected + prior)
        return min(max(ratio, 1.0), TREND_MAX)

    def _count_trend(self, state: RobustState) -> float:
        """The count's own recent growth (≥ 1), as ``_trend`` is the value's: the ratio of
        the recently learned counts to their profile's (shrunk toward no growth by
        ``TREND_PRIOR_REQUESTS`` requests).

        The value's trend is a ratio of sums to their medians, and a heavy-tailed sum's mean
        sits above its median, and it lags a holiday by days: applied to the count profile
        (a mean already), it raised a busy scope's expected count by 10–70 % and its count
        noise with it. The count follows its own ratio instead."""
        prior = TREND_PRIOR_REQUESTS
        ratio = (state.count_trend_value + prior) / (state.count_trend_expected + prior)
        return min(max(ratio, 1.0), TREND_MAX)

    def baseline(self, state: RobustState, window_start: int) -> Baseline | None:
        return self.baselines([state], window_start)[0]

    def baselines(self, states: Sequence[RobustState], window_start: int) -> list[Baseline | None]:
        """``baseline`` of many scopes at once: the cold ones read from their rows in one
        array pass per store (the query API's view of 100 k quiet scopes), never thawed."""
        found: list[Baseline | None] = [None] * len(states)
        stores: dict[int, tuple[QuietRows, list[int]]] = {}
        for position, state in enumerate(states):
            cold = state._cold
            if cold is None:
                band = self.band(state, window_start)
                if band is not None:
                    found[position] = Baseline(band[0], math.sqrt(max(band[1], 0.0)))
            else:
                stores.setdefault(id(cold[0]), (cold[0], []))[1].append(position)
        for store, positions in stores.values():
            rows = np.array([states[p]._cold[1] for p in positions], dtype=np.int64)
            for position, band in zip(
                positions, robust_columns.baselines(self, store, rows, window_start), strict=True
            ):
                if band is not None:
                    found[position] = Baseline(band[0], math.sqrt(max(band[1], 0.0)))
        return found

    def windows_seen(self, state: RobustState) -> int:
        cold = state._cold  # read in place: the query API's view must not thaw
        return state.history.seen if cold is None else cold[0].windows_seen(cold[1])

    def _prior(self, state: RobustState) -> float:
        """The noise prior's weight in windows: ``prior_weight`` for a new scope, fading as
        the scope's own windows do (memory ``noise_memory``). A prior of fixed weight next
        to data whose weight saturates at ``noise_memory`` would keep a quarter of every
        old scope's noise estimate at the rule's default: a bursty tenant's bands would
        stay narrower than its noise forever."""
        return self.config.prior_weight * math.exp(-state.history.seen * self.alpha)

    def _variance(self, state: RobustState, expected: float) -> float:
        c = self.config
        u = max(state.per_request, 0.0) * c.overdispersion * max(expected, 0.0)
        return self._fitted(state, state.fit, u, expected * expected, 0.3)

    def _fitted(
        self, state: RobustState, fit: sequential.VarianceFit, u: float, w: float, floor_a: float
    ) -> float:
        """A·u + B·w of a scope's fit (the value's or the count's), A floored at ``floor_a``
        and B at a quarter of ``min_relative_std``² (``robust_columns._fitted_variance``)."""
        c = self.config
        coef_a, coef_b = fit.coefficients(c.min_relative_std**2, self._prior(state), u, w)
        floor_b = (c.min_relative_std / 2) ** 2
        return max(coef_a, floor_a) * u + max(coef_b, floor_b) * w

    def _damping(self, state: RobustState) -> list[float]:
        """Correlated windows carry less independent evidence (see ``correlation_damping``)."""
        rho = min(max(state.corr.value(0.0, self._prior(state)), 0.0), 0.8)
        return sequential.correlation_damping(rho, self.threshold)

    def _z(
        self,
        state: RobustState,
        value: float,
        band: tuple[float, float],
        requests: int,
        window_start: int,
    ) -> tuple[float, tuple[float, float] | None]:
        """The window's gamma tail as a z, made honest for a sum of few heavy-tailed requests,
        and the count's evidence where the count carries more; with the expected count and
        its variance where they were needed (the learning reuses them).

        A gamma law of the right variance has an exponential tail; one request's spend or
        tokens do not (one answer can be 30× the median), so on a thin scope a single
        long request would read as a 7σ window. What a window's sizes can show is read as
        a Student t with 4 + 2n degrees of freedom (``sequential.heavy_tail_z``: one
        request's z of 7.9 counts as 3.7). What its count shows is not heavy-tailed: the
        count against the scope's own count profile and count noise (a negative binomial z
        of the lesser of the count and the value in requests of the usual size: a loop's
        many ordinary requests carry their evidence, neither many tiny requests nor one
        huge one do) is a second test; the window's z is the larger of the two, corrected
        for the choice (``sequential.either_z``), so the budget holds whichever carries
        the evidence.
        """
        if requests == 0 and value <= 0:  # an empty window: the chance of no request
            if self.config.metric == "requests" and band[0] > 0 and band[1] > 0:
                return float(sequential.empty_z(band[0], band[1])), None
            if self.config.metric != "requests" and state.per_request > 0:
                count = self._expected_count(state, window_start, band[0])
                variance = self._count_variance(state, count)
                return float(sequential.empty_z(count, variance)), (count, variance)
        z = sequential.gamma_z(value, band[0], band[1])
        if self.config.metric == "requests" or z <= 0 or state.per_request <= 0:
            return z, None
        honest = min(z, sequential.heavy_tail_z(z, requests))
        count, variance, by_count = self._count_test(state, window_start, requests, value, band[0])
        return sequential.either_z(honest, by_count), (count, variance)

    def _count_test(
        self, state: RobustState, window_start: int, requests: int, value: float, expected: float
    ) -> tuple[float, float, float]:
        """(expected count, its variance, the count's z): the z of the lesser of the count
        and the value in requests of the usual size (see ``_z``)."""
        count = self._expected_count(state, window_start, expected)
        variance = self._count_variance(state, count)
        counted = min(requests, value / state.per_request)
        return count, variance, sequential.count_z(counted, count, variance)

    def _expected_count(self, state: RobustState, window_start: int, expected: float) -> float:
        """Requests this window should have: the count profile's cell (with the growth and
        weekly factors the value's band has), or the expected value in requests of the
        usual size while the cell knows nothing."""
        cell = self._pooled_count(state, window_start)
        if cell < 0:
            return expected / state.per_request
        # shrunk toward the scope's level in requests, worth one day of the cell's (at most
        # LEVEL_PRIOR_REQUESTS): a thin scope's cells hold a few windows' counts each (mostly
        # 0), its level many
        days = min(state.history.seen * self.count_day, COUNT_MEMORY_DAYS)
        level = state.level / state.per_request
        prior = level_prior(level * self.cell_windows, 1.0)
        cell = (days * cell + prior * level) / (days + prior)
        base = max(cell, 0.5 * self.count_weight)  # "≈ 0" keeps half a request of doubt
        return base * self._count_trend(state) * self._weekly(state, window_start)

    def _pooled_count(self, state: RobustState, window_start: int) -> float:
        """The mean of the known profile cells of this window and its ``neighbours`` (as
        the value's median pools them), -1 where none is known."""
        cells = state.counts
        size = len(cells)
        at = (window_start % _DAY) * size // _DAY
        spread = self.config.neighbours if size > 1 else 0
        total, known = 0.0, 0
        for k in range(at - spread, at + spread + 1):
            cell = cells[k % size]
            if cell >= 0:
                total += cell
                known += 1
        return total / known if known else -1.0

    def _count_variance(self, state: RobustState, count: float) -> float:
        """var(count) = A·(overdispersion · count) + B·count², learned per scope like the
        value's (``VarianceFit``; a young scope's prior is the rule's ``overdispersion``),
        never bolder than Poisson."""
        od = self.config.overdispersion
        return self._fitted(state, state.count_fit, od * count, count * count, 1.0 / od)

    def explain(
        self, state: RobustState, window_start: int, totals: Totals
    ) -> dict[str, float] | None:
        value = metric_value(self.config.metric, totals)
        band = self.band(state, window_start)
        if value is None or band is None:
            return None
        expected, variance = band
        z = self._z(state, value, band, totals.requests, window_start)[0]
        stats = list(state.cusum)
        evidence = sequential.update(stats, z, damping=self._damping(state))
        return {
            "value": value,
            "expected": expected,
            "std": math.sqrt(variance),
            "upper": max(  # every condition must hold: the band is the strictest
                self._decisive_value(state, band),
                expected * self.config.min_ratio,
                expected + self.config.min_impact,
            ),
            "z": z,
            "evidence": evidence,
            "threshold": self._threshold(state),
            "once_in_days": state.calibration.once_in_days(evidence, self.config.window),
            "warm": float(state.history.seen >= self.warmup_windows),
            "weekly": self._weekly(state, window_start),  # in expected: this hour of the week
            "growth": self._trend(state),  # in expected: growth the medians lag
            **self._explain_count(state, window_start, totals.requests, value, expected),
        }

    def _explain_count(
        self, state: RobustState, window_start: int, requests: int, value: float, expected: float
    ) -> dict[str, float]:
        """The count test's side of ``explain``: the requests expected, their noise and the
        count's own z (before the choice between the two tests; see ``_z``)."""
        if self.config.metric == "requests" or state.per_request <= 0:
            return {}
        count, variance, z = self._count_test(state, window_start, requests, value, expected)
        return {"requests_expected": count, "requests_std": math.sqrt(variance), "requests_z": z}

    def _decisive_value(self, state: RobustState, band: tuple[float, float]) -> float:
        """The value whose evidence alone would fire this window (inverting Wilson–Hilferty)."""
        expected, variance = band
        if expected <= 0 or variance <= 0:
            return 0.0
        needed = (
            math.sqrt(2 * max(self._threshold(state) - max(state.cusum), 0.0))
            / self._damping(state)[-1]
        )
        cc = variance / (9.0 * expected * expected)
        root = (1.0 - cc) + needed * math.sqrt(cc)
        return expected * max(root, 0.0) ** 3

    def quiet_rows(self) -> QuietRows | None:
        """A store for this rule's quiet scopes as rows (``detectors/robust_columns.py``),
        or ``None`` where their windows are judged scope by scope (no time-of-day slots)."""
        if self.config.seasonality != "time_of_day" or 86400 % self.config.window:
            return None
        return QuietRows(self)

    quiet_windows = QUIET_WINDOWS

    def observe_quiet(
        self, store: QuietRows, states: Sequence[RobustState], window_start: int
    ) -> list[int]:
        """Judge the empty window ``window_start`` of scopes quiet for ``quiet_windows`` or
        more, as rows; return the positions in ``states`` the caller must judge scope by
        scope (an episode, a week to roll, nothing to expect from: exactly what
        ``observe`` with zero totals would do, which cannot fire)."""
        rows = np.empty(len(states), dtype=np.int64)
        back: list[int] = []
        freezable = store.freezable
        for position, state in enumerate(states):
            cold = state._cold
            if cold is not None and cold[0] is not store:  # restored: into this store
                cold[0].thaw(state)
                cold = None
            if cold is not None:
                rows[position] = cold[1]
            elif freezable(state):
                rows[position] = store.freeze(state)
            else:
                rows[position] = -1
                back.append(position)
        judged = np.flatnonzero(rows >= 0)
        if not judged.size:
            return back
        failed, _ = step(self, store, rows[judged], window_start)
        for position in judged[failed].tolist():
            store.thaw(states[position])
            back.append(position)
        return back

    def observe_rows(
        self,
        store: QuietRows,
        rows: np.ndarray,
        window_start: int,
        data: tuple[np.ndarray, Sequence[Totals]] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Judge the window ``window_start`` of the rows ``rows`` of ``store`` (the engine's
        roster: cold scopes, not visited), empty but for ``data`` (positions in ``rows``
        and their totals). Return the positions it could not judge, left untouched (a
        window that may fire or be held back, a ring that changes form, whatever
        ``observe`` does that a row cannot), and per position whether the scope learns
        after the window (``learning``: its driver mix may learn this window's breakdown)."""
        if data is None:
            return step(self, store, rows, window_start)
        positions, totals = data
        values = np.zeros(len(rows))
        requests = np.zeros(len(rows))
        metric = self.config.metric
        values[positions] = [metric_value(metric, t) for t in totals]
        requests[positions] = [t.requests for t in totals]
        return step(self, store, rows, window_start, values, requests, bool(self.drivers))

    def observe(
        self, state: RobustState, scope: Mapping[str, str], window_start: int, totals: Totals
    ) -> list[Alert]:
        c = self.config
        value = metric_value(c.metric, totals)
        assert value is not None
        band = self.band(state, window_start)
        anomalous = material = False
        expected, z, evidence = (band[0] if band else value), 0.0, 0.0
        judged = band is not None and state.history.seen >= self.warmup_windows
        threshold = self._threshold(state)
        counted = False  # the window moved the CUSUM: its evidence is part of the tail
        expected_count = None
        if judged:
            z, expected_count = self._z(state, value, band, totals.requests, window_start)
            material = value >= c.min_ratio * expected and value - expected >= c.min_impact
            if state.episode.active:  # evidence restarts when the episode ends
                anomalous = material and z >= 1.0
            else:
                evidence = sequential.update(
                    state.cusum, z if material else min(z, 0.0), damping=self._damping(state)
                )
                anomalous = material and evidence >= threshold
                counted = True

        episode = state.episode
        # clear: back below halfway to min_ratio (a lasting shift must not end the episode
        # on one noisy window and fire again on the next)
        clear = not judged or value < expected * (1 + (c.min_ratio - 1) / 2) or z < 1.5
        transition = episode.step(window_start, anomalous, True, 1, c.resolve_after, clear)
        extra = sequential.settle_window(
            state.calibration, transition, evidence, threshold, anomalous, counted, c.window
        )
        alerts = self.transition_alerts(
            transition, episode, scope, window_start, value, expected, z, **extra
        )
        if transition is not None:
            state.cusum = [0.0] * len(state.cusum)
        # Only a window that is far out on its own is held back: withholding every mildly
        # high window would bias the baseline low (censoring) and re-alert on a new level.
        holding = episode.active or (judged and material and z >= STRONG_Z)
        if not holding or episode.firing_windows > c.relearn_after:
            z_learned = z if judged else None
            self._learn(state, window_start, value, totals, band, z_learned, expected_count)
        return alerts

    def _learn(
        self,
        state: RobustState,
        window_start: int,
        value: float,
        totals: Totals,
        band: tuple[float, float] | None,
        z: float | None,
        expected_count: tuple[float, float] | None = None,
    ) -> None:
        c = self.config
        alpha = self.alpha
        count_variance = None  # of this window's expected count, before it is learned
        if band is not None and band[0] > 0:
            expected, variance = band
            u = max(state.per_request, 0.0) * c.overdispersion * expected
            # a window far out (yet not anomalous) must not blow the band up at once
            error = value - expected
            e2 = min(error * error, 25.0 * variance)
            state.fit.push(u, expected * expected, e2, alpha)
            if c.metric != "requests" and state.per_request > 0:
                if expected_count is None:
                    count = self._expected_count(state, window_start, expected)
                    expected_count = (count, self._count_variance(state, count))
                count, count_variance = expected_count
                miss = totals.requests - count
                if z is None or z < TREND_Z:
                    keep = 1.0 - 1.0 / TREND_WINDOWS
                    state.count_trend_value = state.count_trend_value * keep + totals.requests
                    state.count_trend_expected = (
                        state.count_trend_expected * keep + count / self._count_trend(state)
                    )
                e2 = min(miss * miss, COUNT_WINSOR * count_variance)
                state.count_fit.push(c.overdispersion * count, count * count, e2, alpha)
        if z is not None:
            state.corr.push(max(min(z * state.last_z, 4.0), -4.0) / 1.0, alpha)
            state.last_z = max(min(z, 4.0), -4.0)
        if band is not None and band[0] > 0 and (z is None or z < TREND_Z):
            keep = 1.0 - 1.0 / TREND_WINDOWS
            state.trend_value = state.trend_value * keep + value
            state.trend_expected = state.trend_expected * keep + band[0] / self._trend(state)
            if self.weekly_enabled:
                state.weekly.push(window_start, value, band[0] / self._weekly(state, window_start))
        state.history.learn(window_start, value, None)
        if c.metric != "requests":  # (a count of requests is judged as the value itself)
            cells = state.counts
            at = (window_start % _DAY) * len(cells) // _DAY
            cell = cells[at]
            requests = float(totals.requests)
            if cell < 0:
                cells[at] = requests
            else:  # Huber's mean: a loop not yet held back must not become its own profile
                if count_variance is None:  # (no band yet)
                    count_variance = self._count_variance(state, max(cell, 0.5 * self.count_weight))
                bound = 2.0 * math.sqrt(count_variance)
                miss = min(max(requests - cell, -bound), bound)
                cells[at] = cell + self.count_weight * miss
        state.level = (
            value if not state.history.seen - 1 else state.level + 0.02 * (value - state.level)
        )
        unit = per_request_value(c.metric, totals, value)
        if unit is not None:
            state.per_request = (
                unit
                if not state.per_request
                else (state.per_request + 0.05 * (unit - state.per_request))
            )
