"""The per-partition event parser: decode a batch, then drop the ids seen before.

Decoding (:mod:`spendwatch.decoding`) is stateless and may run in a helper process;
the dedup window is the partition's state, snapshotted with its input offset, so it is
applied here, in input order.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from spendwatch.decoding import BlockDecoder, DecodedBlock
from spendwatch.events import UNATTRIBUTED, DeadLetter, DedupWindow, ParsedBatch
from spendwatch.pricing import PriceTable


class EventParser:
    """Turns raw JSONL lines into a :class:`ParsedBatch`; one instance per input partition."""

    def __init__(
        self,
        prices: PriceTable,
        dimensions: Sequence[str],
        dedup_horizon: int,
        max_event_bytes: int = 65536,
        source: str = "",
    ) -> None:
        self.decoder = BlockDecoder(prices, dimensions, max_event_bytes)
        self.dimensions = self.decoder.dimensions
        self.dedup = DedupWindow(dedup_horizon)
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
            return batch
        count = decoded.size
        ts, spend, numbers = decoded.ts, decoded.spend_nanos, decoded.numbers
        self.dedup.advance(float(ts.max()))
        first_seen = self.dedup.filter_new(decoded.event_ids)
        valid = np.ones(count, dtype=bool)
        if first_seen is not None:
            valid[:] = False
            valid[first_seen] = True
        keep = valid.copy()
        for row, reason, raw in decoded.rejected:
            if valid[row]:  # a repeat of a rejected line is a duplicate, not a second dead letter
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
            fallback_priced={
                str(models.values[code] or UNATTRIBUTED): int(n)
                for code, n in enumerate(fallback_counts.tolist())
                if n
            },
        )

    def snapshot(self) -> tuple[float | None, list[str], list[str]]:
        return self.dedup.snapshot()

    def restore(self, state: tuple[float | None, list[str], list[str]] | None) -> None:
        if state is not None:
            self.dedup.restore(state)
