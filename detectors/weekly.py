"""Weekly factors: what a scope's last two weeks say about this hour of this weekday.

A time-of-day median over the last days is a weekday level on a Saturday (five days back
hold three weekdays) and a weekend's noise widens every weekday's band, or a Sunday
spike sits inside a weekday band. ``WeeklyFactor`` keeps, per two-hour block of the week
(84 cells, UTC, so a tenant's local weekend is caught within a block) and per week, the
sum of learned values and the sum of their seasonal expectations. A cell's ratio R
of the two is shrunk toward 1 (empirical Bayes):

    f = 1 + (R − 1) · τ² / (τ² + s²)

where s² is the sampling noise of one week's ratio and τ² the spread of the scope's
true weekly effects, both learned from the scope's own last two weeks, cell against
cell: the same cell's ratios in two weeks differ by noise alone (s² = median of
(R₁ − R₂)² / 2 over cells / 0.455, robust to a holiday's cells), and their mean strays
from 1 by τ² + s²/2. No model of the noise is needed, its correlation and heavy tails
included; a scope without a weekly pattern gets τ² ≈ 0 and factors of 1; a thin or
bursty one gets a large s² and factors near 1; a steady tenant with a quiet weekend
gets its weekend.

The factor applied is the larger of the last two weeks' shrunk ratios: a holiday, or
any one-off low day, is low in one week only and must not lower the next week's
expectation (a lowered expectation is a false alarm waiting for normal traffic); a
weekend is low in both.
"""

from __future__ import annotations

from array import array

WEEK = 7 * 86400
BLOCK = 2 * 3600
CELLS = WEEK // BLOCK
ROWS = 3
"""The week being filled and the two complete weeks before it."""


class WeeklyFactor:
    """Per-(week, cell) sums of learned values and expectations; see the module docstring."""

    __slots__ = ("noise", "spread", "sums", "weeks")

    def __init__(self) -> None:
        self.sums = array("f", bytes(4 * ROWS * CELLS * 2))  # [row, cell, (value, expected)]
        self.spread = array("f", bytes(4 * ROWS))  # τ² learned when the row's week ended
        self.noise = array("f", bytes(4 * ROWS))  # s², likewise
        self.weeks = array("q", [-1] * ROWS)

    def __getstate__(self) -> tuple:
        return tuple(getattr(self, name).tobytes() for name in self.__slots__)

    def __setstate__(self, state: tuple) -> None:
        for name, raw in zip(self.__slots__, state, strict=True):
            values = array("q" if name == "weeks" else "f")
            values.frombytes(raw)
            setattr(self, name, values)

    def push(self, window_start: int, value: float, expected: float) -> None:
        """Learn one normal window: its value against its expectation without the factor."""
        week = window_start // WEEK
        row = week % ROWS
        if self.weeks[row] != week:
            self._learn_spread(int(week) - 1)
            base = row * CELLS * 2
            for i in range(base, base + CELLS * 2):
                self.sums[i] = 0.0
            self.weeks[row] = week
            self.spread[row] = self.noise[row] = 0.0
        i = (row * CELLS + (window_start % WEEK) // BLOCK) * 2
        self.sums[i] += value
        self.sums[i + 1] += expected

    def _ratio(self, week: int, cell: int) -> float | None:
        row = week % ROWS
        i = (row * CELLS + cell) * 2
        if self.weeks[row] != week or self.sums[i + 1] <= 0:
            return None
        return self.sums[i] / self.sums[i + 1]

    def _learn_spread(self, week: int) -> None:
        """A week is over: τ² and s² from its cells against the week before's."""
        pairs = []
        for cell in range(CELLS):
            one, two = self._ratio(week, cell), self._ratio(week - 1, cell)
            if one is not None and two is not None:
                pairs.append((one, two))
        if len(pairs) < CELLS // 2:
            return
        differences = sorted((one - two) ** 2 / 2 for one, two in pairs)
        noise = differences[len(differences) // 2] / 0.455  # median of χ²₁ is 0.455
        level = sum(((one + two) / 2 - 1.0) ** 2 for one, two in pairs) / len(pairs)
        row = week % ROWS
        self.noise[row] = noise
        self.spread[row] = max(level - noise / 2, 0.0)

    def factor(self, window_start: int) -> float:
        """The expectation's multiplier for this window: the larger of two weeks' (≥ 0)."""
        week = window_start // WEEK
        cell = (window_start % WEEK) // BLOCK
        row = (week - 1) % ROWS
        tau2, noise = self.spread[row], self.noise[row]
        one, two = self._ratio(week - 1, cell), self._ratio(week - 2, cell)
        if self.weeks[row] != week - 1 or tau2 <= 0 or one is None or two is None:
            return 1.0
        return 1.0 + (max(one, two) - 1.0) * tau2 / (tau2 + noise)
