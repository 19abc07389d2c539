"""Pre-aggregation of a parsed batch into per-(aggregation, scope, window) partial sums.

This is the step that makes throughput independent of the number of rules: all
per-event work is numpy over the batch's columns (factorise, combine codes,
sort, reduce); Python only touches one row per (scope, window) group. Only these
partials cross the keyed exchange, routed to ``crc32(scope) % shards`` so a scope
always lands on the same shard in every process. Breakdown and peer-group rows are
routed by their parent scope (``Aggregation.route_dims``), so the shard judging a
scope also holds its breakdown.
"""

from __future__ import annotations

import zlib
from collections.abc import Collection, Sequence

import numpy as np

from spendwatch.detectors.base import Aggregation
from spendwatch.ingest.events import ParsedBatch

# (aggregation index, scope values, window start, spend nanos, requests, in, out, events,
#  and, for rules that judge requests, single-request events, their Σ log output tokens,
#  Σ log cost, Σ log², Σ log² cost): see ``Totals``
PartialRow = tuple  # 8 or 13 fields
ShardMessage = tuple[float | None, list[PartialRow]]

_SEPARATOR = "\x1f"
_MAX_COMBINED_KEY = 1 << 62
_DENSE_MIN_CAPACITY = 1 << 16
_EXACT_FLOAT_INT = 1 << 53  # float64 holds every integer up to here exactly


def shard_of(scope: tuple[str, ...], shards: int) -> int:
    """The shard owning a scope: stable across processes and restarts (unlike ``hash``)."""
    return zlib.crc32(_SEPARATOR.join(scope).encode("utf-8")) % shards


class PreAggregator:
    """Sums a batch per (aggregation, scope, window) and routes the rows to shards."""

    def __init__(
        self,
        aggregations: Sequence[Aggregation],
        shards: int,
        per_request: Collection[Aggregation] | None = None,
    ) -> None:
        self.aggregations = list(aggregations)
        self.shards = shards
        # which aggregations carry the per-request log sums (None: all of them)
        self._per_request = [per_request is None or a in per_request for a in self.aggregations]
        self._shard_cache: dict[tuple[str, ...], int] = {}

    def rows(self, batch: ParsedBatch) -> list[PartialRow]:
        """All partial rows of one batch."""
        if batch.size == 0:
            return []

        def column(dim: str) -> tuple[np.ndarray, list[str]]:
            categorical = batch.dims[dim]
            return categorical.codes, categorical.values

        # Window indexes are shared by the rules with the same window. The cache lives in
        # this call: worker threads of one process share the aggregator.
        window_indexes: dict[int, np.ndarray] = {}

        def window_index(window: int) -> np.ndarray:
            found = window_indexes.get(window)
            if found is None:
                found = np.floor_divide(batch.ts, window).astype(np.int64)
                window_indexes[window] = found
            return found

        logs = _per_request_logs(batch) if any(self._per_request) else []
        out: list[PartialRow] = []
        for index, aggregation in enumerate(self.aggregations):
            per_request = logs if self._per_request[index] else []
            out.extend(
                self._aggregate(index, aggregation, batch, column, window_index, per_request)
            )
        return out

    def route(self, batch: ParsedBatch) -> list[tuple[str, ShardMessage]]:
        """One message per shard (empty ones too: every shard must see the batch's max time)."""
        per_shard: list[list[PartialRow]] = [[] for _ in range(self.shards)]
        cache = self._shard_cache
        if len(cache) > 200_000:
            cache.clear()
        route_dims = [a.route_dims for a in self.aggregations]
        for row in self.rows(batch):
            prefix = route_dims[row[0]]
            scope = row[1] if prefix is None else row[1][:prefix]
            shard = cache.get(scope)
            if shard is None:
                shard = cache[scope] = shard_of(scope, self.shards)
            per_shard[shard].append(row)
        stream_time = batch.stream_time
        return [(str(shard), (stream_time, rows)) for shard, rows in enumerate(per_shard)]

    def _aggregate(
        self, index, aggregation, batch, column, window_index_of, per_request
    ) -> list[PartialRow]:
        selected = batch.anomaly_input.copy() if not aggregation.include_credits else None
        for dim, wanted in aggregation.match:
            codes, uniques = column(dim)
            try:
                code = uniques.index(wanted)
            except ValueError:
                return []
            hit = codes == code
            selected = hit if selected is None else selected & hit
        if selected is not None and selected.all():  # nothing filtered out: no copies
            selected = None
        positions = None if selected is None else np.flatnonzero(selected)
        if positions is not None and positions.size == 0:
            return []

        def pick(values: np.ndarray) -> np.ndarray:
            return values if positions is None else values[positions]

        window = aggregation.window
        window_index = (
            window_index_of(window)
            if positions is None
            else np.floor_divide(batch.ts[positions], window).astype(np.int64)
        )
        first_window = int(window_index.min())
        window_span = int(window_index.max()) - first_window + 1
        dim_codes = [pick(column(d)[0]) for d in aggregation.dims]
        cardinalities = [len(column(d)[1]) for d in aggregation.dims]
        capacity = window_span
        for size in cardinalities:
            capacity *= max(size, 1)
        columns = [
            _summable(pick(values))
            for values in (
                batch.spend_nanos,
                batch.requests,
                batch.input_tokens,
                batch.output_tokens,
            )
        ]
        floats = [pick(values) for values in per_request]
        if capacity < _MAX_COMBINED_KEY:
            key = np.zeros(window_index.shape[0], dtype=np.int64)
            for codes, size in zip(dim_codes, cardinalities, strict=True):
                key = key * size + codes
            key = key * window_span + (window_index - first_window)
            group_keys, counts, sums, float_sums = _group_sums(key, capacity, columns, floats)
            group_windows = group_keys % window_span + first_window
            rest = group_keys // window_span
            group_dim_codes = []
            for size in reversed(cardinalities):
                group_dim_codes.append(rest % size)
                rest = rest // size
            group_dim_codes.reverse()
        else:  # astronomically many combinations: fall back to a row-wise unique
            stacked = np.stack([*dim_codes, window_index], axis=1)
            order = np.lexsort(stacked.T[::-1])
            sorted_rows = stacked[order]
            change = np.any(sorted_rows[1:] != sorted_rows[:-1], axis=1)
            starts = np.flatnonzero(np.r_[True, change])
            group_windows = sorted_rows[starts, -1]
            group_dim_codes = [sorted_rows[starts, i] for i in range(len(dim_codes))]
            sums = [np.add.reduceat(values[order], starts) for values in columns]
            float_sums = [np.add.reduceat(values[order], starts) for values in floats]
            counts = np.diff(np.r_[starts, order.shape[0]])
        uniques = [column(d)[1] for d in aggregation.dims]
        scopes = (
            zip(
                *(
                    [names[c] for c in codes.tolist()]
                    for names, codes in zip(uniques, group_dim_codes, strict=True)
                ),
                strict=True,
            )
            if aggregation.dims
            else iter([()] * counts.shape[0])
        )
        windows = (group_windows * window).tolist()
        extra = (
            [
                np.rint(float_sums[0]).astype(np.int64).tolist(),
                *(values.tolist() for values in float_sums[1:]),
            ]
            if float_sums
            else []
        )
        return list(
            zip(
                [index] * counts.shape[0],
                scopes,
                windows,
                sums[0].tolist(),
                sums[1].tolist(),
                sums[2].tolist(),
                sums[3].tolist(),
                counts.tolist(),
                *extra,
                strict=True,
            )
        )


_INT64_HEADROOM = float(2**62)


def _summable(values: np.ndarray) -> np.ndarray:
    """``values`` as int64 when no sum of them can overflow, else as Python integers.

    Admitted events are bounded (a cost below 2⁵³ nano-dollars, counts below 10¹⁵), but a
    batch of many maximal events could still pass 2⁶³ in one group: the float sum of
    magnitudes proves the int64 sums safe, and a batch it cannot prove is summed exactly
    as Python integers instead (slow, and only ever for hostile input).
    """
    if values.shape[0] and float(np.abs(values).sum(dtype=np.float64)) >= _INT64_HEADROOM:
        return values.astype(object)
    return values


def _per_request_logs(batch: ParsedBatch) -> list[np.ndarray]:
    """Per event: 1 if it is one request, and that request's log output tokens and log
    cost (nano-dollars), each floored at 1, and their squares (0 for events of several
    requests).

    What a thin scope's unit-cost test needs to judge each request's own value: the log
    of a summed event is the log of a mean, whose spread is not one request's.
    """
    single = batch.requests == 1
    weight = single.astype(np.float64)
    log_out = np.log(np.maximum(batch.output_tokens, 1).astype(np.float64))
    log_cost = np.log(np.maximum(batch.spend_nanos, 1).astype(np.float64))
    log_out *= weight
    log_cost *= weight
    return [weight, log_out, log_cost, log_out * log_out, log_cost * log_cost]


def _group_sums(
    key: np.ndarray, capacity: int, columns: list[np.ndarray], floats: list[np.ndarray]
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """Distinct keys (ascending), rows per key, each column's integer sum per key and each
    float column's sum per key.

    Keys from a small range are counted with ``bincount`` (linear time) when every
    column is small enough for its float64 sums to be exact integers; otherwise the
    rows are sorted and summed as integers. Both give the same result.
    """
    rows = key.shape[0]
    exact_ints = all(values.dtype != object for values in columns)
    if (
        exact_ints
        and capacity <= max(4 * rows, _DENSE_MIN_CAPACITY)
        and all(int(np.abs(values).max()) <= _EXACT_FLOAT_INT // rows for values in columns)
    ):
        counts = np.bincount(key, minlength=capacity)
        group_keys = np.flatnonzero(counts)
        sums = [
            np.bincount(key, weights=values, minlength=capacity)[group_keys].astype(np.int64)
            for values in columns
        ]
        float_sums = [
            np.bincount(key, weights=values, minlength=capacity)[group_keys] for values in floats
        ]
        return group_keys, counts[group_keys], sums, float_sums
    order = np.argsort(key, kind="stable")
    sorted_key = key[order]
    starts = np.flatnonzero(np.r_[True, sorted_key[1:] != sorted_key[:-1]])
    sums = [np.add.reduceat(values[order], starts) for values in columns]
    float_sums = [np.add.reduceat(values[order], starts) for values in floats]
    return sorted_key[starts], np.diff(np.r_[starts, rows]), sums, float_sums
