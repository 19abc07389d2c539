"""Config loading: valid files load, bad ones name the file, line, key path and problem."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from spendwatch.config import ConfigDeprecationWarning, ConfigError, load_config
from tests.conftest import REPO, write_config

GOOD = """
detectors:
  - name: spend
    type: seasonal_zscore
    scope: [tenant, labels.team]
    window: 5m
budgets:
  - name: monthly
    scope: {tenant: acme}
    amount_usd: 1000
receivers:
  - type: console
"""


def problems_of(tmp_path: Path, text: str) -> list[str]:
    path = write_config(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return caught.value.problems


def test_bundled_configs_are_valid():
    for path in sorted((REPO / "config").glob("*.yaml")):
        config = load_config(path)
        assert config.detectors or config.budgets, path


def test_good_config_parses_durations_and_defaults(tmp_path):
    config = load_config(write_config(tmp_path, GOOD))
    assert config.detectors[0].window == 300
    assert config.budgets[0].thresholds == [70, 85, 100]
    assert config.budgets[0].period == "month"
    assert config.used_dimensions() == ["tenant", "labels.team", "tenant"][:2]


def test_wrong_type_names_file_line_and_key_path(tmp_path):
    text = GOOD.replace("    window: 5m", "    window: 5m\n    threshold: high")
    [problem] = problems_of(tmp_path, text)
    assert problem.startswith(f"{tmp_path / 'config.yaml'}:7: detectors[0].threshold: ")
    assert "number" in problem


def test_negative_threshold_and_bad_duration_are_both_reported(tmp_path):
    text = GOOD.replace("    window: 5m", "    window: five minutes\n    threshold: -1")
    problems = problems_of(tmp_path, text)
    assert any("detectors[0].window" in p and "invalid duration" in p for p in problems)
    assert any("detectors[0].threshold" in p and "greater than 0" in p for p in problems)


def test_unknown_key_and_unknown_dimension(tmp_path):
    text = GOOD.replace("    window: 5m", "    windw: 5m").replace("labels.team", "teem")
    problems = problems_of(tmp_path, text)
    assert any("detectors[0].windw: unknown key" in p for p in problems)
    assert any("detectors[0].scope[1]" in p and "unknown dimension 'teem'" in p for p in problems)


def test_unknown_detector_type_is_named(tmp_path):
    problems = problems_of(tmp_path, GOOD.replace("seasonal_zscore", "magic"))
    assert any("detectors[0]" in p and "seasonal_zscore" in p for p in problems), problems


def test_budget_rules(tmp_path):
    text = GOOD.replace("amount_usd: 1000", "amount_usd: 0\n    thresholds: [50, 50]")
    problems = problems_of(tmp_path, text)
    assert any("budgets[0].amount_usd" in p for p in problems)
    assert any("budgets[0].thresholds" in p and "distinct" in p for p in problems)


def test_invalid_yaml_points_at_line_and_column(tmp_path):
    [problem] = problems_of(tmp_path, "detectors:\n  - name: [unclosed\n")
    assert problem.startswith(f"{tmp_path / 'config.yaml'}:3:")
    assert "invalid YAML" in problem


def test_environment_substitution_and_missing_variable(tmp_path, monkeypatch):
    text = GOOD.replace("amount_usd: 1000", "amount_usd: ${BUDGET_AMOUNT}")
    monkeypatch.setenv("BUDGET_AMOUNT", "250")
    assert load_config(write_config(tmp_path, text)).budgets[0].amount_usd == 250
    monkeypatch.delenv("BUDGET_AMOUNT")
    [problem] = problems_of(tmp_path, text)
    assert "budgets[0].amount_usd: environment variable BUDGET_AMOUNT is not set" in problem
    with_default = text.replace("${BUDGET_AMOUNT}", "${BUDGET_AMOUNT:-75}")
    assert load_config(write_config(tmp_path, with_default)).budgets[0].amount_usd == 75


def test_secret_values_never_appear_in_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("SECRET_AMOUNT", "hunter2-secret")
    text = GOOD.replace("amount_usd: 1000", "amount_usd: ${SECRET_AMOUNT}")
    problems = problems_of(tmp_path, text)
    assert problems and not any("hunter2" in p for p in problems)


def test_rule_names_unique_and_dimensions_kept(tmp_path):
    text = GOOD.replace("name: monthly", "name: spend")
    assert any("unique" in p for p in problems_of(tmp_path, text))
    text = "dimensions: [tenant]\n" + GOOD
    assert any("labels.team" in p and "dimensions" in p for p in problems_of(tmp_path, text))


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "spendwatch.cli", *args], capture_output=True, text=True, timeout=60
    )


def test_check_config_cli_exit_codes(tmp_path):
    good = write_config(tmp_path, GOOD, "good.yaml")
    bad = write_config(tmp_path, GOOD.replace("5m", "5 parsecs"), "bad.yaml")
    ok = _cli("check-config", str(good))
    assert ok.returncode == 0 and "ok" in ok.stdout
    failed = _cli("check-config", str(good), str(bad))
    assert failed.returncode == 1
    assert f"{bad}:6: detectors[0].window: invalid duration" in failed.stderr


def test_schema_cli_prints_json_schemas():
    config_schema = json.loads(_cli("schema").stdout)
    assert "detectors" in config_schema["properties"]
    event_schema = json.loads(_cli("schema", "--events").stdout)
    text = json.dumps(event_schema)
    assert "event_id" in text and "cached_input_tokens" in text


def test_an_old_integer_warmup_still_loads_as_the_duration_it_meant(tmp_path):
    path = tmp_path / "old.yaml"
    path.write_text(
        "detectors:\n  - name: z\n    type: seasonal_zscore\n    window: 15m\n    warmup: 24\n"
    )
    with pytest.warns(ConfigDeprecationWarning, match=r"old\.yaml:5: detectors\[0\]\.warmup"):
        config = load_config(path)
    assert config.detectors[0].warmup == 24 * 900
    assert config.detectors[0].effective_warmup == 24
    path.write_text(
        "detectors:\n  - name: z\n    type: seasonal_zscore\n    window: 15m\n    warmup: 6h\n"
    )
    assert load_config(path).detectors[0].effective_warmup == 24


def test_an_old_integer_unit_cost_warmup_loads_as_judged_windows_of_event_time(tmp_path):
    path = tmp_path / "old.yaml"
    path.write_text(
        "detectors:\n  - name: u\n    type: unit_cost\n    window: 5m\n    warmup: 12\n"
    )
    with pytest.warns(ConfigDeprecationWarning, match=r"detectors\[0\]\.warmup"):
        config = load_config(path)
    assert config.detectors[0].warmup == 12 * 300
