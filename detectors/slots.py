"""Robust seasonal baselines: medians of recent same-time-of-day windows and a pooled MAD.

Why medians of raw recent values instead of exponentially weighted means: a mean is
dragged by the spikes and by the weekend it just saw, a median of the last few days at
this time of day (and the neighbouring windows) is not, and it needs no warm-up beyond
a couple of days. Thin history is handled by pooling the neighbouring windows of the
day, so one slot never rests on one or two samples. The spread is one MAD of *relative*
residuals pooled over all of the scope's windows (a quiet night slot learns from the
busy afternoon how volatile the scope is), floored by a count-noise term so a scope with
few requests is never judged by a spread estimated on its busy hours.
"""

from __future__ import annotations

import math
from array import array

from spendwatch.detectors.base import SlotsState
from spendwatch.detectors.robust import MAD_TO_STD, SortedWindow

_DAY = 86400


class SlotHistory(SlotsState):
    """Recent values per time-of-day slot (or one slot), and pooled relative residuals."""

    __slots__ = ("days", "residuals", "seen", "slots", "window")

    def __init__(self, window: int, days: int, residual_memory: int, seasonal: bool) -> None:
        self.window = window if seasonal else 0
        self.days = days
        # A compact array per slot: a deque costs ~600 bytes however short it is, and a
        # day of 15-minute slots is 96 of them per scope.
        self.slots: dict[int, array[float]] = {}
        self.residuals = SortedWindow(residual_memory)
        self.seen = 0

    def slot(self, window_start: int) -> int:
        return (window_start % _DAY) // self.window if self.window else 0

    def expected(self, window_start: int, neighbours: int) -> tuple[float, int] | None:
        """Median of the slot's and its neighbours' recent values, and how many there were."""
        values = self.pooled(window_start, neighbours)
        if not values:
            return None
        mid = len(values) // 2
        median = values[mid] if len(values) % 2 else 0.5 * (values[mid - 1] + values[mid])
        return median, len(values)

    def pooled(self, window_start: int, neighbours: int) -> list[float]:
        """The slot's and its neighbours' recent values, sorted."""
        if not self.window:
            values = list(self.slots.get(0, ()))
        else:
            per_day = _DAY // self.window
            here = self.slot(window_start)
            values = []
            for offset in range(-neighbours, neighbours + 1):
                values.extend(self.slots.get((here + offset) % per_day, ()))
        values.sort()
        return values

    def relative_std(self) -> float:
        """Robust relative noise of the scope (0 until residuals exist)."""
        if not len(self.residuals):
            return 0.0
        return MAD_TO_STD * self.residuals.median()

    def learn(self, window_start: int, value: float, expected: float | None) -> None:
        slot = self.slot(window_start)
        values = self.slots.get(slot)
        if values is None:
            values = self.slots[slot] = array("d")
        values.append(value)
        if len(values) > (self.days if self.window else self.days * 24):
            del values[0]
        if expected is not None and expected > 0:
            self.residuals.push(abs(value - expected) / expected)
        self.seen += 1


def count_noise_std(expected: float, per_request: float, overdispersion: float) -> float:
    """Std of a sum of ``expected / per_request`` requests of ``per_request`` each.

    A compound Poisson sum has variance n·E[c²] = expected·per_request·(1 + cv²); the
    configured overdispersion stands for (1 + cv²) and any extra burstiness.
    """
    return math.sqrt(max(expected, 0.0) * max(per_request, 0.0) * overdispersion)
