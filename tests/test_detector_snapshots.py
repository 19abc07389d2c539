"""Every new detector's state survives a snapshot/restore mid-stream with identical alerts."""

from __future__ import annotations

from spendwatch.config import load_config
from spendwatch.dataflows.aggregate import PreAggregator
from spendwatch.dataflows.engine import EnginePlan, ShardEngine
from spendwatch.ingest.parser import EventParser
from spendwatch.ingest.pricing import PriceTable
from spendwatch.ops import demo
from tests.conftest import REPO


def _ids(alerts) -> list[tuple]:
    """Identity and drivers: the breakdown mix must survive the restore too."""
    return sorted((a.alert_id, tuple(d.model_dump_json() for d in a.drivers)) for a in alerts)


def test_restore_mid_stream_changes_nothing():
    config = load_config(REPO / "config" / "precision.yaml")
    stream = demo.generate(
        days=3,
        scale=0.1,
        seed=9,
        spike_at_hours=58,
        loop_tenant="acme",
        loop_at_hours=60,
        regression_prompt=None,
    )
    plan = EnginePlan.from_config(config)
    aggregator = PreAggregator(plan.aggregations, 1)
    parser = EventParser(PriceTable(config.pricing), config.used_dimensions(), 3600)
    batches = [parser.parse(stream.lines[i : i + 5000]) for i in range(0, len(stream.lines), 5000)]
    messages = [aggregator.route(b)[0][1] for b in batches]

    straight = ShardEngine(plan)
    expected = [a for m in messages for a in straight.on_message(*m)] + straight.flush()

    first = ShardEngine(plan)
    half = len(messages) // 2
    got = [a for m in messages[:half] for a in first.on_message(*m)]
    second = ShardEngine(plan, first.snapshot())
    got += [a for m in messages[half:] for a in second.on_message(*m)] + second.flush()
    assert expected and _ids(got) == _ids(expected)
    assert {a.rule for a in expected} >= {"tenant-spend", "agent-loop"}
