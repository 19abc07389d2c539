"""Shared fixtures: a generated stream with planted incidents, config writing, alert reading."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from spendwatch.config import SpendwatchConfig, load_config
from spendwatch.ops import demo

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"

DETECTION_CONFIG = """
engine:
  allowed_lateness: 2m
dead_letter:
  path: {dead_letter}
{pricing}
detectors:
  - name: tenant-spend
    type: seasonal_zscore
    scope: [tenant]
    metric: spend_usd
    window: 1h
    threshold: 4
    min_ratio: 1.5
    min_value: 0.5
  - name: prompt-output-tokens
    type: seasonal_zscore
    scope: [prompt_id]
    metric: output_tokens_per_request
    window: 1h
    seasonality: none
    threshold: 5
    min_ratio: 1.3
budgets:
  - name: tenant-daily
    scope_by: [tenant]
    amount_usd: 35
    overrides: {{acme: 110}}
    period: day
receivers:
  - type: file
    path: {alerts}
delivery:
  outbox_path: {alerts}.outbox.sqlite
"""


def write_config(directory: Path, text: str, name: str = "config.yaml") -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(text))
    return path


def read_alerts(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def comparable(alerts: list[dict]) -> list[tuple]:
    """Alerts without processing-time fields, sorted: what two runs must agree on."""
    return sorted(
        tuple(
            sorted((k, json.dumps(v, sort_keys=True)) for k, v in a.items() if k != "detected_at")
        )
        for a in alerts
    )


@pytest.fixture(scope="session")
def planted() -> demo.DemoStream:
    """Five days at 30 % of the demo rate with a spend spike and a ×5 token regression."""
    return demo.generate(
        days=5, scale=0.3, seed=11, spike_at_hours=2 * 24 + 10, regression_at_hours=3 * 24 + 14
    )


@pytest.fixture(scope="session")
def planted_file(planted: demo.DemoStream, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("stream") / "events.jsonl"
    planted.write(str(path))
    return path


@pytest.fixture
def detection_config(tmp_path: Path) -> tuple[SpendwatchConfig, Path]:
    alerts = tmp_path / "alerts.jsonl"
    path = write_config(
        tmp_path,
        DETECTION_CONFIG.format(
            dead_letter=tmp_path / "dead.jsonl", alerts=alerts, pricing=demo.pricing_yaml()
        ),
    )
    return load_config(path), path


@pytest.fixture(autouse=True)
def _fresh_structlog():
    """Tests that call ``spendwatch.core.logging.configure`` bind structlog to the stderr of
    that moment (pytest's capture, closed later); give every test the defaults again."""
    import structlog

    structlog.reset_defaults()
    yield
