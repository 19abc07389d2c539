"""The slot rings of ``detectors/slots.py`` hold exactly what a list per slot held.

``ListHistory`` below is the layout the rings replaced (one list of recent values per
time-of-day slot, the oldest dropped beyond the limit), kept as the reference: for any
sequence of learned values, widths and neighbours, the ring must return the very same
sorted pooled values (so the same medians and sums, to the bit), the same expected
values, residual spread and count, before and after a snapshot round trip.
"""

from __future__ import annotations

import math
import pickle
from collections import deque

from hypothesis import given, settings
from hypothesis import strategies as st

from spendwatch.detectors.robust import MAD_TO_STD, SortedWindow
from spendwatch.detectors.slots import SlotHistory

DAY = 86400


class ListHistory:
    """The per-slot lists the ring replaced (the reference)."""

    def __init__(self, window: int, days: int, residual_memory: int, seasonal: bool) -> None:
        self.window = window if seasonal else 0
        self.days = days
        self.slots: dict[int, list[float]] = {}
        self.residuals = SortedWindow(residual_memory)
        self.seen = 0

    def slot(self, window_start: int) -> int:
        return (window_start % DAY) // self.window if self.window else 0

    def pooled(self, window_start: int, neighbours: int) -> list[float]:
        if not self.window:
            values = list(self.slots.get(0, ()))
        else:
            per_day = DAY // self.window
            here = self.slot(window_start)
            values = []
            for offset in range(-neighbours, neighbours + 1):
                values.extend(self.slots.get((here + offset) % per_day, ()))
        values.sort()
        return values

    def relative_std(self) -> float:
        return MAD_TO_STD * self.residuals.median() if len(self.residuals) else 0.0

    def learn(self, window_start: int, value: float, expected: float | None) -> None:
        values = self.slots.setdefault(self.slot(window_start), [])
        values.append(value)
        if len(values) > (self.days if self.window else self.days * 24):
            del values[0]
        if expected is not None and expected > 0:
            self.residuals.push(abs(value - expected) / expected)
        self.seen += 1


values = st.one_of(
    st.integers(0, 2**30).map(float),  # counts: the ring stays float32
    st.integers(-(2**31), 2**32).map(lambda k: k / 1_000_000_000),  # spend: int32 billionths
    st.floats(0, 1e6, allow_nan=False),  # anything else: widens to float64
    st.sampled_from([0.0, -0.0, 1e300, 2.0**24 + 1, 1e-45, 2.0**-30, math.inf]),
)
pushes = st.lists(
    st.tuples(st.integers(0, 3 * 96), values, st.one_of(st.none(), st.floats(0.01, 1e4))),
    max_size=250,
)


def _same(ring: SlotHistory, reference: ListHistory, window: int, neighbours: int) -> None:
    assert ring.seen == reference.seen
    assert ring.relative_std() == reference.relative_std()
    for start in range(0, DAY, window):
        got, want = ring.pooled(start, neighbours), reference.pooled(start, neighbours)
        assert got == want  # the same sorted floats (0.0 and -0.0 compare equal, so...)
        by_bits = sorted(v.hex() for v in got)
        assert by_bits == sorted(v.hex() for v in want)  # ...and the same ones to the bit
        if not any(v == 0 and math.copysign(1, v) < 0 for v in want):
            # the very same list; with a -0.0 (which no metric value is: they are quotients
            # of integers) the sort may order it and a 0.0 otherwise
            assert [v.hex() for v in got] == [v.hex() for v in want]
        expected = ring.expected(start, neighbours)
        if want:
            mid = len(want) // 2
            median = want[mid] if len(want) % 2 else 0.5 * (want[mid - 1] + want[mid])
            assert expected == (median, len(want))
        else:
            assert expected is None


@settings(max_examples=150, deadline=None)
@given(
    pushes=pushes,
    window=st.sampled_from([900, 3600, 21600, 86400]),
    days=st.integers(1, 6),
    neighbours=st.integers(0, 2),
    seasonal=st.booleans(),
)
def test_ring_pools_the_same_values_as_lists(pushes, window, days, neighbours, seasonal) -> None:
    ring = SlotHistory(window, days, 8, seasonal)
    reference = ListHistory(window, days, 8, seasonal)
    half = len(pushes) // 2
    for index, value, expected in pushes[:half]:
        ring.learn(index * window, value, expected)
        reference.learn(index * window, value, expected)
    _same(ring, reference, window, neighbours)
    ring = pickle.loads(pickle.dumps(ring))  # a snapshot mid-way changes nothing
    for index, value, expected in pushes[half:]:
        ring.learn(index * window, value, expected)
        reference.learn(index * window, value, expected)
    _same(ring, reference, window, neighbours)


def test_counts_stay_float32_thin_spend_int32_billionths_anything_else_float64() -> None:
    ring = SlotHistory(900, 5, 8, seasonal=True)
    for window in range(5 * 96):
        ring.learn(window * 900, float(window % 4) / 2, None)
    assert ring.values.typecode == "f" and len(ring.values) == 96 * 5
    ring.learn(0, 1_234_567_891 / 1_000_000_000, None)  # $1.234567891: nano-dollars
    assert ring.values.typecode == "i" and ring.values.itemsize == 4
    # slot 0 held windows 0, 96, 192, 288, 384 (values 0, 0, 0, 0, 0); the first was replaced
    assert ring.pooled(0, 0) == [0.0, 0.0, 0.0, 0.0, 1.234567891]
    ring.learn(900, 3.0, None)  # above $2.14: every value is float64 from now on
    assert ring.values.typecode == "d"
    # slot 0 and its neighbours: slot 95 (windows 95, 191, ...: 1.5 each) and slot 1
    # (0.5 each, its oldest replaced by the 3.0)
    assert ring.pooled(0, 1) == sorted([0.0] * 4 + [1.234567891] + [1.5] * 5 + [0.5] * 4 + [3.0])


@settings(max_examples=60, deadline=None)
@given(pushes=pushes, days=st.integers(1, 6), seasonal=st.booleans())
def test_a_snapshot_of_the_dict_layout_loads_into_rings(pushes, days, seasonal) -> None:
    """The state tuple the dict-of-slots layout pickled: (days, residuals, seen, slots,
    window), with one array or deque per slot, oldest first."""
    reference = ListHistory(900, days, 8, seasonal)
    for index, value, expected in pushes:
        reference.learn(index * 900, value, expected)
    slots = {slot: deque(values) for slot, values in reference.slots.items()}
    old = (reference.days, reference.residuals, reference.seen, slots, reference.window)
    ring = SlotHistory.__new__(SlotHistory)
    ring.__setstate__(old)
    _same(ring, reference, 900, 1)
    for index in range(2 * 96):  # it goes on learning as the reference does
        ring.learn(index * 900, float(index), 5.0)
        reference.learn(index * 900, float(index), 5.0)
    _same(ring, reference, 900, 1)


def test_an_unknown_layout_is_rejected_with_what_to_do() -> None:
    ring = SlotHistory.__new__(SlotHistory)
    try:
        ring.__setstate__(("slot-ring-99", 1, 2))
    except ValueError as error:
        assert "start this rule afresh" in str(error)
    else:
        raise AssertionError("an unknown layout loaded")
