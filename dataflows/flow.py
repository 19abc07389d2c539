"""``get_flow(config)``: the spendwatch dataflow, built from a validated config.

    events ─► parse (in the source) ─┬─► dead letters ─► dead-letter sink
                                     └─► pre-aggregate ─► route to shard
                                          ─► engine (stateful, per shard) ─► alerts sink

Step ids are stable: they name the recovery state.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source
from bytewax.operators import StatefulBatchLogic

from spendwatch import stats
from spendwatch.alerts import Alert
from spendwatch.dataflows.aggregate import PreAggregator, ShardMessage
from spendwatch.dataflows.engine import EnginePlan, ShardEngine
from spendwatch.dataflows.inputs import build_source
from spendwatch.dataflows.sinks import AlertSink, DeadLetterSink
from spendwatch.notifiers.base import Notifier
from spendwatch.notifiers.outbox import Outbox, build_outbox


class _ShardLogic(StatefulBatchLogic[ShardMessage, Alert, bytes]):
    def __init__(self, plan: EnginePlan, resume: bytes | None) -> None:
        self.engine = ShardEngine(plan, resume)

    def on_batch(self, values: list[ShardMessage]) -> tuple[list[Alert], bool]:
        alerts: list[Alert] = []
        before = self.engine.counters.windows_closed, self.engine.counters.late_events
        for max_ts, rows in values:
            alerts.extend(self.engine.on_message(max_ts, rows))
        self._count(before)
        return alerts, StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[list[Alert], bool]:
        before = self.engine.counters.windows_closed, self.engine.counters.late_events
        alerts = self.engine.flush()
        self._count(before)
        return alerts, StatefulBatchLogic.RETAIN

    def snapshot(self) -> bytes:
        return self.engine.snapshot()

    def _count(self, before: tuple[int, int]) -> None:
        counters = stats.current()
        counters.windows_closed += self.engine.counters.windows_closed - before[0]
        counters.late_events += self.engine.counters.late_events - before[1]


def _outbox_for(config: Any, receivers: Callable[[], list[Notifier]] | None) -> Outbox:
    """The configured outbox, or a throwaway one delivering to ``receivers`` (tests)."""
    if receivers is None:
        return build_outbox(config).start()
    path = os.path.join(tempfile.mkdtemp(prefix="spendwatch-outbox-"), "outbox.sqlite")
    return build_outbox(config, path=path, extra=receivers(), audit="all", deliver=False).start()


def get_flow(
    config: Any,
    *,
    source: Source | None = None,
    receivers: Callable[[], list[Notifier]] | None = None,
    outbox: Outbox | None = None,
) -> Dataflow:
    """Build the dataflow for ``config``; ``source``/``receivers``/``outbox`` override config.

    Alerts go to ``outbox`` (the caller starts, flushes and closes it); without one the
    configured outbox is opened and started here.
    """
    outbox = outbox or _outbox_for(config, receivers)
    plan = EnginePlan.from_config(config)
    aggregator = PreAggregator(plan.aggregations, config.engine.shards)
    flow = Dataflow("spendwatch")
    batches = op.input("events", flow, source or build_source(config))
    dead = op.flat_map("dead_letters", batches, lambda batch: batch.dead)
    op.output("dead_letter_out", dead, DeadLetterSink(config.dead_letter.path))
    partials = op.flat_map("pre_aggregate", batches, aggregator.route)
    keyed_alerts = op.stateful_batch("engine", partials, lambda resume: _ShardLogic(plan, resume))
    alerts = op.map("drop_shard_key", keyed_alerts, lambda item: item[1])
    op.output("alerts_out", alerts, AlertSink(outbox))
    return flow
