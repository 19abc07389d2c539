"""In-process replay with a tracer: what each detector expected for every window it judged.

``explain`` and ``backtest --report`` need more than the alerts: the baseline, band and
score of every (rule, scope, window). They replay the input through the same source
partitions (so JSONL and FOCUS alike), pre-aggregator and shard engines as the dataflow
(one process, Bytewax not running), with a tracer that records each detector's
``explain`` of a window just before it judges it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from spendwatch.core.alerts import Alert
from spendwatch.dataflows.aggregate import PreAggregator
from spendwatch.dataflows.engine import EnginePlan, ShardEngine
from spendwatch.dataflows.inputs import build_source
from spendwatch.detectors.base import Detector, Totals
from spendwatch.ingest.events import ParsedBatch
from spendwatch.ops.backtest import replay_source

_POINT_FIELDS = frozenset({"value", "expected", "upper", "z", "warm"})


@dataclass(frozen=True)
class Point:
    """One judged window of one scope: the detector's view before observing it."""

    rule: str
    scope: tuple[tuple[str, str], ...]
    window_start: int
    value: float | None
    expected: float | None
    upper: float | None
    z: float | None
    warm: bool
    details: Mapping[str, float] = field(default_factory=dict)
    """The rest of the detector's ``explain``: its evidence, threshold, the count test's
    figures (whatever that detector type shows)."""


@dataclass
class Replay:
    points: list[Point] = field(default_factory=list)
    alerts: list[Alert] = field(default_factory=list)


def _batches(config: Any, input_path: str) -> Iterator[tuple[str, ParsedBatch]]:
    """The parsed batches ``backtest`` would read, partition by partition: the very source
    partitions of the dataflow (JSONL or FOCUS, one per file), driven by hand."""
    source = build_source(replay_source(config, input_path), config.parser_settings())
    for part in source.list_parts():
        partition = source.build_part("replay", part, None)
        try:
            while True:
                for batch in partition.next_batch():
                    yield part, batch
        except StopIteration:
            pass
        finally:
            partition.close()


def replay(
    config: Any,
    input_path: str,
    keep: Callable[[Detector, Mapping[str, str], int], bool] | None = None,
) -> Replay:
    """Run ``input_path`` through ``config``'s rules; record the points ``keep`` accepts."""
    parts = build_source(replay_source(config, input_path), config.parser_settings()).list_parts()
    plan = EnginePlan.from_config(config, parts)
    shards = config.engine.shards
    result = Replay()

    def tracer(
        detector: Detector,
        scope: Mapping[str, str],
        start: int,
        totals: Totals,
        explained: dict[str, float] | None,
    ) -> None:
        if keep is not None and not keep(detector, scope, start):
            return
        seen = explained or {}
        result.points.append(
            Point(
                rule=detector.name,
                scope=tuple(scope.items()),
                window_start=start,
                value=seen.get("value"),
                expected=seen.get("expected"),
                upper=seen.get("upper"),
                z=seen.get("z"),
                warm=bool(seen.get("warm", 0.0)),
                details={k: v for k, v in seen.items() if k not in _POINT_FIELDS},
            )
        )

    aggregator = PreAggregator(plan.aggregations, shards, plan.per_request)
    engines = {str(s): ShardEngine(plan, tracer=tracer) for s in range(shards)}
    for part, batch in _batches(config, input_path):
        for key, (stream_time, rows) in aggregator.route(batch):
            message = engines[key].on_message(stream_time, rows, part, idle=batch.caught_up)
            result.alerts.extend(message)
    for engine in engines.values():
        result.alerts.extend(engine.flush())
    return result
