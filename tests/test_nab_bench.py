"""The NAB benchmark runner and the detector adapters it grades."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench.nab.detect import (
    combined,
    river_hst,
    robust_seasonal,
    robust_seasonal_record,
    robust_seasonal_z,
    windowed_gaussian,
)
from bench.nab.score import FileLabels, NabCorpus, read_scores

REPO = Path(__file__).resolve().parents[1]
NAB = Path(__file__).resolve().parents[2] / "shared" / "nab"


@pytest.fixture(scope="module")
def corpus() -> NabCorpus:
    return NabCorpus.load(NAB)


def test_our_windowed_gaussian_reproduces_the_published_rows_and_score(
    corpus: NabCorpus,
) -> None:
    ours = {f.key: windowed_gaussian(f.values) for f in corpus.files}
    published = read_scores(NAB / "reference" / "windowedGaussian", corpus.keys)
    for key in corpus.keys:
        assert np.abs(ours[key] - published[key]).max() < 1e-3, key
    swept = corpus.sweep(ours)
    assert swept["standard"].normalised == pytest.approx(39.65, abs=0.01)
    assert swept["reward_low_FP_rate"].normalised == pytest.approx(20.87, abs=0.01)
    assert swept["reward_low_FN_rate"].normalised == pytest.approx(47.41, abs=0.01)


def test_bench_writes_nab_layout_and_ends_with_json(tmp_path: Path, corpus: NabCorpus) -> None:
    out = tmp_path / "results"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.nab.run",
            "--results-dir",
            str(out),
            "--detector",
            "spendwatch_robust",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
        cwd=REPO,
    )
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    robust = summary["detectors"]["spendwatch_robust"]
    assert set(robust) >= {"standard", "low_FP", "low_FN"}
    assert robust["standard"] > summary["published"]["windowedGaussian"]["standard"]
    assert summary["published"]["numenta"]["standard"] == 70.1
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.csv"))
    assert files == sorted(corpus.keys)
    series = next(f for f in corpus.files if f.key == "realKnownCause/nyc_taxi.csv")
    with (out / series.key).open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["timestamp", "value", "anomaly_score", "label"]
    assert [r["timestamp"] for r in rows] == series.timestamps
    assert sum(int(r["label"]) for r in rows) == int(series.label.sum()) > 0
    scores = np.array([float(r["anomaly_score"]) for r in rows])
    assert ((scores >= 0) & (scores <= 1)).all()


ADAPTERS = {
    "robust_seasonal": robust_seasonal,
    "robust_seasonal_record": robust_seasonal_record,
    "combined": combined,
    "river_hst": river_hst,
}
SAMPLE_KEYS = (
    "realAdExchange/exchange-2_cpc_results.csv",  # hourly
    "realTraffic/TravelTime_451.csv",  # 10 minutes, irregular
    "realKnownCause/rogue_agent_key_hold.csv",  # 5 minutes
    "artificialNoAnomaly/art_flatline.csv",  # constant: zero spread everywhere
)


@pytest.mark.parametrize("name", sorted(ADAPTERS))
def test_adapters_score_every_row_in_unit_interval_deterministically(
    corpus: NabCorpus, name: str
) -> None:
    adapter = ADAPTERS[name]
    by_key = {f.key: f for f in corpus.files}
    for key in SAMPLE_KEYS:
        series = by_key[key]
        first, second = adapter(series), adapter(series)
        assert first.shape == (series.n_rows,), key
        assert np.isfinite(first).all(), key
        assert ((first >= 0) & (first <= 1)).all(), key
        assert np.array_equal(first, second), key
    assert any(adapter(by_key[k])[by_key[k].probation :].max() > 0 for k in SAMPLE_KEYS)


def _synthetic(values: np.ndarray, probation: int) -> FileLabels:
    """A 5-minute series with a daily cycle; no label windows (adapters never read them)."""
    start = np.datetime64("2024-01-01T00:00:00")
    stamps = [str(start + np.timedelta64(300 * i, "s")) for i in range(len(values))]
    zeros = np.zeros(len(values))
    return FileLabels(
        key="synthetic/daily.csv",
        timestamps=stamps,
        values=values,
        windows=[],
        probation=probation,
        first_window=len(values),
        window_id=np.full(len(values), -1, dtype=np.int64),
        tp_value=zeros,
        fp_value=zeros,
    )


def _daily_cycle(days: int) -> np.ndarray:
    rows = np.arange(days * 288)
    noise = np.random.default_rng(3).normal(0.0, 2.0, len(rows))
    return 100.0 + 40.0 * np.sin(2 * np.pi * rows / 288) + noise


def test_planted_spike_and_dip_are_the_top_scores() -> None:
    values = _daily_cycle(12)
    dip, spike = 9 * 288 + 100, 10 * 288 + 200  # the dip (|z| = 10) first: records rise
    values[spike] *= 3.0
    values[dip] = 0.0
    series = _synthetic(values, probation=750)
    z = robust_seasonal_z(series)
    assert z[spike] > 5 and z[dip] < -5
    scored = slice(series.probation, None)
    # The production rule alerts upward only; the record-scored variants see both ways.
    upward = robust_seasonal(series)
    assert upward[spike] == upward[scored].max() > 0
    assert upward[dip] == 0
    for adapter in (robust_seasonal_record, combined):
        scores = adapter(series)
        top_two = set(np.argsort(scores)[-2:].tolist())
        assert top_two == {spike, dip}, adapter.__name__
    assert river_hst(series)[spike] > np.median(river_hst(series)[scored])
