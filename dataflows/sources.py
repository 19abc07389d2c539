"""JSONL input (files and stdin) as a recoverable Bytewax source that emits parsed batches.

Parsing happens inside the source partition because the partition owns what
must be snapshotted together: the byte offset of the next unread line and the
dedup window of recently seen event ids. A batch is read as one block of bytes and
handed to the vectorised decoder (inline, or in helper processes with several blocks
in flight when a file has a backlog); the dedup window is applied as each block is
emitted, in order. An incomplete last line waits for the next read (``follow`` mode)
or is parsed at end of file.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import select
import sys
from abc import abstractmethod
from collections import deque
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from datetime import datetime, timedelta, timezone
from typing import Any, Literal

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from spendwatch.core import stats
from spendwatch.core.logging import get_logger
from spendwatch.dataflows.decodepool import MIN_BACKLOG_BLOCKS, DecodePool, helper_count
from spendwatch.ingest.decoding import DecodedBlock
from spendwatch.ingest.events import DeadLetter, ParsedBatch
from spendwatch.ingest.jsonl import JsonlSourceConfig
from spendwatch.ingest.parser import ParserSettings, parser_for

STDIN = "-"
_BOM = b"\xef\xbb\xbf"
_WAITING, _AT_END, _FULL = "waiting", "at end", "full"
log = get_logger("spendwatch.source")


def record_batch(batch: ParsedBatch) -> None:
    """Add one parsed batch to the process counters."""
    counters = stats.current()
    counters.events += batch.size
    counters.duplicates += batch.duplicates
    counters.blank_lines += batch.blank_lines
    counters.late_events += batch.late
    counters.dedup_unchecked += batch.unchecked
    counters.dead_lettered += len(batch.dead)
    for dead in batch.dead:
        counters.dead_reasons[dead.reason.split(":", 1)[0]] += 1
    for model in stats.count_fallback(counters.fallback_priced, batch.fallback_priced):
        log.warning("model priced by the fallback price", model=model)


def with_offsets(dead: list[DeadLetter], block: bytes, block_offset: int) -> list[DeadLetter]:
    """The dead letters of a block, each with the byte offset of its line in the file.

    A dead letter's raw bytes are its line (stripped), found in the block in order: the
    decoder lists undecodable lines, then rejected rows, each list in input order.
    """
    placed: list[DeadLetter] = []
    cursors: dict[bool, int] = {}
    for letter in dead:
        kind = letter.reason.startswith(_DECODE_REASONS)
        at = block.find(letter.raw, cursors.get(kind, 0)) if letter.raw else -1
        if at < 0:
            at = block.find(letter.raw) if letter.raw else -1
        if at >= 0:
            cursors[kind] = at + max(len(letter.raw), 1)
        offset = block_offset + at if at >= 0 else None
        placed.append(dataclasses.replace(letter, offset=offset))
    return placed


# Reasons given by decoding itself (not by the bounds checked after it).
_DECODE_REASONS = ("invalid event", "malformed JSON", "undecodable line", "event is ")


class _LinePartition(StatefulSourcePartition[ParsedBatch, Any]):
    """Splits a byte stream into complete lines and parses them a block at a time.

    Subclasses only say how to read: ``_read`` returns bytes, ``b""`` at end of input, or
    ``None`` when nothing is available yet (the partition then sleeps for a poll interval).
    ``_offset`` counts the bytes of complete lines consumed: where a restart resumes.
    """

    def __init__(
        self, source: JsonlSourceConfig, parsing: ParserSettings, name: str, *, live: bool
    ) -> None:
        self._parser = parser_for(parsing, name, live=live)
        self._batch_bytes = source.batch_bytes
        self._poll = timedelta(seconds=source.poll_interval)
        self._pending = b""
        self._offset = 0
        self._awake: datetime | None = None
        self._idle_sent = False
        # Blocks read but not yet emitted, oldest first: (bytes, decoded or being decoded,
        # bytes consumed). Only emitted blocks move ``_offset`` and the dedup window.
        self._inflight: deque[tuple[bytes, Any, int]] = deque()
        self._pool: DecodePool | None = None
        self._depth = 1

    @abstractmethod
    def _read(self) -> bytes | None:
        """The next block of bytes, ``b""`` at end of input, ``None`` if none yet."""

    def next_batch(self) -> list[ParsedBatch]:
        self._awake = None
        reading = self._fill()
        if self._inflight:
            return [self._finish(*self._inflight.popleft())]
        if reading == _WAITING:  # caught up with a followed file: the backlog is gone
            self._stop_helpers()
            self._awake = datetime.now(timezone.utc) + self._poll
            return self._caught_up()
        if marker := self._caught_up():  # the other partitions need not wait for us
            return marker
        raise StopIteration

    def _fill(self) -> str:
        """Read and start decoding blocks until enough are in flight; say why reading stopped."""
        while len(self._inflight) < self._depth:
            data = self._read()
            if data is None:
                return _WAITING
            if not data:
                if self._pending:  # a last line without its newline
                    self._submit(self._pending, len(self._pending))
                    self._pending = b""
                return _AT_END
            self._idle_sent = False
            cut = data.rfind(b"\n")
            if cut < 0:
                self._pending += data
                continue
            # One copy of the block: the carried-over partial line and this read up to its
            # last newline, joined straight from a view of the read.
            block = b"".join((self._pending, memoryview(data)[:cut]))
            self._pending = data[cut + 1 :]
            self._submit(block, len(block) + 1)
        return _FULL

    def _submit(self, block: bytes, consumed: int) -> None:
        decoder, source = self._parser.decoder, self._parser.source
        if self._pool is None:
            self._inflight.append((block, decoder.decode_block(block, source), consumed))
        else:
            self._inflight.append((block, self._pool.submit(decoder, block, source), consumed))

    def _finish(
        self, block: bytes, decoded: DecodedBlock | Future[DecodedBlock], consumed: int
    ) -> ParsedBatch:
        if isinstance(decoded, Future):
            try:
                decoded = decoded.result()
            except BrokenProcessPool:  # a helper died (out of memory?): carry on inline
                log.warning("decode helper process died; decoding inline from now on")
                self._stop_helpers()
                decoded = self._parser.decoder.decode_block(block, self._parser.source)
            except Exception as error:  # the helper failed on this block: decode it here
                log.warning("decode helper failed on a block", error=type(error).__name__)
                decoded = self._parser.decoder.decode_block(block, self._parser.source)
        batch = self._parser.finish(decoded)
        if batch.dead:
            batch.dead = with_offsets(batch.dead, block, self._offset)
        self._offset += consumed
        record_batch(batch)
        return batch

    def _start_helpers(self, backlog_bytes: int, setting: int | Literal["auto"]) -> None:
        """Decode in helper processes when the backlog is long enough to repay starting them."""
        processes = helper_count(setting)
        if processes and backlog_bytes >= MIN_BACKLOG_BLOCKS * self._batch_bytes:
            self._pool = DecodePool.acquire(processes)
            self._depth = 2 * processes

    def _stop_helpers(self) -> None:
        if self._pool is not None:
            self._pool = None
            self._depth = 1
            DecodePool.release()

    def _caught_up(self) -> list[ParsedBatch]:
        """The idle marker, once per stretch of having nothing new to read."""
        if self._idle_sent:
            return []
        self._idle_sent = True
        return [ParsedBatch.idle(self._parser.dimensions)]

    def next_awake(self) -> datetime | None:
        return self._awake


class _FilePartition(_LinePartition):
    """A JSONL file, resumable from its byte offset; ``follow`` waits for it to grow."""

    def __init__(
        self, source: JsonlSourceConfig, parsing: ParserSettings, path: str, resume: Any
    ) -> None:
        super().__init__(source, parsing, path, live=source.follow)
        self._path = path
        self._follow = source.follow
        self._file = open(path, "rb")  # noqa: SIM115 - closed in close()
        if resume is not None:
            self._offset, dedup = resume
            self._parser.restore(dedup)
            stats.add_tally(self._parser.tally)
        elif self._file.read(len(_BOM)) == _BOM:  # editors' byte-order mark: not a line
            self._offset = len(_BOM)
        self._file.seek(self._offset)
        size = os.fstat(self._file.fileno()).st_size
        counters = stats.current()
        counters.bytes_total += size
        counters.bytes_read += self._offset
        self._start_helpers(size - self._offset, source.decode_processes)

    def _read(self) -> bytes | None:
        data = self._file.read(self._batch_bytes)
        lag = os.fstat(self._file.fileno()).st_size - self._file.tell()
        stats.current().lag[self._path] = max(lag, 0)
        if not data and self._follow:
            return None
        stats.current().bytes_read += len(data)
        return data

    def snapshot(self) -> Any:
        return (self._offset, self._parser.snapshot())

    def close(self) -> None:
        self._stop_helpers()
        self._file.close()


class _StdinPartition(_LinePartition):
    """Reads whatever stdin has without blocking the worker; not resumable (no offsets)."""

    def __init__(self, source: JsonlSourceConfig, parsing: ParserSettings) -> None:
        super().__init__(source, parsing, STDIN, live=True)
        self._poll = min(self._poll, timedelta(seconds=0.1))
        self._fd = sys.stdin.buffer.fileno()

    def _read(self) -> bytes | None:
        ready, _, _ = select.select([self._fd], [], [], 0)
        return os.read(self._fd, self._batch_bytes) if ready else None

    def snapshot(self) -> Any:
        return None


def input_paths(path: str | list[str]) -> list[str]:
    """The files a ``source.path`` names, in a stable order (patterns expanded, repeats dropped)."""
    paths: list[str] = []
    for item in [path] if isinstance(path, str) else path:
        matches = sorted(glob.glob(item)) if glob.has_magic(item) else [item]
        paths.extend(m for m in matches if m not in paths)
    return paths


def missing_input(source: Any) -> str | None:
    """Why a file source cannot start (no such file, a pattern matching nothing), or ``None``."""
    if getattr(source, "type", None) not in ("jsonl", "focus") or source.path == STDIN:
        return None
    paths = input_paths(source.path)
    if not paths:
        return f"source.path {source.path!r} matches no file"
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        return f"input file {missing[0]} does not exist (source.path)"
    return None


def clobbered_input(source: Any, outputs: dict[str, str | None]) -> str | None:
    """Why an output would overwrite an input file (``--alerts-out`` = ``--input``), or None.

    Outputs are opened for writing before the input is read: the same file on both
    sides would be truncated to nothing and the run would report zero events.
    """
    if getattr(source, "type", None) not in ("jsonl", "focus") or source.path == STDIN:
        return None
    inputs = [p for p in input_paths(source.path) if os.path.exists(p)]
    for name, output in outputs.items():
        if not output or not os.path.exists(output):
            continue
        for path in inputs:
            if os.path.samefile(path, output):
                return f"{name} {output} is the input file {path}: it would be overwritten"
    return None


class JsonlSource(FixedPartitionedSource[ParsedBatch, Any]):
    """One partition per input file (or stdin), emitting :class:`ParsedBatch` items.

    ``source.path`` may name several files (a list and/or glob patterns): each file is
    its own partition with its own offset, so the files spread over the workers of
    every process and each resumes independently after a crash.
    """

    def __init__(self, source: JsonlSourceConfig, parsing: ParserSettings) -> None:
        self.source = source
        self.parsing = parsing

    def list_parts(self) -> list[str]:
        return input_paths(self.source.path)

    def build_part(self, step_id: str, for_part: str, resume_state: Any) -> StatefulSourcePartition:
        if for_part == STDIN:
            return _StdinPartition(self.source, self.parsing)
        return _FilePartition(self.source, self.parsing, for_part, resume_state)
