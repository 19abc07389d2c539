"""UTC calendar periods of the rules that judge whole periods (days, Monday weeks, months).

Budgets have their own, time-zone aware periods (``detectors/budget.py``); the report-like
rules (``unit_margin``, ``idle_commitment``, ``unattributed``) judge UTC periods, so that a
report's period is the same for every reader.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Literal

Period = Literal["day", "week", "month"]
DAY = 86400
WEEK_EPOCH = 4 * DAY
"""1970-01-05 was a Monday: UTC weeks start on Mondays."""


def period_bounds(ts: int, period: Period) -> tuple[int, int]:
    """Start and end (epoch seconds, UTC) of the ``period`` holding ``ts``."""
    if period == "day":
        start = ts - ts % DAY
        return start, start + DAY
    if period == "week":
        start = ts - (ts - WEEK_EPOCH) % (7 * DAY)
        return start, start + 7 * DAY
    day = datetime.fromtimestamp(ts, timezone.utc)
    start_dt = datetime(day.year, day.month, 1, tzinfo=timezone.utc)
    end_dt = datetime(day.year + day.month // 12, day.month % 12 + 1, 1, tzinfo=timezone.utc)
    return int(start_dt.timestamp()), int(end_dt.timestamp())


def period_start(ts: int, period: Period) -> int:
    return period_bounds(ts, period)[0]
