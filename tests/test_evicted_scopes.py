"""Budget scopes evicted to respect max_scopes are counted in stats and in the metrics."""

from __future__ import annotations

from pathlib import Path

import orjson
from bytewax.testing import run_main

from spendwatch.config import SpendwatchConfig
from spendwatch.core import stats
from spendwatch.dataflows.flow import get_flow
from spendwatch.notifiers.file import FileConfig, FileNotifier
from spendwatch.service.metrics import build_registry

USERS = 30
MAX_SCOPES = 10


def test_evicted_budget_scopes_reach_stats_and_metrics(tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    events.write_bytes(
        b"".join(
            orjson.dumps(
                {
                    "event_id": f"e-{n}",
                    "ts": f"2026-03-02T10:00:{n:02d}Z",
                    "tenant": "acme",
                    "user": f"u-{n}",
                    "cost_usd": 0.01 * (n + 1),
                }
            )
            + b"\n"
            for n in range(USERS)
        )
    )
    config = SpendwatchConfig(
        source={"type": "jsonl", "path": str(events)},
        dimensions=["tenant", "user"],
        dead_letter={"path": str(tmp_path / "dead.jsonl")},
        budgets=[
            {
                "name": "user-daily",
                "scope_by": ["user"],
                "amount_usd": 100,
                "period": "day",
                "max_scopes": MAX_SCOPES,
            }
        ],
        engine={"shards": 1},
    )
    stats.reset()
    registry = build_registry()
    assert registry.get_sample_value("spendwatch_evicted_scopes_total") == 0
    alerts = tmp_path / "alerts.jsonl"
    run_main(get_flow(config, receivers=lambda: [FileNotifier(FileConfig(path=str(alerts)))]))
    # One shard holds all 30 users; past 10 it keeps the 9 highest spenders.
    evicted = USERS - int(MAX_SCOPES * 0.9)
    assert stats.current().evicted_scopes == evicted
    assert stats.current().summary()["evicted_scopes"] == evicted
    assert registry.get_sample_value("spendwatch_evicted_scopes_total") == evicted


def test_a_detector_keeps_its_busiest_scopes_within_max_scopes() -> None:
    from spendwatch.dataflows.engine import EnginePlan, ShardEngine
    from spendwatch.detectors.registry import build_detector
    from spendwatch.detectors.robust_seasonal import RobustSeasonalConfig

    rule = RobustSeasonalConfig(name="user-spend", scope=["user"], window=900, max_scopes=50)
    engine = ShardEngine(
        EnginePlan(
            detectors=[build_detector(rule)], budgets=[], allowed_lateness=0, scope_idle_ttl=86400
        )
    )
    t0 = 1_795_000_000 - 1_795_000_000 % 86400
    regulars = [(f"regular-{i}",) for i in range(20)]
    for window in range(40):  # the regulars every window, 10 passers-by once each
        start = t0 + window * 900
        scopes = regulars + [(f"once-{window}-{i}",) for i in range(10)]
        rows = [(0, scope, start, 10**7, 1, 0, 0, 1) for scope in scopes]
        engine.on_message(start + 899, rows)
        assert len(engine.detector_states["user-spend"]) <= 50 + 10
    kept = set(engine.detector_states["user-spend"])
    assert set(regulars) <= kept, "the active scopes are never the ones forgotten"
    assert engine.counters.evicted_scopes >= 40 * 10 - 50
    assert engine.detector_states["user-spend"][regulars[0]].history.seen >= 38
