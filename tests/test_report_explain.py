"""Operator tooling: the backtest report, false alerts per day, and ``explain``."""

from __future__ import annotations

import json
import re
from pathlib import Path

from spendwatch.cli import main
from spendwatch.config import load_config
from spendwatch.core.timefmt import rfc3339
from spendwatch.ops import demo
from spendwatch.ops.backtest import backtest
from spendwatch.ops.evaluation import dump_incidents
from spendwatch.ops.replay import replay
from tests.conftest import (
    DETECTION_CONFIG,
    REPO,
    SHARED,
    comparable,
    read_alerts,
    write_config,
)


def _config(tmp_path: Path) -> Path:
    return write_config(
        tmp_path,
        DETECTION_CONFIG.format(
            dead_letter=tmp_path / "dead.jsonl",
            alerts=tmp_path / "delivered.jsonl",
            pricing=demo.pricing_yaml(),
        ),
    )


def test_report_has_a_row_and_a_timeline_per_rule(planted, planted_file, tmp_path, capsys):
    incidents = tmp_path / "incidents.json"
    dump_incidents(incidents, planted.incidents, planted.start, planted.end)
    report = tmp_path / "report"
    code = main(
        [
            "backtest",
            "--config",
            str(_config(tmp_path)),
            "--input",
            str(planted_file),
            "--alerts-out",
            str(tmp_path / "alerts.jsonl"),
            "--incidents",
            str(incidents),
            "--report",
            str(report),
            "--quiet",
        ]
    )
    assert code == 0
    page = (report / "index.html").read_text()
    for rule in ("tenant-spend", "prompt-output-tokens"):
        png = report / f"{rule}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
        row = re.search(rf"<tr><td>{rule}</td>.*?</tr>", page)
        assert row and f'src="{rule}.png"' in row.group(0)
    assert "tenant-daily" in page
    fired = re.search(r"<tr><td>tenant-spend</td>(?:<td>[^<]*</td>){4}<td>(\d+)</td>", page)
    assert fired and int(fired.group(1)) >= 1
    out = capsys.readouterr().out
    assert re.search(r"tenant-spend: \d+ fired, \d+ false \(\d+\.\d\d/day\)", out), out
    assert "prompt-output-tokens: 1 fired, 0 false (0.00/day)" in out
    assert "token_regression 60 min" in out, "the 1 h window ends an hour after onset"


def test_explain_prints_baseline_value_and_z(planted, planted_file, tmp_path, capsys):
    spike, _ = planted.incidents
    code = main(
        [
            "explain",
            "--config",
            str(_config(tmp_path)),
            "--input",
            str(planted_file),
            "--scope",
            "tenant=globex",
            "--at",
            rfc3339(spike.start + 600),
        ]
    )
    assert code == 0
    (line,) = capsys.readouterr().out.splitlines()
    seen = json.loads(line)
    assert seen["rule"] == "tenant-spend" and seen["scope"] == {"tenant": "globex"}
    assert seen["window_start"] == rfc3339(spike.start)
    assert seen["value"] > 4 * seen["expected"] and seen["z"] > 4
    assert (
        main(
            [
                "explain",
                "--config",
                str(_config(tmp_path)),
                "--input",
                str(planted_file),
                "--scope",
                "tenant=nobody",
                "--at",
                rfc3339(spike.start),
            ]
        )
        == 1
    )


def test_demo_writes_its_incidents_for_the_backtest(tmp_path: Path, capsys):
    out = tmp_path / "events.jsonl"
    incidents = tmp_path / "incidents.json"
    code = main(
        [
            "demo",
            "--out",
            str(out),
            "--days",
            "0.2",
            "--scale",
            "0.1",
            "--incidents-out",
            str(incidents),
        ]
    )
    assert code == 0
    written = json.loads(incidents.read_text())
    assert [i["kind"] for i in written["incidents"]] == ["spend_spike", "token_regression"]
    assert written["end"] - written["start"] == 0.2 * 86400


def test_explain_prints_the_sequential_evidence_and_the_count_test(
    planted, planted_file, tmp_path, capsys
):
    spike, _ = planted.incidents
    config = _config(tmp_path)
    text = config.read_text().replace("type: seasonal_zscore", "type: robust_seasonal", 1)
    text = text.replace("    threshold: 4\n", "    warmup: 6h\n", 1)
    config.write_text(text.replace("    min_value: 0.5\n", "", 1))
    at = rfc3339(spike.start + 600)
    argv = ["explain", "--config", str(config), "--input", str(planted_file)]
    assert main([*argv, "--scope", "tenant=globex", "--at", at, "--rule", "tenant-spend"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    seen = json.loads(line)
    assert seen["value"] > seen["expected"] > 0
    assert seen["threshold"] > 0 and seen["evidence"] >= 0  # the CUSUM's side
    assert seen["requests_expected"] > 0 and seen["requests_std"] > 0  # the count test's
    assert isinstance(seen["requests_z"], float)
    assert "Infinity" not in line and "NaN" not in line  # strict JSON, whatever the figures


def test_explain_shows_a_looping_session_against_its_peers(tmp_path: Path, capsys):
    stream = demo.generate(
        days=1, scale=0.3, seed=5, loop_tenant="acme", loop_at_hours=14, loop_factor=10
    )
    (loop,) = [incident for incident in stream.incidents if incident.kind == "session_loop"]
    events = tmp_path / "events.jsonl"
    stream.write(str(events))
    rule = "{name: session-loop, type: agent_loop, scope: [session], peers: [tenant]}"
    config = write_config(
        tmp_path, f"detectors:\n  - {rule}\nreceivers: []\n" + demo.pricing_yaml()
    )
    at = rfc3339(loop.start + 1800)
    scope = ",".join(f"{k}={v}" for k, v in loop.scope.items())
    args = ["explain", "--config", str(config), "--input", str(events), "--scope", scope]
    assert main([*args, "--at", at]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    seen = json.loads(line)
    assert seen["rule"] == "session-loop" and seen["scope"] == loop.scope
    # the upper edge is the count that fires given the evidence the session already has
    assert seen["value"] >= seen["upper"] > seen["expected"] and seen["z"] > 3


def test_replay_of_a_focus_export_sees_what_backtest_sees(tmp_path):
    """``--report`` and ``explain`` read a FOCUS export as FOCUS, like ``backtest``."""
    sample = SHARED / "real" / "focus_1.0_sample.csv"
    text = (REPO / "config" / "focus.yaml").read_text()
    text = text.replace("  - type: console", f"  - type: file\n    path: {tmp_path / 'r.jsonl'}")
    text = text.replace("amount_usd: 500\n", "amount_usd: 0.5\n").replace("5000", "2")
    config = load_config(write_config(tmp_path, text + f"dead_letter: {{path: {tmp_path}/d}}\n"))
    alerts_out = tmp_path / "backtest.jsonl"
    summary = backtest(config, str(sample), str(alerts_out))
    assert summary["events"] > 900
    replayed = replay(config, str(sample))
    assert replayed.points, "the detector judged windows of the export"
    backtested = read_alerts(alerts_out)
    assert backtested, "the sample crosses budgets"
    as_written = [json.loads(a.model_dump_json(exclude_none=True)) for a in replayed.alerts]
    assert comparable(as_written) == comparable(backtested)
