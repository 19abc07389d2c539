"""Hostile config files and environments: refused fast, with file:line: key: problem.

A config is read at start and again at every reload of a running worker, so whatever
the file or the ``SPENDWATCH_*`` environment holds, loading must end quickly, in
bounded memory, with a :class:`ConfigError` (never another exception) that names
where the problem is without repeating the value.
"""

from __future__ import annotations

import random
import re
import resource
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pytest

from spendwatch.config import MAX_CONFIG_BYTES, ConfigError, SpendwatchConfig, load_config
from spendwatch.core.yamlload import MAX_ALIASES, MAX_DEPTH, MAX_NODES
from tests.conftest import REPO, write_config
from tests.test_config import GOOD, problems_of


def _bomb(levels: int) -> str:
    """A "billion laughs" document: ``levels`` anchors of nine aliases to the previous one."""
    lines = ["a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    names = "abcdefghijklmnopqrstuvwxyz"
    for level in range(1, levels):
        previous, name = names[level - 1], names[level]
        lines.append(f"{name}: &{name} [{', '.join([f'*{previous}'] * 9)}]")
    return "\n".join(lines) + "\n"


def _limit_memory() -> None:
    limit = 1 << 30
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


# --- aliases, anchors, size and depth ---------------------------------------------------


def test_billion_laughs_check_config_exits_1_quickly_in_bounded_memory(tmp_path):
    path = write_config(tmp_path, _bomb(9))  # 9**9 leaves once expanded
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "spendwatch.cli", "check-config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=_limit_memory,  # an expansion would hit MemoryError instead of the host
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr and "MemoryError" not in result.stderr
    assert re.search(f"error: {re.escape(str(path))}:[1-9]:", result.stderr)  # a level's line
    assert f"expands to more than {MAX_NODES} values through aliases" in result.stderr
    assert elapsed < 20  # mostly interpreter start-up


def test_alias_expansion_is_refused_before_building_anything(tmp_path):
    path = write_config(tmp_path, _bomb(7))  # 9**7 = 4.8 million leaves
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(ConfigError) as caught:
            load_config(path)
        elapsed = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    [problem] = caught.value.problems
    assert re.match(f"{re.escape(str(path))}:[1-7]:", problem)
    assert "through aliases" in problem
    assert elapsed < 1.0
    assert peak < 20 << 20


def test_more_aliases_than_the_limit_are_refused_at_the_first_one_over(tmp_path):
    uses = "\n".join(f"  - *x  # {i + 1}" for i in range(MAX_ALIASES + 1))
    [problem] = problems_of(tmp_path, f"x_anchor: &x 1\nlist:\n{uses}\n")
    assert problem.startswith(f"{tmp_path / 'config.yaml'}:{MAX_ALIASES + 3}:")
    assert f"more than {MAX_ALIASES} aliases" in problem


def test_recursive_alias_is_refused(tmp_path):
    [problem] = problems_of(tmp_path, "engine: &loop\n  shards: 4\n  again: *loop\n")
    assert problem.startswith(f"{tmp_path / 'config.yaml'}:1:")  # the anchor
    assert "recursive alias" in problem


def test_deep_nesting_is_refused_not_a_recursion_error(tmp_path):
    depth = 5000
    [problem] = problems_of(tmp_path, "detectors: " + "[" * depth + "]" * depth + "\n")
    assert problem.startswith(f"{tmp_path / 'config.yaml'}:1:")
    assert f"nested more than {MAX_DEPTH} levels deep" in problem


def test_deep_nesting_built_from_aliases_is_refused(tmp_path):
    lines = ["l0: &l0 [x]"]
    lines += [f"l{i}: &l{i} [[[[[[[[*l{i - 1}]]]]]]]]" for i in range(1, 12)]
    [problem] = problems_of(tmp_path, "\n".join(lines) + "\n")
    assert "levels deep once aliases expand" in problem


def test_too_many_values_without_aliases_are_refused(tmp_path):
    text = "detectors: [" + ", ".join(["1"] * (MAX_NODES + 1)) + "]\n"
    [problem] = problems_of(tmp_path, text)
    assert f"more than {MAX_NODES} values" in problem


def test_oversized_file_is_refused_unread(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("# padding\n" * (MAX_CONFIG_BYTES // 10 + 1))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.problems == [
        f"{path}: too large: a config file is at most {MAX_CONFIG_BYTES} bytes"
    ]


MERGED = """
detectors:
  - &spend
    name: spend
    type: seasonal_zscore
    scope: [tenant]
    window: 5m
    threshold: 5
  - <<: *spend
    name: spend-by-team
    scope: [labels.team]
    threshold: 6
  - <<: *spend
    name: spend-strict
    threshold: -1
"""


def test_merge_keys_are_allowed_and_may_override(tmp_path):
    config = load_config(write_config(tmp_path, MERGED.replace("threshold: -1", "threshold: 3")))
    assert [(d.name, d.threshold, d.window) for d in config.detectors] == [
        ("spend", 5, 300),
        ("spend-by-team", 6, 300),
        ("spend-strict", 3, 300),
    ]
    assert config.detectors[1].scope == ["labels.team"]


def test_an_overriding_key_is_reported_at_its_own_line(tmp_path):
    [problem] = problems_of(tmp_path, MERGED)
    assert problem.startswith(f"{tmp_path / 'config.yaml'}:15: detectors[2].threshold: ")


# --- duplicate keys -------------------------------------------------------------------------


def test_duplicate_top_level_section_is_an_error(tmp_path):
    text = "source:\n  type: jsonl\n" + GOOD + "source:\n  type: jsonl\n  path: x.jsonl\n"
    [problem] = problems_of(tmp_path, text)
    line = text.splitlines().index("source:", 1) + 1
    assert problem == (
        f"{tmp_path / 'config.yaml'}:{line}: source: duplicate key (first given on line 1)"
    )


def test_duplicate_key_inside_a_detector_is_an_error(tmp_path):
    text = GOOD.replace("    window: 5m", "    window: 5m\n    threshold: 5\n    threshold: -1")
    [problem] = problems_of(tmp_path, text)
    assert problem == (
        f"{tmp_path / 'config.yaml'}:8: detectors[0].threshold: "
        "duplicate key (first given on line 7)"
    )


def test_duplicate_key_inside_merged_defaults_is_an_error(tmp_path):
    text = "engine:\n  <<: {shards: 4, shards: 8}\n  allowed_lateness: 1m\n"
    [problem] = problems_of(tmp_path, text)
    assert "duplicate key" in problem and problem.startswith(f"{tmp_path / 'config.yaml'}:2:")


def test_a_key_overridden_after_a_nested_merge_is_no_duplicate(tmp_path):
    text = (
        "detectors:\n"
        "  - &base {name: a, type: seasonal_zscore, window: 5m}\n"
        "  - &mid {<<: *base, name: b, window: 10m}\n"
        "  - {<<: *mid, name: c}\n"
    )
    config = load_config(write_config(tmp_path, text))
    assert [(d.name, d.window) for d in config.detectors] == [("a", 300), ("b", 600), ("c", 600)]


# --- durations ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0s", "a window must be positive"),
        ("0", "a window must be positive"),
        ("100000d", "duration out of range: at most 3650d"),
        ("99999999999999999999999999999999w", "invalid duration"),
        (str(10**30), "duration out of range"),
        ("1.0e+300", "duration out of range"),
        (".inf", "a duration must be a finite number of seconds"),
        (".nan", "a duration must be a finite number of seconds"),
        ("1.5", "a duration must be a whole number of seconds"),
        ("~", "expected a duration"),
        ("[5m]", "expected a duration"),
        ("{a: 1}", "expected a duration"),
        ("true", "expected a duration"),
        ("-5m", "invalid duration"),
    ],
)
def test_bad_window_gets_its_own_message_at_its_line(tmp_path, value, message):
    [problem] = problems_of(tmp_path, GOOD.replace("window: 5m", f"window: {value}"))
    assert problem.startswith(f"{tmp_path / 'config.yaml'}:6: detectors[0].window: {message}")


DURATION_FIELDS = [
    ("engine:\n  allowed_lateness: {v}\n", 2, "engine.allowed_lateness"),
    ("engine:\n  dedup_horizon: {v}\n", 2, "engine.dedup_horizon"),
    ("engine:\n  scope_idle_ttl: {v}\n", 2, "engine.scope_idle_ttl"),
    ("engine:\n  max_future_skew: {v}\n", 2, "engine.max_future_skew"),
    ("delivery:\n  max_age: {v}\n", 2, "delivery.max_age"),
    ("delivery:\n  flush_timeout: {v}\n", 2, "delivery.flush_timeout"),
    (
        "budgets:\n  - name: b\n    amount_usd: 1\n    window: {v}\n",
        4,
        "budgets[0].window",
    ),
    (
        "budgets:\n  - name: b\n    amount_usd: 1\n    forecast_min_history: {v}\n",
        4,
        "budgets[0].forecast_min_history",
    ),
    (
        "detectors:\n  - name: r\n    type: robust_seasonal\n    warmup: {v}\n",
        4,
        "detectors[0].warmup",
    ),
]


@pytest.mark.parametrize(("template", "line", "key"), DURATION_FIELDS)
@pytest.mark.parametrize("value", ["100000d", ".inf", "~", "-1", "12 parsecs"])
def test_every_duration_field_is_bounded_and_named(tmp_path, template, line, key, value):
    problems = problems_of(tmp_path, template.format(v=value))
    assert any(p.startswith(f"{tmp_path / 'config.yaml'}:{line}: {key}: ") for p in problems)
    assert not any("Traceback" in p for p in problems)


def test_longest_duration_still_loads(tmp_path):
    config = load_config(write_config(tmp_path, "engine:\n  dedup_horizon: 3650d\n"))
    assert config.engine.dedup_horizon == 3650 * 86400


# --- environment overrides ------------------------------------------------------------------


def test_bad_environment_override_names_the_variable_not_a_line(tmp_path, monkeypatch):
    monkeypatch.setenv("SPENDWATCH_ENGINE__MAX_EVENT_BYTES", "abc-secret")
    for text in (GOOD, "engine:\n  shards: 4\n" + GOOD):
        [problem] = problems_of(tmp_path, text)
        assert problem.startswith(
            "environment variable SPENDWATCH_ENGINE__MAX_EVENT_BYTES: engine.max_event_bytes: "
        ), problem
        assert "valid integer" in problem
        assert "secret" not in problem and "config.yaml" not in problem


def test_environment_variable_is_named_as_spelled(tmp_path, monkeypatch):
    monkeypatch.setenv("spendwatch_server__port", "99999")
    [problem] = problems_of(tmp_path, GOOD)
    assert problem.startswith("environment variable spendwatch_server__port: server.port: ")


def test_unknown_key_from_the_environment_names_the_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("SPENDWATCH_ENGINE__SHARDZ", "4")
    [problem] = problems_of(tmp_path, GOOD)
    assert problem.startswith("environment variable SPENDWATCH_ENGINE__SHARDZ: engine.shardz: ")
    assert "unknown key" in problem


def test_unparsable_json_in_the_environment_is_a_config_error(tmp_path, monkeypatch):
    monkeypatch.setenv("SPENDWATCH_DETECTORS", "[{secret-token")
    [problem] = problems_of(tmp_path, GOOD)
    assert problem.startswith("environment variable SPENDWATCH_DETECTORS: cannot parse")
    assert "secret" not in problem


def test_list_from_the_environment_names_the_variable_and_the_item(tmp_path, monkeypatch):
    monkeypatch.setenv(
        "SPENDWATCH_BUDGETS", '[{"name": "b", "scope": {"tenant": "acme"}, "amount_usd": -1}]'
    )
    [problem] = problems_of(tmp_path, GOOD.split("budgets:")[0])
    assert problem.startswith("environment variable SPENDWATCH_BUDGETS: budgets[0].amount_usd: ")


def test_a_yaml_value_next_to_a_good_override_is_still_blamed_on_its_line(tmp_path, monkeypatch):
    monkeypatch.setenv("SPENDWATCH_ENGINE__MAX_EVENT_BYTES", "4096")
    [problem] = problems_of(tmp_path, "engine:\n  shards: 0\n")
    assert problem.startswith(f"{tmp_path / 'config.yaml'}:2: engine.shards: ")


# --- engine bounds --------------------------------------------------------------------------


def test_engine_event_bounds_have_defaults_and_load():
    engine = SpendwatchConfig().engine
    assert engine.max_tokens_per_event == 10**12
    assert engine.max_requests_per_event == 10**9
    assert engine.max_event_cost_usd == 1_000_000.0
    assert engine.max_future_skew == 600


def test_engine_event_bounds_from_yaml(tmp_path):
    text = (
        "engine:\n  max_tokens_per_event: 5000000\n  max_requests_per_event: 1000\n"
        "  max_event_cost_usd: 250.5\n  max_future_skew: 15m\n"
    )
    engine = load_config(write_config(tmp_path, text)).engine
    assert (engine.max_tokens_per_event, engine.max_requests_per_event) == (5_000_000, 1000)
    assert (engine.max_event_cost_usd, engine.max_future_skew) == (250.5, 900)
    zero_skew = load_config(write_config(tmp_path, "engine:\n  max_future_skew: 0s\n"))
    assert zero_skew.engine.max_future_skew == 0


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("max_tokens_per_event", "0"),
        ("max_tokens_per_event", str(10**16)),
        ("max_tokens_per_event", "lots"),
        ("max_requests_per_event", "0"),
        ("max_requests_per_event", str(10**13)),
        ("max_event_cost_usd", "0"),
        ("max_event_cost_usd", "1.0e+7"),
        ("max_event_cost_usd", ".inf"),
        ("max_event_cost_usd", ".nan"),
        ("max_future_skew", "-1"),
        ("max_future_skew", "100000d"),
        ("max_event_bytes", str(1 << 40)),
        ("snapshot_interval", "1.0e+300"),
        ("shutdown_grace", ".inf"),
    ],
)
def test_engine_bounds_are_validated(tmp_path, key, value):
    [problem] = problems_of(tmp_path, f"engine:\n  {key}: {value}\n")
    assert problem.startswith(f"{tmp_path / 'config.yaml'}:2: engine.{key}: ")


@pytest.mark.parametrize("value", ["1.0e+300", ".inf", "0"])
def test_poll_interval_is_bounded(tmp_path, value):
    [problem] = problems_of(tmp_path, f"source:\n  type: jsonl\n  poll_interval: {value}\n")
    assert problem.startswith(f"{tmp_path / 'config.yaml'}:3: source.poll_interval: ")


def test_infinite_float_is_refused_in_any_section(tmp_path):
    [problem] = problems_of(tmp_path, GOOD.replace("window: 5m", "window: 5m\n    threshold: .inf"))
    assert problem.startswith(f"{tmp_path / 'config.yaml'}:7: detectors[0].threshold: ")


# --- other hostile YAML ---------------------------------------------------------------------


def test_out_of_range_timestamp_is_a_yaml_error_at_its_line(tmp_path):
    [problem] = problems_of(tmp_path, "silences:\n  - start: 0000-01-01\n")
    assert problem.startswith(f"{tmp_path / 'config.yaml'}:2:")
    assert "timestamp" in problem


def test_control_character_is_reported_with_its_line(tmp_path):
    [problem] = problems_of(tmp_path, "engine:\n  shards: 4\n\x00\n")
    assert (
        problem == f"{tmp_path / 'config.yaml'}:3: invalid YAML: character #x0000 is not "
        "allowed in YAML"
    )


def test_non_string_top_level_key_is_a_config_error(tmp_path):
    [problem] = problems_of(tmp_path, "engine: {}\n1: x\n")
    assert problem == f"{tmp_path / 'config.yaml'}:2: top-level keys must be section names"


def test_python_tags_are_refused(tmp_path):
    [problem] = problems_of(tmp_path, "engine: !!python/object/apply:os.system [true]\n")
    assert "invalid YAML" in problem


def test_reload_of_a_hostile_file_keeps_the_running_config(tmp_path):
    from spendwatch.service.worker import reload_config

    current = load_config(write_config(tmp_path, GOOD))
    for text in (_bomb(9), "a: &a [*a]\n", "detectors: " + "[" * 3000):
        assert reload_config(str(write_config(tmp_path, text)), current) is None


def test_mutated_configs_load_or_fail_with_config_error_only(tmp_path):
    """Random byte damage to the example config: only a config or a ConfigError comes back."""
    original = (REPO / "config" / "example.yaml").read_bytes()
    generator = random.Random(20240601)
    alphabet = b"\x00\t\n :-[]{}&*!|>'\"#%@`,?<=~0123456789.eE+-_sdhmwxyz\xff\xc3"
    path = Path(tmp_path / "config.yaml")
    for _ in range(300):
        damaged = bytearray(original)
        for _ in range(generator.randint(1, 8)):
            position = generator.randrange(len(damaged))
            action = generator.random()
            if action < 0.4:
                damaged[position] = generator.choice(alphabet)
            elif action < 0.7:
                damaged.insert(position, generator.choice(alphabet))
            else:
                del damaged[position]
        path.write_bytes(bytes(damaged))
        try:
            load_config(path)
        except ConfigError as error:
            assert error.problems
            assert not any("(a bug)" in p for p in error.problems), error.problems
