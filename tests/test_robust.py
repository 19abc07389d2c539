"""The robust median/MAD record scorer: building blocks and behaviour on small streams."""

from __future__ import annotations

import random
import statistics

import pytest

from spendwatch.detectors.robust import (
    RobustConfig,
    RobustRecordScorer,
    SlidingMax,
    SortedWindow,
)


def test_sorted_window_median_matches_statistics() -> None:
    rng = random.Random(7)
    window = SortedWindow(25)
    recent: list[float] = []
    for _ in range(300):
        value = rng.gauss(0, 1) if rng.random() < 0.9 else rng.choice([1.0, 2.0])
        window.push(value)
        recent = [*recent, value][-25:]
        assert window.median() == statistics.median(recent)
    assert len(window) == 25


def test_sliding_max_forgets_old_values() -> None:
    tracker = SlidingMax(3)
    seen = []
    for value in [5.0, 1.0, 2.0, 3.0, 0.5, 0.25, 0.1]:
        tracker.push(value)
        seen.append(tracker.get())
    assert seen == [5.0, 5.0, 5.0, 3.0, 3.0, 3.0, 0.5]


def _noisy(n: int, seed: int = 1) -> list[float]:
    rng = random.Random(seed)
    return [100.0 + rng.gauss(0, 2) for _ in range(n)]


def test_quiet_until_calibrated_then_flags_an_unprecedented_spike() -> None:
    config = RobustConfig(window=50, memory=400, min_history=50, calibration=100)
    scorer = RobustRecordScorer(config)
    scores = [scorer.update(v) for v in _noisy(400)]
    assert all(s == 0.0 for s in scores[:150])
    spike = scorer.update(160.0)  # about 30 sigma
    assert spike > 0.5
    assert max(scores[150:]) < spike


def test_a_repeat_of_the_same_spike_is_not_news() -> None:
    config = RobustConfig(window=50, memory=400, min_history=50, calibration=100)
    scorer = RobustRecordScorer(config)
    for v in _noisy(300):
        scorer.update(v)
    first = scorer.update(160.0)
    for v in _noisy(20, seed=2):
        scorer.update(v)
    assert first > 0.5
    assert scorer.update(160.0) == 0.0
    assert scorer.update(250.0) > 0.0  # a bigger one is


def test_records_expire_after_memory() -> None:
    config = RobustConfig(window=50, memory=100, min_history=50, calibration=50)
    scorer = RobustRecordScorer(config)
    for v in _noisy(200):
        scorer.update(v)
    assert scorer.update(160.0) > 0.5
    for v in _noisy(150, seed=3):
        scorer.update(v)
    assert scorer.update(160.0) > 0.5


def test_drops_score_like_spikes() -> None:
    config = RobustConfig(window=50, memory=400, min_history=50, calibration=100)
    scorer = RobustRecordScorer(config)
    for v in _noisy(300):
        scorer.update(v)
    assert scorer.update(40.0) > 0.5


def test_flat_stream_uses_the_floor_not_zero_division() -> None:
    scorer = RobustRecordScorer(RobustConfig(window=20, min_history=20, calibration=10))
    scores = [scorer.update(45.0) for _ in range(100)]
    assert scores == [0.0] * 100
    z = scorer.z(45.1)
    assert z is not None and z == pytest.approx(0.1 / (45.0 * 1e-6 + 1e-9))


def test_a_seasonal_scope_stays_small_and_old_deque_state_still_learns() -> None:
    import gc
    import pickle
    import sys
    import tracemalloc
    from collections import deque

    from spendwatch.detectors import slots
    from spendwatch.detectors.robust import SortedWindow
    from spendwatch.detectors.slots import SlotHistory

    gc.collect()
    tracemalloc.start()
    history = SlotHistory(900, 7, 8, seasonal=True)  # 8 residuals, as every rule keeps
    for window in range(7 * 96):  # a week of 15-minute windows, every slot full
        history.learn(window * 900, 100.0 + window % 7 + 0.1, 100.0)
    # the ring itself and what its code allocated and still holds, not the whole process's
    # growth: other threads of the test run (a previous test's outbox, a broker client)
    # allocate meanwhile too
    here = [tracemalloc.Filter(True, slots.__file__)]
    mine = tracemalloc.take_snapshot().filter_traces(here)
    held = sys.getsizeof(history) + sum(stat.size for stat in mine.statistics("filename"))
    tracemalloc.stop()
    # 96 slots x 7 float64 values = 5,376 bytes of values; the rest is the ring's bookkeeping
    assert held < 7_000, f"{held} bytes for one scope's week of 15-minute slots"
    assert all(history.count(slot) == 7 for slot in range(96))
    # a snapshot written before slots were rings: a dict of one deque per slot
    residuals = SortedWindow(288)
    residuals.push(0.5)
    old = SlotHistory.__new__(SlotHistory)
    slots = {slot: deque(history.slot_values(slot), maxlen=7) for slot in range(96)}
    old.__setstate__((7, residuals, history.seen, slots, 900))
    old = pickle.loads(pickle.dumps(old))
    old.learn(0, 500.0, 100.0)
    assert old.count(0) == 7 and 500.0 in old.slot_values(0)
    assert old.expected(0, 0)[1] == 7
