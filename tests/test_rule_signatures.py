"""A restart with other settings keeps a rule's learned state only when the state does not
depend on them: ``max_scopes`` (and severity) may change, anything the baselines were
learned under may not — and a snapshot that recorded ``max_scopes`` in its signature
(written before it was left out) keeps its baselines too."""

from __future__ import annotations

import copy
import pickle

from spendwatch.config import SpendwatchConfig
from spendwatch.dataflows.engine import EnginePlan, ShardEngine, _learned
from tests.test_engine_equivalence import CONFIG
from tests.test_old_snapshots import _feed, _messages


def _engine(config: dict, snapshot: bytes | None = None) -> ShardEngine:
    return ShardEngine(EnginePlan.from_config(SpendwatchConfig.model_validate(config)), snapshot)


def _changed(**settings) -> dict:
    config = copy.deepcopy(CONFIG)
    config["detectors"][0].update(settings)
    return config


def test_max_scopes_and_severity_keep_baselines_other_settings_do_not():
    engine = _engine(CONFIG)
    _feed({"0": engine, "1": _engine(CONFIG), "2": _engine(CONFIG)}, _messages()[:8])
    rule = CONFIG["detectors"][0]["name"]
    learned = engine.detector_states[rule]
    assert learned, "the first rule has scopes on shard 0"
    snapshot = engine.snapshot()
    kept = _engine(_changed(max_scopes=50_000, severity="critical"), snapshot)
    assert kept.detector_states[rule].keys() == learned.keys()
    dropped = _engine(_changed(days=3), snapshot)
    assert not dropped.detector_states.get(rule)


def test_a_signature_that_recorded_max_scopes_compares_equal_without_it():
    plan = EnginePlan.from_config(SpendwatchConfig.model_validate(CONFIG))
    rule = CONFIG["detectors"][0]["name"]
    current = plan.signatures()[rule]
    settings = eval(current[2])
    older = (current[0], current[1], repr(sorted([*settings, ("max_scopes", 10_000)])))
    assert older != current and _learned(older) == _learned(current)
    assert _learned(pickle.loads(pickle.dumps(older))) == _learned(current)
