"""Helpers for tests that run ``spendwatch run`` as a real process and talk to it over HTTP."""

from __future__ import annotations

import json
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from spendwatch.ops import demo
from tests.conftest import DETECTION_CONFIG, read_alerts, write_config

CLI = [sys.executable, "-m", "spendwatch.cli"]

# Many alerts all along the stream, so some are always raised after the last snapshot
# when a kill lands: those are the ones a restart raises again and must not re-deliver.
HOURLY_BUDGET = """
  - name: tenant-hourly
    scope_by: [tenant]
    amount_usd: 2
    period: hour
    thresholds: [20, 40, 60, 80, 100]
"""

WEEKLY_BUDGET = """
  - name: tenant-weekly
    scope_by: [tenant]
    amount_usd: 100000
    period: week
"""


def worker_config(
    directory: Path,
    inputs: str | list[str],
    *,
    name: str = "worker",
    batch_bytes: int = 1 << 20,
    snapshot_interval: float = 0.2,
    port: int | None = None,
    follow: bool = False,
    extra: str = "",
    budgets: str = "",
) -> tuple[Path, Path]:
    """The detection config of the suite reading ``inputs``, plus a whole-stream budget."""
    alerts = directory / f"{name}.alerts.jsonl"
    paths = json.dumps(inputs if isinstance(inputs, list) else str(inputs))
    text = (
        f"source:\n  type: jsonl\n  path: {paths}\n  batch_bytes: {batch_bytes}\n"
        f"  follow: {str(follow).lower()}\n  poll_interval: 0.1\n"
        + DETECTION_CONFIG.format(
            dead_letter=directory / f"{name}.dead.jsonl",
            alerts=alerts,
            pricing=demo.pricing_yaml(),
        ).replace(
            "  allowed_lateness: 2m\n",
            f"  allowed_lateness: 2m\n  snapshot_interval: {snapshot_interval}\n"
            "  shutdown_grace: 5\n",
        )
        + extra
    )
    added = (WEEKLY_BUDGET + budgets).rstrip()
    text = text.replace("receivers:", added.lstrip("\n") + "\nreceivers:", 1)
    if port is not None:
        text += f"server:\n  port: {port}\n"
    return write_config(directory, text, f"{name}.yaml"), alerts


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    result = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def identities(alerts_file: Path) -> list[tuple[str, str, str]]:
    return [(a["fingerprint"], a["status"], a["episode"]) for a in read_alerts(alerts_file)]


def budget_totals(dump: Path) -> dict[tuple, int]:
    """(budget, scope, period) → spend in nano-dollars, from a ``--dump-state`` file."""
    budgets = json.loads(dump.read_text())["budgets"]
    return {
        (b["budget"], tuple(sorted(b["scope"].items())), b["period"]): b["spend_nanos"]
        for b in budgets
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.1):  # type: ignore[no-untyped-def]
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except (OSError, ValueError, KeyError):
            last = None
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s (last value: {last!r})")


MAX_STARTS = 300
"""Starts of the worker a kill loop may take: a loop that cannot land its kills fails
instead of spinning until the CI's time limit."""


def kill_loop(
    command: list[str],
    seed: int,
    pause: tuple[float, float],
    *,
    kills: int = 10,
    on_kill: Callable[[], None] = lambda: None,
    progress: Callable[[], int] | None = None,
    progress_wait: float = 8.0,
) -> int:
    """Start ``command`` again and again, SIGKILLing it after a random pause, until it has
    been killed at least ``kills`` times and then runs to the end (exit 0) once more.

    With ``progress`` (e.g. alerts delivered so far), each pause starts only once the
    worker has made some (or exited, or ``progress_wait`` seconds passed: once everything
    is delivered there is none to wait for): a slow start on a loaded machine then cannot
    make every kill land before the input is read at all. Once a worker has run to the end on
    its own, the pauses are bounded by that run instead: waiting for progress then would
    wait out every run (nothing is left to deliver) and no kill could land.
    """
    rng = random.Random(seed)
    done = 0
    finished_after_last_kill = False
    last_run: float | None = None  # seconds the last worker took to finish on its own
    for _ in range(MAX_STARTS):
        if done >= kills and finished_after_last_kill:
            return done
        before = progress() if progress is not None else 0
        started = time.monotonic()
        worker = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if progress is not None and last_run is None and done < kills + 2:
            deadline = time.monotonic() + progress_wait
            while worker.poll() is None and progress() == before and time.monotonic() < deadline:
                time.sleep(0.05)
        if done < kills + 2:
            wait = rng.uniform(*pause)
            if last_run is not None:  # a worker that finishes quicker than the pauses
                wait = min(wait, rng.uniform(0.1, 0.9) * last_run)  # is still hit mid-run
            time.sleep(wait)
        if done < kills + 2 and worker.poll() is None:
            worker.send_signal(signal.SIGKILL)
            worker.wait(timeout=30)
            done += 1
            on_kill()
            finished_after_last_kill = False
            continue
        _, stderr = worker.communicate(timeout=120)
        assert worker.returncode == 0, stderr.decode()[-3000:]
        last_run = time.monotonic() - started
        finished_after_last_kill = True
    raise AssertionError(f"{MAX_STARTS} starts and only {done} kills landed")


def assert_exactly_once(
    reference_alerts: Path, alerts: Path, reference_dump: Path, dump: Path
) -> None:
    """A killed run delivered each alert of the uninterrupted one once, and ended at
    exactly its budget totals and resolved-period spends."""
    expected = identities(reference_alerts)
    delivered = identities(alerts)
    assert len(expected) >= 500 and len(set(expected)) == len(expected)
    repeated = [key for key, count in Counter(delivered).items() if count > 1]
    assert not repeated, f"delivered more than once: {repeated}"
    assert {(f, s) for f, s, _ in delivered} == {(f, s) for f, s, _ in expected}
    assert set(delivered) == set(expected)

    totals, reference = budget_totals(dump), budget_totals(reference_dump)
    weekly = {k: v for k, v in reference.items() if k[0] == "tenant-weekly"}
    assert sum(k[0] == "tenant-hourly" for k in reference) >= 1
    assert len(weekly) == 5, "the weekly budget covers the whole stream for every tenant"
    assert totals == reference  # integer nano-dollars: exact, so certainly to the cent
    # Periods that ended were resolved; their final spend travels in the alert.
    def resolved(path: Path) -> dict[str, float]:
        return {
            a["fingerprint"]: round(a["observed"], 2)
            for a in read_alerts(path)
            if a["kind"] == "budget" and a["status"] == "resolved"
        }

    assert resolved(reference_alerts)
    assert resolved(reference_alerts) == resolved(alerts)
