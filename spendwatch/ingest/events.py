"""The usage-event schema (input contract), its bounds, and the batch it becomes.

``UsageEvent`` is the single definition of the input format: validation is msgspec
decoding against it (:mod:`spendwatch.ingest.decoding`) and ``spendwatch schema --events``
renders it as JSON Schema. A decoded, deduplicated batch is a :class:`ParsedBatch` of
columns (numpy arrays and factorised strings), so everything after it runs per batch,
not per event; the parser that makes it is :mod:`spendwatch.ingest.parser`.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Iterable
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

    def to_record(self) -> dict[str, str]:
        record = {"reason": self.reason, "source": self.source}
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


class DedupWindow:
    """Remembers event ids for at least ``horizon`` seconds of event time (two generations)."""

    def __init__(self, horizon: int) -> None:
        self.horizon = max(int(horizon), 1)
        self.generation_start: float | None = None
        self.current: set[str] = set()
        self.previous: set[str] = set()

    def advance(self, max_ts: float) -> None:
        start = math.floor(max_ts / self.horizon) * self.horizon
        if self.generation_start is None:
            self.generation_start = start
        elif start >= self.generation_start + self.horizon:
            self.previous = self.current if start == self.generation_start + self.horizon else set()
            self.current = set()
            self.generation_start = start

    def filter_new(self, ids: list[str]) -> list[int] | None:
        """Positions of first-seen ids, or ``None`` when all are new (the common, fast case)."""
        fresh = set(ids)
        if (
            len(fresh) == len(ids)
            and fresh.isdisjoint(self.current)
            and fresh.isdisjoint(self.previous)
        ):
            self.current |= fresh
            return None
        keep = []
        current, previous = self.current, self.previous
        for position, event_id in enumerate(ids):
            if event_id in current or event_id in previous:
                continue
            current.add(event_id)
            keep.append(position)
        return keep

    def snapshot(self) -> tuple[float | None, list[str], list[str]]:
        return (self.generation_start, sorted(self.current), sorted(self.previous))

    def restore(self, state: tuple[float | None, list[str], list[str]]) -> None:
        self.generation_start, current, previous = state
        self.current, self.previous = set(current), set(previous)
