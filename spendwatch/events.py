"""The usage-event schema (input contract) and the batch parser that validates, prices and dedups.

``UsageEvent`` is the single definition of the input format: validation is msgspec
decoding against it and ``spendwatch schema --events`` renders it as JSON Schema.
Parsing works on whole batches of raw lines and returns columns (numpy arrays and
lists of strings), so everything after it runs per batch, not per event.
"""

from __future__ import annotations

import base64
import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from operator import attrgetter
from typing import Annotated, Any

import msgspec
import numpy as np

from spendwatch.columns import Categorical, factorize
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
_NUMBER_GETTERS = tuple(
    attrgetter(name)
    for name in ("input_tokens", "output_tokens", "cached_input_tokens", "requests")
)
_get_ts = attrgetter("ts")
_get_event_id = attrgetter("event_id")
_get_category = attrgetter("charge_category")
_get_cost = attrgetter("cost_usd")
_get_model = attrgetter("model")
_get_labels = attrgetter("labels")


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
    dims: dict[str, Categorical]
    dead: list[DeadLetter] = field(default_factory=list)
    duplicates: int = 0
    fallback_priced: dict[str, int] = field(default_factory=dict)
    caught_up: bool = False
    """The partition has read all there is for now: it must not hold the watermark back
    until it sends events again (an idle Kafka partition, a file at its end)."""

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
        """Validate, dedup and price a batch of raw lines (without their newlines)."""
        dead: list[DeadLetter] = []
        lines = list(filter(None, lines))
        if lines and max(map(len, lines)) <= self.max_event_bytes:
            joined = b"[" + b",".join(lines) + b"]"
            if MARKER not in joined:  # aliased attribute names take the line-by-line path
                try:  # fast path: the whole batch as one JSON array, decoded in C
                    return self._columns(_batch_decoder.decode(joined), lines, dead)
                except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError):
                    pass  # some line is bad (or blank): find which, one by one
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
                dead.append(DeadLetter(reason, stripped, self.source))
                continue
            if MARKER in stripped:  # OpenTelemetry GenAI attribute names: the rare, slow path
                original, stripped = stripped, apply_aliases(stripped)
                aliased[stripped] = original
            accepted.append(stripped)
        events, raws = self._decode_each(accepted, dead)
        batch = self._columns(events, raws, dead)
        if aliased and batch.dead:
            batch.dead = [replace(d, raw=aliased.get(d.raw, d.raw)) for d in batch.dead]
        return batch

    def _decode_each(
        self, lines: list[bytes], dead: list[DeadLetter]
    ) -> tuple[list[UsageEvent], list[bytes]]:
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
        ts = np.fromiter(
            map(datetime.timestamp, map(_get_ts, events)), dtype=np.float64, count=count
        )
        self.dedup.advance(float(ts.max()))
        first_seen = self.dedup.filter_new(list(map(_get_event_id, events)))
        valid = np.ones(count, dtype=bool)
        if first_seen is not None:
            valid[:] = False
            valid[first_seen] = True
        numbers = np.empty((count, 4), dtype=np.int64)
        for column, getter in enumerate(_NUMBER_GETTERS):
            numbers[:, column] = np.fromiter(map(getter, events), dtype=np.int64, count=count)
        categories = factorize(map(_get_category, events), count, missing="usage")
        credit_codes = np.array([v.lower() in NON_ANOMALY_CATEGORIES for v in categories.values])
        credit_like = credit_codes[categories.codes]
        given = np.array(list(map(_get_cost, events)), dtype=np.float64)  # None -> nan
        has_cost = ~np.isnan(given)
        models = factorize(map(_get_model, events), count)
        priced, fallback_used, unknown = self.prices.price_nanos(
            models, numbers[:, 0], numbers[:, 2], numbers[:, 1], needed=~has_cost
        )
        negative = has_cost & (given < 0) & ~credit_like & valid
        unknown &= valid
        for i in np.flatnonzero(negative | unknown).tolist():
            if negative[i]:
                reason = (
                    f"negative cost_usd {given[i]} on a {categories.values[categories.codes[i]]!r}"
                    " line (only credit/adjustment lines may be negative)"
                )
            else:
                reason = (
                    f"unknown model {models.values[models.codes[i]]!r}: not in the pricing "
                    "catalog and no pricing.fallback is configured (or send cost_usd)"
                )
            dead.append(DeadLetter(reason, raws[i], self.source))
        keep = valid & ~negative & ~unknown
        spend = np.where(has_cost, np.round(np.nan_to_num(given) * 1e9), priced).astype(np.int64)
        dims = {
            d: _attributed(models) if d == "model" else dimension_column(events, d)
            for d in self.dimensions
        }
        if not keep.all():
            positions = np.flatnonzero(keep)
            ts, spend, numbers = ts[positions], spend[positions], numbers[positions]
            credit_like, fallback_used = credit_like[positions], fallback_used[positions]
            models = models.take(positions)
            dims = {d: column.take(positions) for d, column in dims.items()}
        fallback_counts = np.bincount(models.codes[fallback_used], minlength=len(models.values))
        return ParsedBatch(
            ts=ts,
            spend_nanos=spend,
            requests=numbers[:, 3].copy(),
            input_tokens=numbers[:, 0].copy(),
            output_tokens=numbers[:, 1].copy(),
            anomaly_input=~credit_like,
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


def _attributed(column: Categorical) -> Categorical:
    """Reuse an already factorised column as a dimension (missing → ``unattributed``)."""
    if UNATTRIBUTED in column.values:  # rare clash with a literal value: merge properly
        return factorize(column.tolist(), len(column), missing=UNATTRIBUTED)
    return Categorical(column.codes, [UNATTRIBUTED if v is None else v for v in column.values])


def dimension_column(events: Sequence[UsageEvent], dimension: str) -> Categorical:
    """One dimension (``labels.KEY`` included) as codes; missing values are ``unattributed``."""
    if dimension.startswith("labels."):
        key = dimension[len("labels.") :]
        values = map(dict.get, map(_get_labels, events), itertools.repeat(key))
    else:
        values = map(attrgetter(dimension), events)
    return factorize(values, len(events), missing=UNATTRIBUTED)
