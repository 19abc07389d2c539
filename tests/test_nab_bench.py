"""The NAB benchmark runner and the detector adapters it grades."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from spendwatch.nabdetect import windowed_gaussian
from spendwatch.nabscore import NabCorpus, read_scores

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
            str(REPO / "bench" / "nab.py"),
            "--results-dir",
            str(out),
            "--detector",
            "spendwatch_robust",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
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
