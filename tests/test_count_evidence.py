"""A sum's count judged apart from its sizes (``robust_seasonal``): the count's exact tail
against a brute force, the choice between the two tests keeping the null, a loop of
heavy-tailed requests found by its count, a bursty heavy-tailed scope kept quiet, and
snapshots from before the count profile still loading."""

from __future__ import annotations

import itertools
import math
import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spendwatch.detectors import sequential
from spendwatch.detectors.base import Totals
from spendwatch.detectors.robust_columns import SCALARS, QuietRows
from spendwatch.detectors.robust_seasonal import _FIELDS, RobustSeasonal, RobustSeasonalConfig
from spendwatch.ingest.pricing import NANOS_PER_USD

T0 = 1_795_000_000 - 1_795_000_000 % 86400
WINDOW = 900


def _brute_tail(count: int, mean: float, variance: float) -> float:
    """P(N ≥ count) by adding up the probabilities from ``count`` on (Poisson or NB)."""
    if variance <= mean * (1.0 + 1e-6):
        log_pmf = lambda k: k * math.log(mean) - mean - math.lgamma(k + 1)  # noqa: E731
    else:
        size, p = mean * mean / (variance - mean), mean / variance
        log_pmf = lambda k: (  # noqa: E731
            math.lgamma(k + size) - math.lgamma(size) - math.lgamma(k + 1)
            + size * math.log(p) + k * math.log1p(-p)
        )  # fmt: skip
    first = log_pmf(count)
    total, k = 0.0, count
    while True:
        term = math.exp(log_pmf(k) - first)
        total += term
        if term < 1e-17 * total and k > count + 10:
            return total * math.exp(first)
        k += 1


@settings(max_examples=300, deadline=None)
@given(
    count=st.integers(1, 400),
    mean=st.floats(0.02, 60.0),
    dispersion=st.one_of(st.just(1.0), st.floats(1.0, 30.0)),
)
def test_count_tail_equals_a_brute_force_sum(count, mean, dispersion):
    variance = mean * dispersion
    if count <= mean:
        return  # at or below the mean the gamma z is kept (tested with gamma_z)
    tail = _brute_tail(count, mean, variance)
    if tail < 1e-280:
        return
    assert sequential.count_z(count, mean, variance) == pytest.approx(
        sequential.normal_upper_z(tail), rel=1e-6, abs=1e-6
    )


def test_count_tail_is_continuous_between_counts():
    values = [sequential.count_z(n / 10, 1.4, 2.0) for n in range(15, 120)]
    assert all(b >= a for a, b in itertools.pairwise(values))
    assert sequential.count_z(9.0, 1.4, 1.4) > sequential.gamma_z(9.0, 1.4, 1.4) + 0.5


def test_taking_the_larger_of_two_tests_keeps_the_null_tail():
    rng = np.random.default_rng(5)
    pairs = rng.standard_normal((200_000, 2))
    either = np.array([sequential.either_z(a, b) for a, b in pairs])
    for level in (1.0, 2.0, 3.0):
        expected = 0.5 * math.erfc(level / math.sqrt(2))
        observed = float((either > level).mean())
        error = 4 * math.sqrt(expected * (1 - expected) / len(pairs))  # four standard errors
        assert abs(observed - expected) < error, (level, observed, expected)
    naive = float((pairs.max(axis=1) > 2.0).mean())
    assert naive > 1.8 * 0.5 * math.erfc(2 / math.sqrt(2))  # what the correction is for
    assert sequential.either_z(2.5, 2.5) < 2.5  # one test twice: conservative


def _usd(amount: float, requests: int) -> Totals:
    return Totals(spend_nanos=int(amount * NANOS_PER_USD), requests=requests, events=requests)


def _agent_stream(detector, rng, days, loop_from=None, factor=9.0, size_spread=0.8):
    """An agent feature: a steady count (Poisson, ~6 calls a window at night, 24 by day)
    and a bursty size (each window's calls share one log-normal size, σ 0.8: long agent
    runs come in bunches), so its spend is far noisier than its count."""
    state = detector.new_state()
    fired, explained = [], []
    for i in range(int(days * 96)):
        start = T0 + i * WINDOW
        hour = (start % 86400) / 3600
        mean = 24.0 * (0.25 + 0.75 * (8 <= hour < 20))
        looping = loop_from is not None and i >= loop_from
        n = int(rng.poisson(mean * factor if looping else mean))
        size = 1.0 if looping else float(rng.lognormal(0.0, size_spread))  # a loop: usual calls
        spend = 0.004 * size * n
        totals = _usd(spend, n)
        if looping:
            explained.append((detector.explain(state, start, totals), n))
        alerts = detector.observe(state, {"tenant": "t", "feature": "agent"}, start, totals)
        fired += [(i, a) for a in alerts if a.status == "firing"]
    return state, fired, explained


@pytest.mark.parametrize("seed", [17, 18, 19])
def test_a_loop_of_ordinary_calls_on_a_bursty_scope_is_found_by_its_count(seed):
    detector = RobustSeasonal(RobustSeasonalConfig(name="r"))
    rng = np.random.default_rng(seed)
    onset = 7 * 96 + 8  # 02:00, the eighth night
    _, fired, explained = _agent_stream(detector, rng, 7.5, loop_from=onset)
    assert fired and onset <= fired[0][0] < onset + 3, fired[:1]
    first, calls = explained[0]
    by_spend = sequential.gamma_z(first["value"], first["expected"], first["std"] ** 2)
    by_spend = min(by_spend, sequential.heavy_tail_z(by_spend, calls))
    assert first["z"] > by_spend + 1.0, (first["z"], by_spend)  # the count carried it
    # explain shows the count's side: what was expected, and the count's own z
    assert first["requests_expected"] < calls / 4
    assert first["requests_z"] >= first["z"] > 0
    assert first["requests_std"] > math.sqrt(first["requests_expected"]) * 0.99


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_a_bursty_scope_stays_quiet(seed):
    detector = RobustSeasonal(RobustSeasonalConfig(name="r"))
    _, fired, _ = _agent_stream(detector, np.random.default_rng(seed), 10)
    assert len(fired) <= 1, [(i, a.observed, a.expected) for i, a in fired]


def test_a_snapshot_from_before_the_count_profile_loads_and_keeps_what_it_learned():
    detector = RobustSeasonal(RobustSeasonalConfig(name="r"))
    state, _, _ = _agent_stream(detector, np.random.default_rng(9), 3)
    old = state.__getstate__()[: _FIELDS.index("count_fit")]  # the fields it had then
    restored = detector.new_state()
    restored.__setstate__(old)
    assert restored.history.seen == state.history.seen
    assert restored.fit.__getstate__() == state.fit.__getstate__()
    assert list(restored.counts) == [-1.0] * len(state.counts)
    assert restored.count_fit.__getstate__() == (0.0,) * 5
    start = T0 + 3 * 86400
    alerts = detector.observe(restored, {"tenant": "t"}, start, _usd(0.05, 6))
    assert alerts == [] and restored.counts[0] == 6.0
    again = pickle.loads(pickle.dumps(restored))
    assert pickle.dumps(again) == pickle.dumps(restored)


def _explained_after(detector, stream, days: float, probe: Totals, at_hour: float) -> dict:
    """Feed ``stream(i, start) -> Totals`` for ``days``, then explain ``probe`` at the next
    ``at_hour`` o'clock."""
    state = detector.new_state()
    windows = int(days * 96)
    for i in range(windows):
        start = T0 + i * WINDOW
        detector.observe(state, {"tenant": "t"}, start, stream(i, start))
    start = T0 + windows * WINDOW
    start += int((at_hour * 3600 - start % 86400) % 86400)
    return detector.explain(state, start, probe)


@pytest.mark.parametrize("seed", [3, 4])
def test_a_busy_scope_expects_its_own_night_count_not_its_day(seed):
    """400 requests a window by day, 20 at night: the night's expected count is the
    night's. (Its level, ten times the night, once counted as a day of each night cell's
    history and raised the night's expected count ×3, its count noise with it.)"""
    rng = np.random.default_rng(seed)

    def stream(i: int, start: int) -> Totals:
        n = int(rng.poisson(400 if 8 <= (start % 86400) / 3600 < 20 else 20))
        return _usd(0.001 * n, n)

    seen = _explained_after(
        RobustSeasonal(RobustSeasonalConfig(name="r")), stream, 6, _usd(0.02, 20), 3.0
    )
    assert 16 < seen["requests_expected"] < 25, seen
    assert seen["requests_std"] < 2.5 * math.sqrt(3 * seen["requests_expected"]), seen
    assert seen["expected"] < 0.025, seen  # the value's median too: not shrunk toward the day


@pytest.mark.parametrize("seed", [5, 6])
def test_the_count_follows_its_own_growth_not_the_sizes(seed):
    """Requests grow ×2 in size over a day (a longer prompt), not in number: the value's
    trend follows the sizes, and the expected count stays the count's (the value's trend
    on the count profile would expect twice the requests, and hide a loop of ×2)."""
    rng = np.random.default_rng(seed)
    ramp_from = 5 * 96

    def stream(i: int, start: int) -> Totals:
        n = int(rng.poisson(20))
        size = 1.0 + min(max(i - ramp_from, 0) / 96, 1.0)
        return _usd(0.001 * size * n, n)

    detector = RobustSeasonal(RobustSeasonalConfig(name="r"))
    seen = _explained_after(detector, stream, 6.5, _usd(0.04, 20), 12.0)
    assert seen["growth"] > 1.4, seen  # the value's trend followed the sizes
    assert 16 < seen["requests_expected"] < 25, seen


def test_a_snapshot_from_before_the_count_trend_loads_with_no_trend_yet():
    detector = RobustSeasonal(RobustSeasonalConfig(name="r"))
    state, _, _ = _agent_stream(detector, np.random.default_rng(9), 3)
    assert state.count_trend_expected > 0
    old = state.__getstate__()[: _FIELDS.index("count_trend_value")]  # the fields it had then
    restored = detector.new_state()
    restored.__setstate__(old)
    assert list(restored.counts) == list(state.counts)
    assert restored.count_fit.__getstate__() == state.count_fit.__getstate__()
    assert (restored.count_trend_value, restored.count_trend_expected) == (0.0, 0.0)
    # a store of rows from then: its scalars lack the trend's two columns
    store = QuietRows(detector)
    row = store.freeze(restored)
    rebuild, (parts,) = store.__reduce__()
    parts = list(parts)
    at = QuietRows._PARTS.index("scalars")
    parts[at] = parts[at][:, : SCALARS - 2]
    back = rebuild(tuple(parts))
    assert back.scalars.shape[1] == SCALARS
    fields = back.fields(row)
    assert (fields["count_trend_value"], fields["count_trend_expected"]) == (0.0, 0.0)
    assert fields["count_fit"].__getstate__() == state.count_fit.__getstate__()


@settings(max_examples=300, deadline=None)
@given(
    mean=st.floats(1e-6, 80.0),
    dispersion=st.one_of(st.just(1.0), st.floats(1.0, 30.0)),
    shape=st.sampled_from([(), (3,)]),
)
def test_an_empty_window_reads_as_half_its_chance(mean, dispersion, shape):
    """Φ⁻¹ of half P(N = 0) (Poisson, or negative binomial), against the scalar normal
    quantile and an independent P(N = 0); arrays and scalars alike."""
    variance = mean * dispersion
    if variance <= mean * (1.0 + 1e-6):
        zero = math.exp(-mean)
    else:
        size = mean * mean / (variance - mean)
        zero = (size / (size + mean)) ** size
    wanted = max(-sequential.normal_upper_z(zero / 2), -sequential.Z_CAP) if zero else -12.0
    found = sequential.empty_z(np.full(shape, mean), np.full(shape, variance))
    assert found.shape == shape
    assert np.allclose(found, wanted, rtol=1e-9, atol=1e-7), (found, wanted)


def test_an_empty_window_in_a_thin_loop_keeps_its_evidence():
    """A thin scope (about one request a window) loops ×6: an empty window amid the loop
    (a chance of 1/400 under the loop, of 1/3 under the null) costs its evidence what an
    empty window is worth, a few nats, not all of it (as a z of −8 did)."""
    detector = RobustSeasonal(RobustSeasonalConfig(name="r"))
    rng = np.random.default_rng(11)
    state = detector.new_state()
    scope = {"tenant": "t"}
    windows = 7 * 96
    for i in range(windows):
        n = int(rng.poisson(1.0))
        detector.observe(state, scope, T0 + i * WINDOW, _usd(0.01 * n, n))
    start = T0 + windows * WINDOW
    for k in range(2):  # two windows of the loop: evidence, not yet decisive
        assert detector.observe(state, scope, start + k * WINDOW, _usd(0.06, 6)) == []
    gathered = max(state.cusum)
    empty = detector.explain(state, start + 2 * WINDOW, _usd(0.0, 0))
    assert -1.5 < empty["z"] < -0.5, empty  # P(N = 0) of about one request expected
    assert gathered - 4.0 < empty["evidence"] < gathered, (empty, gathered)
