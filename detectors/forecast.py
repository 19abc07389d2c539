"""Period-end spend projection for budgets: the seasonal spend model behind ``kind: forecast``.

A budget learns, per scope, the mean spend of each hour of the day separately for
weekdays and weekends (exponentially weighted, like the seasonal detector's slots), and
the relative noise of an hour's spend. The projection of a period is what was spent so
far plus the expected spend of every hour left in it; its lower bound at the configured
confidence subtracts ``z × relative noise × remaining`` (errors of the hours are treated
as fully correlated: a slow week tends to stay slow, so this is the cautious bound). A
forecast alert fires when that lower bound reaches the budget, which for a monthly
budget spending 30 % too fast is days before the 100 % threshold is crossed.

Hours without any window count as zero spend (gaps of at most two days are filled;
longer silences restart the model's clock without teaching it zeros).

Slots follow the budget's timezone (:class:`SlotClock`): people's working day, the
weekend and daylight-saving shifts are local. A projection counts the hours left in the
period per slot once per hour and budget, then costs 48 multiplications per scope.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone, tzinfo
from statistics import NormalDist

from spendwatch.detectors.base import SlotsState

_HOUR = 3600
_MAX_GAP_HOURS = 48


class SlotClock:
    """Maps UTC hours to local seasonal slots (hour of day, +24 on weekends) of one timezone."""

    SLOTS = 48

    def __init__(self, zone: tzinfo) -> None:
        self._zone = zone
        self._slots: dict[int, int] = {}
        self._counts: dict[tuple[int, int], list[int]] = {}

    def slot(self, hour_start: int) -> int:
        slot = self._slots.get(hour_start)
        if slot is None:
            if len(self._slots) > 20_000:
                self._slots.clear()
            local = datetime.fromtimestamp(hour_start, self._zone)
            slot = self._slots[hour_start] = local.hour + (24 if local.weekday() >= 5 else 0)
        return slot

    def hours_per_slot(self, start: int, end: int) -> list[int]:
        """How many of the hours from ``start`` (an hour boundary) to ``end`` fall in each slot."""
        key = (start, end)
        counts = self._counts.get(key)
        if counts is None:
            if len(self._counts) > 64:
                self._counts.clear()
            counts = [0] * self.SLOTS
            for hour in range(start, end, _HOUR):
                counts[self.slot(hour)] += 1
            self._counts[key] = counts
        return counts


UTC_SLOTS = SlotClock(timezone.utc)


class SpendModel(SlotsState):
    """Hourly spend slots (hour of day × weekday/weekend), relative noise, learning clock."""

    __slots__ = ("first_hour", "hour_nanos", "hour_start", "hours", "noise", "slots")

    def __init__(self) -> None:
        self.slots: dict[int, float] = {}
        self.noise = 0.0  # EW mean of squared relative residuals
        self.hours = 0
        self.first_hour: int | None = None
        self.hour_start: int | None = None
        self.hour_nanos = 0

    def expected_slot(self, slot: int) -> float | None:
        """Expected spend (nanos) of an hour in ``slot``, else of the other day type's slot."""
        value = self.slots.get(slot)
        if value is None:
            value = self.slots.get(slot - 24 if slot >= 24 else slot + 24)
        return value

    def add(
        self, window_start: int, nanos: int, alpha: float, clock: SlotClock = UTC_SLOTS
    ) -> bool:
        """Add an in-order window's spend; ``True`` when an hour was completed and learned."""
        hour = window_start - window_start % _HOUR
        if self.hour_start is None:
            self.hour_start, self.first_hour = hour, hour
        if hour < self.hour_start:  # late window: its hour is already learned
            return False
        learned = False
        while hour > self.hour_start:
            self._learn(clock.slot(self.hour_start), self.hour_nanos, alpha)
            learned = True
            gap = (hour - self.hour_start) // _HOUR
            self.hour_nanos = 0
            self.hour_start = self.hour_start + _HOUR if gap <= _MAX_GAP_HOURS else hour
        self.hour_nanos += nanos
        return learned

    def _learn(self, slot: int, nanos: int, alpha: float) -> None:
        mean = self.slots.get(slot)
        if mean is None:
            self.slots[slot] = float(nanos)
        else:
            if mean > 0:
                residual = (nanos - mean) / mean
                self.noise += alpha * (min(residual * residual, 4.0) - self.noise)
            self.slots[slot] = mean + alpha * (nanos - mean)
        self.hours += 1

    def remaining(self, now: int, end: int, clock: SlotClock = UTC_SLOTS) -> float:
        """Expected spend (nanos) from ``now`` (an hour boundary) to ``end``."""
        total = 0.0
        fallback = sum(self.slots.values()) / len(self.slots) if self.slots else 0.0
        for slot, hours in enumerate(clock.hours_per_slot(now, end)):
            if hours:
                expected = self.expected_slot(slot)
                total += hours * (fallback if expected is None else expected)
        return total

    def lower_bound(
        self, spent: int, now: int, end: int, confidence: float, clock: SlotClock = UTC_SLOTS
    ) -> float:
        """Period-end spend (nanos) exceeded with probability ``confidence``."""
        ahead = self.remaining(now, end, clock)
        z = NormalDist().inv_cdf(confidence)
        return spent + max(ahead * (1.0 - z * math.sqrt(self.noise)), 0.0)
