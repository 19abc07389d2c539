"""Shared-cost allocation: spend of a shared value spread over the real values of a dimension.

An ``allocation:`` rule names a dimension (``tenant``), the values that stand for shared
spend (``shared``, or ``unattributed`` for events and FOCUS lines without the tag) and a
usage metric. In each event-time window a budget closes, the shared spend of that window is
split over the dimension's real values in proportion to their usage *in the same window*
(times an optional static weight per value), in integer nano-dollars by the largest
remainder (Hamilton) method: every part is the exact quota rounded down or up, the
leftover nano-dollars go to the largest remainders, ties broken by value name, so the parts
sum to the whole exactly and the split depends on nothing but the window's data.

A window whose shared spend finds no real value with usage (a quiet night, a billing line
stamped at an hour nobody called the service) is spread by the *last known shares*: the
usage of the latest window of the same group that had any. That is what a FinOps user
expects of a shared platform's cost: it belongs to whoever has been using the platform,
now, rather than waiting (carrying it forward would delay budget crossings by an unknown
time and hold money in no one's total) or staying on the shared value (which would make
every tenant's fully loaded cost depend on the hour the bill was stamped). Only when no
window of the group had usage (within ``engine.scope_idle_ttl``, by the current ``by``
metric) does the spend stay on the shared value, counted as unallocated in the run
summary. The shares are state of the engine, snapshotted with it and updated in window
order, so a replay after a crash splits every window the same way.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Literal

from pydantic import Field, field_validator, model_validator

from spendwatch.core.configtypes import Dimension, StrictModel
from spendwatch.detectors.base import Totals

UsageMetric = Literal["requests", "tokens", "spend"]


class AllocationConfig(StrictModel):
    """A shared value's spend spread over a dimension's real values by their usage."""

    name: str = Field(min_length=1, description="rule name, unique; appears in the summary")
    dimension: Dimension = Field(
        description="the dimension whose shared spend is spread, e.g. tenant; applies to the "
        "budgets with include_allocated keyed on it"
    )
    shared: list[str] = Field(
        min_length=1,
        description="values that stand for shared spend, e.g. [shared]; `unattributed` is "
        "the value of events (and FOCUS lines) without the dimension",
    )
    by: UsageMetric = Field(
        default="requests",
        description="usage in the same window that sets each value's share: requests, "
        "tokens (input + output) or spend (the value's own, credits netted, floored at 0)",
    )
    weights: dict[str, float] = Field(
        default_factory=dict,
        description="static weight per value, multiplying its usage (e.g. {acme: 2})",
    )
    default_weight: float = Field(
        default=1.0,
        ge=0,
        description="weight of values not in `weights`; 0 spreads over the listed values only",
    )

    @field_validator("weights")
    @classmethod
    def _weights(cls, value: dict[str, float]) -> dict[str, float]:
        for key, weight in value.items():
            if not (math.isfinite(weight) and weight >= 0):
                raise ValueError(f"weight of {key!r} must be a finite number >= 0")
        return value

    @field_validator("shared")
    @classmethod
    def _shared(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("shared values must be distinct")
        return value

    @model_validator(mode="after")
    def _someone_receives(self) -> AllocationConfig:
        receivers = {k for k, w in self.weights.items() if w > 0 and k not in self.shared}
        if self.default_weight == 0 and not receivers:
            raise ValueError(
                "default_weight 0 and no positive weight of a real value: nothing could "
                "ever receive the shared spend"
            )
        return self


def split_exact(whole: int, weights: Mapping[str, int]) -> dict[str, int]:
    """``whole`` split over ``weights`` (non-negative integers, not all zero) by the
    largest remainder method; the parts sum to ``whole`` exactly.

    Each part is its quota ``whole * w / Σw`` rounded down, plus one for the values with
    the largest remainders until nothing is left; equal remainders go by value name, so the
    result is a function of the mapping's contents, never of its order. A negative whole
    (a shared credit) is split as its magnitude and negated: a refund is shared exactly as
    the charge it refunds.
    """
    total = sum(weights.values())
    if total <= 0 or any(w < 0 for w in weights.values()):
        raise ValueError("weights must be non-negative and not all zero")
    sign = -1 if whole < 0 else 1
    magnitude = abs(whole)
    parts: dict[str, int] = {}
    remainders: list[tuple[int, str]] = []
    for value, weight in weights.items():
        part, remainder = divmod(magnitude * weight, total)
        parts[value] = part
        remainders.append((-remainder, value))
    leftover = magnitude - sum(parts.values())  # < len(weights): one each at most
    remainders.sort()
    for _, value in remainders[:leftover]:
        parts[value] += 1
    return {value: sign * part for value, part in parts.items()}


@dataclass
class AllocationTally:
    """What a rule moved, in nano-dollars (the run summary's ``allocation``)."""

    shared: int = 0
    """Shared spend seen."""
    by_window: int = 0
    """Spread by the usage of its own window."""
    by_last_shares: int = 0
    """Spread by the last known shares (no usage in its window, or late)."""
    unallocated: int = 0
    """Left on the shared value: no usage known for its group."""

    def as_list(self) -> list[int]:
        return [self.shared, self.by_window, self.by_last_shares, self.unallocated]


TALLY_FIELDS = ("shared", "by_window", "by_last_shares", "unallocated")


@dataclass
class WindowSplit:
    """One group's window after allocation: what each value's budget adds."""

    spend: dict[str, int] = field(default_factory=dict)
    """Value -> direct + allocated spend (a shared value: what stayed on it)."""
    allocated: dict[str, int] = field(default_factory=dict)
    """Value -> the allocated part of ``spend``."""


class Allocator:
    """Applies one :class:`AllocationConfig`; pure apart from the shares passed in."""

    def __init__(self, config: AllocationConfig) -> None:
        self.config = config
        self.name = config.name
        self.dimension = config.dimension
        self.shared = frozenset(config.shared)
        # Static weights as integers over one common denominator: the split stays exact.
        fractions = {k: Fraction(str(w)) for k, w in config.weights.items()}
        default = Fraction(str(config.default_weight))
        scale = math.lcm(default.denominator, *(f.denominator for f in fractions.values()))
        self._weights = {k: int(f * scale) for k, f in fractions.items()}
        self._default = int(default * scale)

    def usage(self, totals: Totals) -> int:
        """A value's usage in a window, by the configured metric (never negative)."""
        metric = self.config.by
        if metric == "requests":
            return max(totals.requests, 0)
        if metric == "tokens":
            return max(totals.input_tokens + totals.output_tokens, 0)
        return max(totals.spend_nanos, 0)

    def weighted(self, usage: Mapping[str, int]) -> dict[str, int]:
        """Usage times static weight, for the real values whose product is positive."""
        found = {}
        for value, amount in usage.items():
            weight = self._weights.get(value, self._default)
            if value not in self.shared and amount > 0 and weight > 0:
                found[value] = amount * weight
        return found

    def split(
        self,
        spend: Mapping[str, int],
        usage: Mapping[str, int],
        last_shares: Mapping[str, int] | None,
        tally: AllocationTally,
    ) -> tuple[WindowSplit, dict[str, int] | None]:
        """Allocate one group's window: its values' spend and usage, and the shares of the
        latest earlier window with usage. Returns the split and the shares to remember
        (this window's usage when it had any, else ``None``: keep the old ones)."""
        shared = sum(amount for value, amount in spend.items() if value in self.shared)
        weights = self.weighted(usage)
        remember = {v: usage[v] for v in weights} if weights else None
        result = WindowSplit()
        for value, amount in spend.items():
            if value not in self.shared:
                result.spend[value] = amount
        has_shared = any(value in self.shared for value in spend)
        if not has_shared:
            return result, remember
        tally.shared += shared
        source = weights or (self.weighted(last_shares) if last_shares else {})
        if not source:
            tally.unallocated += shared
            for value, amount in spend.items():
                if value in self.shared:
                    result.spend[value] = amount
            return result, remember
        if weights:
            tally.by_window += shared
        else:
            tally.by_last_shares += shared
        for value, part in split_exact(shared, source).items():
            result.spend[value] = result.spend.get(value, 0) + part
            result.allocated[value] = part
        return result, remember


def allocation_for(
    rules: Iterable[AllocationConfig], dimensions: Iterable[str]
) -> list[AllocationConfig]:
    """The allocation rules spreading one of ``dimensions`` (a budget's scope dimensions)."""
    keyed = set(dimensions)
    return [rule for rule in rules if rule.dimension in keyed]
