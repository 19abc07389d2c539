"""``type: unit_cost``: cost (or output tokens) per request rising, whatever the volume.

A prompt edit that makes answers five times longer, or a silent switch to a pricier
model, leaves the request rate alone and raises what each request costs. Spend
detectors see it late or not at all on a big scope; this one watches the unit value of
every window, however few requests it has, and adds up its evidence sequentially
(``detectors/sequential.py``) until a false-alarm budget says it is decisive.

The null model, learned per scope from its own normal windows:

* per-request mean ``μ``: an exponentially weighted ratio of sums (numerator / requests),
  so windows weigh by their requests and a night of 2-request windows does not drag it;
* per-request squared coefficient of variation ``c²``: the exponentially weighted mean of
  ``n·((x̄ − μ)/μ)²`` (unbiased for c² whatever the window size), shrunk toward the rule's
  prior ``prior_cv`` while the scope has little history (empirical Bayes), so a heavy-
  tailed prompt (CV 2 on output tokens: one request can be 30× the median) gets a wide
  band and a steady one a narrow band without per-scope settings;
* a window's mean of n requests is then log-normal (Fenton–Wilkinson): log x̄ ≈ N(log μ −
  v/2, v) with v = log(1 + c²/n), and ``z = (log x̄ − log μ + v/2)/√v`` is its surprise.

Thin windows of single-request events are judged per request instead. A window mean of
heavy-tailed values hides its evidence: one 30× request inflates the learned c² so
much that a ×5 prompt regression on a 2-request-an-hour prompt adds next to nothing.
When every request of a window came as its own event, the pre-aggregation also gives
the sums of each request's log value and its square (``Totals.log_output`` /
``log_cost``), and the window is judged by the mean of its n per-request logs against
a learned per-request log mean ``m`` and variance ``s²`` (the exponentially weighted
``(Σ log − n·m)²/n``, shrunk toward ``log(1 + prior_cv²)``):
``z = (mean log − m) / (s·√(1/n + 1/N))`` with N the requests behind ``m``. One
request's log value is a contaminated normal (a rare 10–30× tail), so its evidence is
bounded, Huber-like: z is capped at the level the scope's lone requests pass as often
as a normal passes 3.5σ (the learned share of lone requests ≥ 3.5 s above ``m``, prior
``tail_share``; 3.5 at most), and a window of several is judged no higher than the mean
of its other requests once its largest is dropped (bounded from Σ log²), unless that is
below the cap. One 30× request then never pages alone; three ×5 requests on a steady
prompt (σ 0.45) do, five to ten on a wide prompt with a 2 % tail. Two are not enough at
the default budget: each adds at most the cap's evidence (≈ 4 of the ≈ 10 needed).
Windows with events of several requests (busy scopes write pre-summed events) keep the
window-mean test above.

The z of each window feeds a grid of CUSUMs; a scope fires when the evidence crosses the
threshold that ``false_alarms_per_scope_per_month`` implies, and the rise is at least
``min_increase``. Two ×5 requests on a thin prompt are decisive on their own, a busy
scope fires within its first shifted window, and one huge request (z ≈ 2.5 under a
CV-2 null) is not. A window's volume does not gate its evidence: a
regression that arrives with more traffic (a morning ramp, a loop of the regressed
prompt) is still a regression, and a mix shift that a looping prompt causes moves what
each request costs; holding such windows back delayed busy prompts' regressions by
hours.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Literal

from pydantic import Field

from spendwatch.core.alerts import Alert
from spendwatch.core.configtypes import Duration
from spendwatch.detectors import sequential
from spendwatch.detectors.base import (
    Baseline,
    DetectorBase,
    ExplainedRuleConfig,
    Totals,
    metric_value,
    register_detector,
)
from spendwatch.detectors.episodes import Episode

LOG_WINSOR = 25.0
"""A window's per-request log variance sample is winsorised at this × the learned one."""

TAIL_LEVEL = 3.5
"""A lone request this many σ above its scope's mean counts toward the tail share."""
TAIL_PRIOR_WEIGHT = 20.0
"""Lone requests the prior tail share is worth."""
KURTOSIS_PRIOR_WEIGHT = 48.0
"""Windows the prior κ = 3 is worth."""
KURTOSIS_MAX = 200.0
"""Heaviest per-request tail learned (κ)."""
KURTOSIS_Z = 6.0
"""A window's z is bounded here before it counts toward κ."""

UnitMetric = Literal["cost_per_request_usd", "output_tokens_per_request"]


class UnitCostConfig(ExplainedRuleConfig):
    """Unit-cost regression detector; see the module docstring."""

    type: Literal["unit_cost"] = "unit_cost"
    metric: UnitMetric = Field(
        default="cost_per_request_usd", description="the unit cost judged per window"
    )
    window: Duration = Field(default=900)
    false_alarms_per_scope_per_month: float = Field(
        default=0.03,
        gt=0,
        description="false alarms a normal scope may raise per month: sets the evidence needed",
    )
    min_increase: float = Field(default=0.2, gt=0, description="relative rise needed (0.2 = +20 %)")
    min_requests: int = Field(
        default=1, ge=1, description="windows with fewer requests add no evidence (1: all count)"
    )
    max_volume_ratio: float = Field(default=1.5, ge=1.0, description="unused; kept for old configs")
    history: int = Field(default=48, ge=4, description="memory of the unit baseline, in windows")
    days: int = Field(default=5, ge=1, description="unused; kept for old configs")
    prior_cv: float = Field(
        default=1.0, gt=0, description="per-request coefficient of variation a new scope assumes"
    )
    prior_weight: float = Field(
        default=24.0, ge=0, description="windows of evidence the prior is worth (shrinkage)"
    )
    min_cv: float = Field(default=0.05, ge=0, description="floor of the learned per-request CV")
    relearn_after: int = Field(
        default=16, ge=1, description="episode windows after which the new level is learned"
    )
    warmup: Duration = Field(
        default=6 * 3600, description="event time of judged windows learned before alerting"
    )
    warmup_requests: int = Field(default=20, ge=1, description="requests learned before alerting")
    per_request_cap: float = Field(
        default=3.5,
        gt=0,
        description="most z one request can add on the steadiest prompt (see tail_share)",
    )
    tail_share: float = Field(
        default=0.002,
        gt=0,
        lt=0.5,
        description="share of requests a new scope assumes ≥ 3.5σ above its usual level",
    )
    per_request_max: int = Field(
        default=50,
        ge=0,
        description="windows of at most this many single-request events are judged per "
        "request (0: never)",
    )


class UnitCostState:
    """Per scope: request-weighted unit mean, shrunk c², CUSUMs, request history, episode."""

    __slots__ = (
        "calibration", "cusum", "cv2", "episode", "kurtosis", "log_requests", "log_seen",
        "log_sum", "log_tail", "log_var", "num", "requests", "seen", "volume",
    )  # fmt: skip
    # snapshot order: the fields of the state before per-request evidence come first
    _V1 = ("cusum", "cv2", "episode", "num", "requests", "seen", "volume")
    _V2 = (*_V1, "log_sum", "log_requests", "log_var", "log_seen", "log_tail")
    _V3 = (*_V2, "calibration")
    _FIELDS = (*_V3, "kurtosis")

    def __init__(self, grid_size: int) -> None:
        self.volume = None  # the seasonal request count once gated evidence; kept in the layout
        self.episode = Episode()
        self.num = 0.0  # EW sum of the numerator (spend or output tokens)
        self.requests = 0.0  # EW sum of requests
        self.cv2 = sequential.Shrunk()
        self.cusum = [0.0] * grid_size
        self.seen = 0
        self._fresh_log()
        self.calibration = sequential.TailCalibration()  # the scope's own null tail
        self.kurtosis = sequential.Shrunk()  # one request's excess kurtosis (κ)

    def _fresh_log(self) -> None:
        self.log_sum = 0.0  # EW Σ per-request log value (single-request events)
        self.log_requests = 0.0  # EW count of those requests
        self.log_var = sequential.Shrunk()  # per-request log variance
        self.log_seen = 0
        self.log_tail = sequential.Shrunk()  # share of lone requests ≥ 3.5σ above the mean

    def __getstate__(self) -> tuple:
        return tuple(getattr(self, name) for name in self._FIELDS)

    def __setstate__(self, state: tuple) -> None:
        # A snapshot of the older window-gated state has other fields: the engine drops
        # it (the rule's settings changed), it only has to load.
        self.calibration = sequential.TailCalibration()
        self.kurtosis = sequential.Shrunk()
        if len(state) == len(self._V1):  # before per-request evidence: that starts afresh
            for name, value in zip(self._V1, state, strict=True):
                setattr(self, name, value)
            self._fresh_log()
            return
        if len(state) in (len(self._V2), len(self._V3)):  # the newer parts start afresh
            for name, value in zip(self._V3, state, strict=False):
                setattr(self, name, value)
            return
        if len(state) != len(self._FIELDS):
            state = (None,) * len(self._FIELDS)
        for name, value in zip(self._FIELDS, state, strict=True):
            setattr(self, name, value)
        self.volume = None  # an older snapshot's request history: nothing reads it now


@register_detector("unit_cost", UnitCostConfig)
class UnitCost(DetectorBase):
    config: UnitCostConfig

    def __init__(self, config: UnitCostConfig) -> None:
        super().__init__(config)
        self.alpha = 1.0 / config.history
        self.per_request = config.per_request_max > 0  # needs the per-request log sums
        self.threshold = sequential.threshold_for_budget(
            config.false_alarms_per_scope_per_month, config.window
        )

    def new_state(self) -> UnitCostState:
        return UnitCostState(len(sequential.GRID))

    def learning(self, state: UnitCostState) -> bool:
        return not state.episode.active and max(state.cusum) < self._threshold(state) / 2

    def _threshold(self, state: UnitCostState) -> float:
        """The evidence this scope needs: the budget's, on the scope's calibrated tail."""
        return state.calibration.threshold(self.threshold, self.config.window)

    def _null(self, state: UnitCostState, requests: int) -> tuple[float, float] | None:
        """(per-request mean, v = variance of log x̄ for this many requests) or ``None``."""
        if state.requests <= 0 or state.num <= 0:
            return None
        c = self.config
        mean = state.num / state.requests
        cv2 = max(state.cv2.value(c.prior_cv**2, c.prior_weight), c.min_cv**2)
        return mean, math.log1p(cv2 / max(requests, 1))

    def baseline(self, state: UnitCostState, window_start: int) -> Baseline | None:
        """The per-request mean and one request's spread (a window of n requests is
        judged against the mean with a spread √n times smaller)."""
        null = self._null(state, 1)
        if null is None:
            return None
        mean, v = null
        return Baseline(mean, mean * math.sqrt(math.expm1(v)))

    def _z(self, state: UnitCostState, value: float, mean: float, v: float, requests: int) -> float:
        if value <= 0:
            return -sequential.Z_CAP
        return sequential.heavy_tail_z(self._raw_z(value, mean, v), requests, self._kappa(state))

    @staticmethod
    def _raw_z(value: float, mean: float, v: float) -> float:
        """The window mean's log-normal z, before its tail is made honest."""
        return (math.log(value / mean) + v / 2) / math.sqrt(v)

    def _kappa(self, state: UnitCostState) -> float:
        """One request's excess kurtosis as the scope's window means show it (≥ 3).

        The mean of n requests has excess kurtosis κ/n, so n·(z⁴ − 3) of a window's raw z
        estimates κ: the Azure code trace's generated tokens (CV 2.2, one answer 30× the
        median) make two windows in a row look ×3 and ×4 by chance; a scope whose windows
        have shown such tails reads its z as a t of fewer degrees of freedom."""
        return min(max(state.kurtosis.value(3.0, KURTOSIS_PRIOR_WEIGHT), 3.0), KURTOSIS_MAX)

    def _log_sums(self, totals: Totals) -> tuple[float, float] | None:
        """(Σ log, Σ log²) of the window's per-request values when it is judged per
        request, else ``None``."""
        n = totals.requests
        if not 0 < n <= self.config.per_request_max or totals.single_requests != n:
            return None
        if self.config.metric == "output_tokens_per_request":
            return totals.log_output, totals.log_output_sq
        return totals.log_cost, totals.log_cost_sq

    def _log_null(self, state: UnitCostState) -> tuple[float, float] | None:
        """(per-request log mean, per-request log variance) or ``None`` before enough."""
        c = self.config
        if state.log_requests <= 0 or state.log_seen < max(c.warmup // c.window, 1):
            return None
        if state.log_requests < c.warmup_requests:
            return None
        prior = math.log1p(c.prior_cv**2)
        var = max(state.log_var.value(prior, c.prior_weight), math.log1p(c.min_cv**2))
        return state.log_sum / state.log_requests, var

    def _log_z(self, state: UnitCostState, sums: tuple[float, float], n: int) -> float | None:
        """The window's per-request surprise, bounded by what one outlier could explain."""
        null = self._log_null(state)
        if null is None:
            return None
        mean, var = null
        total, squares = sums
        inverse_n = 1.0 / state.log_requests
        z = (total / n - mean) / math.sqrt(var * (1.0 / n + inverse_n))
        cap = self._cap(state)
        if n == 1 or z <= cap:
            return min(z, cap)
        # The mean of the other n − 1 after dropping the largest request is at least
        # x̄ − √(SS / (n (n − 1))): a window lifted by one outlier has a low bound, one
        # whose every request moved keeps most of its z.
        spread = max(squares - total * total / n, 0.0)
        low = total / n - math.sqrt(spread / (n * (n - 1)))
        z_rest = (low - mean) / math.sqrt(var * (1.0 / (n - 1) + inverse_n))
        return min(z, max(z_rest, cap))

    def _cap(self, state: UnitCostState) -> float:
        """The most z one request may add: the level its scope's lone requests pass as
        often as a normal's pass 3.5σ (Φ⁻¹ of the learned share beyond it), so a prompt
        with a 2 % tail of 10–30× answers needs more shifted requests than a steady one."""
        c = self.config
        share = state.log_tail.value(c.tail_share, TAIL_PRIOR_WEIGHT)
        cap = sequential.normal_upper_z(max(share, 1e-6))
        return min(max(cap, 1.5), c.per_request_cap)

    def _learn_log(self, state: UnitCostState, log_total: float, n: int) -> None:
        alpha = self.alpha
        keep = 1.0 - alpha
        if state.log_requests > 0:
            c = self.config
            mean = state.log_sum / state.log_requests
            prior = math.log1p(c.prior_cv**2)
            var = max(state.log_var.value(prior, c.prior_weight), math.log1p(c.min_cv**2))
            sample = (log_total - n * mean) ** 2 / n
            state.log_var.push(min(sample, LOG_WINSOR * var), alpha / 4)
            if n == 1:
                beyond = log_total - mean >= TAIL_LEVEL * math.sqrt(var)
                state.log_tail.push(float(beyond), alpha / 16)
        state.log_sum = state.log_sum * keep + log_total
        state.log_requests = state.log_requests * keep + n
        state.log_seen += 1

    def _warm(self, state: UnitCostState) -> bool:
        c = self.config
        return state.seen >= max(c.warmup // c.window, 1) and state.requests >= c.warmup_requests

    def explain(
        self, state: UnitCostState, window_start: int, totals: Totals
    ) -> dict[str, float] | None:
        value = metric_value(self.config.metric, totals)
        null = self._null(state, totals.requests)
        if value is None or null is None:
            return None
        mean, v = null
        sums = self._log_sums(totals)
        log_z = None if sums is None else self._log_z(state, sums, totals.requests)
        z = self._z(state, value, mean, v, totals.requests) if log_z is None else log_z
        stats = list(state.cusum)
        evidence = sequential.update(stats, z)
        # the unit value that would make this window decisive on its own evidence
        threshold = self._threshold(state)
        needed_z = max(math.sqrt(2 * max(threshold - max(state.cusum), 0.0)), 0.0)
        upper = max(
            mean * (1 + self.config.min_increase), mean * math.exp(needed_z * math.sqrt(v) - v / 2)
        )
        return {
            "value": value,
            "expected": mean,
            "std": mean * math.sqrt(math.expm1(v)),
            "upper": upper,
            "z": z,
            "evidence": evidence,
            "threshold": threshold,
            "once_in_days": state.calibration.once_in_days(evidence, self.config.window),
            "requests": float(totals.requests),
            "warm": float(self._warm(state)),
        }

    def observe(
        self, state: UnitCostState, scope: Mapping[str, str], window_start: int, totals: Totals
    ) -> list[Alert]:
        c = self.config
        value = metric_value(c.metric, totals)
        if value is None or totals.requests < c.min_requests:
            return []
        n = totals.requests
        null = self._null(state, n)
        anomalous = False
        expected, z, evidence = value, 0.0, 0.0
        judged = null is not None and self._warm(state)
        log_sums = self._log_sums(totals)
        log_z = None if log_sums is None else self._log_z(state, log_sums, n)
        judged = judged or (log_z is not None and null is not None)
        ratio = 1.0
        threshold = self._threshold(state)
        counted = False  # the window moved the CUSUM: its evidence is part of the tail
        if judged:
            mean, v = null
            expected = mean
            if log_z is not None:  # per-request evidence (see the module docstring)
                z = log_z
                log_null = self._log_null(state)
                ratio = math.exp(log_sums[0] / n - log_null[0])  # geometric mean's rise
            else:
                z = self._z(state, value, mean, v, n)
                ratio = value / mean
            rise = ratio >= 1 + c.min_increase
            if state.episode.active:  # evidence restarts when the episode ends
                anomalous = rise and z >= 1.0
            else:
                evidence = sequential.update(state.cusum, z if rise else min(z, 0.0))
                anomalous = rise and evidence >= threshold
                counted = True

            clear = ratio < 1 + c.min_increase / 2 or z < 0.5
        else:
            clear = True
        episode = state.episode
        transition = episode.step(window_start, anomalous, True, 1, c.resolve_after, clear)
        extra = sequential.settle_window(
            state.calibration, transition, evidence, threshold, anomalous, counted, c.window
        )
        alerts = self.transition_alerts(
            transition, episode, scope, window_start, value, expected, z, **extra
        )
        if transition is not None:
            state.cusum = [0.0] * len(state.cusum)
        # only a window far out on its own is held back (withholding every mildly high
        # window would bias the baseline low and re-alert on a lasting new level)
        quiet = not episode.active and not (judged and z >= 3.5 and ratio >= 1.0)
        if quiet or episode.firing_windows > c.relearn_after:
            self._learn(state, value, n)
            if judged and log_z is None and value > 0:  # a window mean: its tail's weight
                raw = max(min(self._raw_z(value, null[0], null[1]), KURTOSIS_Z), -KURTOSIS_Z)
                state.kurtosis.push(n * (raw**4 - 3.0), self.alpha / 4)
            if log_sums is not None:
                self._learn_log(state, log_sums[0], n)
        return alerts

    def _learn(self, state: UnitCostState, value: float, requests: int) -> None:
        """Fold a normal window into μ and c² (see the module docstring)."""
        alpha = self.alpha
        keep = 1.0 - alpha
        if state.requests > 0 and state.num > 0:
            mean = state.num / state.requests
            sample = requests * ((value - mean) / mean) ** 2
            # a mixture (a few requests of a 40× dearer model) is heavy-tailed: its band must
            # learn the tail, so windows are winsorised only far out and remembered longer
            state.cv2.push(min(sample, 400.0 * max(self.config.prior_cv**2, 1.0)), alpha / 4)
        state.num = state.num * keep + value * requests
        state.requests = state.requests * keep + requests
        state.seen += 1
