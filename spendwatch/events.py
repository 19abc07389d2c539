"""The usage-event schema (input contract) and the batch parser that validates, prices and dedups.

``UsageEvent`` is the single definition of the input format: validation is msgspec
decoding against it and ``spendwatch schema --events`` renders it as JSON Schema.
Parsing works on whole batches of raw lines and returns columns (numpy arrays and
lists of strings), so everything after it runs per batch, not per event.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from operator import attrgetter
from typing import Annotated, Any

import msgspec
import numpy as np

from spendwatch.genai import MARKER, apply_aliases
from spendwatch.pricing import PriceTable

UNATTRIBUTED = "unattributed"
NON_ANOMALY_CATEGORIES = frozenset({"credit", "adjustment"})
NEGATIVE_COST_CATEGORIES = NON_ANOMALY_CATEGORIES

_Dim = Annotated[str, msgspec.Meta(max_length=1024)]
_Tokens = Annotated[int, msgspec.Meta(ge=0)]


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
    requests: Annotated[int, msgspec.Meta(ge=1, description="calls this event stands for")] = 1
    cost_usd: Annotated[
        float | None, msgspec.Meta(description="known cost; else priced from the catalog")
    ] = None
    charge_category: _Dim | None = None
    latency_ms: Annotated[float, msgspec.Meta(ge=0)] | None = None
    labels: dict[str, str] = {}


_one_decoder = msgspec.json.Decoder(UsageEvent)
_batch_decoder = msgspec.json.Decoder(list[UsageEvent])
_numbers = attrgetter("input_tokens", "output_tokens", "cached_input_tokens", "requests")


def event_json_schema() -> dict[str, Any]:
    """JSON Schema of the input contract, derived from :class:`UsageEvent`."""
    return msgspec.json.schema(UsageEvent)


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
    dims: dict[str, list[str]]
    dead: list[DeadLetter] = field(default_factory=list)
    duplicates: int = 0
    fallback_priced: dict[str, int] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return int(self.ts.shape[0])

    @property
    def max_ts(self) -> float | None:
        return float(self.ts.max()) if self.ts.shape[0] else None

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
            dims={d: [] for d in dims},
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
        if len(fresh) == len(ids) and fresh.isdisjoint(self.current) and fresh.isdisjoint(
            self.previous
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
        self.prices = prices
        self.dimensions = tuple(dimensions)
        self.dedup = DedupWindow(dedup_horizon)
        self.max_event_bytes = max_event_bytes
        self.source = source

    def parse(self, lines: Sequence[bytes]) -> ParsedBatch:
        dead: list[DeadLetter] = []
        accepted: list[bytes] = []
        aliased: dict[bytes, bytes] = {}  # rewritten line -> original, for dead letters
        for line in lines:
            stripped = line.strip()
            if not stripped:
                continue
            if len(stripped) > self.max_event_bytes:
                dead.append(
                    DeadLetter(
                        f"event is {len(stripped)} bytes, "
                        f"over the {self.max_event_bytes}-byte limit",
                        stripped,
                        self.source,
                    )
                )
                continue
            if MARKER in stripped:  # OpenTelemetry GenAI attribute names: the rare, slow path
                original, stripped = stripped, apply_aliases(stripped)
                aliased[stripped] = original
            accepted.append(stripped)
        events, raws = self._decode(accepted, dead)
        batch = self._columns(events, raws, dead)
        if aliased and batch.dead:
            batch.dead = [replace(d, raw=aliased.get(d.raw, d.raw)) for d in batch.dead]
        return batch

    def _decode(
        self, lines: list[bytes], dead: list[DeadLetter]
    ) -> tuple[list[UsageEvent], list[bytes]]:
        if not lines:
            return [], []
        try:
            return _batch_decoder.decode(b"[" + b",".join(lines) + b"]"), lines
        except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError):
            pass  # some line is bad: find which, one by one
        events, raws = [], []
        for line in lines:
            try:
                events.append(_one_decoder.decode(line))
                raws.append(line)
            except msgspec.ValidationError as error:
                dead.append(DeadLetter(f"invalid event: {error}", line, self.source))
            except (msgspec.DecodeError, UnicodeDecodeError) as error:
                dead.append(DeadLetter(f"malformed JSON: {error}", line, self.source))
        return events, raws

    def _columns(
        self, events: list[UsageEvent], raws: list[bytes], dead: list[DeadLetter]
    ) -> ParsedBatch:
        if not events:
            batch = ParsedBatch.empty(self.dimensions)
            batch.dead = dead
            return batch
        count = len(events)
        ts = np.fromiter((e.ts.timestamp() for e in events), dtype=np.float64, count=count)
        self.dedup.advance(float(ts.max()))
        keep = self.dedup.filter_new([e.event_id for e in events])
        duplicates = 0
        if keep is not None:
            duplicates = count - len(keep)
            events = [events[i] for i in keep]
            raws = [raws[i] for i in keep]
            ts = ts[keep]
            count = len(events)
        numbers = np.array([_numbers(e) for e in events], dtype=np.int64).reshape(count, 4)
        input_tokens, output_tokens, cached = numbers[:, 0], numbers[:, 1], numbers[:, 2]
        categories = [(e.charge_category or "usage").lower() for e in events]
        given = np.fromiter(
            (math.nan if e.cost_usd is None else e.cost_usd for e in events),
            dtype=np.float64,
            count=count,
        )
        has_cost = ~np.isnan(given)
        credit_like = np.fromiter(
            (c in NON_ANOMALY_CATEGORIES for c in categories), dtype=bool, count=count
        )
        bad = np.zeros(count, dtype=bool)
        reasons: dict[int, str] = {}
        negative = has_cost & (given < 0) & ~credit_like
        for i in np.flatnonzero(negative):
            reasons[int(i)] = (
                f"negative cost_usd {given[i]} on a {categories[i]!r} line "
                "(only credit/adjustment lines may be negative)"
            )
        bad |= negative
        models = [e.model for e in events]
        priced, fallback_used, unknown = self.prices.price_nanos(
            models, input_tokens, cached, output_tokens, needed=~has_cost
        )
        for i in np.flatnonzero(unknown):
            reasons[int(i)] = (
                f"unknown model {models[i]!r}: not in the pricing catalog and no "
                "pricing.fallback is configured (or send cost_usd)"
            )
        bad |= unknown
        spend = np.where(has_cost, np.round(np.nan_to_num(given) * 1e9), priced).astype(np.int64)
        if bad.any():
            for i in np.flatnonzero(bad):
                dead.append(DeadLetter(reasons[int(i)], raws[i], self.source))
            good = ~bad
            index = np.flatnonzero(good)
            events = [events[i] for i in index]
            models = [models[i] for i in index]
            ts, spend, numbers = ts[good], spend[good], numbers[good]
            credit_like, fallback_used = credit_like[good], fallback_used[good]
        fallback_priced: dict[str, int] = {}
        for i in np.flatnonzero(fallback_used):
            name = models[i] or UNATTRIBUTED
            fallback_priced[name] = fallback_priced.get(name, 0) + 1
        return ParsedBatch(
            ts=ts,
            spend_nanos=spend,
            requests=numbers[:, 3].copy(),
            input_tokens=numbers[:, 0].copy(),
            output_tokens=numbers[:, 1].copy(),
            anomaly_input=~credit_like,
            dims={d: dimension_column(events, d) for d in self.dimensions},
            dead=dead,
            duplicates=duplicates,
            fallback_priced=fallback_priced,
        )

    def snapshot(self) -> tuple[float | None, list[str], list[str]]:
        return self.dedup.snapshot()

    def restore(self, state: tuple[float | None, list[str], list[str]] | None) -> None:
        if state is not None:
            self.dedup.restore(state)


def dimension_column(events: Sequence[UsageEvent], dimension: str) -> list[str]:
    """Values of one dimension (``labels.KEY`` included); missing values are ``unattributed``."""
    if dimension.startswith("labels."):
        key = dimension[len("labels.") :]
        return [e.labels.get(key) or UNATTRIBUTED for e in events]
    getter = attrgetter(dimension)
    return [getter(e) or UNATTRIBUTED for e in events]
