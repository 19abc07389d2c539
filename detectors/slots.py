"""Robust seasonal baselines: medians of recent same-time-of-day windows and a pooled MAD.

Why medians of raw recent values instead of exponentially weighted means: a mean is
dragged by the spikes and by the weekend it just saw, a median of the last few days at
this time of day (and the neighbouring windows) is not, and it needs no warm-up beyond
a couple of days. Thin history is handled by pooling the neighbouring windows of the
day, so one slot never rests on one or two samples. The spread is one MAD of *relative*
residuals pooled over all of the scope's windows (a quiet night slot learns from the
busy afternoon how volatile the scope is), floored by a count-noise term so a scope with
few requests is never judged by a spread estimated on its busy hours.
"""

from __future__ import annotations

import math
from array import array
from typing import Any

from spendwatch.detectors.robust import MAD_TO_STD

_DAY = 86400
_LAYOUT = "slot-ring-1"
"""Tag of the snapshot layout below (a tuple that starts with it)."""


def _fill_code(limit: int) -> str:
    """The narrowest unsigned array type holding a slot's fill state (< 2 · limit)."""
    for code in ("B", "H", "I", "L", "Q"):
        if 2 * limit - 1 < 1 << (8 * array(code).itemsize):
            return code
    raise ValueError(f"{limit} values per slot is too many")


_NANOS = "i"
"""Type of a ring of int32 billionths (C int: 4 bytes on the platforms we run on)."""
_PER_UNIT = 1_000_000_000
"""Billionths per unit: a spend in USD is its integer nano-dollars over this, exactly."""
_decode = float(_PER_UNIT).__rtruediv__
"""``cell -> cell / 10⁹``: what a cell of billionths stands for (the check below uses it)."""
_NANOS_MAX = 2**31


def _nanos(value: float) -> int | None:
    """The int32 ``k`` with ``k / 10⁹ == value`` to the bit, if there is one."""
    if not value:  # the zero-filled windows of a quiet scope; -0.0 would come back as 0.0
        return 0 if math.copysign(1.0, value) > 0 else None
    if not -2.2 < value < 2.2:  # out of int32 billionths (and NaN, ±inf)
        return None
    cell = round(value * _PER_UNIT)
    return cell if -_NANOS_MAX <= cell < _NANOS_MAX and _decode(cell) == value else None


def _zeros(code: str, length: int) -> array:
    """An array of ``length`` zeros, allocated to size (``frombytes`` over-allocates)."""
    return array(code, [0]) * length


def _array(code: str, data: bytes) -> array:
    """The array of type ``code`` whose machine bytes are ``data``, allocated to size."""
    found = _zeros(code, len(data) // array(code).itemsize)
    memoryview(found).cast("B")[:] = data
    return found


class SlotHistory:
    """Recent values per time-of-day slot (or one slot), and pooled relative residuals.

    Layout: one flat array of ``slots × cap`` values (row ``slot`` holds that slot's last
    values as a ring) and one small integer per slot saying how full its ring is and where
    the next value goes: one ring costs 8 bytes a value plus a byte, where a dict of one
    array per slot cost ~190 bytes per slot before its values. ``cap`` grows to ``limit``
    (the values a slot keeps) as the days of history accumulate, so a young scope holds
    only the days it has. The values are floats, stored in the narrowest form that gives
    every one of them back to the bit (checked value by value, as it is stored): float32
    while each is exactly one (counts of requests or tokens, zero); else int32 billionths
    while each is exactly ``k / 10⁹`` (a spend in USD is its integer nano-dollars over 10⁹,
    so a scope spending under $2.14 a window); else float64. A ring narrows never, widens
    on the first value the narrower form cannot hold, and costs 4 bytes a value (8 once
    float64) plus a byte per slot.
    """

    __slots__ = (
        "cap", "days", "fill", "residual_memory", "residuals", "seen", "short", "values",
        "window",
    )  # fmt: skip

    def __init__(self, window: int, days: int, residual_memory: int, seasonal: bool) -> None:
        self.window = window if seasonal else 0
        self.days = days
        self.residual_memory = residual_memory
        # arrival order of the last ``residual_memory`` relative residuals (None: none yet;
        # rules that never pass an expected value keep none)
        self.residuals: array[float] | None = None
        self.seen = 0
        self.cap = 0
        self.values: array[float] = array("f")
        # per slot: s < limit: s values, the next goes to s; s ≥ limit: full, the next
        # (which replaces the oldest) goes to s - limit
        self.fill = _zeros(_fill_code(self.limit), self.per_day)
        self.short = 0  # rows holding fewer than ``cap`` values (not kept in snapshots)

    @property
    def per_day(self) -> int:
        """Slots of the ring: windows in a day, or 1 without seasonality."""
        return _DAY // self.window if self.window else 1

    @property
    def limit(self) -> int:
        """Values a slot keeps: ``days`` per time-of-day slot, ``days`` × 24 for the one slot."""
        return self.days if self.window else self.days * 24

    def slot(self, window_start: int) -> int:
        return (window_start % _DAY) // self.window if self.window else 0

    def count(self, slot: int) -> int:
        """How many values ``slot`` holds."""
        return min(self.fill[slot], self.limit)

    def slot_values(self, slot: int) -> list[float]:
        """The values ``slot`` holds, in ring order (not arrival order)."""
        base = slot * self.cap
        cells = self.values[base : base + self.count(slot)]
        if cells.typecode == _NANOS:
            return list(map(_decode, cells))
        return cells.tolist()

    def expected(self, window_start: int, neighbours: int) -> tuple[float, int] | None:
        """Median of the slot's and its neighbours' recent values, and how many there were."""
        values = self.pooled(window_start, neighbours)
        if not values:
            return None
        mid = len(values) // 2
        median = values[mid] if len(values) % 2 else 0.5 * (values[mid - 1] + values[mid])
        return median, len(values)

    def pooled(self, window_start: int, neighbours: int) -> list[float]:
        """The slot's and its neighbours' recent values, sorted."""
        ring, fill, cap = self.values, self.fill, self.cap
        limit = self.days if self.window else self.days * 24
        if not self.window:
            cells = ring[: min(fill[0], limit)]
        else:
            per_day = _DAY // self.window
            here = (window_start % _DAY) // self.window
            first, last = here - neighbours, here + neighbours
            if not self.short and first >= 0 and last < per_day:
                # every row full (the usual case once a scope has ``days`` of history):
                # the slots are adjacent rows, one slice
                cells = ring[first * cap : (last + 1) * cap]
            else:
                cells = []
                for offset in range(-neighbours, neighbours + 1):
                    slot = (here + offset) % per_day
                    base = slot * cap
                    cells.extend(ring[base : base + min(fill[slot], limit)])
        if ring.typecode == _NANOS:
            if not any(cells):  # a quiet stretch: zeros need no dividing back
                return [0.0] * len(cells)
            return sorted(map(_decode, cells))
        return sorted(cells)

    def relative_std(self) -> float:
        """Robust relative noise of the scope (0 until residuals exist)."""
        if not self.residuals:
            return 0.0
        ordered = sorted(self.residuals)
        n = len(ordered)
        mid = n // 2
        median = ordered[mid] if n % 2 else 0.5 * (ordered[mid - 1] + ordered[mid])
        return MAD_TO_STD * median

    def learn(self, window_start: int, value: float, expected: float | None) -> None:
        """Keep ``value`` in its slot (dropping the slot's oldest beyond ``limit``) and, given
        an expected value, its relative residual."""
        self._keep(self.slot(window_start), value)
        if expected is not None and expected > 0:
            residuals = self.residuals
            if residuals is None:
                residuals = self.residuals = array("d")
            residuals.append(abs(value - expected) / expected)
            if len(residuals) > self.residual_memory:
                del residuals[0]
        self.seen += 1

    def _keep(self, slot: int, value: float) -> None:
        limit = self.days if self.window else self.days * 24
        state = self.fill[slot]
        position = state if state < limit else state - limit
        self.fill[slot] = state + 1 if state + 1 < 2 * limit else limit
        if position >= self.cap:
            self._grow()
        if state < limit and state + 1 == self.cap:
            self.short -= 1  # this row has just reached ``cap`` values
        index = slot * self.cap + position
        ring = self.values
        code = ring.typecode
        if code == "d":
            ring[index] = value
            return
        if code == "f":
            ring[index] = value
            if ring[index] == value:  # exactly a float32 (NaN never is)
                return
            ring[index] = 0.0  # the other cells decide whether billionths hold them all
            if not self._to_nanos():
                self._widen()
                self.values[index] = value
                return
            ring = self.values
        nanos = _nanos(value)
        if nanos is None:
            self._widen()
            self.values[index] = value
        else:
            ring[index] = nanos

    def _to_nanos(self) -> bool:
        """Store the ring as int32 billionths if every value held is one exactly."""
        cells = _zeros(_NANOS, len(self.values))
        for index, value in enumerate(self.values):
            cell = _nanos(value)
            if cell is None:
                return False
            cells[index] = cell
        self.values = cells
        return True

    def _widen(self) -> None:
        """The ring as float64 from now on (allocated to size, element by element)."""
        ring = self.values
        wide = _zeros("d", len(ring))
        if ring.typecode == _NANOS:
            for index, cell in enumerate(ring):
                wide[index] = _decode(cell)
        else:
            for index, value in enumerate(ring):
                wide[index] = value
        self.values = wide

    def _grow(self) -> None:
        """One more value per slot (a day more of history), up to ``limit``."""
        old, cap = self.values, self.cap
        new_cap = min(self.limit, cap + 1 + cap // 4)
        grown = _zeros(old.typecode, self.per_day * new_cap)
        for slot in range(self.per_day):
            grown[slot * new_cap : slot * new_cap + cap] = old[slot * cap : (slot + 1) * cap]
        self.values, self.cap = grown, new_cap
        self.short = self.per_day  # no row holds more than the old cap

    # -- snapshots ---------------------------------------------------------------------------

    def __getstate__(self) -> tuple:
        residuals = None if self.residuals is None else self.residuals.tobytes()
        return (
            _LAYOUT, self.window, self.days, self.seen, self.residual_memory, residuals,
            self.cap, self.values.typecode, self.values.tobytes(), self.fill.tobytes(),
        )  # fmt: skip

    def __setstate__(self, state: tuple) -> None:
        if state and state[0] == _LAYOUT:
            (_, window, days, seen, memory, residuals, cap, code, values, fill) = state
            self.window, self.days, self.seen, self.residual_memory = window, days, seen, memory
            self.residuals = None if residuals is None else _array("d", residuals)
            self.cap = cap
            self.values = _array(code, values)
            self.fill = _array(_fill_code(self.limit), fill)
            limit = self.limit
            self.short = sum(1 for count in self.fill if min(count, limit) < cap)
            return
        if len(state) == 5 and isinstance(state[3], dict):
            self._load_dict_layout(*state)
            return
        raise ValueError(
            f"unknown SlotHistory snapshot layout ({type(state).__name__} of {len(state)}): "
            "written by another spendwatch version; start this rule afresh (remove the "
            "state directory, or rename the rule so its state is dropped)"
        )

    def _load_dict_layout(
        self, days: int, residuals: Any, seen: int, slots: dict, window: int
    ) -> None:
        """A snapshot of the layout before rings: a dict of one array (or deque) per slot
        and a ``SortedWindow`` of residuals. Values go into the rings oldest first."""
        size = getattr(residuals, "size", 8)
        SlotHistory.__init__(self, window, days, size, seasonal=window != 0)
        for slot in sorted(slots):
            for value in list(slots[slot])[-self.limit :]:
                self._keep(slot, float(value))
        arrivals = list(getattr(residuals, "arrivals", ()))
        self.residuals = array("d", arrivals[-size:]) if arrivals else None
        self.seen = seen


def count_noise_std(expected: float, per_request: float, overdispersion: float) -> float:
    """Std of a sum of ``expected / per_request`` requests of ``per_request`` each.

    A compound Poisson sum has variance n·E[c²] = expected·per_request·(1 + cv²); the
    configured overdispersion stands for (1 + cv²) and any extra burstiness.
    """
    return math.sqrt(max(expected, 0.0) * max(per_request, 0.0) * overdispersion)
