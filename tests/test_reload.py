"""Config reload on SIGHUP: invalid configs are rejected, valid ones keep unchanged rules' state."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

from spendwatch.ops import demo
from tests.conftest import read_alerts
from tests.workers import CLI, free_port, http_get, identities, wait_for, worker_config


def _events(port: int) -> float:
    _, body = http_get(port, "/metrics")
    for line in body.decode().splitlines():
        if line.startswith("spendwatch_events_total "):
            return float(line.split()[1])
    return -1


def _scope(port: int, rule: str, query: str) -> dict | None:
    status, body = http_get(port, f"/scopes/{rule}?{query}")
    if status != 200:
        return None
    scopes = json.loads(body)["scopes"]
    return scopes[0] if scopes else None


def _daily(port: int) -> dict:
    budgets = json.loads(http_get(port, "/budgets")[1])["budgets"]
    return {
        (b["scope"]["tenant"], b["period"]): b for b in budgets if b["budget"] == "tenant-daily"
    }


def test_sighup_reloads_rules_keeps_state_and_rejects_invalid_configs(tmp_path: Path):
    stream = demo.generate(
        days=3, scale=0.2, seed=9, regression_prompt=None, spike_at_hours=2 * 24 + 10
    )
    events = tmp_path / "events.jsonl"
    cut = next(i for i, line in enumerate(stream.lines) if b'"ts":"2026-11-17T18' in line)
    events.write_bytes(b"".join(line + b"\n" for line in stream.lines[:cut]))
    port = free_port()
    config, alerts = worker_config(tmp_path, str(events), port=port, follow=True)
    original = config.read_text()
    worker = subprocess.Popen(
        [*CLI, "run", "--config", str(config), "--state-dir", str(tmp_path / "state")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for(lambda: _events(port) == cut)
        time.sleep(1.5)  # the live view is refreshed at least every second
        before = wait_for(lambda: _scope(port, "tenant-spend", "tenant=globex"))
        assert before["windows_seen"] >= 30  # warm-up is 48: a reset would miss the spike
        daily_before = wait_for(lambda: _daily(port))
        assert (
            wait_for(lambda: _scope(port, "prompt-output-tokens", "prompt_id=chat@v3")) is not None
        )

        # 1. An invalid config is rejected; the worker keeps running with the old one.
        config.write_text(original.replace("amount_usd: 35", "amount_usd: -35"))
        worker.send_signal(signal.SIGHUP)
        time.sleep(1.0)
        assert worker.poll() is None
        assert http_get(port, "/readyz")[0] == 200
        assert _scope(port, "prompt-output-tokens", "prompt_id=chat@v3") is not None

        # 2. A valid one: drop a detector, change a budget's amount, add a budget.
        start = original.index("  - name: prompt-output-tokens\n")
        new = original[:start] + original[original.index("budgets:", start) :]
        new = new.replace("amount_usd: 35", "amount_usd: 40")
        new = new.replace(
            "receivers:",
            "  - name: tenant-hourly\n    scope_by: [tenant]\n    amount_usd: 1\n"
            "    period: hour\nreceivers:",
            1,
        )
        config.write_text(new)
        worker.send_signal(signal.SIGHUP)
        wait_for(lambda: _scope(port, "prompt-output-tokens", "prompt_id=chat@v3") is None)
        wait_for(lambda: http_get(port, "/readyz")[0] == 200)
        after = wait_for(lambda: _scope(port, "tenant-spend", "tenant=globex"))
        # The restarted dataflow counts from its restored state: each event once.
        wait_for(lambda: _events(port) == cut)
        time.sleep(0.5)
        assert _events(port) == cut
        assert after["windows_seen"] == before["windows_seen"]
        assert after["expected"] == before["expected"]
        daily_after = wait_for(lambda: _daily(port))
        for key, row in daily_before.items():
            assert daily_after[key]["spend_nanos"] == row["spend_nanos"]  # state kept
            if key[0] != "acme":
                assert daily_after[key]["amount_usd"] == 40  # new amount applies

        # 3. More input: the kept baseline (past its warm-up) catches the spike at once.
        with events.open("ab") as handle:
            handle.write(b"".join(line + b"\n" for line in stream.lines[cut:]))
        wait_for(
            lambda: any(
                a["kind"] == "anomaly" and a["scope"] == {"tenant": "globex"}
                for a in read_alerts(alerts)
            ),
            timeout=60,
        )
        # The added budget judges the new input (its alerts only exist in the new config).
        assert any(a["rule"] == "tenant-hourly" for a in read_alerts(alerts))
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            _, stderr = worker.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            worker.send_signal(signal.SIGUSR1)
            time.sleep(1)
            worker.kill()
            _, stderr = worker.communicate()
            raise AssertionError(f"no exit after SIGTERM: {stderr.decode()[-5000:]}") from None
    log = stderr.decode()
    assert worker.returncode == 0, log[-3000:]
    rejected = [json.loads(x) for x in log.splitlines() if "reload rejected" in x]
    assert len(rejected) == 1
    assert any("budgets[0].amount_usd" in p for p in rejected[0]["problems"])
    assert log.count('"event": "reloaded"') == 1
    delivered = identities(alerts)
    assert not [k for k, n in Counter(delivered).items() if n > 1]
