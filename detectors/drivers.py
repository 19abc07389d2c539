"""Drivers: which sub-scopes (feature, model, prompt…) explain an anomaly, with their share.

For every driver dimension a scope keeps the recent *mix* of its metric's numerator
(spend, requests, output tokens…) across that dimension's values, as exponentially
weighted means learned from normal windows only. When a window fires, each value's
expected part is its usual share of the detector's expected total; the excess of a value
is what it contributed above that, and a driver's share is its excess over the sum of
positive excesses. A value never seen before (a silently switched model) has no
expected part, so all of it is excess. Memory is bounded: at most ``MAX_VALUES`` values
per dimension are remembered (the smallest are dropped).
"""

from __future__ import annotations

from collections.abc import Mapping

from spendwatch.core.alerts import Driver
from spendwatch.detectors.base import Totals
from spendwatch.ingest.pricing import NANOS_PER_USD

MAX_VALUES = 64
MAX_DRIVERS = 3
COVERAGE = 0.8
"""Name drivers, largest first, until they explain this share of the excess."""
MIN_SHARE = 0.05

Breakdown = Mapping[str, Mapping[str, Totals]]
"""dimension -> value -> totals of the scope's window."""


def numerator(metric: str, totals: Totals) -> float:
    """The additive part of ``metric``: what sub-scopes contribute to."""
    if metric in ("spend_usd", "cost_per_request_usd"):
        return totals.spend_nanos / NANOS_PER_USD
    if metric == "requests":
        return float(totals.requests)
    if metric == "input_tokens":
        return float(totals.input_tokens)
    return float(totals.output_tokens)


def expected_numerator(metric: str, expected: float, totals: Totals) -> float:
    """The detector's expectation on the additive scale (ratios × this window's requests)."""
    if metric in ("cost_per_request_usd", "output_tokens_per_request"):
        return expected * totals.requests
    return expected


class MixState:
    """Per-scope EW means of the numerator for each value of each driver dimension."""

    __slots__ = ("means",)

    def __init__(self) -> None:
        self.means: dict[str, dict[str, float]] = {}

    def __getstate__(self) -> dict:
        return self.means

    def __setstate__(self, state: dict) -> None:
        self.means = state


def learn(state: MixState, breakdown: Breakdown, metric: str, alpha: float) -> None:
    """Fold one normal window's breakdown into the mix (absent values decay toward 0)."""
    for dimension, values in breakdown.items():
        means = state.means.setdefault(dimension, {})
        fresh = not means
        current = {value: numerator(metric, totals) for value, totals in values.items()}
        # Known values in the order they came, new ones by name: the order of the mix (and
        # so the order its total is summed in, and which of equal values is dropped) must
        # not depend on the string hash of the process or on how the input was batched.
        for value in [*means, *sorted(v for v in current if v not in means)]:
            x = current.get(value, 0.0)
            means[value] = (
                x if fresh else means.get(value, 0.0) + alpha * (x - means.get(value, 0.0))
            )
        if len(means) > MAX_VALUES:
            smallest = sorted(means, key=lambda v: (means[v], v))[: len(means) - MAX_VALUES]
            for value in smallest:
                del means[value]


def attribute(
    state: MixState, breakdown: Breakdown, metric: str, expected: float, totals: Totals
) -> list[Driver]:
    """Drivers of one window, per dimension: the values explaining most of the excess."""
    expected_total = expected_numerator(metric, expected, totals)
    drivers: list[Driver] = []
    for dimension, values in breakdown.items():
        means = state.means.get(dimension)
        if not means:
            continue
        mix_total = sum(means.values())
        excess: dict[str, float] = {}
        for value, part in values.items():
            usual = means.get(value, 0.0) / mix_total * expected_total if mix_total > 0 else 0.0
            gap = numerator(metric, part) - usual
            if gap > 0:
                excess[value] = gap
        positive = sum(excess.values())
        if positive <= 0:
            continue
        covered = 0.0
        for value in sorted(excess, key=lambda v: (-excess[v], v))[:MAX_DRIVERS]:
            share = excess[value] / positive
            if share < MIN_SHARE:
                break
            drivers.append(Driver(dimension=dimension, value=value, share=round(share, 4)))
            covered += share
            if covered >= COVERAGE:
                break
    return drivers
