"""The exact split of shared spend: parts sum to the whole, Hamilton's quota rule, order-free."""

from __future__ import annotations

import random
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spendwatch.dataflows.allocation import (
    AllocationConfig,
    AllocationTally,
    Allocator,
    split_exact,
)
from spendwatch.detectors.base import Totals

names = st.text(alphabet="abcxyz", min_size=1, max_size=4)
weights_strategy = st.dictionaries(names, st.integers(0, 10**12), min_size=1, max_size=12).filter(
    lambda w: sum(w.values()) > 0
)
wholes = st.integers(-(10**18), 10**18)


@settings(max_examples=300, deadline=None)
@given(whole=wholes, weights=weights_strategy)
def test_parts_sum_to_the_whole_and_each_is_its_quota_rounded(whole, weights):
    parts = split_exact(whole, weights)
    assert set(parts) == set(weights)
    assert sum(parts.values()) == whole
    total = sum(weights.values())
    for value, weight in weights.items():
        quota = Fraction(whole * weight, total)
        assert abs(parts[value] - quota) < 1, "each part is its quota rounded down or up"
        if weight == 0:
            assert parts[value] == 0


@settings(max_examples=200, deadline=None)
@given(whole=wholes, weights=weights_strategy, seed=st.integers(0, 2**32))
def test_the_split_does_not_depend_on_the_order_of_the_values(whole, weights, seed):
    items = list(weights.items())
    random.Random(seed).shuffle(items)
    assert split_exact(whole, dict(items)) == split_exact(whole, weights)


@settings(max_examples=200, deadline=None)
@given(whole=st.integers(0, 10**15), weights=weights_strategy)
def test_a_credit_is_shared_exactly_as_the_charge_it_refunds(whole, weights):
    charge = split_exact(whole, weights)
    assert split_exact(-whole, weights) == {v: -p for v, p in charge.items()}


def test_ties_of_remainders_go_by_value_name():
    assert split_exact(2, {"b": 1, "a": 1, "c": 1}) == {"a": 1, "b": 1, "c": 0}
    assert split_exact(1, {"zeta": 5, "alpha": 5}) == {"alpha": 1, "zeta": 0}
    assert split_exact(10, {"x": 7, "y": 3}) == {"x": 7, "y": 3}


def test_weights_all_zero_are_refused():
    with pytest.raises(ValueError):
        split_exact(5, {"a": 0})


@settings(max_examples=200, deadline=None)
@given(
    shared=st.integers(-(10**12), 10**13),
    usage=st.dictionaries(st.sampled_from(["acme", "globex", "initech", "umbrella"]),
                          st.integers(0, 10**6), max_size=4),
    static=st.dictionaries(st.sampled_from(["acme", "globex"]),
                           st.sampled_from([0.0, 0.5, 1.0, 2.5, 3.0]), max_size=2),
)
def test_static_weights_multiply_usage_exactly(shared, usage, static):
    allocator = Allocator(
        AllocationConfig(name="a", dimension="tenant", shared=["shared"], weights=static)
    )
    spend = {"shared": shared, **{v: 10 for v in usage}}
    totals = {v: Totals(requests=n) for v, n in usage.items()}
    tally = AllocationTally()
    split, remember = allocator.split(
        spend, {v: allocator.usage(t) for v, t in totals.items()}, None, tally
    )
    weighted = {v: Fraction(str(static.get(v, 1.0))) * n for v, n in usage.items()}
    weighted = {v: w for v, w in weighted.items() if w > 0}
    assert sum(split.spend.values()) == shared + 10 * len(usage), "money is conserved"
    if not weighted:
        assert split.spend["shared"] == shared and tally.unallocated == shared
        assert remember is None
        return
    assert "shared" not in split.spend
    assert sum(split.allocated.values()) == shared == tally.by_window
    total = sum(weighted.values())
    for value, weight in weighted.items():
        assert abs(split.allocated[value] - shared * weight / total) < 1
    assert remember == {v: usage[v] for v in weighted}
