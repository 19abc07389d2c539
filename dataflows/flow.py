"""``get_flow(config)``: the spendwatch dataflow, built from a validated config.

    events ─► parse (in the source) ─┬─► dead letters ─► dead-letter sink
                                     └─► pre-aggregate ─► route to shard
                                          ─► engine (stateful, per shard) ─► alerts sink

Step ids are stable: they name the recovery state.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import FixedPartitionedSource, Source
from bytewax.operators import StatefulBatchLogic

from spendwatch.core import liveview, stats
from spendwatch.core.alerts import Alert
from spendwatch.dataflows.aggregate import PreAggregator, ShardMessage
from spendwatch.dataflows.engine import EnginePlan, ShardEngine
from spendwatch.dataflows.inputs import build_source
from spendwatch.dataflows.sinks import DEAD_LETTER_PART, AlertSink, DeadLetterSink
from spendwatch.dataflows.tagging import tagged
from spendwatch.dataflows.view import describe
from spendwatch.notifiers.base import Notifier
from spendwatch.notifiers.outbox import Outbox, build_outbox

# (input partition or None, whether that partition is idle, (stream time, partial rows))
TaggedMessage = tuple[str | None, bool, ShardMessage]


class _ShardLogic(StatefulBatchLogic[TaggedMessage, Alert, bytes]):
    # Wall-clock seconds between copies of the shard state into the live view (the
    # query API and metrics read those copies; the engine itself never reads a clock).
    PUBLISH_INTERVAL = 1.0

    def __init__(self, plan: EnginePlan, resume: bytes | None) -> None:
        self.engine = ShardEngine(plan, resume)
        if resume is not None:  # what the restored state counted, counted once
            counters = stats.current()
            with counters.lock:
                counters.windows_closed += self.engine.counters.windows_closed
                counters.evicted_scopes += self.engine.counters.evicted_scopes
            stats.add_allocation(self._allocation())
        self._key = f"shard-{id(self):x}"
        self._published = 0.0
        self._dirty = False
        self._overrides_seen = -1
        # the run-time budget amounts as of the last snapshot (what a restart gets back)
        self._snapshotted: dict[str, dict[str, tuple[float, float]]] = {}
        self._sync_overrides()
        self._publish(force=True)

    def on_batch(self, values: list[TaggedMessage]) -> tuple[list[Alert], bool]:
        alerts: list[Alert] = []
        before = self._counters()
        changed = self._sync_overrides()
        for partition, idle, (max_ts, rows) in values:
            alerts.extend(self.engine.on_message(max_ts, rows, partition, idle=idle))
        self._count(before)
        self._publish(force=changed)
        return alerts, StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[list[Alert], bool]:
        before = self._counters()
        alerts = self.engine.flush()
        self._count(before)
        self._publish(force=True)
        return alerts, StatefulBatchLogic.RETAIN

    def snapshot(self) -> bytes:
        # Bytewax snapshots every key it changed at the end of each epoch: the natural
        # moment to refresh the live view too, even when no further batch arrives.
        snapshot = self.engine.snapshot()
        self._snapshotted = {k: dict(v) for k, v in self.engine.budget_overrides.items()}
        self._publish(force=True)
        return snapshot

    def on_notify(self) -> tuple[list[Alert], bool]:
        changed = self._sync_overrides()
        if changed or self._dirty:
            self._publish(force=True)
        return [], StatefulBatchLogic.RETAIN

    def notify_at(self) -> datetime | None:
        # A change not yet published is published within the interval even if no
        # further batch arrives (an idle follower, the end of a burst). Where budget
        # amounts can be set at run time (an API token is configured), every shard
        # looks for new ones each interval, quiet or not.
        if not self._dirty and not _accepts_changes():
            return None
        return datetime.now(timezone.utc) + timedelta(seconds=self.PUBLISH_INTERVAL)

    def _sync_overrides(self) -> bool:
        """Take up budget amounts set at run time (and share the restored ones)."""
        view = liveview.current()
        if view.overrides_version == self._overrides_seen:
            return False
        self._overrides_seen = view.overrides_version
        return bool(view.sync_overrides(self.engine.sync_budget_overrides))

    def _publish(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._published >= self.PUBLISH_INTERVAL:
            self._published = now
            self._dirty = False
            picture = describe(self.engine)
            picture["snapshotted_overrides"] = self._snapshotted
            liveview.current().publish_shard(self._key, picture)
        else:
            self._dirty = True

    def _counters(self) -> tuple[int, int, int, dict[str, list[int]]]:
        engine = self.engine.counters
        return engine.windows_closed, engine.late_events, engine.evicted_scopes, self._allocation()

    def _allocation(self) -> dict[str, list[int]]:
        return {name: tally.as_list() for name, tally in self.engine.counters.allocation.items()}

    def _count(self, before: tuple[int, int, int, dict[str, list[int]]]) -> None:
        counters = stats.current()
        windows, _late, evicted, allocation = self._counters()
        counters.windows_closed += windows - before[0]
        counters.evicted_scopes += evicted - before[2]
        if allocation:
            earlier = before[3]
            delta = {}
            for name, counts in allocation.items():
                was = earlier.get(name, [0] * len(counts))
                delta[name] = [a - b for a, b in zip(counts, was, strict=True)]
            stats.add_allocation(delta)
        # Late events are counted once each, by the source partitions (ParsedBatch.late):
        # the engine sees an event once per aggregation.


def _accepts_changes() -> bool:
    config = liveview.current().config
    return bool(config is not None and config.server.api_token)


def _outbox_for(config: Any, receivers: Callable[[], list[Notifier]] | None) -> Outbox:
    """The configured outbox, or a throwaway one delivering to ``receivers`` (tests)."""
    if receivers is None:
        return build_outbox(config).start()
    directory = tempfile.mkdtemp(prefix="spendwatch-outbox-")
    atexit.register(shutil.rmtree, directory, True)  # throwaway: gone when the process is
    path = os.path.join(directory, "outbox.sqlite")
    return build_outbox(config, path=path, extra=receivers(), audit="all", deliver=False).start()


def get_flow(
    config: Any,
    *,
    source: Source | None = None,
    receivers: Callable[[], list[Notifier]] | None = None,
    outbox: Outbox | None = None,
    recoverable: bool = False,
) -> Dataflow:
    """Build the dataflow for ``config``; ``source``/``receivers``/``outbox`` override config.

    Alerts go to ``outbox`` (the caller starts, flushes and closes it); without one the
    configured outbox is opened and started here. Batches of a partitioned source
    are tagged with their partition: the watermark follows the slowest partition (so
    several files, Kafka partitions or processes close the same windows with the same
    contents), except partitions that said they are caught up, which hold nothing back
    until they send events again. ``recoverable``: the run resumes from a state directory
    that outlives it (dead letters are then written once across restarts).
    """
    outbox = outbox or _outbox_for(config, receivers)
    liveview.current().configure(config)
    source = source or build_source(config.source, config.parser_settings())
    partitions: list[str] = []
    is_tagged = False
    if isinstance(source, FixedPartitionedSource):
        partitions = source.list_parts()
        source, is_tagged = tagged(source)
    plan = EnginePlan.from_config(config, partitions)
    aggregator = PreAggregator(plan.aggregations, config.engine.shards, plan.per_request)

    def route(item: Any) -> list[tuple[str, TaggedMessage]]:
        partition, batch = item if is_tagged else (None, item)
        idle = batch.caught_up
        return [(shard, (partition, idle, message)) for shard, message in aggregator.route(batch)]

    flow = Dataflow("spendwatch")
    batches = op.input("events", flow, source)
    dead = op.flat_map(
        "dead_letters",
        batches,
        lambda item: [(DEAD_LETTER_PART, d) for d in (item[1] if is_tagged else item).dead],
    )
    op.output("dead_letter_out", dead, DeadLetterSink(config.dead_letter.path, recoverable))
    partials = op.flat_map("pre_aggregate", batches, route)
    keyed_alerts = op.stateful_batch("engine", partials, lambda resume: _ShardLogic(plan, resume))
    alerts = op.map("drop_shard_key", keyed_alerts, lambda item: item[1])
    op.output("alerts_out", alerts, AlertSink(outbox))
    return flow
