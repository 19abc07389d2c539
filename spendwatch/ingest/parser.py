"""The per-partition event parser: decode a batch, then drop the ids seen before.

Decoding (:mod:`spendwatch.ingest.decoding`) is stateless and may run in a helper process;
the dedup window is the partition's state, snapshotted with its input offset, so it is
applied here, in input order.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from spendwatch.ingest.decoding import BlockDecoder, DecodedBlock
from spendwatch.ingest.events import UNATTRIBUTED, DeadLetter, DedupWindow, EventBounds, ParsedBatch
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
            top = ts if ts.shape[0] <= STREAM_TIME_QUORUM else np.partition(
                ts, -STREAM_TIME_QUORUM
            )[-STREAM_TIME_QUORUM:]
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
    ) -> None:
        self.decoder = BlockDecoder(prices, dimensions, max_event_bytes, bounds, wall_clock)
        self.dimensions = self.decoder.dimensions
        self.dedup = DedupWindow(dedup_horizon)
        self.clock = StreamClock()
        self.source = source

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
            return batch
        count = decoded.size
        ts, spend, numbers = decoded.ts, decoded.spend_nanos, decoded.numbers
        rejected = decoded.rejected
        if rejected:
            bad = np.zeros(count, dtype=bool)
            bad[[row for row, _, _ in rejected]] = True
            admissible = ts[~bad]
            horizon_ts = float(admissible.max()) if admissible.shape[0] else None
        else:
            horizon_ts = float(ts.max())
        if horizon_ts is not None:  # a rejected time (year 9999) never ages the dedup window
            self.dedup.advance(horizon_ts)
        first_seen = self.dedup.filter_new(decoded.event_ids)
        valid = np.ones(count, dtype=bool)
        if first_seen is not None:
            valid[:] = False
            valid[first_seen] = True
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
        stream_time = self.clock.observe(ts)
        return ParsedBatch(
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
            fallback_priced={
                str(models.values[code] or UNATTRIBUTED): int(n)
                for code, n in enumerate(fallback_counts.tolist())
                if n
            },
            stream_time=stream_time,
        )

    def snapshot(self) -> dict[str, Any]:
        return {"dedup": self.dedup.snapshot(), "stream_clock": list(self.clock.largest)}

    def restore(self, state: Any) -> None:
        if state is None:
            return
        if isinstance(state, dict):
            self.dedup.restore(state["dedup"])
            self.clock.largest = list(state["stream_clock"])
            heapq.heapify(self.clock.largest)
        else:  # snapshots before the stream clock held the dedup window only
            self.dedup.restore(state)


@dataclass(frozen=True)
class ParserSettings:
    """The slice of the config a source partition needs to parse its input: prices, the
    dimensions the rules use, the dedup horizon and the per-event bounds."""

    pricing: PricingConfig
    dimensions: tuple[str, ...]
    dedup_horizon: int
    max_event_bytes: int = 65536
    bounds: EventBounds = field(default_factory=EventBounds)


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
    )

