"""Robust, self-calibrating anomaly scores for one stream: trailing median/MAD and record surprise.

Two lessons from grading detectors on the public NAB corpus shaped this module:

* Mean/variance baselines are dragged by the very spikes they should flag and by
  heavy-tailed noise; a trailing median and median absolute deviation (MAD) are not.
* A z-score is not comparable across streams: z = 6 is routine for a spiky stream and a
  once-a-year event for a smooth one, so one threshold for many scopes either floods the
  spiky ones or misses the smooth ones. Scoring a window by how far its z *exceeds the
  largest z the stream produced recently* (a record) calibrates each stream against its
  own history: 0 unless the deviation is unprecedented, then ``1 - previous_record / z``.

Everything is streaming with bounded memory (``window`` values, ``window`` deviations
and a monotone queue of at most ``memory`` z-scores), so it suits per-scope state.
"""

from __future__ import annotations

import bisect
from collections import deque
from dataclasses import dataclass

MAD_TO_STD = 1.4826
"""MAD times this estimates the standard deviation of Gaussian noise."""


class SortedWindow:
    """The last ``size`` values in arrival order and in sorted order, for running medians."""

    __slots__ = ("arrivals", "ordered", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self.arrivals: deque[float] = deque()
        self.ordered: list[float] = []

    def __len__(self) -> int:
        return len(self.arrivals)

    def push(self, value: float) -> None:
        if len(self.arrivals) == self.size:
            old = self.arrivals.popleft()
            del self.ordered[bisect.bisect_left(self.ordered, old)]
        self.arrivals.append(value)
        bisect.insort(self.ordered, value)

    def median(self) -> float:
        n = len(self.ordered)
        mid = n // 2
        if n % 2:
            return self.ordered[mid]
        return 0.5 * (self.ordered[mid - 1] + self.ordered[mid])


class SlidingMax:
    """Maximum of the last ``size`` pushed numbers in O(1) amortised (monotone queue)."""

    __slots__ = ("count", "queue", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self.count = 0
        self.queue: deque[tuple[int, float]] = deque()

    def push(self, value: float) -> None:
        while self.queue and self.queue[-1][1] <= value:
            self.queue.pop()
        self.queue.append((self.count, value))
        self.count += 1
        while self.queue[0][0] <= self.count - 1 - self.size:
            self.queue.popleft()

    def get(self) -> float:
        return self.queue[0][1] if self.queue else 0.0


@dataclass(frozen=True)
class RobustConfig:
    """Parameters of :class:`RobustRecordScorer`.

    ``window``: values in the median/MAD baseline. ``memory``: how many past z-scores a
    record must beat (older records are forgotten so a stream can alert again after a
    big incident). ``min_history``: values needed before z is computed at all;
    ``calibration``: further values whose z only seeds the record, never scores (a
    stream's first z is always a record). ``relative_floor`` keeps the scale away from 0
    on flat streams: a deviation must exceed that fraction of the level to count.
    """

    window: int = 288
    memory: int = 2000
    min_history: int = 24
    calibration: int = 100
    relative_floor: float = 1e-6
    absolute_floor: float = 1e-9


class RobustRecordScorer:
    """Scores each value of one stream in [0, 1]; feed values in time order."""

    __slots__ = ("config", "deviations", "records", "seen", "values")

    def __init__(self, config: RobustConfig | None = None) -> None:
        self.config = config or RobustConfig()
        self.values = SortedWindow(self.config.window)
        self.deviations = SortedWindow(self.config.window)
        self.records = SlidingMax(self.config.memory)
        self.seen = 0

    def z(self, value: float) -> float | None:
        """Robust z of ``value`` against the current baseline (``None`` while too thin)."""
        if len(self.values) < self.config.min_history:
            return None
        median = self.values.median()
        spread = self.deviations.median() if len(self.deviations) else 0.0
        scale = max(
            MAD_TO_STD * spread,
            self.config.relative_floor * abs(median) + self.config.absolute_floor,
        )
        return abs(value - median) / scale

    def update(self, value: float) -> float:
        """Score ``value`` against the past, then learn it; returns the record surprise."""
        z = self.z(value)
        score = 0.0
        if z is not None:
            record = self.records.get()
            scoring = self.seen >= self.config.min_history + self.config.calibration
            if scoring and z > record:
                score = 1.0 - record / z
            self.records.push(z)
        if len(self.values):
            self.deviations.push(abs(value - self.values.median()))
        self.values.push(value)
        self.seen += 1
        return score
