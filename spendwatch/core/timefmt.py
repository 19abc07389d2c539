"""Durations and RFC 3339 timestamps.

Windows are handled as integer epoch seconds everywhere inside the engine
(cheap to hash, pickle and compare); these helpers convert at the edges.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone

_DURATION = re.compile(r"^\s*(\d+)\s*(s|m|h|d|w)\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str | int | float) -> int:
    """Parse ``30s``, ``5m``, ``1h``, ``1d`` or ``1w`` (or a number of seconds) into seconds."""
    if isinstance(text, bool):
        raise ValueError("expected a duration such as 5m or 1h")
    if isinstance(text, (int, float)):
        if text < 0:
            raise ValueError("duration must not be negative")
        return int(text)
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"invalid duration {text!r}: expected e.g. 30s, 5m, 1h, 1d, 1w")
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def format_duration(seconds: int) -> str:
    """Render seconds in the largest unit that divides them exactly."""
    for unit in ("w", "d", "h", "m"):
        size = _UNIT_SECONDS[unit]
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def rfc3339(epoch_seconds: float) -> str:
    """Format epoch seconds as RFC 3339 UTC with a ``Z`` suffix."""
    moment = datetime.fromtimestamp(epoch_seconds, tz=timezone.utc)
    if moment.microsecond:
        return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(text: str) -> float:
    """Parse an RFC 3339 timestamp (offset or ``Z`` required) into epoch seconds."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError(f"timestamp {text!r} has no UTC offset")
    return moment.timestamp()
