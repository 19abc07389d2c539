"""The usage-event schema (input contract), its bounds, and the batch it becomes.

``UsageEvent`` is the single definition of the input format: validation is msgspec
decoding against it (:mod:`spendwatch.ingest.decoding`) and ``spendwatch schema --events``
renders it as JSON Schema. A decoded, deduplicated batch is a :class:`ParsedBatch` of
columns (numpy arrays and factorised strings), so everything after it runs per batch,
not per event; the parser that makes it is :mod:`spendwatch.ingest.parser`.
"""

from __future__ import annotations

import base64
import hashlib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any

import msgspec
import numpy as np

from spendwatch.ingest.columns import Categorical

UNATTRIBUTED = "unattributed"
NON_ANOMALY_CATEGORIES = frozenset({"credit", "adjustment"})
NEGATIVE_COST_CATEGORIES = NON_ANOMALY_CATEGORIES

# Hard ceilings of the schema itself: far above any real event, low enough that every
# admitted count fits int64 sums with headroom. The configured, tighter bounds are
# ``EventBounds`` (``engine.max_tokens_per_event`` and friends).
TOKEN_CEILING = 10**15
REQUEST_CEILING = 10**12

_Dim = Annotated[str, msgspec.Meta(max_length=1024)]
_Tokens = Annotated[int, msgspec.Meta(ge=0, le=TOKEN_CEILING)]


class UsageEvent(msgspec.Struct, gc=False):
    """One usage event: an LLM call (tokens + model) or a billing line (cost)."""

    event_id: Annotated[
        str,
        msgspec.Meta(min_length=1, max_length=512, description="unique id; repeats are duplicates"),
    ]
    ts: Annotated[
        datetime, msgspec.Meta(tz=True, description="event time, RFC 3339 with offset or Z")
    ]
    tenant: _Dim | None = None
    feature: _Dim | None = None
    team: _Dim | None = None
    environment: _Dim | None = None
    service: _Dim | None = None
    user: _Dim | None = None
    session: _Dim | None = None
    model: _Dim | None = None
    provider: _Dim | None = None
    prompt_id: _Dim | None = None
    input_tokens: Annotated[_Tokens, msgspec.Meta(description="prompt tokens")] = 0
    output_tokens: Annotated[_Tokens, msgspec.Meta(description="completion tokens")] = 0
    cached_input_tokens: Annotated[
        _Tokens, msgspec.Meta(description="prompt tokens served from cache (part of input_tokens)")
    ] = 0
    requests: Annotated[
        int, msgspec.Meta(ge=1, le=REQUEST_CEILING, description="calls this event stands for")
    ] = 1
    cost_usd: Annotated[
        float | None, msgspec.Meta(description="known cost; else priced from the catalog")
    ] = None
    charge_category: _Dim | None = None
    latency_ms: Annotated[float, msgspec.Meta(ge=0)] | None = None
    labels: Annotated[
        dict[str, str] | None,
        msgspec.Meta(description="free-form extra dimensions, selectable as labels.KEY"),
    ] = None  # None, not {}: most events have none, and an empty dict per event is not free


def event_json_schema() -> dict[str, Any]:
    """JSON Schema of the input contract, derived from :class:`UsageEvent`."""
    return msgspec.json.schema(UsageEvent)


# Event times outside these years are a broken clock or a unit mistake (milliseconds
# read as seconds), never history: 2000-01-01 and 2101-01-01 UTC.
MIN_EVENT_TS = 946_684_800.0
MAX_EVENT_TS = 4_133_980_800.0


@dataclass(frozen=True)
class EventBounds:
    """What one admitted event may carry, beyond the schema's types.

    Every bound exists so that no single line can corrupt a sum or the clock: token
    and request counts stay far inside int64, a cost stays below 2⁵³ nano-dollars
    (so its float → integer conversion is exact) and event time stays in years
    2000–2100 (so calendar periods exist). ``max_future_skew`` applies to live input
    only (see :class:`spendwatch.ingest.parser.EventParser`).
    """

    max_tokens: int = 10**12
    max_requests: int = 10**9
    max_cost_usd: float = 1_000_000.0
    max_future_skew: int = 600

    @classmethod
    def from_engine(cls, engine: Any) -> EventBounds:
        """The bounds an ``engine:`` config section sets (defaults for keys it lacks)."""
        defaults = cls()
        return cls(
            max_tokens=getattr(engine, "max_tokens_per_event", defaults.max_tokens),
            max_requests=getattr(engine, "max_requests_per_event", defaults.max_requests),
            max_cost_usd=getattr(engine, "max_event_cost_usd", defaults.max_cost_usd),
            max_future_skew=int(getattr(engine, "max_future_skew", defaults.max_future_skew)),
        )


@dataclass(frozen=True)
class DeadLetter:
    """An input line that was not accepted, with the reason; the raw bytes are kept whole."""

    reason: str
    raw: bytes
    source: str = ""
    offset: int | None = None
    """Where the line starts in its partition (byte offset of a file, a Kafka message's
    offset): with ``source`` the key that makes each dead letter written once."""

    def to_record(self) -> dict[str, Any]:
        record: dict[str, Any] = {"reason": self.reason, "source": self.source}
        if self.offset is not None:
            record["offset"] = self.offset
        try:
            record["raw"] = self.raw.decode("utf-8")
        except UnicodeDecodeError:
            record["raw_base64"] = base64.b64encode(self.raw).decode("ascii")
        return record


@dataclass
class ParsedBatch:
    """Valid, deduplicated, priced events of one input batch, as columns."""

    ts: np.ndarray  # float64 epoch seconds
    spend_nanos: np.ndarray  # int64, 1e-9 USD: integer money sums are exact in any order
    requests: np.ndarray  # int64
    input_tokens: np.ndarray  # int64
    output_tokens: np.ndarray  # int64
    anomaly_input: np.ndarray  # bool: credits/adjustments count for budgets only
    dims: dict[str, Categorical]
    dead: list[DeadLetter] = field(default_factory=list)
    duplicates: int = 0
    blank_lines: int = 0
    late: int = 0
    """Events that arrived more than the allowed lateness behind their partition's stream
    time (each counted once, however many rules window it)."""
    unchecked: int = 0
    """Events older than the oldest dedup bucket held: admitted without a duplicate check."""
    fallback_priced: dict[str, int] = field(default_factory=dict)
    caught_up: bool = False
    """The partition has read all there is for now: it must not hold the watermark back
    until it sends events again (an idle Kafka partition, a file at its end)."""
    stream_time: float | None = None
    """The partition's robust event time after this batch (see
    :class:`spendwatch.ingest.parser.StreamClock`): what may move the watermark, never one
    event's own time."""

    @property
    def size(self) -> int:
        return int(self.ts.shape[0])

    @property
    def max_ts(self) -> float | None:
        return float(self.ts.max()) if self.ts.shape[0] else None

    @classmethod
    def idle(cls, dims: Iterable[str]) -> ParsedBatch:
        """The marker a partition sends once when it has caught up with its input."""
        batch = cls.empty(dims)
        batch.caught_up = True
        return batch

    @classmethod
    def empty(cls, dims: Iterable[str]) -> ParsedBatch:
        zeros = np.zeros(0, dtype=np.int64)
        return cls(
            ts=np.zeros(0),
            spend_nanos=zeros,
            requests=zeros,
            input_tokens=zeros,
            output_tokens=zeros,
            anomaly_input=np.zeros(0, dtype=bool),
            dims={d: Categorical(zeros, []) for d in dims},
        )


DEDUP_BUCKET = 3600
"""Seconds of event time per dedup bucket: ids are remembered with their own event hour."""

_BUCKET_MIX = np.uint64(0x9E3779B97F4A7C15)


def id_keys(event_ids: Sequence[str]) -> np.ndarray:
    """64-bit keys (uint64) of event ids: the first 8 bytes of BLAKE2b, the same in every
    process and release (Python's ``hash`` is salted per process)."""
    blake = hashlib.blake2b
    digests = b"".join(
        [blake(i.encode("utf-8", "surrogatepass"), digest_size=8).digest() for i in event_ids]
    )
    return np.frombuffer(digests, dtype="<u8").astype(np.uint64, copy=False)


class _Bucket:
    """The keys of one bucket: a few sorted uint64 runs, merged as they grow (each run at
    most half the one before), so adding is amortised O(n log n) and a lookup is a binary
    search per run. 8 bytes per key at rest."""

    __slots__ = ("runs",)

    def __init__(self, runs: list[np.ndarray] | None = None) -> None:
        self.runs: list[np.ndarray] = runs or []

    def contains(self, keys: np.ndarray) -> np.ndarray:
        found = np.zeros(keys.shape[0], dtype=bool)
        for run in self.runs:
            at = np.searchsorted(run, keys)
            at[at == run.shape[0]] = 0
            found |= run[at] == keys
        return found

    def add(self, keys: np.ndarray) -> None:
        """Add sorted keys none of which is held yet."""
        if not keys.shape[0]:
            return
        runs = self.runs
        runs.append(keys)
        while len(runs) > 1 and runs[-2].shape[0] <= 2 * runs[-1].shape[0]:
            last = runs.pop()
            merged = np.concatenate((runs.pop(), last))
            merged.sort(kind="stable")
            runs.append(merged)

    @property
    def size(self) -> int:
        return sum(run.shape[0] for run in self.runs)

    @property
    def nbytes(self) -> int:
        return sum(run.nbytes for run in self.runs)

    def packed(self) -> bytes:
        keys = np.concatenate(self.runs) if len(self.runs) != 1 else self.runs[0]
        keys = np.sort(keys) if len(self.runs) > 1 else keys
        return keys.astype("<u8", copy=False).tobytes()


class DedupWindow:
    """Event ids remembered by their own event time, in hourly buckets.

    An id is looked up in the bucket of its event's own time, so a duplicate is caught
    however late both copies arrive, as long as that bucket is still held. Buckets are
    held for ``horizon`` seconds of event time behind the partition's stream time (the
    robust clock that moves the watermark), not behind the newest event: one far-future
    event never ages the window. An event older than the oldest held bucket cannot be
    checked; it is admitted and counted (``unchecked``), never silently.

    Ids are stored as 64-bit BLAKE2b keys (mixed with their bucket) in sorted numpy
    runs: 8 bytes per id. Two distinct ids of one bucket colliding (one chance in about
    1.8·10¹⁹ per pair) would drop the second as a duplicate.

    :meth:`check` decides a run of rows against a fixed floor and returns what to add;
    :meth:`commit` adds it, so the parser can split a batch where the floor moves and
    every decision is the one an event-by-event pass would make.
    """

    def __init__(self, horizon: int, bucket: int = DEDUP_BUCKET) -> None:
        self.horizon = max(int(horizon), 1)
        self.bucket = int(bucket)
        self.buckets: dict[int, _Bucket] = {}
        self.floor = -math.inf  # events before this time are not checked
        # Ids of a snapshot taken before event-time buckets (their times unknown):
        # consulted for every event until the floor passes ``legacy_until``.
        self.legacy = np.zeros(0, dtype=np.uint64)
        self.legacy_until = -math.inf

    def floor_for(self, stream_time: float | None) -> float:
        if stream_time is None:
            return -math.inf
        return float(math.floor((stream_time - self.horizon) / self.bucket) * self.bucket)

    def set_floor(self, stream_time: float | None) -> None:
        """Forget buckets wholly older than ``horizon`` behind ``stream_time``."""
        floor = self.floor_for(stream_time)
        if floor <= self.floor:
            return
        self.floor = floor
        for start in [s for s in self.buckets if s < floor]:
            del self.buckets[start]
        if self.legacy.shape[0] and floor >= self.legacy_until:
            self.legacy = np.zeros(0, dtype=np.uint64)

    def check(
        self, ts: np.ndarray, keys: np.ndarray, checkable: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, list[tuple[int, np.ndarray]]]:
        """(first-seen mask, unchecked mask, additions) for rows in input order.

        Rows not ``checkable`` (an impossible time) and rows older than the floor count as
        first seen; the unchecked mask names the latter. Nothing is stored until
        :meth:`commit` gets the additions.
        """
        count = ts.shape[0]
        fresh = np.ones(count, dtype=bool)
        held = checkable & (ts >= self.floor)
        unchecked = checkable & ~held
        rows = np.flatnonzero(held)
        if not rows.shape[0]:
            return fresh, unchecked, []
        starts = (np.floor(ts[rows] / self.bucket) * self.bucket).astype(np.int64)
        mixed = keys[rows] ^ (starts.astype(np.uint64) * _BUCKET_MIX)
        _, first = np.unique(mixed, return_index=True)
        repeated = np.ones(rows.shape[0], dtype=bool)
        repeated[first] = False
        if self.legacy.shape[0]:
            at = np.searchsorted(self.legacy, keys[rows])
            at[at == self.legacy.shape[0]] = 0
            repeated |= self.legacy[at] == keys[rows]
        additions: list[tuple[int, np.ndarray]] = []
        for start in np.unique(starts).tolist():
            in_bucket = starts == start
            bucket = self.buckets.get(start)
            if bucket is not None:
                repeated[in_bucket] |= bucket.contains(mixed[in_bucket])
            new = mixed[in_bucket & ~repeated]
            if new.shape[0]:
                additions.append((start, np.sort(new)))
        fresh[rows[repeated]] = False
        return fresh, unchecked, additions

    def commit(self, additions: list[tuple[int, np.ndarray]]) -> None:
        for start, keys in additions:
            bucket = self.buckets.get(start)
            if bucket is None:
                bucket = self.buckets[start] = _Bucket()
            bucket.add(keys)

    @property
    def size(self) -> int:
        return sum(b.size for b in self.buckets.values()) + int(self.legacy.shape[0])

    @property
    def nbytes(self) -> int:
        return sum(b.nbytes for b in self.buckets.values()) + int(self.legacy.nbytes)

    def snapshot(self) -> dict[str, Any]:
        return {
            "version": 2,
            "horizon": self.horizon,
            "bucket": self.bucket,
            "floor": self.floor,
            "buckets": {start: b.packed() for start, b in sorted(self.buckets.items())},
            "legacy": self.legacy.astype("<u8").tobytes(),
            "legacy_until": self.legacy_until,
        }

    def restore(self, state: Any) -> None:
        if isinstance(state, dict):
            self.floor = state["floor"]
            self.buckets = {
                int(start): _Bucket([np.frombuffer(raw, dtype="<u8").astype(np.uint64)])
                for start, raw in state["buckets"].items()
                if raw
            }
            self.legacy = np.frombuffer(state["legacy"], dtype="<u8").astype(np.uint64)
            self.legacy_until = state["legacy_until"]
            return
        # Before event-time buckets: (generation start, current ids, previous ids), held
        # for up to two horizons after the generation start.
        generation_start, current, previous = state
        self.legacy = np.unique(id_keys([*current, *previous]))
        if generation_start is None:
            self.legacy_until = -math.inf
            self.legacy = np.zeros(0, dtype=np.uint64)
        else:
            self.legacy_until = float(generation_start) + 2 * self.horizon
