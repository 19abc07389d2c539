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
MISSING = float("nan")


class WeeklyFactor:
    """The week being filled (sums per cell) and the two complete weeks before it (one
    ratio per cell, NaN where a cell had nothing); see the module docstring. 1.3 KB."""

    __slots__ = ("current", "noise", "ratios", "spread", "week")

    def __init__(self) -> None:
        self.week = -1  # the week ``current`` sums
        self.current = array("f", bytes(4 * CELLS * 2))  # [cell, (value, expected)]
        self.ratios = array("f", [MISSING] * (2 * CELLS))  # [week - 1, week - 2][cell]
        self.spread = 0.0  # τ², learned from the two complete weeks
        self.noise = 0.0  # s², likewise

    def __getstate__(self) -> tuple:
        return (self.week, self.current.tobytes(), self.ratios.tobytes(), self.spread, self.noise)

    def __setstate__(self, state: tuple) -> None:
        if len(state) != 5:  # an earlier layout of the cells: the weeks start afresh
            self.__init__()
            return
        self.week, current, ratios, self.spread, self.noise = state
        self.current, self.ratios = array("f"), array("f")
        self.current.frombytes(current)
        self.ratios.frombytes(ratios)

    def push(self, window_start: int, value: float, expected: float) -> None:
        """Learn one normal window: its value against its expectation without the factor."""
        week = int(window_start // WEEK)
        if week != self.week:
            self._roll(week)
        i = ((window_start % WEEK) // BLOCK) * 2
        self.current[i] += value
        self.current[i + 1] += expected

    def _roll(self, week: int) -> None:
        """A new week: the one just filled becomes the latest complete week (if it is the
        week before), and τ² and s² are learned from it against the week before it."""
        finished = [MISSING] * CELLS
        if week in (self.week + 1, self.week + 2):  # the filled week is one of the two
            for cell in range(CELLS):
                value, expected = self.current[2 * cell], self.current[2 * cell + 1]
                if expected > 0:
                    finished[cell] = value / expected
        if week == self.week + 1:
            latest, older = finished, list(self.ratios[:CELLS])
        elif week == self.week + 2:
            latest, older = [MISSING] * CELLS, finished
        else:
            latest, older = [MISSING] * CELLS, [MISSING] * CELLS
        self.ratios = array("f", latest + older)
        self.current = array("f", bytes(4 * CELLS * 2))
        self.week = week
        self._learn_spread()

    def _learn_spread(self) -> None:
        """τ² and s² from the two complete weeks, cell against cell."""
        self.spread = self.noise = 0.0
        pairs = [
            (one, two)
            for one, two in zip(self.ratios[:CELLS], self.ratios[CELLS:], strict=True)
            if one == one and two == two  # both weeks saw the cell (NaN is not itself)
        ]
        if len(pairs) < CELLS // 2:
            return
        differences = sorted((one - two) ** 2 / 2 for one, two in pairs)
        self.noise = differences[len(differences) // 2] / 0.455  # median of χ²₁ is 0.455
        level = sum(((one + two) / 2 - 1.0) ** 2 for one, two in pairs) / len(pairs)
        self.spread = max(level - self.noise / 2, 0.0)

    def factor(self, window_start: int) -> float:
        """The expectation's multiplier for this window: the larger of two weeks' (≥ 0)."""
        if int(window_start // WEEK) != self.week or self.spread <= 0:
            return 1.0  # the first window of a week, before it is rolled: no factor
        cell = (window_start % WEEK) // BLOCK
        one, two = self.ratios[cell], self.ratios[CELLS + cell]
        if one != one or two != two:
            return 1.0
        return 1.0 + (max(one, two) - 1.0) * self.spread / (self.spread + self.noise)
