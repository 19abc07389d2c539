"""Grade spendwatch's detectors on the Numenta Anomaly Benchmark (NAB) and print the table.

Usage: ``.venv/bin/python -m bench.nab.run [--nab-dir DIR] [--results-dir OUT] [--detector NAME]``

``--results-dir`` receives the first detector's rows (default ``spendwatch_robust``; pick
another with ``--detector``) in NAB's layout, ``OUT/<category>/<name>.csv``.

Every detector scores all 58 series row by row (no labels at detection time), then
``bench.nab.score`` picks NAB's corpus-wide threshold per profile and normalises.
The last line printed is one JSON object with every figure, for scripts and CI.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np

from bench.nab.detect import DETECTORS
from bench.nab.score import PROFILES, NabCorpus

DEFAULT_NAB = Path(__file__).resolve().parents[3] / "shared" / "nab"
PUBLISHED_FOR_RATIO = ("numenta", "windowedGaussian")
SHORT = {"standard": "standard", "reward_low_FP_rate": "low_FP", "reward_low_FN_rate": "low_FN"}


def write_results(out: Path, corpus: NabCorpus, scores: dict[str, np.ndarray]) -> None:
    """NAB's layout: ``out/<category>/<name>.csv``, the data rows plus score and label."""
    for series in corpus.files:
        path = out / series.key
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["timestamp", "value", "anomaly_score", "label"])
            for row in zip(
                series.timestamps,
                series.values.tolist(),
                scores[series.key].tolist(),
                series.label.tolist(),
                strict=True,
            ):
                writer.writerow([row[0], repr(row[1]), repr(row[2]), row[3]])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nab-dir", type=Path, default=DEFAULT_NAB, help="NAB data + labels")
    parser.add_argument(
        "--results-dir", type=Path, help="write the first detector's per-file results here"
    )
    parser.add_argument(
        "--detector", action="append", choices=sorted(DETECTORS), help="repeatable; default all"
    )
    args = parser.parse_args(argv)
    corpus = NabCorpus.load(args.nab_dir)
    published = json.loads((args.nab_dir / "results" / "final_results.json").read_text())
    names = args.detector or list(DETECTORS)
    figures: dict[str, dict[str, float]] = {}
    print(f"{'detector':34s} {'standard':>9s} {'low_FP':>8s} {'low_FN':>8s} {'seconds':>8s}")
    for name in names:
        started = time.perf_counter()
        scores = {series.key: DETECTORS[name](series) for series in corpus.files}
        elapsed = time.perf_counter() - started
        swept = corpus.sweep(scores)
        figures[name] = {SHORT[p]: round(swept[p].normalised, 2) for p in PROFILES}
        figures[name]["threshold"] = swept["standard"].threshold
        row = figures[name]
        print(
            f"{name:34s} {row['standard']:9.2f} {row['low_FP']:8.2f} {row['low_FN']:8.2f}"
            f" {elapsed:8.1f}",
            flush=True,
        )
        if args.results_dir and name == names[0]:
            write_results(args.results_dir, corpus, scores)
    reference = {
        name: {SHORT[p]: round(published[name][p], 2) for p in PROFILES}
        for name in PUBLISHED_FOR_RATIO
    }
    best_published = max(published, key=lambda n: published[n]["standard"])
    ratios = {
        name: {
            f"vs_{ref}": round(figures[name]["standard"] / reference[ref]["standard"], 3)
            for ref in PUBLISHED_FOR_RATIO
        }
        for name in figures
    }
    summary = {
        "detectors": figures,
        "published": reference,
        "best_published": {best_published: round(published[best_published]["standard"], 2)},
        "standard_ratio": ratios,
    }
    print(json.dumps(summary, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
