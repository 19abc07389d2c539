"""OTLP/JSON trace files as a recoverable Bytewax source that emits parsed batches.

Each line is one ``ExportTraceServiceRequest`` (the Collector's ``file`` exporter). Its
GenAI spans are mapped to contract JSON by :class:`~spendwatch.ingest.otlp.OtlpMapper` and
parsed by the shared parser inside the partition, which snapshots the byte offset of the
lines consumed together with the dedup window. ``follow`` keeps reading a growing file.

With ``receive: true`` a second partition, ``otlp-http``, reads what ``POST /v1/traces`` on
the worker's HTTP server queued (:mod:`spendwatch.service.otlp_receiver`); it snapshots
its dedup window only (the queue itself is not recovered).
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone
from typing import Any

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from spendwatch.core import stats
from spendwatch.dataflows.sources import record_batch
from spendwatch.ingest.events import ParsedBatch
from spendwatch.ingest.otlp import OtlpMapper, OtlpSourceConfig
from spendwatch.ingest.parser import ParserSettings, parser_for
from spendwatch.service import otlp_receiver

HTTP_POLL = 0.05  # seconds between looks at an empty queue


class _OtlpFilePartition(StatefulSourcePartition[ParsedBatch, Any]):
    def __init__(self, source: OtlpSourceConfig, parsing: ParserSettings, resume: Any) -> None:
        assert source.path is not None
        self._path = source.path
        self._source = source
        self._parser = parser_for(parsing, self._path, live=source.follow)
        self._mapper = OtlpMapper(source, self._path)
        self._offset = 0
        self._line = 0
        self._awake: datetime | None = None
        self._idle_sent = False
        if resume is not None:
            self._offset, self._line, dedup = resume
            self._parser.restore(dedup)
            stats.add_tally(self._parser.tally)
        self._file = open(self._path, "rb")  # noqa: SIM115 - closed in close()
        self._file.seek(self._offset)
        stats.current().bytes_total += os.fstat(self._file.fileno()).st_size

    def next_batch(self) -> list[ParsedBatch]:
        self._awake = None
        lines: list[tuple[bytes, str]] = []
        consumed = 0
        while len(lines) < self._source.batch_lines:
            position = self._file.tell()
            line = self._file.readline()
            if not line:
                break
            if not line.endswith(b"\n") and self._source.follow:
                self._file.seek(position)  # a line still being written: read it whole later
                break
            consumed += len(line)
            self._line += 1
            lines.append((line.rstrip(b"\r\n"), f"{self._path}:{self._line}"))
        if not lines:
            if not self._source.follow and self._idle_sent:
                raise StopIteration
            if self._source.follow:
                poll = timedelta(seconds=self._source.poll_interval)
                self._awake = datetime.now(timezone.utc) + poll
            if self._idle_sent:
                return []
            # caught up, or at the end: the other partitions' windows need not wait for this one
            self._idle_sent = True
            return [ParsedBatch.idle(self._parser.dimensions)]
        self._idle_sent = False
        events, dead, skipped = self._mapper.map_json_lines(lines)
        batch = self._parser.parse(events)
        batch.dead = dead + batch.dead
        self._offset += consumed
        counters = stats.current()
        counters.bytes_read += consumed
        counters.spans_skipped += skipped
        record_batch(batch)
        return [batch]

    def next_awake(self) -> datetime | None:
        return self._awake

    def snapshot(self) -> Any:
        return (self._offset, self._line, self._parser.snapshot())

    def close(self) -> None:
        self._file.close()


class _OtlpHttpPartition(StatefulSourcePartition[ParsedBatch, Any]):
    """What ``POST /v1/traces`` queued, parsed a few requests at a time."""

    def __init__(self, source: OtlpSourceConfig, parsing: ParserSettings, resume: Any) -> None:
        self._source = source
        self._parser = parser_for(parsing, otlp_receiver.PARTITION, live=True)
        if resume is not None:
            self._parser.restore(resume)
            stats.add_tally(self._parser.tally)
        self._inbox = otlp_receiver.INBOX
        self._inbox.attach(OtlpMapper(source, otlp_receiver.PARTITION))
        self._awake: datetime | None = None
        self._idle_sent = False

    def next_batch(self) -> list[ParsedBatch]:
        self._awake = None
        items = self._inbox.take(self._source.batch_lines)
        if not items:
            if self._inbox.finished:
                raise StopIteration
            self._awake = datetime.now(timezone.utc) + timedelta(seconds=HTTP_POLL)
            if self._idle_sent:
                return []
            self._idle_sent = True  # nothing queued: the other partitions need not wait
            return [ParsedBatch.idle(self._parser.dimensions)]
        self._idle_sent = False
        events = [line for lines, _, _ in items for line in lines]
        batch = self._parser.parse(events)
        batch.dead = [d for _, dead, _ in items for d in dead] + batch.dead
        stats.current().spans_skipped += sum(skipped for _, _, skipped in items)
        record_batch(batch)
        return [batch]

    def next_awake(self) -> datetime | None:
        return self._awake

    def snapshot(self) -> Any:
        return self._parser.snapshot()

    def close(self) -> None:
        self._inbox.detach()


class OtlpFileSource(FixedPartitionedSource[ParsedBatch, Any]):
    """One partition for the OTLP/JSON traces file and one, ``otlp-http``, for what
    ``POST /v1/traces`` receives; emitting :class:`ParsedBatch` items."""

    def __init__(self, source: OtlpSourceConfig, parsing: ParserSettings) -> None:
        self.source = source
        self.parsing = parsing

    def list_parts(self) -> list[str]:
        parts = [self.source.path] if self.source.path is not None else []
        if self.source.receive:
            parts.append(otlp_receiver.PARTITION)
        return parts

    def build_part(self, step_id: str, for_part: str, resume_state: Any) -> StatefulSourcePartition:
        if for_part == otlp_receiver.PARTITION and self.source.receive:
            return _OtlpHttpPartition(self.source, self.parsing, resume_state)
        return _OtlpFilePartition(self.source, self.parsing, resume_state)
