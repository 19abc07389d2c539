"""Numenta Anomaly Benchmark (NAB) scoring, reimplemented so spendwatch can grade its detectors.

NAB rewards a detector for flagging each labelled anomaly window early (a sigmoid of the
position of the first detection in the window), penalises detections outside windows
(less so right after a window) and missed windows, then picks one threshold per profile
for the whole corpus and normalises the raw score between the null detector (0) and a
perfect one (100). Published NAB scores are only comparable when all of this matches, so
each rule here follows the description in the benchmark data's README step by step.

Everything that depends on the labels alone (which window a row belongs to and what a
detection there is worth) is computed once per corpus in :class:`NabCorpus`; scoring a
detector is then a handful of numpy passes over the pooled rows, fast enough to grade
many detector variants in seconds.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

NOTHING_DETECTED = 1.1
"""The threshold NAB evaluates first: above every score, so no row is a detection."""

PROBATION_FRACTION = 0.15
PROBATION_CAP = 750


@dataclass(frozen=True)
class Profile:
    """Costs of one NAB application profile (``config/profiles.json``)."""

    name: str
    tp_weight: float
    fp_weight: float
    fn_weight: float


PROFILES: dict[str, Profile] = {
    "standard": Profile("standard", 1.0, 0.11, 1.0),
    "reward_low_FP_rate": Profile("reward_low_FP_rate", 1.0, 0.22, 1.0),
    "reward_low_FN_rate": Profile("reward_low_FN_rate", 1.0, 0.11, 2.0),
}


def scaled_sigmoid(y: float) -> float:
    """NAB's ``2*sigmoid(-5y) - 1``, flattened to -1 beyond three window widths."""
    if y > 3.0:
        return -1.0
    return 2.0 / (1.0 + math.exp(5.0 * y)) - 1.0


def probation_rows(n_rows: int) -> int:
    """Rows at the head of a file that are never scored: 15 %, at most 750."""
    return min(math.floor(PROBATION_FRACTION * n_rows), PROBATION_CAP)


@dataclass(frozen=True)
class FileLabels:
    """One data file's timestamps, label windows and per-row detection values.

    ``window_id`` is -1 outside windows, else the window's index in the corpus.
    ``tp_value`` is what a detection on the row earns inside a window before the
    profile's ``tp_weight`` (1 at the left edge, near 0 at the right edge); ``fp_value``
    is the (negative) cost of a detection outside windows before ``fp_weight``.
    """

    key: str
    timestamps: list[str]
    values: FloatArray
    windows: list[tuple[str, str]]
    probation: int
    first_window: int
    window_id: IntArray
    tp_value: FloatArray
    fp_value: FloatArray

    @property
    def n_rows(self) -> int:
        return len(self.timestamps)

    @property
    def label(self) -> IntArray:
        """1 on rows inside a label window, as in NAB's result files."""
        return (self.window_id >= 0).astype(np.int64)


def _parse_times(stamps: Sequence[str]) -> IntArray:
    return np.array(stamps, dtype="datetime64[s]").astype(np.int64)


def row_values(
    times: IntArray, windows: Sequence[tuple[int, int]], first_window_id: int
) -> tuple[IntArray, FloatArray, FloatArray]:
    """Per-row window id, TP value and FP cost for one file, walking rows in order.

    Rows are walked like NAB's sweeper does rather than located by binary search,
    because a few files have repeated or out-of-order timestamps and the published
    scores depend on exactly how those rows are attributed.
    """
    n = len(times)
    window_id = np.full(n, -1, dtype=np.int64)
    tp_value = np.zeros(n, dtype=np.float64)
    fp_value = np.zeros(n, dtype=np.float64)
    max_tp = scaled_sigmoid(-1.0)
    bounds = []
    for start, end in windows:
        inside = (times >= start) & (times <= end)
        width = int(inside.sum())
        before_end = np.flatnonzero(times < end)
        right = int(before_end[-1]) + 1 if len(before_end) else 0
        bounds.append((start, end, width, right))
    pending = list(enumerate(bounds))
    current = pending.pop(0) if pending else None
    previous: tuple[int, int] | None = None  # (right index, width) of the last window passed
    for i in range(n):
        t = times[i]
        if current is not None and current[1][0] <= t <= current[1][1]:
            index, (_, _, width, right) = current
            window_id[i] = first_window_id + index
            tp_value[i] = scaled_sigmoid(-(right - i + 1) / width) / max_tp
        elif previous is None:
            fp_value[i] = -1.0
        else:
            prev_right, prev_width = previous
            fp_value[i] = scaled_sigmoid(abs(prev_right - i) / (prev_width - 1))
        if current is not None and i == current[1][3]:
            previous = (current[1][3], current[1][2])
            current = pending.pop(0) if pending else None
    return window_id, tp_value, fp_value


def read_series(path: Path) -> tuple[list[str], FloatArray]:
    """A NAB data file's timestamps (as written) and values."""
    with path.open(newline="") as handle:
        reader = csv.reader(handle)
        next(reader)
        rows = list(reader)
    return [r[0] for r in rows], np.array([float(r[1]) for r in rows], dtype=np.float64)


@dataclass(frozen=True)
class ProfileScore:
    """A detector's result under one profile: chosen threshold, raw and normalised score."""

    profile: str
    threshold: float
    raw: float
    normalised: float
    per_file: dict[str, float]


class NabCorpus:
    """The 58 series with their labels, pooled for fast threshold sweeps.

    Build with :meth:`load` from a directory holding NAB's ``data/`` and ``labels/``.
    """

    def __init__(self, files: list[FileLabels]) -> None:
        self.files = files
        self.keys = [f.key for f in files]
        self.n_windows = sum(len(f.windows) for f in files)
        scored = [slice(f.probation, f.n_rows) for f in files]
        pairs = list(zip(files, scored, strict=True))
        self._window_id = np.concatenate([f.window_id[s] for f, s in pairs])
        self._tp_value = np.concatenate([f.tp_value[s] for f, s in pairs])
        self._fp_value = np.concatenate([f.fp_value[s] for f, s in pairs])
        self._scored = scored

    @classmethod
    def load(cls, root: Path) -> NabCorpus:
        windows_by_file: dict[str, list[list[str]]] = json.loads(
            (root / "labels" / "combined_windows.json").read_text()
        )
        files: list[FileLabels] = []
        next_window = 0
        for key in sorted(windows_by_file):
            stamps, values = read_series(root / "data" / key)
            times = _parse_times(stamps)
            pairs = [(str(a), str(b)) for a, b in windows_by_file[key]]
            limits = [(int(a), int(b)) for a, b in (_parse_times(p) for p in pairs)]
            window_id, tp_value, fp_value = row_values(times, limits, next_window)
            next_window += len(pairs)
            files.append(
                FileLabels(
                    key=key,
                    timestamps=stamps,
                    values=values,
                    windows=pairs,
                    probation=probation_rows(len(stamps)),
                    first_window=next_window - len(pairs),
                    window_id=window_id,
                    tp_value=tp_value,
                    fp_value=fp_value,
                )
            )
        return cls(files)

    def _pool(self, scores: Mapping[str, npt.ArrayLike]) -> FloatArray:
        parts = []
        for f, s in zip(self.files, self._scored, strict=True):
            column = np.asarray(scores[f.key], dtype=np.float64)
            if column.shape != (f.n_rows,):
                raise ValueError(f"{f.key}: {column.shape[0]} scores for {f.n_rows} rows")
            parts.append(column[s])
        return np.concatenate(parts)

    def sweep(self, scores: Mapping[str, npt.ArrayLike]) -> dict[str, ProfileScore]:
        """Optimise one threshold per profile over all files, as NAB's optimiser does.

        Rows are visited by descending score; the raw score is evaluated at "nothing
        detected" and after the last row of each distinct score value, and the best is
        kept (on a tie the higher threshold, i.e. the earlier candidate).
        """
        pooled = self._pool(scores)
        order = np.argsort(-pooled, kind="stable")
        ranked = pooled[order]
        wid = self._window_id[order]
        in_window = wid >= 0
        fp_cum = np.cumsum(np.where(in_window, 0.0, self._fp_value[order]))
        # Inside a window only the best (earliest-row) detection so far counts: a running
        # maximum per window, taken over that window's rows in visiting order.
        positions = np.flatnonzero(in_window)
        by_window = positions[np.argsort(wid[positions], kind="stable")]
        groups = wid[by_window]
        offset = groups.astype(np.float64) * 4.0  # values lie in [0, 1]: groups never mix
        running = np.maximum.accumulate(self._tp_value[order][by_window] + offset) - offset
        first = np.ones(len(by_window), dtype=bool)
        first[1:] = groups[1:] != groups[:-1]
        gain = np.where(first, running, np.diff(running, prepend=0.0))
        tp_step = np.zeros(len(order))
        tp_step[by_window] = gain
        detected_step = np.zeros(len(order))
        detected_step[by_window[first]] = 1.0
        tp_cum = np.cumsum(tp_step)
        detected_cum = np.cumsum(detected_step)
        last_of_value = np.flatnonzero(np.append(ranked[1:] != ranked[:-1], True))
        thresholds = np.concatenate(([NOTHING_DETECTED], ranked[last_of_value]))
        results = {}
        for profile in PROFILES.values():
            gained = (
                profile.fn_weight * detected_cum
                + profile.tp_weight * tp_cum
                + profile.fp_weight * fp_cum
            )
            raw_curve = np.concatenate(([0.0], gained[last_of_value]))
            raw_curve -= profile.fn_weight * self.n_windows
            best = int(np.argmax(raw_curve))
            results[profile.name] = self.score_at(scores, profile.name, float(thresholds[best]))
        return results

    def score_at(
        self, scores: Mapping[str, npt.ArrayLike], profile_name: str, threshold: float
    ) -> ProfileScore:
        """Score every file at a fixed threshold (NAB's scorer after optimisation)."""
        profile = PROFILES[profile_name]
        per_file: dict[str, float] = {}
        for f, s in zip(self.files, self._scored, strict=True):
            column = np.asarray(scores[f.key], dtype=np.float64)[s]
            hit = column >= threshold
            wid = f.window_id[s]
            total = profile.fp_weight * float(f.fp_value[s][hit & (wid < 0)].sum())
            for w in range(f.first_window, f.first_window + len(f.windows)):
                rows = hit & (wid == w)
                if rows.any():
                    total += profile.tp_weight * float(f.tp_value[s][rows].max())
                else:
                    total -= profile.fn_weight
            per_file[f.key] = total
        raw = sum(per_file.values())
        return ProfileScore(
            profile=profile_name,
            threshold=threshold,
            raw=raw,
            normalised=normalise(raw, profile, self.n_windows),
            per_file=per_file,
        )


def normalise(raw: float, profile: Profile, n_windows: int) -> float:
    """100 for a perfect detector, 0 for the null one (which detects nothing)."""
    null = -profile.fn_weight * n_windows
    perfect = profile.tp_weight * n_windows
    return 100.0 * (raw - null) / (perfect - null)


def read_scores(results_dir: Path, keys: Sequence[str]) -> dict[str, FloatArray]:
    """Per-row ``anomaly_score`` columns of a results directory in NAB's layout."""
    scores: dict[str, FloatArray] = {}
    for key in keys:
        with (results_dir / key).open(newline="") as handle:
            reader = csv.DictReader(handle)
            scores[key] = np.array([float(r["anomaly_score"]) for r in reader])
    return scores
