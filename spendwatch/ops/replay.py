"""In-process replay with a tracer: what each detector expected for every window it judged.

``explain`` and ``backtest --report`` need more than the alerts: the baseline, band and
score of every (rule, scope, window). They replay the input through the same parser,
pre-aggregator and shard engines as the dataflow (one process, no Bytewax), with a
tracer that records each detector's ``explain`` of a window just before it judges it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from spendwatch.core.alerts import Alert
from spendwatch.dataflows.aggregate import PreAggregator
from spendwatch.dataflows.engine import EnginePlan, ShardEngine
from spendwatch.detectors.base import Detector, Totals
from spendwatch.ingest.parser import parser_for

BATCH_LINES = 20_000


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


@dataclass
class Replay:
    points: list[Point] = field(default_factory=list)
    alerts: list[Alert] = field(default_factory=list)


def _lines(path: str) -> Iterator[list[bytes]]:
    with open(path, "rb") as handle:
        batch: list[bytes] = []
        for line in handle:
            batch.append(line.rstrip(b"\r\n"))
            if len(batch) >= BATCH_LINES:
                yield batch
                batch = []
        if batch:
            yield batch


def replay(
    config: Any,
    input_path: str,
    keep: Callable[[Detector, Mapping[str, str], int], bool] | None = None,
) -> Replay:
    """Run ``input_path`` through ``config``'s rules; record the points ``keep`` accepts."""
    plan = EnginePlan.from_config(config)
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
            )
        )

    parser = parser_for(config, input_path)
    aggregator = PreAggregator(plan.aggregations, shards)
    engines = {str(s): ShardEngine(plan, tracer=tracer) for s in range(shards)}
    for lines in _lines(input_path):
        for key, (max_ts, rows) in aggregator.route(parser.parse(lines)):
            result.alerts.extend(engines[key].on_message(max_ts, rows))
    for engine in engines.values():
        result.alerts.extend(engine.flush())
    return result
