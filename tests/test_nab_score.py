"""The NAB scorer against the published scoreboard and hand-checked small cases."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from bench.nab.score import (
    PROFILES,
    NabCorpus,
    normalise,
    probation_rows,
    read_scores,
    row_values,
    scaled_sigmoid,
)

NAB = Path(__file__).resolve().parents[2] / "shared" / "nab"
PUBLISHED = json.loads((NAB / "results" / "final_results.json").read_text())


@pytest.fixture(scope="module")
def corpus() -> NabCorpus:
    return NabCorpus.load(NAB)


_REFERENCE: dict[str, dict[str, np.ndarray]] = {}


def reference(corpus: NabCorpus, detector: str) -> dict[str, np.ndarray]:
    """Published per-row scores, parsed once per test session."""
    if detector not in _REFERENCE:
        _REFERENCE[detector] = read_scores(NAB / "reference" / detector, corpus.keys)
    return _REFERENCE[detector]


def published_table(detector: str, profile: str) -> list[dict[str, str]]:
    path = NAB / "reference" / detector / f"{detector}_{profile}_scores.csv"
    with path.open(newline="") as handle:
        return [row for row in csv.DictReader(handle) if row["File"]]


def test_corpus_shape(corpus: NabCorpus) -> None:
    assert len(corpus.files) == 58
    assert corpus.n_windows == 116
    assert sum(f.n_rows for f in corpus.files) == 365_558
    assert sum(1 for f in corpus.files if not f.windows) == 6


@pytest.mark.parametrize(
    ("detector", "standard"), [("numenta", 70.10), ("windowedGaussian", 39.65)]
)
def test_reproduces_published_standard_score(
    corpus: NabCorpus, detector: str, standard: float
) -> None:
    result = corpus.sweep(reference(corpus, detector))["standard"]
    assert result.normalised == pytest.approx(standard, abs=0.01)
    assert result.normalised == pytest.approx(PUBLISHED[detector]["standard"], abs=1e-6)


@pytest.mark.parametrize("profile", ["reward_low_FP_rate", "reward_low_FN_rate"])
def test_window_gaussian_other_profiles_match_scoreboard(corpus: NabCorpus, profile: str) -> None:
    result = corpus.sweep(reference(corpus, "windowedGaussian"))[profile]
    assert result.normalised == pytest.approx(PUBLISHED["windowedGaussian"][profile], abs=1e-6)


def test_numenta_other_profiles(corpus: NabCorpus) -> None:
    """Low-FN matches; low-FP was published with an older optimiser's threshold."""
    swept = corpus.sweep(reference(corpus, "numenta"))
    low_fn = PUBLISHED["numenta"]["reward_low_FN_rate"]
    assert swept["reward_low_FN_rate"].normalised == pytest.approx(low_fn, abs=1e-6)
    assert swept["reward_low_FP_rate"].normalised == pytest.approx(63.21, abs=0.01)
    old_threshold = float(published_table("numenta", "reward_low_FP_rate")[0]["Threshold"])
    at_old = corpus.score_at(reference(corpus, "numenta"), "reward_low_FP_rate", old_threshold)
    low_fp = PUBLISHED["numenta"]["reward_low_FP_rate"]
    assert at_old.normalised == pytest.approx(low_fp, abs=1e-6)


@pytest.mark.parametrize("detector", ["numenta", "windowedGaussian"])
@pytest.mark.parametrize("profile", list(PROFILES))
def test_per_file_scores_match_published_tables(
    corpus: NabCorpus, detector: str, profile: str
) -> None:
    table = published_table(detector, profile)
    result = corpus.score_at(reference(corpus, detector), profile, float(table[0]["Threshold"]))
    assert len(table) == 58
    for row in table:
        assert result.per_file[row["File"]] == pytest.approx(float(row["Score"]), abs=1e-9)


@pytest.mark.parametrize("value", [0.0, 0.5, 1.0])
def test_constant_detector_scores_zero(corpus: NabCorpus, value: float) -> None:
    scores = {f.key: np.full(f.n_rows, value) for f in corpus.files}
    for result in corpus.sweep(scores).values():
        assert result.normalised == 0.0
        assert result.threshold == 1.1


def test_left_edge_detector_scores_100(corpus: NabCorpus) -> None:
    scores = {}
    for f in corpus.files:
        column = np.zeros(f.n_rows)
        for w in range(f.first_window, f.first_window + len(f.windows)):
            column[np.flatnonzero(f.window_id == w)[0]] = 1.0
        scores[f.key] = column
    for result in corpus.sweep(scores).values():
        assert result.normalised == pytest.approx(100.0)


def test_late_detection_and_false_alarm_cost(corpus: NabCorpus) -> None:
    """One window hit at its right edge plus one far false alarm; the rest missed."""
    target = next(f for f in corpus.files if len(f.windows) == 1)
    rows = np.flatnonzero(target.window_id == target.first_window)
    scores = {f.key: np.zeros(f.n_rows) for f in corpus.files}
    scores[target.key][rows[-1]] = 1.0
    scores[target.key][target.probation] = 1.0  # before any window: full FP cost
    result = corpus.score_at(scores, "standard", 1.0)
    right_edge = scaled_sigmoid(-1.0 / len(rows)) / scaled_sigmoid(-1.0)
    assert result.raw == pytest.approx(-115.0 + right_edge - 0.11)


def test_scaled_sigmoid_and_probation() -> None:
    assert scaled_sigmoid(0.0) == 0.0
    assert scaled_sigmoid(3.0) == pytest.approx(2.0 / (1.0 + np.exp(15.0)) - 1.0)
    assert scaled_sigmoid(3.0001) == -1.0
    assert scaled_sigmoid(-1.0) == pytest.approx(0.986614298)
    assert probation_rows(4032) == 604
    assert probation_rows(22695) == 750


def test_row_values_walks_windows_in_order() -> None:
    times = np.arange(20, dtype=np.int64)
    window_id, tp, fp = row_values(times, [(5, 9)], first_window_id=3)
    assert list(window_id[5:10]) == [3] * 5
    assert (window_id[:5] == -1).all() and (window_id[10:] == -1).all()
    assert tp[5] == pytest.approx(1.0)
    assert tp[5] > tp[6] > tp[9] > 0
    assert (fp[:5] == -1.0).all()
    assert fp[10] == pytest.approx(scaled_sigmoid(1 / 4))  # just after: cheap
    assert fp[19] == pytest.approx(scaled_sigmoid(10 / 4))
    assert fp[10] > fp[19]


def test_normalise_bounds() -> None:
    low_fn = PROFILES["reward_low_FN_rate"]
    assert normalise(-232.0, low_fn, 116) == 0.0
    assert normalise(116.0, low_fn, 116) == 100.0


def test_wrong_row_count_is_rejected(corpus: NabCorpus) -> None:
    scores = {f.key: np.zeros(f.n_rows) for f in corpus.files}
    scores[corpus.keys[0]] = np.zeros(3)
    with pytest.raises(ValueError, match="3 scores"):
        corpus.sweep(scores)
