"""The command line as a new user meets it: on a terminal, piped, with mistakes."""

from __future__ import annotations

import io
import json
import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import structlog

from spendwatch import __version__, cli
from spendwatch.core import logging as swlog
from spendwatch.core.alerts import Alert
from spendwatch.core.stats import RunStats
from spendwatch.notifiers.console import render_line
from spendwatch.ops import demo
from tests.conftest import REPO, SHARED, read_alerts

CLI = [sys.executable, "-m", "spendwatch.cli"]


def _alert(**fields) -> Alert:
    base = dict(
        alert_id="a1",
        fingerprint="f1",
        kind="anomaly",
        rule="tenant-spend",
        status="firing",
        severity="warning",
        scope={"tenant": "acme"},
        metric="spend_usd",
        window_start="2026-11-16T10:00:00Z",
        window_end="2026-11-16T11:00:00Z",
        observed=1234.5,
        expected=150.25,
        score=9.3,
        threshold=4,
        episode="2026-11-16T10:00:00Z",
    )
    base.update(fields)
    return Alert(**base)


def _run_in_terminal(args: list[str], timeout: float = 120) -> tuple[int, str]:
    """Run the CLI with stdout and stderr on one pseudo-terminal; its exit code and text."""
    master, slave = pty.openpty()
    process = subprocess.Popen(
        [*CLI, *args], stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, close_fds=True
    )
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:  # the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        elif process.poll() is not None:
            break
    os.close(master)
    code = process.wait(timeout=30)
    return code, b"".join(chunks).decode(errors="replace")


def test_run_on_a_terminal_prints_each_alert_once_and_readable_logs(tmp_path: Path):
    events = tmp_path / "events.jsonl"
    demo.generate(days=0.5, scale=0.1, seed=5, spike_tenant=None, regression_prompt=None).write(
        str(events)
    )
    alerts = tmp_path / "alerts.jsonl"
    config = tmp_path / "config.yaml"
    config.write_text(
        f"source: {{type: jsonl, path: {events}}}\n"
        f"dead_letter: {{path: {tmp_path / 'dead.jsonl'}}}\n"
        f"{demo.pricing_yaml()}\n"
        "budgets:\n"
        "  - {name: tenant-hourly, scope_by: [tenant], amount_usd: 0.5, period: hour}\n"
        "receivers:\n"
        "  - {type: console}\n"
        f"  - {{type: file, path: {alerts}}}\n"
        f"delivery: {{outbox_path: {tmp_path / 'outbox.sqlite'}}}\n"
    )
    code, text = _run_in_terminal(["run", "--config", str(config)])
    assert code == 0, text[-2000:]
    raised = read_alerts(alerts)
    assert len(raised) >= 3
    lines = text.splitlines()
    console_lines = [line for line in lines if line.startswith(("[FIRING", "[RESOLVED"))]
    assert len(console_lines) == len(raised)
    assert not [line for line in lines if "fingerprint" in line]  # no second line per alert
    assert not [line for line in lines if line.lstrip().startswith("{")]  # no JSON logs
    assert any("[info     ]" in line for line in lines)


def test_logs_are_json_when_not_on_a_terminal_and_keep_the_alert_event(capsys):
    assert swlog.configure("info", json=None) is True  # pytest's stderr is no terminal
    structlog.get_logger("t").info("alert", rule="r")
    line = capsys.readouterr().err.strip()
    assert json.loads(line)["event"] == "alert"


def test_log_lines_go_above_the_progress_bar_never_onto_it():
    stream = io.StringIO()
    swlog.status("[####      ] 40.0% read", stream)
    writer = swlog._LineWriter(stream)
    writer.msg("2026-11-16 [warning  ] late event")
    swlog.status(None, stream)
    shown = _terminal_lines(stream.getvalue())
    assert shown == ["2026-11-16 [warning  ] late event", ""]


def _terminal_lines(text: str) -> list[str]:
    """What a terminal shows: ``\\r\\033[K`` erases the current line."""
    rows = [""]
    for part in re.split(r"(\r\x1b\[K|\n)", text):
        if part == "\r\x1b[K":
            rows[-1] = ""
        elif part == "\n":
            rows.append("")
        else:
            rows[-1] += part
    return rows


def test_progress_bar_shows_no_percent_before_the_first_events():
    counters = RunStats(bytes_read=4 << 20, bytes_total=30 << 20)
    assert "%" not in cli.progress_line(counters)
    assert "starting" in cli.progress_line(counters)
    counters.events = 1200
    assert "13.3% read  1,200 events" in cli.progress_line(counters)


def test_a_resolved_budget_says_its_period_ended():
    line = render_line(
        _alert(
            kind="budget",
            status="resolved",
            rule="tenant-daily",
            metric="spend_usd",
            observed=73.8,
            expected=100,
            score=73.8,
            threshold=70,
            period="2026-11-16",
        )
    )
    assert "period 2026-11-16 ended at $73.80 of $100.00" in line
    assert ">=" not in line
    firing = render_line(
        _alert(
            kind="budget",
            observed=73.8,
            expected=100,
            score=73.8,
            threshold=70,
            period="2026-11-16",
        )
    )
    assert "(73.8% >= 70%)" in firing


def test_anomaly_spend_is_shown_in_dollars_and_tokens_in_tokens():
    assert "$1,234.50 vs expected $150.25" in render_line(_alert())
    tokens = render_line(_alert(metric="output_tokens_per_request", observed=1840, expected=400))
    assert "1,840 output tokens per request vs expected 400 output tokens per request" in tokens


def test_explain_names_a_scope_without_a_dimension(detection_config, planted_file):
    _, config = detection_config
    result = subprocess.run(
        [
            *CLI,
            "explain",
            "--config",
            str(config),
            "--input",
            str(planted_file),
            "--scope",
            "globex",
            "--at",
            "2026-11-16T10:00:00Z",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "dictionary update" not in result.stderr
    assert "--scope 'globex': expected DIMENSION=VALUE" in result.stderr


def test_input_that_is_a_directory_is_named_as_one(detection_config, tmp_path):
    _, config = detection_config
    result = subprocess.run(
        [
            *CLI,
            "backtest",
            "--config",
            str(config),
            "--input",
            str(tmp_path),
            "--alerts-out",
            str(tmp_path / "a.jsonl"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "is a directory" in result.stderr and "does not exist" not in result.stderr
    assert "*.jsonl" in result.stderr


def test_version():
    result = subprocess.run([*CLI, "--version"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0
    assert result.stdout.strip() == f"spendwatch {__version__}"


def test_output_into_a_closed_pipe_ends_quietly():
    process = subprocess.Popen([*CLI, "schema"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout is not None and process.stderr is not None
    process.stdout.readline()
    process.stdout.close()  # like `| head -1`
    error = process.stderr.read().decode()
    process.wait(timeout=30)
    assert "Traceback" not in error and "BrokenPipe" not in error


def test_every_option_has_help_text():
    parser = cli._parser()
    missing = []
    commands = next(a for a in parser._actions if a.dest == "command")
    for name, sub in commands.choices.items():
        for action in sub._actions:
            if action.dest != "help" and not action.help:
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}")
    assert missing == []


def test_readme_delivery_outcomes_are_the_ones_counted():
    text = (REPO / "notifiers" / "outbox.py").read_text()
    counted = set(re.findall(r'_finish\([^)]*?"(\w+)"', text, re.S))
    counted |= set(re.findall(r'DELIVERIES\.labels\(\w+, "(\w+)"\)', text))
    assert counted == {"sent", "retry", "failed", "expired"}
    row = next(
        line
        for line in (REPO / "README.md").read_text().splitlines()
        if line.startswith("| `spendwatch_deliveries_total")
    )
    documented = set(re.findall(r"`(\w+)`", row.split("|")[3]))
    assert counted <= documented
    assert not documented & {"ok", "retrying"}


def test_focus_example_config_ignores_sub_dollar_services(tmp_path: Path):
    sample = SHARED / "real" / "focus_1.0_sample.csv"
    text = (REPO / "config" / "focus.yaml").read_text()
    config = tmp_path / "focus.yaml"
    config.write_text(re.sub(r"path: export\.csv", f"path: {sample}", text))
    out = tmp_path / "alerts.jsonl"
    result = subprocess.run(
        [
            *CLI,
            "backtest",
            "--config",
            str(config),
            "--input",
            str(sample),
            "--alerts-out",
            str(out),
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    anomalies = [a for a in read_alerts(out) if a["kind"] == "anomaly"]
    assert [a for a in anomalies if a["status"] == "firing" and a["observed"] < 1.0] == []


def test_a_sequential_alert_line_says_its_evidence_and_rarity_and_a_resolved_one_no_threshold():
    from spendwatch.core.alerts import make_alert

    common = dict(
        kind="anomaly",
        rule="tenant-spend",
        severity="warning",
        scope={"tenant": "acme"},
        metric="spend_usd",
        window_start=1_794_787_200,
        window_end=1_794_788_100,
        observed=12.0,
        expected=2.0,
        score=6.2,
        episode_start=1_794_787_200,
    )
    firing = make_alert(
        status="firing",
        threshold=10.2,
        evidence=14.5,
        rarity="once in 9.2 years of this scope",
        **common,
    )
    line = render_line(firing)
    assert "evidence 14.5 of 10.2: once in 9.2 years of this scope" in line
    resolved = make_alert(status="resolved", threshold=0.0, **common)
    assert "threshold" not in render_line(resolved) and "z=6.2" in render_line(resolved)
