"""Shard snapshots written before the slot rings (one dict of arrays per scope) still restore.

``tests/data/dict_layout_snapshots.json.gz`` holds the three shard snapshots of the
equivalence stream (``tests/test_engine_equivalence.py``) one day in, written once by the
engine whose ``SlotHistory`` kept a dict of one array per slot and whose ``Episode`` had a
``__dict__`` (main at 024ed9b, with the count profile and count test applied to its
``robust_seasonal`` and ``sequential``). Restored by this version, the engines must hold the
same scopes, slot histories and episodes as engines that ran the first day themselves, and
raise the very same alerts over the remaining two days once the statistics a
``robust_seasonal`` scope learned (its noise fits, trends, count profile: fields whose layout
did not change, but whose arithmetic may have since the fixture was written) are the
restored ones in both. So what is tested is the conversion of the layout, and the fixture
need not be rewritten when a statistic changes. A snapshot that cannot be read at all is
refused with a message saying what to do.

Regenerate (only with a version that writes the dict layout, from its repository root):

    python -m tests.test_old_snapshots --write
"""

from __future__ import annotations

import base64
import copy
import gzip
import json
import sys
from pathlib import Path

import pytest

from spendwatch.config import SpendwatchConfig
from spendwatch.dataflows.aggregate import PreAggregator
from spendwatch.dataflows.engine import EnginePlan, ShardEngine, SnapshotError
from spendwatch.detectors.robust_seasonal import _FIELDS, RobustState
from spendwatch.ingest.parser import EventParser
from spendwatch.ingest.pricing import PriceTable
from tests.test_engine_equivalence import BATCH, CONFIG, SHARDS, _lines

FIXTURE = Path(__file__).parent / "data" / "dict_layout_snapshots.json.gz"
SPLIT_BATCHES = 8
"""Batches of the stream before the snapshot (about one day of its three)."""


def _messages() -> list[list[tuple[str, tuple]]]:
    config = SpendwatchConfig.model_validate(CONFIG)
    plan = EnginePlan.from_config(config)
    parser = EventParser(PriceTable(config.pricing), config.used_dimensions(), 86400)
    aggregator = PreAggregator(plan.aggregations, SHARDS, plan.per_request)
    lines = _lines()
    return [
        aggregator.route(parser.parse(lines[at : at + BATCH])) for at in range(0, len(lines), BATCH)
    ]


def _plan() -> EnginePlan:
    return EnginePlan.from_config(SpendwatchConfig.model_validate(CONFIG))


def _feed(engines: dict[str, ShardEngine], messages: list) -> list:
    alerts = []
    for routed in messages:
        for key, (max_ts, rows) in routed:
            alerts.extend(engines[key].on_message(max_ts, rows))
    return alerts


def _identity(alerts: list) -> list[tuple]:
    return sorted(
        (a.alert_id, a.window_start, a.observed, a.expected, a.score, repr(a.drivers))
        for a in alerts
    )


def test_dict_layout_snapshots_restore_into_rings_with_the_same_alerts() -> None:
    saved = json.loads(gzip.decompress(FIXTURE.read_bytes()))
    assert saved["split_batches"] == SPLIT_BATCHES
    messages = _messages()
    plan = _plan()
    restored = {
        key: ShardEngine(plan, base64.b64decode(blob)) for key, blob in saved["shards"].items()
    }
    straight = {str(s): ShardEngine(plan) for s in range(SHARDS)}
    _feed(straight, messages[:SPLIT_BATCHES])
    for key, engine in straight.items():  # the same scopes, with the same baselines
        old = restored[key]
        assert old.detector_progress == engine.detector_progress
        for rule, states in engine.detector_states.items():
            assert states.keys() == old.detector_states[rule].keys()
            for scope, state in states.items():
                history = getattr(state, "history", None) or getattr(state, "volume", None)
                if history is None:
                    continue
                mine = old.detector_states[rule][scope]
                theirs = getattr(mine, "history", None) or mine.volume
                assert theirs.seen == history.seen
                assert all(
                    theirs.pooled(start, 1) == history.pooled(start, 1)
                    for start in range(0, 86400, 900)
                )
                assert mine.episode == state.episode
    _share_learned_statistics(straight, restored)
    expected = _feed(straight, messages[SPLIT_BATCHES:])
    got = _feed(restored, messages[SPLIT_BATCHES:])
    for engines, found in ((straight, expected), (restored, got)):
        for engine in engines.values():
            found.extend(engine.flush())
    assert expected and _identity(got) == _identity(expected)
    assert {a.rule for a in expected} >= {"prompt-spend", "prompt-tokens"}


LEARNED = tuple(name for name in _FIELDS if name not in ("history", "episode"))
"""A robust_seasonal state's fields besides the two whose layout the restore converts."""


def _share_learned_statistics(
    straight: dict[str, ShardEngine], restored: dict[str, ShardEngine]
) -> None:
    """Give each straight scope the statistics its restored twin learned on day one."""
    shared = 0
    for key, engine in straight.items():
        for rule, states in engine.detector_states.items():
            for scope, state in states.items():
                if not isinstance(state, RobustState):
                    continue
                twin = restored[key].detector_states[rule][scope]
                for either in (state, twin):  # a cold one: its fields back as objects first
                    if either._cold is not None:
                        either._cold[0].thaw(either)
                for name in LEARNED:
                    setattr(state, name, copy.deepcopy(getattr(twin, name)))
                shared += 1
    assert shared


def test_an_unreadable_snapshot_is_refused_with_what_to_do() -> None:
    with pytest.raises(SnapshotError, match="state directory"):
        ShardEngine(_plan(), b"\x80\x05not a snapshot")


def write() -> None:
    messages = _messages()
    plan = _plan()
    engines = {str(s): ShardEngine(plan) for s in range(SHARDS)}
    _feed(engines, messages[:SPLIT_BATCHES])
    shards = {key: base64.b64encode(e.snapshot()).decode() for key, e in engines.items()}
    blob = json.dumps({"split_batches": SPLIT_BATCHES, "shards": shards}).encode()
    FIXTURE.write_bytes(gzip.compress(blob, mtime=0))


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        write()
