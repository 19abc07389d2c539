"""Routes, owners and silences from YAML; the example config covers every receiver type."""

from __future__ import annotations

import subprocess
import sys

import pytest

from spendwatch.config import ConfigError, load_config
from spendwatch.notifiers.base import NOTIFIER_TYPES
from spendwatch.notifiers.router import Dispatcher
from tests.conftest import REPO, write_config
from tests.notifier_kit import anomaly_alert, budget_alert

SECRETS = {"SLACK_BOT_TOKEN": "xoxb-x", "JIRA_EMAIL": "a@example.com", "JIRA_API_TOKEN": "t"}


def test_example_config_passes_check_config_and_shows_every_receiver(monkeypatch):
    for key, value in SECRETS.items():
        monkeypatch.setenv(key, value)
    path = REPO / "config" / "example.yaml"
    result = subprocess.run(
        [sys.executable, "-m", "spendwatch.cli", "check-config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    config = load_config(path)
    assert {r.type for r in config.receivers} == set(NOTIFIER_TYPES)
    assert config.routes and config.owners and config.silences
    assert "xoxb-x" not in repr(config)


def test_example_config_routing_does_what_its_comments_say(monkeypatch):
    for key, value in SECRETS.items():
        monkeypatch.setenv(key, value)
    dispatcher = Dispatcher.from_config(load_config(REPO / "config" / "example.yaml"))
    prompt = dispatcher.plan(anomaly_alert(prompt="summarize@v9"))
    assert prompt.receivers == ["prompt-jira", "oncall-slack", "file"]  # stops at its route
    assert prompt.alert.owner == "docs-team@example.com"
    assert prompt.alert.owner_ids == {"slack": "U0123ABCDEF", "jira": "5b10ac8d82e05b22cc7d4ef5"}
    assert dispatcher.route(budget_alert(70.0).model_copy(update={"severity": "info"})) == [
        "throttle",
        "file",
        "console",
        "alert-topic",
    ]


def test_a_route_to_an_unknown_receiver_is_a_config_error(tmp_path):
    path = write_config(
        tmp_path,
        """
        receivers:
          - type: console
        routes:
          - receivers: [pager]
        """,
    )
    with pytest.raises(ConfigError, match=r"routes\[0\] names unknown receiver\(s\): pager"):
        load_config(path)


def test_unknown_keys_in_routing_sections_are_errors(tmp_path):
    path = write_config(
        tmp_path,
        """
        silences:
          - match: {kind: anomaly}
            start: 2026-01-01T00:00:00Z
            end: 2026-01-02T00:00:00Z
            reason: x
            until: tomorrow
        """,
    )
    with pytest.raises(ConfigError, match=r"silences\[0\]\.until: unknown key"):
        load_config(path)


def test_a_silence_that_ends_before_it_starts_is_an_error(tmp_path):
    path = write_config(
        tmp_path,
        """
        silences:
          - match: {kind: anomaly}
            start: 2026-01-02T00:00:00Z
            end: 2026-01-01T00:00:00Z
            reason: backwards
        """,
    )
    with pytest.raises(ConfigError, match="end must be after its start"):
        load_config(path)


def test_ordered_routes_stop_at_the_first_match_unless_continue(tmp_path):
    path = write_config(
        tmp_path,
        """
        receivers:
          - {type: console, name: a}
          - {type: console, name: b}
          - {type: console, name: c}
        routes:
          - match: {rule: "tenant-*", scope: {tenant: "ac?e"}}
            receivers: [a]
          - match: {kind: budget}
            receivers: [b]
            continue: true
          - receivers: [c]
        """,
    )
    dispatcher = Dispatcher.from_config(load_config(path))
    assert dispatcher.route(budget_alert()) == ["a"]
    assert dispatcher.route(budget_alert(tenant="globex")) == ["b", "c"]
    assert dispatcher.route(anomaly_alert()) == ["c"]
