"""FOCUS billing exports as a recoverable Bytewax source that emits parsed batches.

Rows are mapped to contract JSON by :class:`~spendwatch.ingest.focus.FocusMapper` and parsed
by the shared :class:`~spendwatch.ingest.events.EventParser` inside the partition, which
snapshots the number of rows consumed together with the dedup window. On resume the
export is read again from the top and the consumed rows are skipped (CSV has no
stable byte offsets once quoted newlines are allowed; exports are re-read rarely).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from spendwatch.core import stats
from spendwatch.dataflows.sources import record_batch
from spendwatch.ingest.events import ParsedBatch
from spendwatch.ingest.focus import FocusMapper, FocusSourceConfig, open_rows
from spendwatch.ingest.parser import ParserSettings, parser_for


class _FocusPartition(StatefulSourcePartition[ParsedBatch, Any]):
    def __init__(self, source: FocusSourceConfig, parsing: ParserSettings, resume: Any) -> None:
        self._parser = parser_for(parsing, source.path)
        self._mapper = FocusMapper(source, source.path)
        self._rows_done = 0
        if resume is not None:
            self._rows_done, dedup = resume
            self._parser.restore(dedup)
            stats.add_tally(self._parser.tally)
        header, batches, self._handle = open_rows(source)
        try:
            self._mapper.check_header(header)
        except ValueError:
            self._handle.close()
            raise
        self._batches = _skip_rows(batches, self._rows_done)

    def next_batch(self) -> list[ParsedBatch]:
        rows = next(self._batches)  # StopIteration at the end of the export ends the input
        lines, dead = self._mapper.map_rows(rows, first_row=self._rows_done + 1)
        batch = self._parser.parse(lines)
        batch.dead = dead + batch.dead
        self._rows_done += len(rows)
        record_batch(batch)
        return [batch]

    def snapshot(self) -> Any:
        return (self._rows_done, self._parser.snapshot())

    def close(self) -> None:
        close = getattr(self._handle, "close", None)
        if close is not None:
            close()


def _skip_rows(batches: Iterator[list[dict]], count: int) -> Iterator[list[dict]]:
    """Drop the first ``count`` rows (already consumed before a restart)."""
    if count <= 0:
        return batches
    for batch in batches:
        if count < len(batch):
            return itertools.chain([batch[count:]], batches)
        count -= len(batch)
    return iter(())


class FocusSource(FixedPartitionedSource[ParsedBatch, Any]):
    """One partition per export file, emitting :class:`ParsedBatch` items."""

    def __init__(self, source: FocusSourceConfig, parsing: ParserSettings) -> None:
        self.source = source
        self.parsing = parsing

    def list_parts(self) -> list[str]:
        return [self.source.path]

    def build_part(self, step_id: str, for_part: str, resume_state: Any) -> _FocusPartition:
        return _FocusPartition(self.source, self.parsing, resume_state)
