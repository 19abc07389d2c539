"""The physical limit of detection delay (bench/scenario_family.oracle_delay)."""

from __future__ import annotations

import itertools
import math
from dataclasses import replace

import numpy as np
import pytest

from bench import scenario_family as family


@pytest.fixture()
def busy():
    """A quick scenario without incidents and its busiest tenant feature (Poisson noise)."""
    spec = family.draw(0, replace(family.QUICK, incidents=0))
    assert spec.background == "family"  # no arrival-pattern term in the closed form below
    (tenant, feature), leaves = max(
        spec.scopes().items(), key=lambda kv: sum(spec.leaves[i].rate for i in kv[1])
    )
    spec.dispersion[(tenant, feature)] = 0.0
    return spec, {"tenant": tenant, "feature": feature}, leaves


def _incident(spec, scope, kind: str, effect: float, hours: float = 3.0):
    onset = spec.warmup_end + 3 * family.HOUR + 7 * 60
    return family.make_incident(spec, kind, scope, onset, hours * family.HOUR, effect)


def _rate(spec, leaves, at: float) -> float:
    total = 0.0
    for i in leaves:
        leaf = spec.leaves[i]
        r = leaf.rate * family.load_profile(spec.shapes[leaf.tenant], np.array([at]), spec.start)[0]
        for change in spec.changes:
            if i in change.leaves:
                r *= float(family.change_factor(change, np.array([at]))[0])
        total += r
    return total


def test_the_needed_evidence_is_the_budget_s_and_inside_the_lowest_oracle_band():
    assert 11.0 < family.ORACLE_NEEDED < family.ORACLE_BANDS[0][1]
    assert family.ORACLE_STEP <= 15 * 60


def test_oracle_delay_is_the_linear_crossing_of_the_hourly_evidence(busy):
    """A Poisson loop's hour gives (ln x)² / (2 ln(1 + 1/Λ)) nats, accruing evenly: a share
    of the first hour's nats is reached after that share of its 60 minutes, and the first
    hour's plus half the second's after 90."""
    spec, scope, leaves = busy
    loop = _incident(spec, scope, "request_loop", 2.0)
    rates = [_rate(spec, leaves, loop.start + (h + 0.5) * family.HOUR) for h in range(3)]
    hours = [math.log(2.0) ** 2 / (2 * math.log1p(1 / r)) for r in rates]
    assert family.oracle_evidence(spec, loop) == pytest.approx(sum(hours))
    assert family.oracle_delay(spec, loop, 0.3 * hours[0]) == pytest.approx(18.0)
    assert family.oracle_delay(spec, loop, 0.9 * hours[0]) == pytest.approx(54.0)
    assert family.oracle_delay(spec, loop, hours[0] + 0.5 * hours[1]) == pytest.approx(90.0)
    needed = sum(hours[:2]) + 0.1 * hours[2]
    assert family.oracle_delay(spec, loop, needed) == pytest.approx(126.0)


def test_oracle_delay_grows_with_the_evidence_needed(busy):
    spec, scope, _ = busy
    spec.dispersion[(scope["tenant"], scope["feature"])] = 8.0  # hourly CV 0.35
    for kind, effect in (("request_loop", 1.6), ("token_regression", 1.3), ("spend_spike", 2.0)):
        item = _incident(spec, scope, kind, effect, hours=2.5)
        total = family.oracle_evidence(spec, item)
        delays = [family.oracle_delay(spec, item, n) for n in np.linspace(0.05, 1, 25) * total]
        assert all(d is not None for d in delays), kind
        assert all(a < b for a, b in itertools.pairwise(delays)), (kind, delays)
        assert delays[0] > 0 and delays[-1] == pytest.approx(150.0), kind  # the whole 2.5 h


def test_no_oracle_delay_below_the_needed_evidence(busy):
    spec, scope, _ = busy
    faint = _incident(spec, scope, "request_loop", 1.002)
    assert 0 < family.oracle_evidence(spec, faint) < family.ORACLE_NEEDED
    assert family.oracle_delay(spec, faint) is None
    label = family.item_label(spec, faint)
    assert label["oracle_nats"] < family.ORACLE_NEEDED and label["oracle_delay_minutes"] is None
    strong = _incident(spec, scope, "request_loop", 1.5)
    total = family.oracle_evidence(spec, strong)
    assert family.oracle_delay(spec, strong, 1.001 * total) is None
    assert family.oracle_delay(spec, strong, 0.999 * total) <= 180.0
    label = family.item_label(spec, strong)
    delay = family.oracle_delay(spec, strong)
    assert label["oracle_delay_minutes"] == pytest.approx(delay, abs=0.01)


def test_a_bigger_effect_on_the_same_scope_is_reachable_sooner(busy):
    spec, scope, _ = busy
    spec.dispersion[(scope["tenant"], scope["feature"])] = 3.0  # hourly CV 0.58: takes a while
    for kind in ("request_loop", "token_regression", "spend_spike"):
        delays = [
            family.oracle_delay(spec, _incident(spec, scope, kind, x)) for x in (1.5, 2.5, 5.0)
        ]
        reached = [d for d in delays if d is not None]
        assert delays[-1] is not None and reached == delays[len(delays) - len(reached) :], kind
        assert all(a > b for a, b in itertools.pairwise(reached)), (kind, delays)
