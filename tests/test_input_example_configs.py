"""The Kafka and FOCUS example configs load, and the FOCUS one backtests the real export."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from spendwatch.cli import main
from spendwatch.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT.parent / "shared" / "real" / "focus_1.0_sample.csv"


def test_the_kafka_example_describes_a_kafka_source_and_receiver() -> None:
    config = load_config(ROOT / "config" / "kafka.yaml")
    assert config.source.type == "kafka"
    assert config.source.dead_letter_topic
    assert [r.type for r in config.receivers] == ["kafka"]


def test_the_focus_example_backtests_the_sample_export_from_the_command_line(
    tmp_path: Path, capsys
) -> None:
    alerts = tmp_path / "alerts.jsonl"
    code = main(
        [
            "backtest",
            "--config",
            str(ROOT / "config" / "focus.yaml"),
            "--input",
            str(SAMPLE),
            "--alerts-out",
            str(alerts),
            "--dead-letter",
            str(tmp_path / "dead.jsonl"),
        ]
    )
    assert code == 0
    assert "events 1,000  dead-lettered 0  duplicates 0" in capsys.readouterr().err
    assert (tmp_path / "dead.jsonl").read_text() == ""
    # the sample's largest application spends about $16 in September, under its $500 budget
    assert all(
        json.loads(line)["rule"] != "application-monthly"
        for line in alerts.read_text().splitlines()
    )


def test_source_errors_name_the_key_under_the_source_type(tmp_path: Path) -> None:
    path = tmp_path / "kafka.yaml"
    path.write_text("source:\n  type: kafka\n  brokers: [b:9092]\n")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert error.value.problems == [f"{path}:2: source.topics: Field required"]
