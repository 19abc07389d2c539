"""Quiet ``robust_seasonal`` scopes judged as rows of arrays equal the per-scope code, bit for bit.

``detectors/robust_columns.py`` judges the empty windows of scopes that have been quiet
for a while across all of them at once. It must leave exactly the state, and raise
exactly the alerts, that ``observe`` with zero totals would: these tests run both on the
same scopes (busy, thin, bursty, young, in an episode, across a week's end, every storage
form of the slot ring) and compare every alert and every field of every state, as
pickled bytes; and the whole engine on a sparse multi-day stream with and without rows.
"""

from __future__ import annotations

import copy
import math
import pickle
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spendwatch.config import SpendwatchConfig
from spendwatch.dataflows.engine import EnginePlan, ShardEngine
from spendwatch.dataflows.view import describe
from spendwatch.detectors.base import ZERO, Totals
from spendwatch.detectors.robust_columns import QuietRows
from spendwatch.detectors.robust_seasonal import RobustSeasonal, RobustSeasonalConfig, RobustState

WINDOW = 900
T0 = 1_795_000_000 - 1_795_000_000 % (7 * 86400)  # a week's start (UTC Thursday)
SCOPE = {"prompt_id": "p"}


def _detector(**settings: object) -> RobustSeasonal:
    config = {"name": "spend", "scope": ["prompt_id"], "warmup": "1d", **settings}
    return RobustSeasonal(RobustSeasonalConfig.model_validate(config))


def _window(rng: random.Random, rate: float, cents: bool) -> Totals:
    """One window of ``rate`` requests on average, priced in whole nano-dollars or not."""
    requests = sum(1 for _ in range(int(rate * 3)) if rng.random() < 1 / 3)
    if not requests:
        return ZERO
    per = rng.lognormvariate(math.log(0.002), 0.8)
    spend = requests * per
    nanos = round(spend * 1e9) if cents else round(spend * 1e9) * 1000 + 1
    return Totals(spend_nanos=nanos, requests=requests, output_tokens=200 * requests)


def _grown(detector: RobustSeasonal, seed: int, windows: int) -> tuple[RobustState, int]:
    """A state that lived ``windows`` windows of a random scope (some of them spikes)."""
    rng = random.Random(seed)
    rate = rng.choice([0.3, 1.0, 4.0, 40.0])
    cents = rng.random() < 0.7  # else spends that need float64 rings
    state = detector.new_state()
    for w in range(windows):
        t = T0 + w * detector.config.window
        totals = _window(rng, rate * (8 if rng.random() < 0.01 else 1), cents)
        detector.observe(state, SCOPE, t, totals)
    return state, T0 + windows * detector.config.window


def _bytes(state: object) -> bytes:
    return pickle.dumps(state.__getstate__())


def _compare(detector: RobustSeasonal, states: list, start: int, empties: int) -> int:
    """Judge ``empties`` empty windows both ways; assert the same alerts and states; return
    how many windows the rows judged."""
    reference = copy.deepcopy(states)
    store = QuietRows(detector)
    step = detector.config.window
    expected_alerts = []
    for state in reference:
        for k in range(empties):
            expected_alerts.extend(detector.observe(state, SCOPE, start + k * step, ZERO))
    found_alerts = []
    for k in range(empties):
        for position in detector.observe_quiet(store, states, start + k * step):
            found_alerts.extend(
                detector.observe_empty(states[position], SCOPE, (start + k * step,))
            )
    key = lambda a: (a.window_start, a.status, a.observed)  # noqa: E731
    assert sorted(found_alerts, key=key) == sorted(expected_alerts, key=key)
    for mine, theirs in zip(states, reference, strict=True):
        assert _bytes(mine) == _bytes(theirs)
    return store.judged


def _compare_mixed(
    detector: RobustSeasonal, states: list, start: int, windows: int, seed: int
) -> int:
    """Judge ``windows`` windows, with data or empty at random (a thin scope's life, some
    windows ×20), both ways: scope by scope, and as the engine does with rows (a cold
    scope's data window by ``observe_rows``, an empty one by ``observe_quiet``, a hot
    scope's data by ``observe``). Assert the same alerts and states; return how many data
    windows the rows judged."""
    rng = random.Random(seed)
    step = detector.config.window
    plan = [
        [_window(rng, rng.choice([0.1, 0.5, 2.0]) * (20 if rng.random() < 0.02 else 1), True)
         for _ in states]
        for _ in range(windows)
    ]  # fmt: skip
    reference = copy.deepcopy(states)
    expected_alerts = []
    for k in range(windows):
        for state, totals in zip(reference, plan[k], strict=True):
            expected_alerts.extend(detector.observe(state, SCOPE, start + k * step, totals))
    store = QuietRows(detector)
    found_alerts = []
    judged_data = 0
    for k in range(windows):
        t = start + k * step
        cold = [i for i, s in enumerate(states) if plan[k][i] is not ZERO and s._cold]
        for i, state in enumerate(states):
            if plan[k][i] is not ZERO and i not in cold:
                found_alerts.extend(detector.observe(state, SCOPE, t, plan[k][i]))
        if cold:
            group = [states[i] for i in cold]
            rows = np.array([state._cold[1] for state in group])
            data = (np.arange(len(cold)), [plan[k][i] for i in cold])
            back, _ = detector.observe_rows(store, rows, t, data)
            judged_data += len(cold) - len(back)
            for position in back.tolist():
                store.thaw(group[position])  # what a row hands back is judged scope by scope
                found_alerts.extend(
                    detector.observe(group[position], SCOPE, t, plan[k][cold[position]])
                )
        group = [s for i, s in enumerate(states) if plan[k][i] is ZERO]
        for position in detector.observe_quiet(store, group, t):
            found_alerts.extend(detector.observe_empty(group[position], SCOPE, (t,)))
    key = lambda a: (a.window_start, a.status, a.observed, a.expected, a.score)  # noqa: E731
    assert sorted(found_alerts, key=key) == sorted(expected_alerts, key=key)
    for mine, theirs in zip(states, reference, strict=True):
        assert _bytes(mine) == _bytes(theirs)
    return judged_data


@pytest.mark.parametrize("metric", ["spend_usd", "output_tokens", "requests"])
def test_data_windows_of_cold_scopes_are_judged_as_rows_bit_for_bit(metric):
    """A thin scope's windows with events are judged as rows too (no thaw): the same
    alerts (some fire: those windows go back to the per-scope code) and the same states."""
    detector = _detector(metric=metric)
    grown = [_grown(detector, seed, 6 * 96 + 60) for seed in range(24)]
    judged = _compare_mixed(detector, [s for s, _ in grown], grown[0][1], 96 * 2, 3)
    assert judged > 500, judged


@settings(max_examples=20, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    lived=st.integers(1, 7 * 96),
    windows=st.integers(1, 40),
    metric=st.sampled_from(["spend_usd", "requests", "output_tokens"]),
    neighbours=st.integers(0, 2),
    window=st.sampled_from(["15m", "1h", "4h"]),
)
def test_any_scope_any_mix_of_windows(seed, lived, windows, metric, neighbours, window):
    detector = _detector(metric=metric, neighbours=neighbours, warmup="6h", window=window)
    grown = [_grown(detector, seed * 7 + k, lived) for k in range(3)]
    _compare_mixed(detector, [state for state, _ in grown], grown[0][1], windows, seed)


def test_rows_equal_the_per_scope_code_across_a_week_end_and_every_ring_form():
    detector = _detector()
    days = 6  # the sixth day's last hours and the next week's first: a week rolls
    grown = [_grown(detector, seed, days * 96 + 60) for seed in range(24)]
    states = [state for state, _ in grown]
    start = grown[0][1]
    codes = {state.history.values.typecode for state in states}
    assert {"f", "i", "d"} & codes >= {"i", "d"}, codes
    judged = _compare(detector, states, start, 96 * 2)
    assert judged > 24 * 96, "most empty windows must be judged as rows"


def test_rows_hand_back_what_they_cannot_judge_and_take_it_again():
    """A scope in an episode stays per scope until it resolves; a young one in warm-up
    is judged as a row without moving its evidence."""
    detector = _detector(resolve_after=3)
    rng = random.Random(5)
    spiking = detector.new_state()
    young = detector.new_state()
    for w in range(3 * 96):
        t = T0 + w * WINDOW
        totals = _window(rng, 4.0, True)
        if w >= 3 * 96 - 2:
            totals = Totals(spend_nanos=totals.spend_nanos * 30 + 10**8, requests=60)
        detector.observe(spiking, SCOPE, t, totals)
        if w > 3 * 96 - 30:
            detector.observe(young, SCOPE, t, _window(rng, 4.0, True))
    assert spiking.episode.active
    judged = _compare(detector, [spiking, young], T0 + 3 * 96 * WINDOW, 40)
    assert judged > 40, judged


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    lived=st.integers(1, 7 * 96),
    empties=st.integers(1, 30),
    metric=st.sampled_from(["spend_usd", "requests", "output_tokens"]),
    neighbours=st.integers(0, 2),
    days=st.integers(1, 6),
    window=st.sampled_from(["15m", "1h", "4h"]),  # 4 h: longer than a weekly cell
)
def test_any_scope_any_stretch(seed, lived, empties, metric, neighbours, days, window):
    detector = _detector(
        metric=metric, neighbours=neighbours, days=days, warmup="6h", window=window
    )
    grown = [_grown(detector, seed * 7 + k, lived) for k in range(3)]
    _compare(detector, [state for state, _ in grown], grown[0][1], empties)


def test_a_snapshot_holds_the_rows_once():
    """Many cold scopes pickle as one copy of their store's arrays and a row each."""
    detector = _detector()
    grown = [_grown(detector, seed, 3 * 96)[0] for seed in range(40)]
    states = [state for state in grown if state.history.values.typecode != "d"]  # stay hot
    assert len(states) > 20
    hot = pickle.dumps(states)
    store = QuietRows(detector)
    start = T0 + 3 * 96 * WINDOW
    assert detector.observe_quiet(store, states, start) == []
    cold = pickle.dumps(states)
    row_bytes = store.nbytes / store.size
    assert len(cold) < len(states) * (row_bytes + 200), (len(cold), len(hot), row_bytes)
    back = pickle.loads(cold)
    assert len({id(state._cold[0]) for state in back}) == 1
    assert [_bytes(a) for a in back] == [_bytes(b) for b in states]


def test_a_cold_state_reads_and_pickles_in_place_and_thaws_on_use():
    detector = _detector()
    state, start = _grown(detector, 3, 3 * 96)
    twin = copy.deepcopy(state)
    store = QuietRows(detector)
    assert detector.observe_quiet(store, [state], start) == []
    detector.observe(twin, SCOPE, start, ZERO)
    assert state._cold is not None and len(store) == 1
    assert _bytes(state) == _bytes(twin), "a snapshot of a cold state is its objects"
    t = start + WINDOW
    assert detector.baseline(state, t) == detector.baseline(twin, t)
    assert state._cold is not None, "a baseline leaves the scope cold"
    restored = pickle.loads(pickle.dumps(state))
    assert restored._cold is not None and restored._cold[0] is not store
    assert _bytes(restored) == _bytes(twin), "a snapshot restores the row"
    other = QuietRows(detector)
    reference = copy.deepcopy(twin)
    assert detector.observe_quiet(other, [restored], t) == []
    detector.observe(reference, SCOPE, t, ZERO)
    assert restored._cold[0] is other and _bytes(restored) == _bytes(reference)
    busy = Totals(spend_nanos=5_000_000, requests=3)
    assert detector.observe(state, SCOPE, t, busy) == detector.observe(twin, SCOPE, t, busy)
    assert state._cold is None and len(store) == 0, "data thaws the row and frees it"
    assert _bytes(state) == _bytes(twin)
    detector.observe_quiet(store, [state], t + WINDOW)
    del state
    assert len(store) == 0, "a forgotten cold scope gives its row back"


# -- the whole engine --------------------------------------------------------------------------

CONFIG = {
    "engine": {"allowed_lateness": "2m", "scope_idle_ttl": "2d", "shards": 2},
    "detectors": [
        {
            "name": "prompt-spend",
            "type": "robust_seasonal",
            "scope": ["prompt_id"],
            "warmup": "1d",
            "drivers": ["model"],
        },
        {
            "name": "tenant-requests",
            "type": "robust_seasonal",
            "metric": "requests",
            "scope": ["tenant"],
            "warmup": "1d",
        },
    ],
}


def _rows(seed: int, days: int) -> list[tuple[float, int, tuple]]:
    """Partial rows of a sparse stream: 300 prompts at 0.02-2 requests a window, some
    going quiet for a day, a few spiking ×20 for an hour, over ``days`` days."""
    rng = np.random.default_rng(seed)
    prompts = 300
    rates = np.exp(rng.uniform(math.log(0.02), math.log(2.0), prompts))
    out = []
    for w in range(days * 96):
        t = T0 + w * WINDOW
        day = (t % 86400) / 86400
        cycle = 0.6 + 0.4 * math.sin(2 * math.pi * (day - 0.3))
        counts = rng.poisson(rates * cycle)
        quiet = (np.arange(prompts) % 7 == (w // 96) % 7) & (w // 48 % 3 == 1)
        counts[quiet] = 0
        if w % 97 == 50:
            counts[rng.integers(prompts)] += 40
        for prompt in np.flatnonzero(counts).tolist():
            requests = int(counts[prompt])
            nanos = int(requests * rng.integers(100_000, 3_000_000))
            model = "small" if rng.random() < 0.7 else "large"
            out.append((t, prompt, model, requests, nanos))
    return out


def _run(
    rows: list, quiet_rows: bool, restore_every: int, per_batch: int = 1, config: dict = CONFIG
) -> tuple[list, dict]:
    config = SpendwatchConfig.model_validate(config)
    plan = EnginePlan.from_config(config)
    engine = ShardEngine(plan, quiet_rows=quiet_rows)
    index = {a: i for i, a in enumerate(plan.aggregations)}
    alerts = []
    judged = judged_data = 0
    by_window: dict[float, list] = {}
    for row in rows:
        by_window.setdefault(row[0], []).append(row)
    ordered = sorted(by_window.items())
    batches = [ordered[i : i + per_batch] for i in range(0, len(ordered), per_batch)]
    for batch, windows in enumerate(batches):
        t = windows[-1][0]
        partial = []
        for at, prompt, model, requests, nanos in [r for _, rs in windows for r in rs]:
            values = Totals(spend_nanos=nanos, requests=requests, events=1)
            dims = {"prompt_id": f"p{prompt}", "tenant": f"t{prompt % 5}", "model": model}
            for aggregation, i in index.items():
                scope = tuple(dims[d] for d in aggregation.dims)
                start = int(at // aggregation.window * aggregation.window)
                partial.append((i, scope, start, *values))
        alerts.extend(engine.on_message(t + WINDOW, partial))
        if restore_every and batch % restore_every == restore_every - 1:
            judged += _judged(engine)
            judged_data += _judged(engine, "judged_data")
            engine = ShardEngine(plan, engine.snapshot(), quiet_rows=quiet_rows)
    alerts.extend(engine.flush())
    states = {
        (name, scope): _bytes(state)
        for name, per_scope in engine.detector_states.items()
        for scope, state in per_scope.items()
    }
    states.update(  # the driver mixes learn from the windows the rows judge too
        ((name, "drivers", scope), pickle.dumps(mix))
        for name, mixes in engine.driver_states.items()
        for scope, mix in mixes.items()
    )
    return alerts, {
        "states": states,
        "judged": judged + _judged(engine),
        "judged_data": judged_data + _judged(engine, "judged_data"),
        "engine": engine,
    }


def _judged(engine: ShardEngine, figure: str = "judged") -> int:
    """Windows an engine judged as rows (``judged_data``: of them, those with data)."""
    return sum(getattr(s, figure) for s in (engine.quiet_stores or {}).values() if s)


@pytest.mark.parametrize(("restore_every", "per_batch"), [(0, 1), (37, 1), (5, 9)])
def test_the_engine_raises_the_same_alerts_with_rows(restore_every, per_batch):
    """Window by window, restored from snapshots, and in batches of many windows each (a
    close of many windows is judged window by window when a rule has rows)."""
    rows = _rows(14, 9)
    reference, before = _run(rows, False, restore_every)
    found, after = _run(rows, True, restore_every, per_batch)
    key = lambda a: (a.rule, a.fingerprint, a.window_start, a.status)  # noqa: E731
    assert sorted(found, key=key) == sorted(reference, key=key)
    assert any(a.status == "resolved" for a in reference), "the stream must resolve episodes"
    assert after["states"] == before["states"]
    assert before["judged"] == 0 and after["judged"] > 50_000, after["judged"]
    assert after["judged_data"] > 5_000, after["judged_data"]  # data windows as rows too
    assert any(key[1] == "drivers" for key in before["states"]), "driver mixes must learn"


@pytest.mark.parametrize(("max_scopes", "ttl"), [(120, "2d"), (60, "6h")])
def test_rows_forget_as_the_per_scope_code_forgets(max_scopes, ttl):
    """Scopes evicted by ``max_scopes`` or forgotten idle while they are rows (their
    progress kept on the roster): the same alerts, evictions and states as scope by scope,
    through snapshots and in batches of four windows."""
    config = copy.deepcopy(CONFIG)
    config["engine"]["scope_idle_ttl"] = ttl
    for rule in config["detectors"]:
        rule["max_scopes"] = max_scopes
    rows = _rows(14, 6)
    reference, before = _run(rows, False, 23, 4, config)
    found, after = _run(rows, True, 23, 4, config)
    key = lambda a: (a.rule, a.fingerprint, a.window_start, a.status, a.observed)  # noqa: E731
    assert sorted(found, key=key) == sorted(reference, key=key)
    assert after["states"] == before["states"]
    evicted = before["engine"].counters.evicted_scopes
    assert evicted > 5_000 and after["engine"].counters.evicted_scopes == evicted
    assert after["judged_data"] > 300, after["judged_data"]


def test_a_restored_shard_keeps_its_cold_scopes_as_rows():
    """After a restore the snapshot's store becomes the rule's: its cold scopes are judged
    as rows from the first close on (their roster rebuilt from their progress), not each
    thawed and frozen again."""
    rows = _rows(3, 4)
    plan = EnginePlan.from_config(SpendwatchConfig.model_validate(CONFIG))
    index = {a: i for i, a in enumerate(plan.aggregations)}

    def feed(engine: ShardEngine, part: list) -> None:
        for t in sorted({r[0] for r in part}):
            batch = []
            for at, prompt, model, requests, nanos in (r for r in part if r[0] == t):
                dims = {"prompt_id": f"p{prompt}", "tenant": f"t{prompt % 5}", "model": model}
                for aggregation, i in index.items():
                    scope = tuple(dims[d] for d in aggregation.dims)
                    start = int(at // aggregation.window * aggregation.window)
                    batch.append((i, scope, start, nanos, requests, 0, 0, 1))
            engine.on_message(t + WINDOW, batch)

    split = T0 + 3 * 86400
    first = ShardEngine(plan)
    feed(first, [r for r in rows if r[0] < split])
    restored = ShardEngine(plan, first.snapshot())
    states = restored.detector_states["prompt-spend"]
    cold = [scope for scope, state in states.items() if state._cold is not None]
    assert len(cold) > 100
    snapshot_store = states[cold[0]]._cold[0]
    feed(restored, [r for r in rows if split <= r[0] < split + 2 * WINDOW])
    store = restored.quiet_stores["prompt-spend"]
    assert store is snapshot_store
    still = [s for s in cold if s in states and states[s]._cold is not None]
    assert len(still) > 0.8 * len(cold)  # (some had events that fired, or were forgotten)
    assert all(states[s]._cold[0] is store for s in still)  # the snapshot's store, adopted
    assert store.held.sum() == sum(1 for s in states.values() if s._cold is not None)


def test_forgotten_scopes_give_their_rows_back():
    """Scopes that come and go (a wave of new prompts a day, each idle past the TTL the
    next): the rows of the forgotten ones are reused, so the store holds about one wave,
    not every scope ever seen."""
    config = SpendwatchConfig.model_validate(
        {
            "engine": {"allowed_lateness": 0, "scope_idle_ttl": "1d"},
            "detectors": [{"name": "s", "type": "robust_seasonal", "scope": ["prompt_id"]}],
        }
    )
    engine = ShardEngine(EnginePlan.from_config(config))
    rng = random.Random(3)
    waves, prompts = 6, 150
    for w in range(waves * 96):
        t = T0 + w * WINDOW
        wave = w // 96
        rows = [
            (0, (f"w{wave}-p{p}",), t, 1_000_000 * (1 + rng.randrange(5)), 1, 0, 0, 1)
            for p in range(prompts)
            if rng.random() < 0.05
        ]
        engine.on_message(t + WINDOW, rows)
    store = engine.quiet_stores["s"]
    states = engine.detector_states["s"]
    cold = sum(1 for state in states.values() if state._cold is not None)
    assert cold > prompts // 2  # the last waves' scopes are mostly rows
    assert store.size - len(store.free) == cold  # no row held by a forgotten scope
    assert store.size <= 4 * prompts, store.size  # not one row per scope ever seen


def test_the_query_api_view_reads_cold_scopes_in_place():
    """``describe`` (what the query API shows) gives every scope's baseline and windows
    seen as the per-scope engine does, without thawing a cold scope."""
    rows = _rows(3, 4)
    engines = [_run(rows, quiet_rows, 0)[1]["engine"] for quiet_rows in (True, False)]
    stores = [s for s in engines[0].quiet_stores.values() if s is not None]
    cold = sum(len(store) for store in stores)
    assert cold > 100, cold
    mine, theirs = (describe(engine)["scopes"] for engine in engines)
    assert sum(len(store) for store in stores) == cold, "the view thawed cold scopes"
    assert mine == theirs
    assert sum(row["expected"] is not None for row in mine["prompt-spend"]) > 100
