"""Categorical columns: strings as integer codes plus the distinct values, built in C loops.

Factorising a column once per batch lets pricing, filtering and grouping work on
integer arrays; only the distinct values are touched by Python code.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Categorical:
    """``values[codes[i]]`` is row ``i``'s value."""

    codes: np.ndarray
    values: list

    def take(self, positions: np.ndarray) -> Categorical:
        return Categorical(self.codes[positions], self.values)

    def tolist(self) -> list:
        values = self.values
        return [values[c] for c in self.codes.tolist()]

    def code_of(self, value: object) -> int | None:
        try:
            return self.values.index(value)
        except ValueError:
            return None

    def __len__(self) -> int:
        return int(self.codes.shape[0])


def factorize(values: Iterable[object], count: int, missing: object = None) -> Categorical:
    """Codes for ``count`` values; ``None`` and ``""`` both become ``missing``."""
    index: dict[object, int] = {}
    # dict.setdefault keeps the first position a value was seen at: C-level, no Python frames.
    first_seen = np.fromiter(
        map(index.setdefault, values, itertools.count()), dtype=np.int64, count=count
    )
    distinct = list(index)
    if missing is not None or "" in index:
        distinct = [missing if v is None or v == "" else v for v in distinct]
    positions = np.fromiter(index.values(), dtype=np.int64, count=len(index))
    merged: dict[object, int] = {}
    remap = [merged.setdefault(v, len(merged)) for v in distinct]
    lookup = np.empty(count, dtype=np.int64)
    lookup[positions] = remap
    return Categorical(lookup[first_seen], list(merged))


def from_strings(values: Sequence[object], missing: object = None) -> Categorical:
    return factorize(values, len(values), missing)
