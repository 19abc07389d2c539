"""Crash recovery and shutdown of the real worker process (SIGKILL, SIGTERM)."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

from spendwatch.ops import demo
from tests.workers import (
    CLI,
    HOURLY_BUDGET,
    assert_exactly_once,
    identities,
    kill_loop,
    run_cli,
    worker_config,
)


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
    kills = kill_loop(command, seed=20261116, pause=(0.2, 1.0))
    assert kills >= 10
    assert_exactly_once(
        reference_alerts, alerts, tmp_path / "reference.json", tmp_path / "crashed.json"
    )


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
