"""Process-wide counters of a run: what the summary, progress bar and metrics report.

Counters are plain integers guarded by the GIL; each worker thread adds to them.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass
class RunStats:
    events: int = 0
    dead_lettered: int = 0
    duplicates: int = 0
    blank_lines: int = 0
    late_events: int = 0
    # events older than the oldest dedup bucket held: admitted without a duplicate check
    dedup_unchecked: int = 0
    windows_closed: int = 0
    # scopes forgotten to stay within max_scopes (budgets: lowest spenders; detectors: quietest)
    evicted_scopes: int = 0
    # OTLP spans that are not model calls (HTTP, database, agent and tool spans)
    spans_skipped: int = 0
    bytes_read: int = 0
    bytes_total: int = 0
    fallback_priced: Counter = field(default_factory=Counter)
    alerts_by_rule: Counter = field(default_factory=Counter)
    dead_reasons: Counter = field(default_factory=Counter)
    alerts_by_kind_rule: Counter = field(default_factory=Counter)
    # alerts raised again by a replay after a restart or reload (the outbox held them)
    alerts_replayed: int = 0
    # budget name -> nano-dollars its allocation rule saw shared, spread by the window's
    # usage, spread by the last known shares, and left unallocated
    allocation: dict = field(default_factory=dict)
    # source partition -> bytes (or messages) not read yet
    lag: dict = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def summary(self) -> dict:
        otlp = {"spans_skipped": self.spans_skipped} if self.spans_skipped else {}
        allocation = (
            {
                "allocation": {
                    name: dict(zip(ALLOCATION_FIELDS, counts, strict=True))
                    for name, counts in sorted(self.allocation.items())
                }
            }
            if self.allocation
            else {}
        )
        return {
            **otlp,
            **allocation,
            "events": self.events,
            "dead_lettered": self.dead_lettered,
            "duplicates": self.duplicates,
            "blank_lines": self.blank_lines,
            "late_events": self.late_events,
            "dedup_unchecked": self.dedup_unchecked,
            "windows_closed": self.windows_closed,
            "evicted_scopes": self.evicted_scopes,
            "fallback_priced": dict(self.fallback_priced),
            "alerts_by_rule": dict(sorted(self.alerts_by_rule.items())),
            "alerts": sum(self.alerts_by_rule.values()),
        }


STATS = RunStats()

MAX_FALLBACK_MODELS = 100
"""Distinct model names counted as fallback-priced; the rest count as ``OTHER_MODELS``.
Names come from the input, so a hostile stream of made-up models must not grow the
counter, the run summary or the metric's label set without bound."""
OTHER_MODELS = "(other)"


def count_fallback(counter: Counter, counts: Mapping[str, int]) -> list[str]:
    """Add fallback-priced counts by model, bounded; return the names new to ``counter``."""
    new = []
    for model, count in counts.items():
        if model not in counter:
            if len(counter) >= MAX_FALLBACK_MODELS:
                model = OTHER_MODELS
            else:
                new.append(model)
        counter[model] += count
    return new


# What a source partition counts (its snapshot's tally) and a shard engine counts (its
# snapshot's counters): restored with the state, so a restart or a reload, which re-reads
# the input after the last snapshot, counts each event once.
INGEST_FIELDS = (
    "events",
    "duplicates",
    "blank_lines",
    "dead_lettered",
    "late_events",
    "dedup_unchecked",
)
ENGINE_FIELDS = ("windows_closed", "evicted_scopes")
ALLOCATION_FIELDS = ("shared_nanos", "by_window_nanos", "by_last_shares_nanos", "unallocated_nanos")


def add_allocation(counts: Mapping[str, list[int]]) -> None:
    """Add what shard engines' allocations moved (per budget, see ``ALLOCATION_FIELDS``)."""
    counters = current()
    with counters.lock:
        for name, values in counts.items():
            held = counters.allocation.setdefault(name, [0] * len(ALLOCATION_FIELDS))
            for index, value in enumerate(values):
                held[index] += value


def forget_input_counts() -> None:
    """Zero what the restored state will count again (before the dataflow restarts)."""
    counters = current()
    with counters.lock:
        for name in (*INGEST_FIELDS, *ENGINE_FIELDS):
            setattr(counters, name, 0)
        counters.dead_reasons.clear()
        counters.fallback_priced.clear()
        counters.allocation.clear()


def add_tally(tally: dict) -> None:
    """Add a restored partition's tally (see :func:`spendwatch.ingest.parser.new_tally`)."""
    counters = current()
    with counters.lock:
        for name in INGEST_FIELDS:
            setattr(counters, name, getattr(counters, name) + tally.get(name, 0))
        counters.dead_reasons.update(tally.get("dead_reasons", {}))
        count_fallback(counters.fallback_priced, tally.get("fallback_priced", {}))


def reset() -> RunStats:
    """Start counting afresh (one run per process, or between tests)."""
    global STATS
    STATS = RunStats()
    return STATS


def current() -> RunStats:
    return STATS
