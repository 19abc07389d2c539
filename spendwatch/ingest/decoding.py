"""Stateless decoding of raw input into validated, priced columns.

Decoding needs nothing but the config (the schema, the prices, the dimensions), so it can
run anywhere: inline, or in a helper process while the worker aggregates the previous
block (:mod:`spendwatch.dataflows.decodepool`). What depends on history, the dedup of
event ids, is done afterwards by :meth:`spendwatch.ingest.parser.EventParser.finish`, in input
order, so both ways give the same batches.

The fast path decodes a whole block of JSON lines in one C call and reads each field out
with C-level iterators. A block with bad lines is halved until its good ranges decode in
bulk and each bad line stands alone, dead-lettered with the reason its own decode gives.
Lines with OpenTelemetry GenAI names or over the size limit take the line-by-line path.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from operator import attrgetter

import msgspec
import numpy as np

from spendwatch.core.logging import get_logger
from spendwatch.core.timefmt import rfc3339
from spendwatch.ingest.columns import Categorical, factorize
from spendwatch.ingest.events import (
    MAX_EVENT_TS,
    MIN_EVENT_TS,
    NON_ANOMALY_CATEGORIES,
    UNATTRIBUTED,
    DeadLetter,
    EventBounds,
    UsageEvent,
    id_keys,
)
from spendwatch.ingest.genai import MARKER, apply_aliases
from spendwatch.ingest.pricing import PriceTable

log = get_logger("spendwatch.ingest.decoding")
_one_decoder = msgspec.json.Decoder(UsageEvent)
_array_decoder = msgspec.json.Decoder(list[UsageEvent])
_NUMBER_GETTERS = tuple(
    attrgetter(name)
    for name in ("input_tokens", "output_tokens", "cached_input_tokens", "requests")
)
_get_ts = attrgetter("ts")
_get_event_id = attrgetter("event_id")
_get_cost = attrgetter("cost_usd")
_NO_LABELS: dict[str, str] = {}
# A range that fails for any reason is halved, down to single lines: a decoder error of
# any kind (nesting past the recursion limit included) dead-letters a line, never escapes.
_DECODE_ERRORS = (Exception,)
_NEWLINE, _OPEN_BRACE = ord("\n"), ord("{")
_LEAF = 16  # lines decoded one by one once a failing range is this small
# Whether a block holds a GenAI attribute name: the regex engine scans a 4 MB block a
# third faster than ``bytes.__contains__``.
_has_marker = re.compile(re.escape(MARKER)).search


@dataclass
class DecodedBlock:
    """Valid, priced events of one block as columns, before dedup.

    ``rejected`` rows decoded but break a rule that needs the catalog or the charge
    category (a negative cost on a usage line, an unknown model): they become dead
    letters unless they turn out to be duplicates, which the dedup step decides.
    """

    event_ids: list[str]
    ts: np.ndarray  # float64 epoch seconds
    spend_nanos: np.ndarray  # int64, 1e-9 USD
    numbers: np.ndarray  # int64 (rows, 4): input, output, cached input tokens, requests
    anomaly_input: np.ndarray  # bool
    dims: dict[str, Categorical]
    models: Categorical
    fallback_used: np.ndarray  # bool
    rejected: list[tuple[int, str, bytes]] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    blank: int = 0  # empty or whitespace-only lines: not events, not dead letters, counted
    keys: np.ndarray | None = None
    """64-bit dedup keys of ``event_ids`` (:func:`spendwatch.ingest.events.id_keys`),
    hashed where the block is decoded (a helper process, when there are some)."""

    @property
    def size(self) -> int:
        return len(self.event_ids)

    @classmethod
    def empty(cls, dimensions: Sequence[str], dead: list[DeadLetter]) -> DecodedBlock:
        zeros = np.zeros(0, dtype=np.int64)
        return cls(
            event_ids=[],
            ts=np.zeros(0),
            spend_nanos=zeros,
            numbers=np.zeros((0, 4), dtype=np.int64),
            anomaly_input=np.zeros(0, dtype=bool),
            dims={d: Categorical(zeros, []) for d in dimensions},
            models=Categorical(zeros, []),
            fallback_used=np.zeros(0, dtype=bool),
            dead=dead,
        )


class BlockDecoder:
    """Decodes JSON lines into a :class:`DecodedBlock`; holds only configuration."""

    def __init__(
        self,
        prices: PriceTable,
        dimensions: Sequence[str],
        max_event_bytes: int = 65536,
        bounds: EventBounds | None = None,
        wall_clock: Callable[[], float] | None = None,
    ) -> None:
        self.prices = prices
        self.dimensions = tuple(dimensions)
        self.max_event_bytes = max_event_bytes
        self.bounds = bounds or EventBounds()
        # Live input (a followed file, stdin, Kafka) has an outside reference for "now":
        # an event further ahead of it than max_future_skew comes from a wrong clock. A
        # history has none; there the parser's stream-clock quorum guards the watermark.
        self.wall_clock = wall_clock
        plain = [d for d in self.dimensions if not d.startswith("labels.")]
        # Every plain string column is read in one pass as a tuple per event and the
        # distinct tuples factorised once: far fewer hash-table probes than one pass
        # per column, since a block holds few distinct combinations.
        self._fields = tuple(dict.fromkeys([*plain, "model", "charge_category"]))
        self._get_fields = attrgetter(*self._fields)

    def decode_block(self, block: bytes, source: str = "") -> DecodedBlock:
        """Decode newline-separated events (a block of a file or of stdin); never raises."""
        try:
            return self._decode_block(block, source)
        except Exception as error:  # a poison block is salvaged line by line, never retried
            return self._salvage(block.split(b"\n"), source, error)

    def decode_lines(self, lines: Sequence[bytes], source: str = "") -> DecodedBlock:
        """Decode one event per item (Kafka message values, or the lines of a block);
        never raises."""
        try:
            return self._decode_lines(lines, source)
        except Exception as error:
            return self._salvage(lines, source, error)

    def _salvage(self, lines: Sequence[bytes], source: str, error: Exception) -> DecodedBlock:
        """What survives of input whose decoding failed as a whole: each line that fails
        on its own is a dead letter naming the error, the others decode together."""
        log.error(
            "decoding failed; dead-lettering the lines that fail alone",
            error=type(error).__name__,
            source=source,
        )
        good: list[bytes] = []
        dead: list[DeadLetter] = []
        for line in filter(None, (item.strip() for item in lines)):
            try:
                self._decode_lines([line], source)
                good.append(line)
            except Exception as failure:
                reason = f"undecodable line: {type(failure).__name__}"
                dead.append(DeadLetter(reason, line, source))
        try:
            decoded = self._decode_lines(good, source)
        except Exception as failure:  # lines that pass alone fail together: lose none
            reason = f"undecodable line: {type(failure).__name__}"
            decoded = DecodedBlock.empty(self.dimensions, [])
            dead.extend(DeadLetter(reason, line, source) for line in good)
        decoded.dead = dead + decoded.dead
        return decoded

    def _decode_block(self, block: bytes, source: str) -> DecodedBlock:
        bounds = self._line_bounds(block)
        if bounds is None or _has_marker(block):
            return self._decode_lines(block.split(b"\n"), source)
        starts, stops, clean = bounds

        def raw_line(i: int) -> bytes:
            return block[starts[i] : stops[i]]

        def decode_range(lo: int, hi: int) -> list[UsageEvent] | None:
            # Only lines that all start with "{" are decoded together: decode_lines skips
            # blank lines, which would let a line holding two objects pass the count check.
            if clean[hi] - clean[lo] != hi - lo:
                return None
            return _one_decoder.decode_lines(block[starts[lo] : stops[hi - 1]])

        return self._decode_ranges(decode_range, raw_line, len(starts), source)

    def _decode_lines(self, lines: Sequence[bytes], source: str) -> DecodedBlock:
        blank = sum(1 for line in lines if not line.strip())
        decoded = self._decode_nonblank(list(filter(None, lines)), source)
        decoded.blank = blank
        return decoded

    def _decode_nonblank(self, lines: list[bytes], source: str) -> DecodedBlock:
        if lines and max(map(len, lines)) <= self.max_event_bytes:
            joined = b"[" + b",".join(lines) + b"]"
            if not _has_marker(joined):  # aliased attribute names: the line-by-line path

                def decode_range(lo: int, hi: int) -> list[UsageEvent]:
                    if lo == 0 and hi == len(lines):
                        return _array_decoder.decode(joined)
                    return _array_decoder.decode(b"[" + b",".join(lines[lo:hi]) + b"]")

                return self._decode_ranges(decode_range, lines.__getitem__, len(lines), source)
        dead: list[DeadLetter] = []
        accepted: list[bytes] = []
        aliased: dict[bytes, bytes] = {}  # rewritten line -> original, for dead letters
        for line in lines:
            stripped = line.strip()
            if not stripped:
                continue
            if len(stripped) > self.max_event_bytes:
                reason = (
                    f"event is {len(stripped)} bytes, over the {self.max_event_bytes}-byte limit"
                )
                dead.append(DeadLetter(reason, stripped, source))
                continue
            if MARKER in stripped:  # OpenTelemetry GenAI attribute names: the rare, slow path
                original, stripped = stripped, apply_aliases(stripped)
                aliased[stripped] = original
            accepted.append(stripped)
        events, raws = self._decode_each(accepted, dead, source)
        if aliased:
            raws = [aliased.get(raw, raw) for raw in raws]
            dead = [DeadLetter(d.reason, aliased.get(d.raw, d.raw), d.source) for d in dead]
        return self._columns(events, raws.__getitem__, dead, source)

    def _decode_ranges(
        self,
        decode_range: Callable[[int, int], list[UsageEvent] | None],
        raw_line: Callable[[int], bytes],
        count: int,
        source: str,
    ) -> DecodedBlock:
        """Decode lines ``0..count`` in as few C calls as the bad lines allow.

        The whole range is tried at once; a range that fails is halved, so one bad line
        among thousands costs about two decodes of the block, not a line-by-line pass.
        Ranges of ``_LEAF`` lines or fewer are decoded line by line, and each line that
        fails there is dead-lettered with the reason its own decode gives.
        """
        events: list[UsageEvent] = []
        rows: list[int] = []  # the line of each event
        dead: list[DeadLetter] = []
        blank = 0
        pending = [(0, count)]
        while pending:
            lo, hi = pending.pop()
            if hi - lo > _LEAF:
                try:
                    decoded = decode_range(lo, hi)
                except _DECODE_ERRORS:
                    decoded = None
                if decoded is not None and len(decoded) == hi - lo:  # one event per line
                    events.extend(decoded)
                    rows.extend(range(lo, hi))
                    continue
                mid = (lo + hi) // 2
                pending += [(mid, hi), (lo, mid)]  # lo..mid is popped first: line order
                continue
            for i in range(lo, hi):
                line = raw_line(i).strip()
                if not line:
                    blank += 1
                    continue
                decoded, _ = self._decode_each([line], dead, source)
                events.extend(decoded)
                rows.extend([i] * len(decoded))
        block = self._columns(events, lambda k: raw_line(rows[k]).strip(), dead, source)
        block.blank = blank
        return block

    def _line_bounds(self, block: bytes) -> tuple[list[int], list[int], np.ndarray] | None:
        """Start and end of each line, and a running count of lines starting with ``{``;
        ``None`` when a line is over the size limit (the line-by-line path words that)."""
        if not block:
            return None
        text = np.frombuffer(block, dtype=np.uint8)
        ends = np.flatnonzero(text == _NEWLINE)
        starts = np.concatenate(([0], ends + 1))
        stops = np.append(ends, len(block))
        if starts[-1] == len(block):  # a final newline ends the last line, opens none
            starts, stops = starts[:-1], stops[:-1]
        if (stops - starts).max() > self.max_event_bytes:
            return None
        opens = text[starts] == _OPEN_BRACE
        clean = np.concatenate(([0], np.cumsum(opens)))
        return starts.tolist(), stops.tolist(), clean

    def _decode_each(
        self, lines: list[bytes], dead: list[DeadLetter], source: str
    ) -> tuple[list[UsageEvent], list[bytes]]:
        events, raws = [], []
        for line in lines:
            try:
                events.append(_one_decoder.decode(line))
                raws.append(line)
            except msgspec.ValidationError as error:
                dead.append(DeadLetter(f"invalid event: {error}", line, source))
            except (msgspec.DecodeError, UnicodeDecodeError) as error:
                dead.append(DeadLetter(f"malformed JSON: {error}", line, source))
            except RecursionError:
                dead.append(DeadLetter("malformed JSON: nested too deeply", line, source))
            except Exception as error:  # one line must never stop the worker
                reason = f"undecodable line: {type(error).__name__}"
                dead.append(DeadLetter(reason, line, source))
        return events, raws

    def _columns(
        self,
        events: list[UsageEvent],
        raw_of: Callable[[int], bytes],
        dead: list[DeadLetter],
        source: str,
    ) -> DecodedBlock:
        count = len(events)
        if not count:
            return DecodedBlock.empty(self.dimensions, dead)
        ts = _timestamps(events)
        numbers = np.empty((count, 4), dtype=np.int64)
        for column, getter in enumerate(_NUMBER_GETTERS):
            numbers[:, column] = np.fromiter(map(getter, events), dtype=np.int64, count=count)
        strings = self._string_columns(events)
        categories = strings.pop("charge_category")
        models = strings.pop("model")
        credit_codes = np.array(
            [v.lower() in NON_ANOMALY_CATEGORIES for v in categories.values], dtype=bool
        )
        credit_like = credit_codes[categories.codes]
        given = np.array(list(map(_get_cost, events)), dtype=np.float64)  # None -> nan
        has_cost = ~np.isnan(given)
        priced, fallback_used, unknown = self.prices.price_nanos(
            models, numbers[:, 0], numbers[:, 2], numbers[:, 1], needed=~has_cost
        )
        negative = has_cost & (given < 0) & ~credit_like
        bounds = self.bounds
        max_nanos = bounds.max_cost_usd * 1e9
        out_of_range = self._out_of_range(ts, numbers)
        future = (
            ts > self.wall_clock() + bounds.max_future_skew
            if self.wall_clock is not None
            else np.zeros(count, dtype=bool)
        )
        out_of_range |= future
        with np.errstate(over="ignore"):  # 1e308 dollars: inf nano-dollars, rejected below
            given_nanos = np.nan_to_num(given) * 1e9
        costly = np.where(has_cost, np.abs(given_nanos), priced) > max_nanos
        rejected = []
        for i in np.flatnonzero(negative | unknown | out_of_range | costly).tolist():
            if future[i]:
                reason = (
                    f"future timestamp: {rfc3339(float(ts[i]))} is more than "
                    f"engine.max_future_skew ({bounds.max_future_skew} s) ahead of the wall clock"
                )
            elif out_of_range[i]:
                reason = self._range_reason(ts[i], numbers[i])
            elif costly[i]:
                cost = abs(given[i]) if has_cost[i] else priced[i] / 1e9
                reason = (
                    f"cost out of range: ${cost:.6g} is over engine.max_event_cost_usd "
                    f"(${bounds.max_cost_usd:g})"
                )
            elif negative[i]:
                reason = (
                    f"negative cost_usd {given[i]} on a {categories.values[categories.codes[i]]!r}"
                    " line (only credit/adjustment lines may be negative)"
                )
            else:
                reason = (
                    f"unknown model {models.values[models.codes[i]]!r}: not in the pricing "
                    "catalog and no pricing.fallback is configured (or send cost_usd)"
                )
            rejected.append((i, reason, raw_of(i)))
        # Rejected rows are zeroed before the integer conversion: no value can wrap.
        spend = np.where(has_cost, np.round(given_nanos), priced)
        spend = np.where(costly | out_of_range, 0.0, spend).astype(np.int64)
        strings["model"] = _attributed(models)
        dims = {
            d: strings[d] if d in strings else _label_column(events, d) for d in self.dimensions
        }
        event_ids = list(map(_get_event_id, events))
        return DecodedBlock(
            event_ids=event_ids,
            keys=id_keys(event_ids),
            ts=ts,
            spend_nanos=spend,
            numbers=numbers,
            anomaly_input=~credit_like,
            dims=dims,
            models=models,
            fallback_used=fallback_used,
            rejected=rejected,
            dead=dead,
        )

    def _out_of_range(self, ts: np.ndarray, numbers: np.ndarray) -> np.ndarray:
        """Rows whose time or counts break :class:`EventBounds` (NaN time: unconvertible)."""
        bounds = self.bounds
        return (
            ~((ts >= MIN_EVENT_TS) & (ts < MAX_EVENT_TS))
            | (numbers[:, :3] > bounds.max_tokens).any(axis=1)
            | (numbers[:, 3] > bounds.max_requests)
        )

    def _range_reason(self, ts: float, numbers: np.ndarray) -> str:
        bounds = self.bounds
        if not MIN_EVENT_TS <= ts < MAX_EVENT_TS:
            return "timestamp out of range: event time must be in the years 2000-2100"
        if numbers[3] > bounds.max_requests:
            return (
                f"requests out of range: {int(numbers[3])} is over "
                f"engine.max_requests_per_event ({bounds.max_requests})"
            )
        return (
            f"tokens out of range: {int(numbers[:3].max())} is over "
            f"engine.max_tokens_per_event ({bounds.max_tokens})"
        )

    def _string_columns(self, events: list[UsageEvent]) -> dict[str, Categorical]:
        combos = factorize(map(self._get_fields, events), len(events))
        columns = {}
        for position, name in enumerate(self._fields):
            values = [combo[position] for combo in combos.values]
            missing = {"model": None, "charge_category": "usage"}.get(name, UNATTRIBUTED)
            column = factorize(values, len(values), missing=missing)
            columns[name] = Categorical(column.codes[combos.codes], column.values)
        return columns


def _timestamps(events: list[UsageEvent]) -> np.ndarray:
    """Epoch seconds of each event; NaN where a date has no epoch value (year 1 at +01:00)."""
    stamps = map(datetime.timestamp, map(_get_ts, events))
    try:
        return np.fromiter(stamps, dtype=np.float64, count=len(events))
    except (OverflowError, ValueError, OSError):
        return np.array([_timestamp_or_nan(e.ts) for e in events], dtype=np.float64)


def _timestamp_or_nan(ts: datetime) -> float:
    try:
        return ts.timestamp()
    except (OverflowError, ValueError, OSError):
        return float("nan")


def _attributed(column: Categorical) -> Categorical:
    """Reuse an already factorised column as a dimension (missing → ``unattributed``)."""
    if UNATTRIBUTED in column.values:  # rare clash with a literal value: merge properly
        return factorize(column.tolist(), len(column), missing=UNATTRIBUTED)
    return Categorical(column.codes, [UNATTRIBUTED if v is None else v for v in column.values])


def _label_column(events: Sequence[UsageEvent], dimension: str) -> Categorical:
    """A ``labels.KEY`` dimension as codes; events without the label are ``unattributed``."""
    key = dimension[len("labels.") :]
    values = map(dict.get, [e.labels or _NO_LABELS for e in events], itertools.repeat(key))
    return factorize(values, len(events), missing=UNATTRIBUTED)
