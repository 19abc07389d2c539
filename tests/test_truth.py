"""Money against the truth: a dirty stream whose distinct-event totals are computed here,
by brute force in Decimal, and every way of running it must end at exactly those totals.

The stream has duplicates re-sent a few lines later and hours later (after their own
window closed), events moved hours late (past the allowed lateness), invalid lines and
credits. ``backtest``, an uninterrupted ``run``, a ``run`` SIGKILLed at 20 random points
and a 2-process ``run`` must agree with the truth for every budget scope and period, and
write the same dead letters, each once.
"""

from __future__ import annotations

import json
import random
from collections import Counter, defaultdict
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest

from spendwatch.config import load_config
from spendwatch.core import liveview
from spendwatch.ops.backtest import backtest
from tests.conftest import write_config
from tests.workers import CLI, kill_loop, run_cli

T0 = datetime(2026, 11, 2, 0, 0, tzinfo=timezone.utc)  # a Monday: one day, week, month
TENANTS = ["acme", "globex", "initech", "umbrella"]
FEATURES = ["chat", "search", "summarise"]
TEAMS = ["core", "growth"]
# (name, scope_by, period): every period of each must match the truth. The stream lies in
# one day, so no period ends before the input does: an ended period is resolved and leaves
# the state (its spend travels in the resolved alert only).
BUDGETS = [
    ("tenant-day", ("tenant",), "day"),
    ("feature-week", ("feature",), "week"),
    ("team-tenant-month", ("team", "tenant"), "month"),
]
PERIOD_SECONDS = {"hour": 3600, "day": 86400}


def _dirty_stream(seed: int = 5, events: int = 2400) -> tuple[list[bytes], list[dict], set[bytes]]:
    """(lines, the distinct valid events, the invalid lines) of a dirty 20-hour stream."""
    rng = random.Random(seed)
    step = 20 * 3600 / events
    distinct: list[dict] = []
    for n in range(events):
        ts = T0 + timedelta(seconds=n * step + rng.uniform(0, step))
        credit = rng.random() < 0.02
        cost = -rng.randint(1, 50_000) if credit else rng.randint(1, 2_000_000)
        distinct.append(
            {
                "event_id": f"ev-{seed}-{n}",
                "ts": ts.isoformat().replace("+00:00", "Z"),
                "tenant": rng.choice(TENANTS),
                "feature": rng.choice(FEATURES),
                "team": rng.choice(TEAMS),
                "model": "gpt-4o-mini",
                "requests": 1,
                "cost_usd": float(Decimal(cost).scaleb(-9)),  # whole nano-dollars
                **({"charge_category": "credit"} if credit else {}),
            }
        )
    order: list[tuple[float, dict]] = []
    for n, event in enumerate(distinct):
        position = float(n)
        if rng.random() < 0.03:  # moved 0.5-4 h late in arrival (past the lateness)
            position += rng.uniform(0.5, 4) * 3600 / step
        order.append((position, event))
        if rng.random() < 0.05:  # a duplicate a few lines later
            order.append((position + rng.uniform(1, 200), event))
        if rng.random() < 0.02:  # a duplicate hours later: its window is long closed
            order.append((position + rng.uniform(2, 6) * 3600 / step, event))
    invalid: set[bytes] = set()
    for k in range(int(events * 0.01)):
        kind = k % 4
        if kind == 0:
            line = b'{"event_id": "broken-%d", "ts": ' % k
        elif kind == 1:
            line = json.dumps({"event_id": f"nots-{k}", "cost_usd": 1.0}).encode()
        elif kind == 2:  # a negative cost on a usage line
            line = json.dumps(
                {"event_id": f"neg-{k}", "ts": "2026-11-02T05:00:00Z", "cost_usd": -1.5}
            ).encode()
        else:
            line = json.dumps({"event_id": f"naive-{k}", "ts": "2026-11-02T05:00:00"}).encode()
        invalid.add(line)
        order.append((rng.uniform(0, events), {"raw": line}))
    order.sort(key=lambda item: item[0])
    lines = [item.get("raw") or json.dumps(item).encode() for _, item in order]
    return lines, distinct, invalid


def _period(ts: str, period: str) -> datetime:
    when = datetime.fromisoformat(ts.replace("Z", "+00:00"))
    if period in PERIOD_SECONDS:
        size = PERIOD_SECONDS[period]
        return datetime.fromtimestamp(when.timestamp() // size * size, timezone.utc)
    if period == "week":
        day = when - timedelta(days=when.weekday())
        return day.replace(hour=0, minute=0, second=0, microsecond=0)
    return when.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def _truth(distinct: list[dict]) -> dict[tuple, int]:
    """(budget, scope, period start) → nano-dollars, summed in Decimal event by event."""
    totals: dict[tuple, Decimal] = defaultdict(Decimal)
    for event in distinct:
        for name, dims, period in BUDGETS:
            scope = tuple(sorted((d, event[d]) for d in dims))
            totals[(name, scope, _period(event["ts"], period))] += Decimal(repr(event["cost_usd"]))
    return {key: int(total.scaleb(9)) for key, total in totals.items()}


def _budget_rows(rows: list[dict]) -> dict[tuple, int]:
    totals: dict[tuple, int] = {}
    for row in rows:
        start = datetime.fromisoformat(row["period_start"].replace("Z", "+00:00"))
        key = (row["budget"], tuple(sorted(row["scope"].items())), start)
        assert key not in totals, f"one budget period reported twice: {key}"
        totals[key] = row["spend_nanos"]
    return totals


def _dump_totals(*dumps: Path) -> dict[tuple, int]:
    rows = [row for dump in dumps for row in json.loads(dump.read_text())["budgets"]]
    return _budget_rows(rows)


def _dead_letters(path: Path) -> list[tuple[str, int, str]]:
    records = [json.loads(line) for line in path.read_bytes().splitlines() if line.strip()]
    return sorted((r["source"], r["offset"], r.get("raw", "")) for r in records)


CONFIG = """
source:
  type: jsonl
  path: {paths}
  batch_bytes: {batch_bytes}
  poll_interval: 0.1
  decode_processes: 0
engine:
  allowed_lateness: 2m
  snapshot_interval: 0.1
  shutdown_grace: 5
dead_letter:
  path: {directory}/{name}.dead.jsonl
pricing:
  models:
    gpt-4o-mini: {{input: 0.15, output: 0.6}}
budgets:
{budgets}
receivers:
  - type: file
    path: {directory}/{name}.alerts.jsonl
delivery:
  outbox_path: {directory}/{name}.outbox.sqlite
"""


def _config(directory: Path, name: str, paths: list[Path], batch_bytes: int = 4096) -> Path:
    budgets = "".join(
        f"  - {{name: {budget}, scope_by: [{', '.join(dims)}], amount_usd: 1000, "
        f"period: {period}}}\n"
        for budget, dims, period in BUDGETS
    )
    text = CONFIG.format(
        paths=json.dumps([str(p) for p in paths]),
        batch_bytes=batch_bytes,
        directory=directory,
        name=name,
        budgets=budgets,
    )
    return write_config(directory, text, f"{name}.yaml")


@pytest.fixture(scope="module")
def dirty(tmp_path_factory: pytest.TempPathFactory):
    """The stream as one file and split in two by tenant (a duplicate stays with its copy)."""
    lines, distinct, invalid = _dirty_stream()
    directory = tmp_path_factory.mktemp("truth")
    whole = directory / "events.jsonl"
    whole.write_bytes(b"\n".join(lines) + b"\n")
    halves = [directory / "part-0.jsonl", directory / "part-1.jsonl"]
    parts: list[list[bytes]] = [[], []]
    for line in lines:
        first_half = any(f'"tenant": "{t}"'.encode() in line for t in TENANTS[:2])
        parts[0 if first_half or b'"tenant"' not in line else 1].append(line)
    for path, part in zip(halves, parts, strict=True):
        path.write_bytes(b"\n".join(part) + b"\n")
    assert len(lines) - len(distinct) - len(invalid) >= 120, "enough duplicates to matter"
    return whole, halves, _truth(distinct), invalid, len(distinct)


def _check_dead(path: Path, invalid: set[bytes]) -> list[tuple[str, int, str]]:
    letters = _dead_letters(path)
    assert len(letters) == len(set(letters)), "a dead letter written twice"
    assert {raw.encode() for _, _, raw in letters} == {line.strip() for line in invalid}
    return letters


def test_backtest_ends_at_the_truth(dirty, tmp_path):
    whole, _, truth, invalid, distinct = dirty
    config = load_config(_config(tmp_path, "backtest", [whole]))
    liveview.current().clear_shards()
    dead = tmp_path / "backtest.dead.jsonl"
    summary = backtest(config, str(whole), str(tmp_path / "alerts.jsonl"), dead_letter=str(dead))
    assert _budget_rows(liveview.current().budgets()) == truth
    assert summary["events"] == distinct
    assert summary["dead_lettered"] == len(invalid)
    assert summary["late_events"] <= summary["events"]
    _check_dead(dead, invalid)


def test_run_uninterrupted_killed_and_in_two_processes_end_at_the_truth(dirty, tmp_path):
    whole, halves, truth, invalid, distinct = dirty
    # uninterrupted
    config = _config(tmp_path, "whole", [whole])
    run_cli(
        "run",
        "--config",
        str(config),
        "--state-dir",
        str(tmp_path / "whole-state"),
        "--dump-state",
        str(tmp_path / "whole.json"),
    )
    assert _dump_totals(tmp_path / "whole.json") == truth
    reference_dead = _check_dead(tmp_path / "whole.dead.jsonl", invalid)
    reference_summary = json.loads((tmp_path / "whole.json").read_text())["summary"]
    assert reference_summary["events"] == distinct

    # SIGKILLed at 20 random points (small reads: many epochs to land in)
    config = _config(tmp_path, "killed", [whole], batch_bytes=1024)
    command = [*CLI, "run", "--config", str(config), "--state-dir", str(tmp_path / "k-state")]
    command += ["--dump-state", str(tmp_path / "killed.json")]
    assert kill_loop(command, seed=20261201, pause=(0.3, 1.2), kills=20) >= 20
    assert _dump_totals(tmp_path / "killed.json") == truth
    assert _check_dead(tmp_path / "killed.dead.jsonl", invalid) == reference_dead
    summary = json.loads((tmp_path / "killed.json").read_text())["summary"]
    counted = ("events", "duplicates", "dead_lettered", "late_events", "dedup_unchecked")
    assert {k: summary[k] for k in counted} == {k: reference_summary[k] for k in counted}

    # two processes, one file each
    config = _config(tmp_path, "pair", halves)
    run_cli(
        "run",
        "--config",
        str(config),
        "--processes",
        "2",
        "--state-dir",
        str(tmp_path / "pair-state"),
        "--dump-state",
        str(tmp_path / "pair.json"),
    )
    assert _dump_totals(tmp_path / "pair.json") == truth  # the processes' dumps, merged
    pair_dead = _check_dead(tmp_path / "pair.dead.jsonl", invalid)
    assert Counter(raw for *_, raw in pair_dead) == Counter(raw for *_, raw in reference_dead)
