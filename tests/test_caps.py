"""Caps per user / session / agent task: short periods, 100 k+ values, bounded memory."""

from __future__ import annotations

import gc
import textwrap
import tracemalloc
from pathlib import Path

from spendwatch.config import load_config
from spendwatch.dataflows.engine import EnginePlan, ShardEngine
from spendwatch.detectors.budget import BudgetConfig, BudgetRule
from spendwatch.ingest.pricing import NANOS_PER_USD
from spendwatch.ops import demo
from spendwatch.ops.backtest import backtest
from tests.conftest import read_alerts, write_config

T0 = 1_795_000_000 - 1_795_000_000 % 86400
USERS = 120_000


def _engine(max_scopes: int) -> ShardEngine:
    rule = BudgetRule(
        BudgetConfig(
            name="user-hourly",
            scope_by=["user"],
            amount_usd=1.0,
            period="hour",
            thresholds=[100],
            max_scopes=max_scopes,
        )
    )
    return ShardEngine(
        EnginePlan(detectors=[], budgets=[rule], allowed_lateness=0, scope_idle_ttl=86400)
    )


def _rows(count: int, start: int, heavy: str) -> list:
    """One cent per user in the first 5-minute window; ``heavy`` spends 2 $."""
    rows = [(0, (f"user-{i}",), start, NANOS_PER_USD // 100, 1, 0, 0, 1) for i in range(count)]
    rows.append((0, (heavy,), start + 300, 2 * NANOS_PER_USD, 1, 0, 0, 1))
    return rows


def test_120k_users_in_bounded_memory_and_the_heavy_one_still_fires():
    engine = _engine(max_scopes=50_000)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    alerts = engine.on_message(T0 + 299, _rows(USERS, T0, "agent-7"))
    alerts += engine.on_message(T0 + 900, [])
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    states = engine.budget_states["user-hourly"]
    assert len(states) <= 50_000
    assert engine.counters.evicted_scopes >= USERS - 50_000
    assert held < 50_000 * 1500, f"{held / 1e6:.1f} MB for 50 k scopes"
    assert [(a.scope, a.threshold) for a in alerts] == [({"user": "agent-7"}, 100)]
    engine.on_message(T0 + 3600 + 1, [])  # the hour ends: every cap resets
    # and is freed once its corrections may no longer arrive (correction_periods: 2 hours)
    engine.on_message(T0 + 3 * 3600 + 1, [])
    assert engine.budget_states["user-hourly"] == {}


def test_without_a_limit_each_scope_costs_under_a_kilobyte():
    engine = _engine(max_scopes=10**6)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    engine.on_message(T0 + 299, _rows(USERS, T0, "agent-7"))
    engine.on_message(T0 + 900, [])
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert len(engine.budget_states["user-hourly"]) == USERS + 1
    assert held / USERS < 1024, f"{held / USERS:.0f} bytes per scope"


def test_session_and_agent_task_caps_catch_the_looping_session(tmp_path: Path):
    stream = demo.generate(days=1, scale=0.3, seed=4, loop_tenant="umbrella", loop_at_hours=14)
    events = tmp_path / "events.jsonl"
    stream.write(str(events))
    path = write_config(
        tmp_path,
        demo.pricing_yaml()
        + textwrap.dedent(
            f"""
            dead_letter: {{path: {tmp_path / "dead.jsonl"}}}
            budgets:
              - name: session-hourly
                scope_by: [session]
                amount_usd: 0.5
                period: hour
                thresholds: [100]
              - name: task-daily
                scope_by: [labels.agent_task]
                amount_usd: 1000
                period: day
            """
        ),
    )
    config = load_config(path)
    assert config.used_dimensions() == ["session", "labels.agent_task"]
    out = tmp_path / "alerts.jsonl"
    backtest(config, str(events), str(out))
    firing = [a for a in read_alerts(out) if a["status"] == "firing"]
    (loop,) = stream.incidents[2:]
    assert {a["scope"]["session"] for a in firing if a["rule"] == "session-hourly"} == {
        loop.scope["session"]
    }
    assert not [a for a in firing if a["rule"] == "task-daily"]
