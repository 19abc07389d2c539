"""Crash recovery and shutdown of the real worker process (SIGKILL, SIGTERM)."""

from __future__ import annotations

import random
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from spendwatch import demo
from tests.conftest import read_alerts
from tests.workers import (
    CLI,
    budget_totals,
    identities,
    run_cli,
    worker_config,
)

# Many alerts all along the stream, so some are always raised after the last snapshot
# when a kill lands: those are the ones a restart raises again and must not re-deliver.
HOURLY_BUDGET = """
  - name: tenant-hourly
    scope_by: [tenant]
    amount_usd: 2
    period: hour
    thresholds: [20, 40, 60, 80, 100]
"""


@pytest.fixture(scope="module")
def stream_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three days with a spend spike and a token regression (≈ 100 k events)."""
    stream = demo.generate(
        days=3, scale=0.4, seed=21, spike_at_hours=1 * 24 + 10, regression_at_hours=2 * 24 + 2
    )
    path = tmp_path_factory.mktemp("crash") / "events.jsonl"
    stream.write(str(path))
    return path


def test_sigkill_at_random_points_loses_and_repeats_nothing(stream_file, tmp_path):
    # Small reads and frequent snapshots: many epochs, so kills land everywhere (start-up,
    # restore, mid-batch, between a snapshot and its commit, at the end of input).
    reference_config, reference_alerts = worker_config(
        tmp_path, str(stream_file), name="reference", batch_bytes=2048, budgets=HOURLY_BUDGET
    )
    run_cli(
        "run",
        "--config",
        str(reference_config),
        "--state-dir",
        str(tmp_path / "reference-state"),
        "--dump-state",
        str(tmp_path / "reference.json"),
    )

    config, alerts = worker_config(
        tmp_path, str(stream_file), name="crashed", batch_bytes=2048, budgets=HOURLY_BUDGET
    )
    state = tmp_path / "crashed-state"
    command = [*CLI, "run", "--config", str(config), "--state-dir", str(state)]
    command += ["--dump-state", str(tmp_path / "crashed.json")]
    rng = random.Random(20261116)
    kills = 0
    finished_after_last_kill = False
    while kills < 10 or not finished_after_last_kill:
        worker = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if kills < 12:
            time.sleep(rng.uniform(0.2, 1.0))
        if kills < 12 and worker.poll() is None:
            worker.send_signal(signal.SIGKILL)
            worker.wait(timeout=30)
            kills += 1
            finished_after_last_kill = False
            continue
        _, stderr = worker.communicate(timeout=120)
        assert worker.returncode == 0, stderr.decode()[-3000:]
        finished_after_last_kill = True
    assert kills >= 10

    expected = identities(reference_alerts)
    delivered = identities(alerts)
    assert len(expected) >= 500 and len(set(expected)) == len(expected)
    repeated = [key for key, count in Counter(delivered).items() if count > 1]
    assert not repeated, f"delivered more than once: {repeated}"
    assert {(f, s) for f, s, _ in delivered} == {(f, s) for f, s, _ in expected}
    assert set(delivered) == set(expected)

    totals, reference = (
        budget_totals(tmp_path / "crashed.json"),
        budget_totals(tmp_path / "reference.json"),
    )
    weekly = {k: v for k, v in reference.items() if k[0] == "tenant-weekly"}
    assert sum(k[0] == "tenant-hourly" for k in reference) >= 1
    assert len(weekly) == 5, "the weekly budget covers the whole stream for every tenant"
    assert totals == reference  # integer nano-dollars: exact, so certainly to the cent
    # Day periods that ended were resolved; their final spend travels in the alert.
    resolved = {
        a["fingerprint"]: round(a["observed"], 2)
        for a in read_alerts(reference_alerts)
        if a["kind"] == "budget" and a["status"] == "resolved"
    }
    assert resolved
    assert resolved == {
        a["fingerprint"]: round(a["observed"], 2)
        for a in read_alerts(alerts)
        if a["kind"] == "budget" and a["status"] == "resolved"
    }


def test_sigterm_stops_reading_flushes_and_exits_zero_within_grace(stream_file, tmp_path):
    config, alerts = worker_config(
        tmp_path, str(stream_file), name="term", batch_bytes=1024, follow=True
    )
    state = tmp_path / "state"
    worker = subprocess.Popen(
        [*CLI, "run", "--config", str(config), "--state-dir", str(state)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    time.sleep(2.5)
    assert worker.poll() is None, "a following worker keeps running"
    sent = time.monotonic()
    worker.send_signal(signal.SIGTERM)
    _, stderr = worker.communicate(timeout=30)
    took = time.monotonic() - sent
    log = stderr.decode()
    assert worker.returncode == 0, log[-3000:]
    assert took < 5, f"stopped in {took:.1f}s, grace is 5s"
    assert '"signal": "SIGTERM"' in log and '"reason": "signal"' in log
    assert "grace period over" not in log
    assert "panicked" not in log and "Traceback" not in log, "a stop is not a crash"
    # What was delivered before the stop is complete JSON lines; a restart resumes and
    # finishes the file without delivering anything twice.
    before = identities(alerts)
    resumed = worker_config(tmp_path, str(stream_file), name="term", batch_bytes=1 << 20)[0]
    run_cli("run", "--config", str(resumed), "--state-dir", str(state))
    after = identities(alerts)
    assert after[: len(before)] == before
    assert len(set(after)) == len(after) > len(before)
