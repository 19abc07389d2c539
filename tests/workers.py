"""Helpers for tests that run ``spendwatch run`` as a real process and talk to it over HTTP."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from spendwatch import demo
from tests.conftest import DETECTION_CONFIG, read_alerts, write_config

CLI = [sys.executable, "-m", "spendwatch.cli"]

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
