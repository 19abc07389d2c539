"""The per-partition event parser: decode a batch, then drop the ids seen before.

Decoding (:mod:`spendwatch.ingest.decoding`) is stateless and may run in a helper process;
the dedup window is the partition's state, snapshotted with its input offset, so it is
applied here, in input order.
"""

from __future__ import annotations

import copy
import heapq
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from spendwatch.core.stats import count_fallback
from spendwatch.ingest.decoding import BlockDecoder, DecodedBlock
from spendwatch.ingest.events import (
    MAX_EVENT_TS,
    MIN_EVENT_TS,
    UNATTRIBUTED,
    DeadLetter,
    DedupWindow,
    EventBounds,
    ParsedBatch,
    id_keys,
)
from spendwatch.ingest.pricing import PriceTable, PricingConfig

STREAM_TIME_QUORUM = 3
"""How many admitted events must have reached a time before the partition's stream time
(and so the watermark) may move there: one event with a wrong clock never moves it."""


class StreamClock:
    """A partition's robust event time: the ``STREAM_TIME_QUORUM``-th largest time admitted.

    The maximum would let one event from a client whose clock is years ahead close every
    window and make all later events late. The k-th largest ignores up to k−1 such
    events and lags a true stream by at most k−1 events.
    """

    def __init__(self) -> None:
        self.largest: list[float] = []  # min-heap of the k largest admitted times

    def observe(self, ts: np.ndarray) -> float | None:
        """Take a batch's admitted times; the stream time after them (None: too few yet)."""
        if ts.shape[0]:
            top = (
                ts
                if ts.shape[0] <= STREAM_TIME_QUORUM
                else np.partition(ts, -STREAM_TIME_QUORUM)[-STREAM_TIME_QUORUM:]
            )
            for value in top.tolist():
                if len(self.largest) < STREAM_TIME_QUORUM:
                    heapq.heappush(self.largest, value)
                elif value > self.largest[0]:
                    heapq.heapreplace(self.largest, value)
        return self.time()

    def time(self) -> float | None:
        if len(self.largest) < STREAM_TIME_QUORUM:
            return None
        return self.largest[0]


class EventParser:
    """Turns raw JSONL lines into a :class:`ParsedBatch`; one instance per input partition."""

    def __init__(
        self,
        prices: PriceTable,
        dimensions: Sequence[str],
        dedup_horizon: int,
        max_event_bytes: int = 65536,
        source: str = "",
        bounds: EventBounds | None = None,
        wall_clock: Callable[[], float] | None = None,
        allowed_lateness: float = 300,
    ) -> None:
        self.decoder = BlockDecoder(prices, dimensions, max_event_bytes, bounds, wall_clock)
        self.dimensions = self.decoder.dimensions
        # Buckets are held for the horizon behind the partition's watermark (its stream
        # time minus the allowed lateness).
        self.dedup = DedupWindow(dedup_horizon + int(allowed_lateness))
        self.clock = StreamClock()
        self.source = source
        self.allowed_lateness = allowed_lateness
        self.tally = new_tally()

    def parse(self, lines: Sequence[bytes]) -> ParsedBatch:
        """Validate, dedup and price one event per item (lines without their newlines)."""
        return self.finish(self.decoder.decode_lines(lines, self.source))

    def parse_block(self, block: bytes) -> ParsedBatch:
        """Validate, dedup and price a block of newline-separated events."""
        return self.finish(self.decoder.decode_block(block, self.source))

    def finish(self, decoded: DecodedBlock) -> ParsedBatch:
        """Apply the dedup window to a decoded block (in input order) and filter it."""
        dead = list(decoded.dead)
        if not decoded.size:
            batch = ParsedBatch.empty(self.dimensions)
            batch.dead = dead
            batch.blank_lines = decoded.blank
            self._tally(batch)
            return batch
        count = decoded.size
        ts, spend, numbers = decoded.ts, decoded.spend_nanos, decoded.numbers
        rejected = decoded.rejected
        admissible = np.ones(count, dtype=bool)
        if rejected:
            admissible[[row for row, _, _ in rejected]] = False
        # A time outside the years 2000-2100 (a rejected line) has no bucket to be held in.
        checkable = (ts >= MIN_EVENT_TS) & (ts < MAX_EVENT_TS)
        keys = decoded.keys if decoded.keys is not None else id_keys(decoded.event_ids)
        valid, unchecked, late = self._deduplicate(ts, keys, checkable, admissible)
        keep = valid.copy()
        for row, reason, raw in rejected:
            if valid[row] and keep[row]:  # a repeat of a rejected line is a duplicate
                dead.append(DeadLetter(reason, raw, self.source))
                keep[row] = False
        anomaly_input, fallback_used = decoded.anomaly_input, decoded.fallback_used
        models, dims = decoded.models, decoded.dims
        if not keep.all():
            positions = np.flatnonzero(keep)
            ts, spend, numbers = ts[positions], spend[positions], numbers[positions]
            anomaly_input, fallback_used = anomaly_input[positions], fallback_used[positions]
            models = models.take(positions)
            dims = {d: column.take(positions) for d, column in dims.items()}
        fallback_counts = np.bincount(models.codes[fallback_used], minlength=len(models.values))
        batch = ParsedBatch(
            ts=ts,
            spend_nanos=spend,
            requests=numbers[:, 3].copy(),
            input_tokens=numbers[:, 0].copy(),
            output_tokens=numbers[:, 1].copy(),
            anomaly_input=anomaly_input,
            dims=dims,
            dead=dead,
            duplicates=int(count - valid.sum()),
            blank_lines=decoded.blank,
            late=late,
            unchecked=int((unchecked & keep).sum()),
            fallback_priced={
                str(models.values[code] or UNATTRIBUTED): int(n)
                for code, n in enumerate(fallback_counts.tolist())
                if n
            },
            stream_time=self.clock.time(),
        )
        self._tally(batch)
        return batch

    def _deduplicate(
        self, ts: np.ndarray, keys: np.ndarray, checkable: np.ndarray, admissible: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, int]:
        """(first-seen mask, unchecked mask, late count), each event decided as an
        event-by-event pass would: against the dedup floor and stream time as they stood
        just before it. So the outcome is the same however the input is cut into batches
        (a restart resumes at another cut than the unbroken run had).

        The floor moves only when the stream time crosses a bucket boundary: a batch is
        decided in one piece unless it does, and is then split where it does.
        """
        count = ts.shape[0]
        valid = np.ones(count, dtype=bool)
        unchecked = np.zeros(count, dtype=bool)
        late = 0
        dedup, lateness = self.dedup, self.allowed_lateness
        dedup.set_floor(self.clock.time())
        start = 0
        while start < count:
            stop = count
            piece = slice(start, stop)
            fresh, old, additions = dedup.check(ts[piece], keys[piece], checkable[piece])
            kept = np.flatnonzero(fresh & admissible[piece])
            values = ts[piece][kept]
            moved = _first_floor_move(self.clock.largest, values, dedup)
            if moved is not None and int(kept[moved]) + 1 < stop - start:
                # Decided only up to the event that moves the floor: the rest again.
                stop = start + int(kept[moved]) + 1
                piece = slice(start, stop)
                fresh, old, additions = dedup.check(ts[piece], keys[piece], checkable[piece])
                kept, values = kept[: moved + 1], values[: moved + 1]
            late_here, heap = _late_and_clock(self.clock.largest, values, lateness)
            dedup.commit(additions)
            valid[piece], unchecked[piece] = fresh, old
            late += late_here
            self.clock.largest = heap
            dedup.set_floor(self.clock.time())
            start = stop
        return valid, unchecked, late

    def _tally(self, batch: ParsedBatch) -> None:
        tally = self.tally
        tally["events"] += batch.size
        tally["duplicates"] += batch.duplicates
        tally["blank_lines"] += batch.blank_lines
        tally["dead_lettered"] += len(batch.dead)
        tally["late_events"] += batch.late
        tally["dedup_unchecked"] += batch.unchecked
        for letter in batch.dead:
            tally["dead_reasons"][letter.reason.split(":", 1)[0]] += 1
        count_fallback(tally["fallback_priced"], batch.fallback_priced)

    def snapshot(self) -> dict[str, Any]:
        return {
            "dedup": self.dedup.snapshot(),
            "stream_clock": list(self.clock.largest),
            "tally": copy.deepcopy(self.tally),
        }

    def restore(self, state: Any) -> None:
        if state is None:
            return
        if isinstance(state, dict):
            self.dedup.restore(state["dedup"])
            self.clock.largest = list(state["stream_clock"])
            heapq.heapify(self.clock.largest)
            if "tally" in state:
                self.tally = copy.deepcopy(state["tally"])
        else:  # snapshots before the stream clock held the dedup window only
            self.dedup.restore(state)


def new_tally() -> dict[str, Any]:
    """What a partition has counted since it started: part of its snapshot, so a restart
    or a reload counts each event once."""
    return {
        "events": 0,
        "duplicates": 0,
        "blank_lines": 0,
        "dead_lettered": 0,
        "late_events": 0,
        "dedup_unchecked": 0,
        "dead_reasons": Counter(),
        "fallback_priced": Counter(),
    }


def _first_floor_move(largest: list[float], values: np.ndarray, dedup: Any) -> int | None:
    """The first of ``values`` after which the stream time has reached the next floor
    move (None: none does), without an event-by-event pass: the stream time reaches ``T``
    once ``STREAM_TIME_QUORUM`` admitted times are at or above ``T``."""
    if not values.shape[0]:
        return None
    target = dedup.floor + dedup.bucket + dedup.horizon  # -inf before the first floor
    already = sum(1 for value in largest if value >= target)
    reached = np.flatnonzero(already + np.cumsum(values >= target) >= STREAM_TIME_QUORUM)
    return int(reached[0]) if reached.shape[0] else None


def _late_and_clock(
    largest: list[float], values: np.ndarray, lateness: float
) -> tuple[int, list[float]]:
    """How many of ``values`` are late (older than the stream time before them minus the
    lateness), and the stream-clock heap after them all.

    The stream time before an event lies between the stream time at the start and the
    largest time seen so far: an event older than the first minus the lateness is late,
    one within the lateness of the second is not. Only the rare event in between needs
    the event-by-event pass.
    """
    if not values.shape[0]:
        return 0, list(largest)
    top = (
        values
        if values.shape[0] <= STREAM_TIME_QUORUM
        else np.partition(values, -STREAM_TIME_QUORUM)[-STREAM_TIME_QUORUM:]
    )
    heap = heapq.nlargest(STREAM_TIME_QUORUM, [*largest, *top.tolist()])
    heapq.heapify(heap)
    start = largest[0] if len(largest) >= STREAM_TIME_QUORUM else -math.inf
    seen = np.maximum.accumulate(np.concatenate(([max(largest, default=-math.inf)], values[:-1])))
    late = values < start - lateness
    on_time = values >= seen - lateness
    if (late | on_time).all():
        return int(late.sum()), heap
    before, heap = _running_quorum(largest, values)
    return int((values < before - lateness).sum()), heap


def _running_quorum(largest: list[float], values: np.ndarray) -> tuple[np.ndarray, list[float]]:
    """The stream time just before each of ``values`` (−inf while fewer than the quorum
    were seen), and the heap after them all; ``largest`` is not changed."""
    heap = list(largest)
    before: list[float] = []
    push, replace, quorum = heapq.heappush, heapq.heapreplace, STREAM_TIME_QUORUM
    minus_inf = -math.inf
    for value in values.tolist():
        if len(heap) < quorum:
            before.append(minus_inf)
            push(heap, value)
        else:
            before.append(heap[0])
            if value > heap[0]:
                replace(heap, value)
    return np.array(before, dtype=np.float64), heap


@dataclass(frozen=True)
class ParserSettings:
    """The slice of the config a source partition needs to parse its input: prices, the
    dimensions the rules use, the dedup horizon and the per-event bounds."""

    pricing: PricingConfig
    dimensions: tuple[str, ...]
    dedup_horizon: int
    max_event_bytes: int = 65536
    bounds: EventBounds = field(default_factory=EventBounds)
    allowed_lateness: int = 300


def parser_for(
    settings: ParserSettings,
    source: str,
    *,
    live: bool = False,
    clock: Callable[[], float] = time.time,
) -> EventParser:
    """The one wiring of a partition's parser (flow, replay and tests)."""
    return EventParser(
        PriceTable(settings.pricing),
        settings.dimensions,
        settings.dedup_horizon,
        max_event_bytes=settings.max_event_bytes,
        source=source,
        bounds=settings.bounds,
        wall_clock=clock if live else None,
        allowed_lateness=settings.allowed_lateness,
    )
