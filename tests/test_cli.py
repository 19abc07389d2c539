"""The worker and backtest commands as a user runs them (subprocesses, real files, signals)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from spendwatch.ops import demo
from tests.conftest import DETECTION_CONFIG, comparable, read_alerts, write_config

CLI = [sys.executable, "-m", "spendwatch.cli"]


def _config(tmp_path: Path, source: str = "", name: str = "config.yaml") -> tuple[Path, Path]:
    alerts = tmp_path / f"{name}.alerts.jsonl"
    text = DETECTION_CONFIG.format(
        dead_letter=tmp_path / "dead.jsonl", alerts=alerts, pricing=demo.pricing_yaml()
    )
    return write_config(tmp_path, source + text, name), alerts


def test_run_and_backtest_raise_the_same_alerts(planted_file, tmp_path):
    source = f"source:\n  type: jsonl\n  path: {planted_file}\n"
    config, run_alerts = _config(tmp_path, source)
    run = subprocess.run([*CLI, "run", "--config", str(config)], capture_output=True, timeout=300)
    assert run.returncode == 0, run.stderr.decode()[-2000:]
    out = tmp_path / "backtest.jsonl"
    backtest = subprocess.run(
        [
            *CLI,
            "backtest",
            "--config",
            str(config),
            "--input",
            str(planted_file),
            "--alerts-out",
            str(out),
        ],
        capture_output=True,
        timeout=300,
    )
    assert backtest.returncode == 0, backtest.stderr.decode()[-2000:]
    live, replay = read_alerts(run_alerts), read_alerts(out)
    assert len(live) >= 5
    assert comparable(live) == comparable(replay)


def test_backtest_counts_bad_input_in_summary_and_dead_letter_file(tmp_path):
    config, _ = _config(tmp_path)
    events = tmp_path / "events.jsonl"
    good = demo.generate(days=0.2, scale=0.1, seed=3, spike_tenant=None, regression_prompt=None)
    bad = [
        b"{not json",
        b'{"event_id":"x","ts":"2026-11-16T01:00:00Z","input_tokens":-1,"model":"gpt-4o"}',
        b'{"event_id":"y","ts":"2026-11-16T01:00:00Z","model":"unknown-model"}',
        b'{"ts":"2026-11-16T01:00:00Z","cost_usd":1}',
        b'{"event_id":"z","ts":"2026-11-16T01:00:00Z","cost_usd":-4}',
        b"\xff\xfe\xfd",
    ]
    duplicate = good.lines[0]
    events.write_bytes(b"\n".join([*good.lines[:50], *bad, duplicate, *good.lines[50:]]) + b"\n")
    dead = tmp_path / "rejected.jsonl"
    result = subprocess.run(
        [
            *CLI,
            "backtest",
            "--config",
            str(config),
            "--input",
            str(events),
            "--alerts-out",
            str(tmp_path / "a.jsonl"),
            "--dead-letter",
            str(dead),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"events {len(good.lines):,}" in result.stderr
    assert "dead-lettered 6" in result.stderr
    assert "duplicates 1" in result.stderr
    records = [json.loads(line) for line in dead.read_text().splitlines()]
    assert len(records) == 6
    assert all(r["reason"] for r in records)
    assert sum("raw_base64" in r for r in records) == 1


def test_backtest_rejects_a_bad_config_with_file_and_key(tmp_path):
    config = write_config(tmp_path, "budgets:\n  - name: b\n    amount_usd: -5\n")
    result = subprocess.run(
        [
            *CLI,
            "backtest",
            "--config",
            str(config),
            "--input",
            "/dev/null",
            "--alerts-out",
            str(tmp_path / "a.jsonl"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert f"{config}:3: budgets[0].amount_usd:" in result.stderr


def test_worker_follows_a_growing_file_and_stops_cleanly_on_sigterm(tmp_path):
    stream = demo.generate(
        days=3, scale=0.3, seed=5, regression_prompt=None, spike_at_hours=2 * 24 + 10
    )
    events = tmp_path / "events.jsonl"
    half = len(stream.lines) // 2
    events.write_bytes(b"".join(line + b"\n" for line in stream.lines[:half]))
    source = f"source:\n  type: jsonl\n  path: {events}\n  follow: true\n  poll_interval: 0.1\n"
    config, alerts = _config(tmp_path, source)
    worker = subprocess.Popen(
        [*CLI, "run", "--config", str(config)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        time.sleep(2)
        with events.open("ab") as handle:  # the file grows while the worker runs
            handle.write(b"".join(line + b"\n" for line in stream.lines[half:]))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if alerts.exists() and any(
                a["scope"] == {"tenant": "globex"} and a["kind"] == "anomaly"
                for a in read_alerts(alerts)
            ):
                break
            time.sleep(0.2)
        assert worker.poll() is None, "a following worker keeps running"
        found = read_alerts(alerts)
        assert any(a["scope"] == {"tenant": "globex"} and a["kind"] == "anomaly" for a in found)
    finally:
        worker.send_signal(signal.SIGTERM)
        code = worker.wait(timeout=20)
        stderr = worker.stderr.read().decode()
    assert code == 0, stderr[-2000:]
    assert '"event": "stopped"' in stderr or "stopped" in stderr
    lines = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    assert lines and all("level" in line for line in lines), "structured JSON logs"


def test_demo_command_writes_the_bundled_stream(tmp_path):
    out = tmp_path / "demo.jsonl"
    result = subprocess.run(
        [*CLI, "demo", "--out", str(out), "--days", "0.5", "--scale", "0.2"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0
    assert out.stat().st_size > 0 and "planted" in result.stdout
    assert os.path.getsize(out) == sum(len(x) + 1 for x in out.read_bytes().splitlines())


def test_worker_reads_stdin_and_reports_fallback_priced_models(tmp_path):
    source = "source:\n  type: jsonl\n  path: '-'\n"
    config, _ = _config(tmp_path, source)
    text = config.read_text().replace("pricing:\n", "pricing:\n  fallback: {input: 1, output: 2}\n")
    config.write_text(text)
    stream = demo.generate(days=0.3, scale=0.1, seed=9, spike_tenant=None, regression_prompt=None)
    odd = b'{"event_id":"odd","ts":"2026-11-16T01:00:00Z","model":"mystery-model","input_tokens":5}'
    result = subprocess.run(
        [*CLI, "run", "--config", str(config)],
        input=b"\n".join([*stream.lines, odd]) + b"\n",
        capture_output=True,
        timeout=120,
    )
    stderr = result.stderr.decode()
    assert result.returncode == 0, stderr[-2000:]
    logs = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    [warning] = [entry for entry in logs if entry.get("model") == "mystery-model"]
    assert warning["level"] == "warning"
    [stopped] = [entry for entry in logs if entry["event"] == "stopped"]
    assert stopped["events"] == len(stream.lines) + 1
    assert stopped["fallback_priced"] == {"mystery-model": 1}


def test_run_names_a_missing_input_file_instead_of_crashing(tmp_path):
    missing = tmp_path / "nowhere.jsonl"
    config, _ = _config(tmp_path, f"source:\n  type: jsonl\n  path: {missing}\n")
    result = subprocess.run(
        [*CLI, "run", "--config", str(config)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert f"input file {missing} does not exist" in result.stderr
    assert "Traceback" not in result.stderr


def test_backtest_reads_a_glob_of_files_like_their_concatenation(
    detection_config, planted, tmp_path, capsys
):
    from spendwatch.cli import main
    from spendwatch.core.timefmt import parse_rfc3339

    _, config = detection_config
    lines = sorted(planted.lines, key=lambda line: parse_rfc3339(json.loads(line)["ts"]))
    whole = tmp_path / "whole.jsonl"
    whole.write_bytes(b"".join(line + b"\n" for line in lines))
    for index in range(2):  # each file spans the whole period, like topic partitions
        part = tmp_path / f"part-{index}.jsonl"
        part.write_bytes(b"".join(line + b"\n" for line in lines[index::2]))
    alerts = {}
    for name, source in (("whole", whole), ("parts", tmp_path / "part-*.jsonl")):
        out = tmp_path / f"{name}-alerts.jsonl"
        args = ["backtest", "--config", str(config), "--input", str(source)]
        assert main([*args, "--alerts-out", str(out), "--quiet"]) == 0
        alerts[name] = comparable(read_alerts(out))
    assert len(alerts["whole"]) >= 5 and alerts["parts"] == alerts["whole"]
    missing = ["backtest", "--config", str(config), "--input", str(tmp_path / "none-*.jsonl")]
    assert main([*missing, "--alerts-out", str(tmp_path / "x.jsonl")]) == 2
    error = capsys.readouterr().err
    assert "--input" in error and "matches no file" in error
