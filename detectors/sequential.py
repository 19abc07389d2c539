"""Sequential evidence: CUSUMs over a grid of change sizes, thresholds from a false-alarm budget.

Why sequential tests instead of per-window gates. A fixed gate (judge no window under 20
requests, confirm over 2 windows) throws away the evidence of thin windows and makes a
busy scope wait for a second window it does not need. A CUSUM adds the evidence of each
window (its log-likelihood ratio of "shifted" against "normal") and alarms once the sum
since the last quiet spell is decisive, so a prompt with 2 requests a window alarms after
a few of its shifted requests and a busy scope within one window.

The statistic every detector feeds in is a *standardised surprise* ``z`` of one window:
≈ N(0, 1) under that scope's learned null (the detector's job: log unit values, a
Wilson–Hilferty transform of gamma/negative-binomial sums, a peer tail probability).
One-sided CUSUMs then run for a grid of shift sizes δ (in σ of z) at once,

    S_δ ← max(0, S_δ + δ·z − δ²/2),

which approximates the generalised likelihood ratio over every change size (what FOCuS
solves exactly) with a state of ``len(GRID)`` floats per scope: the engine can later hold
it as a numpy array across scopes. With δ spanning 0.5…8 the loss against the exact GLR is
at most a few tenths of a unit of log-likelihood in the range where alarms happen.

Thresholds. A user states ``false_alarms_per_scope_per_month``; that is an average run
length ARL₀ (windows between false alarms) under the null. Siegmund's approximation gives
each CUSUM's ARL₀ at a threshold ``a`` on the log-likelihood scale,

    ARL₀(a, δ) ≈ (exp(a + 1.166 δ) − a − 1.166 δ − 1) / (δ²/2),

(the 1.166 δ term is the expected overshoot), and the alarm rate of the grid is at most
the sum of its members' rates (they are strongly correlated, so the sum is cautious by a
factor ``GRID_CORRELATION`` measured by simulation; ``tests/test_sequential.py`` checks the
resulting false-alarm rate is within a factor 2 of the budget). The same formula turns an
alarm's evidence back into "a rise this large happens once in N days of this scope".
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

GRID: tuple[float, ...] = (2.0, 4.0, 8.0)
"""Shift sizes (in σ of one window's z) watched at once. None below 2σ: a CUSUM of shift δ
gains on any window above δ/2, so a small δ adds up the slow bias every seasonal baseline
has (a holiday in its history, a drifting tenant) and pages on it; with δ ≥ 2 a window
must be a full σ above its baseline before it adds any evidence."""

Z_CAP = 12.0
"""A window's z is capped: beyond it the evidence of one window is decisive anyway, and a
cap keeps one absurd value (a mis-priced event) from leaving a huge statistic behind."""

GRID_CORRELATION = 1.0
"""How much the union bound over the grid overstates its alarm rate (simulated: the
members alarm together on the same excursions)."""

MONTH = 30 * 86400


def siegmund_arl(a: float, delta: float) -> float:
    """Average run length (windows) under the null of one CUSUM on N(0,1) with shift δ."""
    x = a + 1.166 * delta
    if x > 700:
        return math.inf
    return max((math.exp(x) - x - 1.0) / (delta * delta / 2.0), 1.0)


def alarm_rate(a: float, grid: Sequence[float] = GRID) -> float:
    """False alarms per window of a grid of CUSUMs at threshold ``a`` (Siegmund, union)."""
    return sum(1.0 / siegmund_arl(a, d) for d in grid) / GRID_CORRELATION


def threshold_for_arl(arl: float, grid: Sequence[float] = GRID) -> float:
    """The log-likelihood threshold whose false-alarm rate is one per ``arl`` windows."""
    target = 1.0 / max(arl, 1.0)
    low, high = 0.0, 60.0
    for _ in range(60):
        mid = 0.5 * (low + high)
        if alarm_rate(mid, grid) > target:
            low = mid
        else:
            high = mid
    return high


def threshold_for_budget(
    false_alarms_per_month: float, window: int, grid: Sequence[float] = GRID
) -> float:
    """Threshold of a per-scope test on ``window``-second windows for a monthly budget."""
    return threshold_for_arl(MONTH / window / false_alarms_per_month, grid)


def once_in_days(statistic: float, window: int, grid: Sequence[float] = GRID) -> float:
    """How rarely the null reaches this much evidence: mean days between such excursions."""
    rate = alarm_rate(max(statistic, 0.0), grid)
    return math.inf if rate <= 0 else window / rate / 86400.0


def describe_rarity(days: float) -> str:
    """``once in 9.2 years`` / ``once in 40 days`` for an alert's text."""
    if not math.isfinite(days) or days > 1e5 * 365:
        return "never under this scope's normal behaviour"
    if days >= 365:
        return f"once in {days / 365:.1f} years of this scope"
    return f"once in {days:.0f} days of this scope"


def alert_extras(
    evidence: float, threshold: float, window: int, calibration: TailCalibration | None = None
) -> dict[str, object]:
    """What a firing alert of a sequential rule says about its evidence and its rarity
    (on the scope's calibrated tail when there is one)."""
    days = (
        once_in_days(evidence, window)
        if calibration is None
        else calibration.once_in_days(evidence, window)
    )
    return {
        "threshold": round(threshold, 3),
        "evidence": round(evidence, 3),
        "once_in_days": round(days, 1) if math.isfinite(days) and days < 1e12 else None,
        "rarity": describe_rarity(days),
    }


def correlation_damping(rho: float, threshold: float, grid: Sequence[float] = GRID) -> list[float]:
    """Per member of the grid: how much to shrink z when windows are correlated (lag-one ρ).

    A CUSUM of shift δ adds up about m = 2·threshold/δ² windows before it decides. With
    AR(1)-correlated surprises the sum of m of them has variance m·f(m, ρ) instead of m,
    so its z's are divided by √f: the small shifts (long sums) are damped most, one
    decisive window (δ large, m ≈ 1) hardly at all: a bursty tenant's slow wandering
    does not add up to an alarm, while a ×8 jump still fires in its first window.
    """
    if rho <= 0.0:
        return [1.0] * len(grid)
    out = []
    for d in grid:
        m = max(2.0 * threshold / (d * d), 1.0)
        factor = (1 + rho) / (1 - rho) - 2 * rho * (1 - rho**m) / (m * (1 - rho) ** 2)
        out.append(1.0 / math.sqrt(max(factor, 1.0)))
    return out


def update(
    stats: list[float],
    z: float,
    grid: Sequence[float] = GRID,
    damping: Sequence[float] | None = None,
) -> float:
    """Add one window's evidence in place; return the largest statistic (the GLR proxy)."""
    z = min(z, Z_CAP)
    best = 0.0
    for i, d in enumerate(grid):
        zi = z if damping is None or z <= 0 else z * damping[i]
        s = stats[i] + d * zi - 0.5 * d * d
        s = s if s > 0.0 else 0.0
        stats[i] = s
        if s > best:
            best = s
    return best


def fresh(grid: Sequence[float] = GRID) -> list[float]:
    return [0.0] * len(grid)


def wilson_hilferty_z(value: float, mean: float, variance: float) -> float:
    """Standardised surprise of ``value`` under a gamma law with this mean and variance.

    The gamma is the continuous twin of the negative binomial (Poisson–gamma) law of
    overdispersed counts, and spend is a count of requests times their cost: both are
    right-skewed, more so the thinner the scope. (V/μ)^(1/3) of a gamma with shape
    k = μ²/σ² is close to normal with mean 1 − 1/(9k) and variance 1/(9k) even for
    small k, so a rate of 0.05 requests a window with one request seen is a modest
    surprise (z ≈ 2.6), not the division by zero a relative z makes of it.
    """
    if mean <= 0 or variance <= 0:
        return 0.0
    shape = mean * mean / variance
    c = 1.0 / (9.0 * shape)
    return ((max(value, 0.0) / mean) ** (1.0 / 3.0) - (1.0 - c)) / math.sqrt(c)


def gamma_z(value: float, mean: float, variance: float) -> float:
    """Standardised surprise of ``value`` under a gamma law: Φ⁻¹ of its exact upper tail.

    Wilson–Hilferty is used where it is accurate (shape ≥ 1); a thin scope's shape is far
    below 1 (less than one request expected per window), where only the exact regularised
    incomplete gamma tail is right.
    """
    if mean <= 0 or variance <= 0:
        return 0.0
    shape = mean * mean / variance
    if shape >= 1.0:
        return wilson_hilferty_z(value, mean, variance)
    x = max(value, 0.0) * mean / variance  # value / scale
    return normal_upper_z(_gamma_upper(shape, x))


def count_z(count: float, mean: float, variance: float) -> float:
    """Standardised surprise of a request count under a Poisson–gamma law: Φ⁻¹ of its exact
    upper tail P(N ≥ count), negative binomial where the variance exceeds the mean and
    Poisson where it does not (continuous in ``count``: incomplete beta and gamma).

    A gamma law of a count's mean and variance has an exponential tail, far heavier than
    a count's own for the few requests a thin scope expects (9 against 1.4 expected is a
    z of 3.3 under the gamma law, 4.2 under Poisson), so a loop on a thin scope would wait
    windows for evidence its count already has. At or below the mean the gamma z is kept.
    """
    if mean <= 0 or variance <= 0 or count <= mean:
        return gamma_z(count, mean, variance)
    if variance <= mean * (1.0 + 1e-6):  # (the NB's size beyond 10⁶: Poisson, and exact)
        return normal_upper_z(_gamma_lower(count, mean))
    size = mean * mean / (variance - mean)
    return normal_upper_z(_beta_regularized(count, size, 1.0 - mean / variance))


def _gamma_lower(a: float, x: float) -> float:
    """Regularised lower incomplete gamma P(a, x), by its series where that is direct."""
    if x <= 0:
        return 0.0
    if x >= a + 1.0:
        return 1.0 - _gamma_upper(a, x)
    return min(_gamma_series(a, x), 1.0)


def _gamma_series(a: float, x: float) -> float:
    """P(a, x) by its power series (for 0 < x < a + 1, where it converges fast)."""
    term = total = 1.0 / a
    ap = a
    for _ in range(500):
        ap += 1.0
        term *= x / ap
        total += term
        if abs(term) < abs(total) * 1e-14:
            break
    return total * math.exp(a * math.log(x) - x - math.lgamma(a))


def _gamma_upper(a: float, x: float) -> float:
    """Regularised upper incomplete gamma Q(a, x) (series below a + 1, continued fraction above)."""
    if x <= 0:
        return 1.0
    if x < a + 1.0:
        return max(1.0 - _gamma_series(a, x), 0.0)
    log_front = a * math.log(x) - x - math.lgamma(a)
    tiny = 1e-300
    b = x + 1.0 - a
    c = 1.0 / tiny
    d = 1.0 / b
    h = d
    for i in range(1, 500):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1.0 / d
        step = d * c
        h *= step
        if abs(step - 1.0) < 1e-14:
            break
    return math.exp(log_front) * h


def heavy_tail_z(z: float, requests: float, kappa: float = 3.0) -> float:
    """A z made honest for heavy-tailed requests: its Student-t tail read as a normal z.

    A window's statistic of n requests is only as Gaussian as the mean of n heavy-tailed
    values (real token counts: one request can be 30× the median), whose excess kurtosis
    falls as κ/n. A Student t with ν degrees of freedom has excess kurtosis 6/(ν − 4), so
    reading z as a t with ν = 4 + 6n/κ (κ = 3 for one request's log value: ν = 4 + 2n;
    a learned κ where the scope's windows show heavier tails) keeps one huge request on a
    thin scope from being a 5σ event (t₆ = 5 is z ≈ 3.1) while a busy window's z is left
    as it is.
    """
    if z <= 0:
        return z
    nu = 4.0 + 6.0 * max(requests, 0.0) / max(kappa, 1e-9)
    if nu > 400:
        return z
    return normal_upper_z(student_t_upper(z, nu))


def student_t_upper(t: float, nu: float) -> float:
    """P(T ≥ t) for Student's t with ν degrees of freedom (t ≥ 0)."""
    x = nu / (nu + t * t)
    return 0.5 * _beta_regularized(0.5 * nu, 0.5, x)


def _beta_regularized(a: float, b: float, x: float) -> float:
    """I_x(a, b) by Lentz's continued fraction (Numerical Recipes ``betai``)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def _betacf(a: float, b: float, x: float) -> float:
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (tiny if abs(d) < tiny else d)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (tiny if abs(d) < tiny else d)
        c = 1.0 + aa / c
        c = tiny if abs(c) < tiny else c
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (tiny if abs(d) < tiny else d)
        c = 1.0 + aa / c
        c = tiny if abs(c) < tiny else c
        step = d * c
        h *= step
        if abs(step - 1.0) < 1e-14:
            break
    return h


def either_z(a: float, b: float) -> float:
    """The z of the larger of two tests' z's, corrected for taking the larger (Šidák: the
    tail p of the larger becomes 1 − (1 − p)²). Exactly N(0, 1) under the null for two
    independent tests and conservative for positively correlated ones, so evidence fed
    to the CUSUMs keeps the false-alarm budget whichever test carries it."""
    p = 0.5 * math.erfc(max(a, b) / math.sqrt(2.0))
    return normal_upper_z(p * (2.0 - p))


def normal_upper_z(p: float) -> float:
    """z with P(Z ≥ z) = p (Acklam's rational approximation, |error| < 1.2e-9)."""
    p = min(max(p, 1e-300), 1.0 - 1e-16)
    return -_norm_ppf(p)


_ACKLAM = (
    (-39.69683028665376, 220.9460984245205, -275.9285104469687,
     138.3577518672690, -30.66479806614716, 2.506628277459239),
    (-54.47609879822406, 161.5858368580409, -155.6989798598866,
     66.80131188771972, -13.28068155288572),
    (-0.007784894002430293, -0.3223964580411365, -2.400758277161838,
     -2.549732539343734, 4.374664141464968, 2.938163982698783),
    (0.007784695709041462, 0.3224671290700398, 2.445134137142996, 3.754408661907416),
)  # fmt: skip
"""Acklam's coefficients (a, b, c, d) of the normal quantile: ``_norm_ppf``, ``empty_z``."""


def empty_z(mean: np.ndarray | float, variance: np.ndarray | float) -> np.ndarray:
    """The z of a window without a request, where ``mean`` requests (of ``variance``) were
    expected: Φ⁻¹ of half its probability P(N = 0) (the mid-p of an atom), negative
    binomial where the variance exceeds the mean and Poisson where it does not.

    A gamma law has no atom at 0, so its upper tail reads every empty window as the
    least likely value there is (z ≈ −8): on a thin scope, where half the windows are
    empty under the null, each one wiped the evidence a loop had gathered. An empty window
    of a scope expecting 1.1 requests is z ≈ −1.0 (P = 0.33), of one expecting 20 (Poisson)
    z ≈ −6. Numpy throughout, arrays or scalars alike: the rows and the per-scope
    code get the very same bits.
    """
    mean = np.asarray(mean, dtype=np.float64)
    variance = np.asarray(variance, dtype=np.float64)
    poisson = variance <= mean * (1.0 + 1e-6)
    size = mean * mean / np.where(poisson, 1.0, variance - mean)
    log_zero = np.where(poisson, -mean, -size * np.log1p(mean / np.where(poisson, 1.0, size)))
    half = np.maximum(0.5 * np.exp(log_zero), 1e-300)  # ≤ 0.5: Acklam's lower two regions
    a, b, c, d = _ACKLAM
    low = half < 0.02425
    q = np.sqrt(-2.0 * np.log(np.where(low, half, 0.5)))
    tail = (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) / (
        (((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1
    )
    t = half - 0.5
    r = t * t
    central = (
        (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5])
        * t
        / (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1)
    )
    return np.maximum(np.where(low, tail, central), -Z_CAP)


def _norm_ppf(p: float) -> float:
    a, b, c, d = _ACKLAM
    low = 0.02425
    if p < low:
        q = math.sqrt(-2 * math.log(p))
        return (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) / (
            (((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1
        )
    if p > 1 - low:
        q = math.sqrt(-2 * math.log(1 - p))
        return -(((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) / (
            (((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1
        )
    q = p - 0.5
    r = q * q
    return (
        (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5])
        * q
        / (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1)
    )


class Shrunk:
    """An exponentially weighted second moment shrunk toward a prior (empirical Bayes).

    ``value()`` is (w₀·prior + Σ wᵢ·xᵢ) / (w₀ + Σ wᵢ) with weights fading by ``alpha``:
    a young scope is judged by the rule's prior, an old one by its own history. Kept as
    a plain pair of floats (numpy-friendly).
    """

    __slots__ = ("total", "weight")

    def __init__(self) -> None:
        self.total = 0.0
        self.weight = 0.0

    def __getstate__(self) -> tuple[float, float]:
        return (self.total, self.weight)

    def __setstate__(self, state: tuple[float, float]) -> None:
        self.total, self.weight = state

    def push(self, x: float, alpha: float) -> None:
        keep = 1.0 - alpha
        self.total = self.total * keep + x
        self.weight = self.weight * keep + 1.0

    def value(self, prior: float, prior_weight: float) -> float:
        return (prior * prior_weight + self.total) / (prior_weight + self.weight)


class VarianceFit:
    """Learns var(value) = A·u + B·w per scope: u the count-noise term, w = μ².

    A sum of requests has a compound-Poisson part (∝ μ: a thin scope) and a burstiness
    part (∝ μ²: a tenant whose hourly rate itself wanders); which dominates differs per
    scope. Both coefficients are fitted by exponentially weighted least squares of the
    squared residual on (u, w), with a prior (A = 1, B = ``prior_b``) worth
    ``prior_weight`` windows at the scope's typical u and w (empirical Bayes shrinkage:
    a young scope uses the rule's defaults, an old one its own noise). Five floats.
    """

    __slots__ = ("sue", "suu", "suw", "swe", "sww")

    def __init__(self) -> None:
        self.suu = self.suw = self.sww = self.sue = self.swe = 0.0

    def __getstate__(self) -> tuple[float, ...]:
        return (self.suu, self.suw, self.sww, self.sue, self.swe)

    def __setstate__(self, state: tuple[float, ...]) -> None:
        self.suu, self.suw, self.sww, self.sue, self.swe = state

    def push(self, u: float, w: float, e2: float, alpha: float) -> None:
        keep = 1.0 - alpha
        self.suu = self.suu * keep + u * u
        self.suw = self.suw * keep + u * w
        self.sww = self.sww * keep + w * w
        self.sue = self.sue * keep + u * e2
        self.swe = self.swe * keep + w * e2

    def coefficients(
        self, prior_b: float, prior_weight: float, u: float, w: float
    ) -> tuple[float, float]:
        """(A, B) shrunk toward (1, prior_b); the prior is scaled to this window's u and w."""
        pu, pw = prior_weight * u * u, prior_weight * w * w
        a11, a12, a22 = self.suu + pu, self.suw, self.sww + pw
        b1, b2 = self.sue + pu * 1.0, self.swe + pw * prior_b
        det = a11 * a22 - a12 * a12
        if det <= 0:
            return 1.0, prior_b
        coef_a = (b1 * a22 - b2 * a12) / det
        coef_b = (a11 * b2 - a12 * b1) / det
        if coef_a < 0.0:  # all burstiness: refit B alone
            coef_a, coef_b = 0.0, b2 / a22
        if coef_b < 0.0:
            coef_a, coef_b = b1 / a11, 0.0
        return coef_a, coef_b


CALIBRATION_LEVEL = 3.0
"""Evidence (nats) above which a CUSUM excursion counts as a peak of the scope's null tail."""
CALIBRATION_DAYS = 14.0
"""Memory of a scope's tail calibration, in days of windows."""
CALIBRATION_PRIOR_DAYS = 7.0
"""Days of windows the model's own tail is worth (empirical-Bayes shrinkage)."""
CALIBRATION_PRIOR_PEAKS = 5.0
"""Excursion peaks the model's own tail slope is worth."""
CALIBRATION_EXCESS_CAP = 12.0
"""Most one excursion may add to the tail's mean excess (nats above the level)."""
CALIBRATION_SCALE = (0.8, 4.0)
"""Bounds of the learned tail scale: neither far bolder nor far shyer than the model."""


MODEL_LEVEL_RATE = alarm_rate(CALIBRATION_LEVEL)
"""Peaks above the calibration level per window under the model (the grid's own)."""


class TailCalibration:
    """What a scope's own null evidence looks like, so its threshold meets the budget.

    Why. The threshold from Siegmund's formula is right when each window's z is exactly
    N(0, 1) and independent. Real scopes break that in ways no per-window model catches
    in full: an hourly burst spans four 15-minute windows, a baseline of 5 medians is
    itself noisy, a tenant mixes a cheap busy feature with a dear bursty one. All of it
    shows in one place: the CUSUM's excursions under normal traffic reach higher than
    the model says. For a random walk whose increments are δ·z − δ²/2 with z of variance
    σ², the excursion peaks have an exponential tail exp(−a/σ²) (the Cramér–Lundberg
    exponent), so their mean excess over a level measures the misfit directly.

    Per scope this keeps an exponentially weighted count of windows, of excursions that
    peaked above ``CALIBRATION_LEVEL`` and of their excesses (a peaks-over-threshold
    fit with an exponential tail), each shrunk toward the model's own tail (Siegmund's
    rate at the level, scale 1) while the scope is young. The threshold is where that
    tail meets the budget:

        rate(a) = r̂ · exp(−(a − L)/s)   ⇒   a* = a_model + (s − 1)(a_model − L) + s·ln(r̂/r_model)

    which is the model's threshold when the scope behaves as modelled, and is never set
    below it. Four floats per scope.
    """

    __slots__ = ("excess", "over", "peak", "windows")

    def __init__(self) -> None:
        self.windows = 0.0
        self.over = 0.0
        self.excess = 0.0
        self.peak = 0.0

    def __getstate__(self) -> tuple[float, float, float, float]:
        return (self.windows, self.over, self.excess, self.peak)

    def __setstate__(self, state: tuple[float, float, float, float]) -> None:
        self.windows, self.over, self.excess, self.peak = state

    def observe(self, evidence: float, window: int) -> None:
        """Fold one judged window's evidence (the CUSUM's maximum after it) in."""
        keep = 1.0 - window / (CALIBRATION_DAYS * 86400.0)
        self.windows = self.windows * keep + 1.0
        self.over *= keep
        self.excess *= keep
        if evidence > 0.0:
            self.peak = max(self.peak, evidence)
        else:
            self._close()

    def alarm(self, threshold: float) -> None:
        """The excursion in progress reached ``threshold`` (an alarm; the CUSUM restarts).

        It counts as a peak of the tail at the threshold: leaving the highest excursions
        out would bias the tail short (a false alarm is the null's own excursion), and a
        scope that keeps raising false alarms raises its own bar. Only the threshold
        counts, not how far past it the alarm went: that is the size of the incident, if
        it was one, not the null's tail."""
        self.peak = threshold
        self._close()

    def _close(self) -> None:
        if self.peak >= CALIBRATION_LEVEL:
            self.over += 1.0
            self.excess += min(self.peak - CALIBRATION_LEVEL, CALIBRATION_EXCESS_CAP)
        self.peak = 0.0

    def tail(self, window: int) -> tuple[float, float]:
        """(r̂, s): peaks above the level per window, and the tail's scale."""
        model_rate = MODEL_LEVEL_RATE
        prior_windows = CALIBRATION_PRIOR_DAYS * 86400.0 / window
        rate = (self.over + prior_windows * model_rate) / (self.windows + prior_windows)
        scale = (self.excess + CALIBRATION_PRIOR_PEAKS) / (self.over + CALIBRATION_PRIOR_PEAKS)
        low, high = CALIBRATION_SCALE
        return rate, min(max(scale, low), high)

    def threshold(self, model_threshold: float, window: int) -> float:
        """The scope's evidence threshold for the budget that gave ``model_threshold``:
        never below it (a scope calmer than its model keeps the model's threshold; a
        bolder one, estimated from a few excursions, would spend the budget on noise)."""
        rate, scale = self.tail(window)
        level = CALIBRATION_LEVEL
        shift = math.log(max(rate, 1e-12) / MODEL_LEVEL_RATE)
        found = model_threshold + (scale - 1.0) * (model_threshold - level) + scale * shift
        return max(found, model_threshold)

    def once_in_days(self, evidence: float, window: int) -> float:
        """Mean days between null excursions reaching ``evidence`` on this scope."""
        rate, scale = self.tail(window)
        level = CALIBRATION_LEVEL
        per_window = rate * math.exp(-max(evidence - level, 0.0) / scale)
        if evidence < level:  # below the fitted tail: the model's own rate
            per_window = alarm_rate(max(evidence, 0.0))
        return math.inf if per_window <= 0 else window / per_window / 86400.0


def settle_window(
    calibration: TailCalibration,
    transition: str | None,
    evidence: float,
    threshold: float,
    alarmed: bool,
    counted: bool,
    window: int,
) -> dict[str, object]:
    """End a sequential rule's window: what a firing alert says of its evidence (on the
    scope's tail so far), then the window folded into that tail when it moved the CUSUM
    (an alarm counts at ``threshold``)."""
    extra = alert_extras(evidence, threshold, window, calibration) if transition == "firing" else {}
    if counted:
        if alarmed:
            calibration.alarm(threshold)
        else:
            calibration.observe(evidence, window)
    return extra
