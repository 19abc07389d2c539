"""Thin ``robust_seasonal`` scopes as rows of arrays: their windows are array updates.

Why. Most scopes of a real stream are thin (thousands of prompts, users, features), so at
a window close most of a zero-filled rule's scopes have no events. Judging such a window
scope by scope costs ~12 µs of Python each (a seasonal median, a variance fit, a CUSUM
step, the learning), paid at every close for every quiet scope: a shard of 100 k scopes
spent over a second per close. What an empty window does to a scope that is not in an
episode is the same arithmetic for every scope, so :class:`QuietRows` holds the state of
the scopes that have been quiet for a while as rows of numpy arrays (a per-shard store of
one rule), and :func:`step` judges one empty window of all of them at once. A cold
scope's next window with events is judged the same way (``RobustSeasonal.observe_rows``):
its tails are the scalar functions of ``sequential``, row by row, and everything else is
the array arithmetic of an empty window with a value; only what may fire or be held back
goes to the per-scope code, so a thin scope stays a row through its few events.

Exactness. A cold scope's next data window, its snapshot and its baseline see exactly the
state the per-scope code would have left: every operation below is the per-scope one in
the same order on the same float64 values (the float32 weekly sums are rounded as the
per-scope ``array('f')`` rounds them); transcendental functions, whose numpy versions
may round differently from ``math``, are taken from ``math`` (the noise prior's
``exp``) or are not needed (an empty window's gamma tail is closed-form). Whatever the
array step cannot do exactly (a week to roll, an empty slot pool, an expectation of
zero, an episode) goes back to the per-scope code: the scope is thawed and judged as
before. ``tests/test_robust_columns.py`` runs both on the same streams and compares every
alert and every bit of the final states.

Layout: per row the scalars of the state (26 float64, read as one ``[field, row]`` block
by a step), the seen count, the week, the ring's capacity and form; the slot rings
slot-major (``[slot of the day, row, days]`` int32: float32 bits or int32 billionths, the
two forms of :class:`~spendwatch.detectors.slots.SlotHistory` that keep 4 bytes a value;
a scope held as float64 stays hot), so a close reads its pooled slots of every row as
adjacent memory; the fill counts and the count profile (float32) likewise; the weekly
sums and ratios (float32). About 4 KB a scope for 15-minute windows and 5 days.
"""

from __future__ import annotations

import math
from array import array
from typing import TYPE_CHECKING, Any

import numpy as np

from spendwatch.detectors import sequential
from spendwatch.detectors.slots import _NANOS, _PER_UNIT, SlotHistory, _fill_code
from spendwatch.detectors.weekly import BLOCK, CELLS, WEEK, WeeklyFactor

if TYPE_CHECKING:
    from spendwatch.detectors.robust_seasonal import RobustSeasonal, RobustState

_DAY = 86400

# columns of the float64 scalars
(PR, LEVEL, LAST_Z, TV, TE, SUU, SUW, SWW, SUE, SWE, CT, CW, CAL_W, CAL_O, CAL_E, CAL_P,
 W_SPREAD, W_NOISE, CUSUM) = range(19)  # fmt: skip
COUNT_FIT = CUSUM + len(sequential.GRID)  # then the count's variance fit (5 columns)
CTV = COUNT_FIT + 5  # then the count trend's two sums
CTE = CTV + 1
SCALARS = CTE + 1
# columns of the int64s
SEEN, WEEK_OF, CAP, CODE, SHORT = range(5)
CODES = ("f", _NANOS)
"""Ring typecodes a row can hold: float32 bits or int32 billionths (float64 stays hot)."""


QUIET_WINDOWS = 2
"""Empty windows after its last data before a scope is judged as a row: a scope with data
every other window would pay more moving in and out than the row saves."""


def count_cells(window: int) -> int:
    """Cells of a scope's count profile for windows of ``window`` seconds (0: not seasonal):
    one per window of the day, one without seasonality."""
    return max(_DAY // window, 1) if window else 1


_Z_EMPTY_THIN = sequential.normal_upper_z(1.0)
"""An empty window's z under a gamma law of shape < 1: the tail above 0 is 1."""


class QuietRows:
    """One rule's cold scopes in one shard: rows of arrays, a free list, grown by doubling."""

    def __init__(self, detector: RobustSeasonal, capacity: int = 64) -> None:
        history = detector.new_state().history
        self.days, self.residual_memory = history.days, history.residual_memory
        self.per_day = history.per_day
        self.count_cells = count_cells(history.window)
        self.limit = history.limit
        self.window = detector.config.window
        self.fill_code = _fill_code(self.limit)
        self.fill_dtype = np.dtype(self.fill_code)
        self.size = 0
        self.judged = 0  # windows judged as rows (figures for tests and benchmarks)
        self.judged_data = 0  # of which with data
        self.free: list[int] = []
        _roster(self, 0)
        self._allocate(capacity)
        self._prior_table: list[float] = []

    def _allocate(self, capacity: int) -> None:
        old = self.size
        scalars = np.zeros((capacity, SCALARS))
        ints = np.zeros((capacity, SHORT + 1), dtype=np.int64)
        # slot-major: one slot's rings of every row are adjacent, as a close reads them
        ring = np.zeros((self.per_day, capacity, self.limit), dtype=np.int32)
        fill = np.zeros((self.per_day, capacity), dtype=self.fill_dtype)
        # per row: the week's sums ([cell, (value, expected)]), then two weeks' ratios
        weekly = np.zeros((capacity, 4 * CELLS), dtype=np.float32)
        counts = np.zeros((self.count_cells, capacity), dtype=np.float32)  # slot-major too
        if old:
            scalars[:old], ints[:old], ring[:, :old] = self.scalars, self.ints, self.ring
            fill[:, :old], weekly[:old], counts[:, :old] = self.fill, self.weekly, self.counts
        self.scalars, self.ints, self.ring, self.fill = scalars, ints, ring, fill
        self.weekly, self.counts = weekly, counts
        self.free.extend(range(capacity - 1, old - 1, -1))
        self.size = capacity
        held, judged_to, last_data = _roster_arrays(capacity)
        held[:old], judged_to[:old], last_data[:old] = (
            self.held, self.judged_to, self.last_data
        )  # fmt: skip
        self.held, self.judged_to, self.last_data = held, judged_to, last_data
        self.scope_at.extend([None] * (capacity - old))

    # -- snapshots: the arrays once per shard, a cold scope as its row -------------------

    _PARTS = (
        "per_day", "limit", "window", "days", "residual_memory", "fill_code", "size", "free",
        "scalars", "ints", "ring", "fill", "weekly", "count_cells", "counts",
    )  # fmt: skip

    def __reduce__(self) -> tuple:
        """Pickled as its arrays: a shard's snapshot holds them once, each cold scope's
        state only its row (``RobustState.__reduce_ex__``), not 4 KB of objects."""
        used = np.ones(self.size, dtype=bool)
        used[self.free] = False
        top = int(np.flatnonzero(used)[-1]) + 1 if used.any() else 0  # trailing free rows: cut
        parts = {name: getattr(self, name) for name in self._PARTS}
        parts["size"], parts["free"] = top, [row for row in self.free if row < top]
        for name in ("scalars", "ints", "weekly"):
            parts[name] = parts[name][:top]
        parts["ring"], parts["fill"] = self.ring[:, :top], self.fill[:, :top]
        parts["counts"] = self.counts[:, :top]
        return (_rows_from_parts, (tuple(parts[name] for name in self._PARTS),))

    def same_layout(self, other: QuietRows) -> bool:
        """Whether ``other``'s rows mean what this store's do (the same rule settings)."""
        names = ("per_day", "limit", "window", "days", "residual_memory", "fill_code")
        return all(getattr(self, n) == getattr(other, n) for n in (*names, "count_cells"))

    @property
    def nbytes(self) -> int:
        """Bytes of the arrays (the capacity, used rows or not)."""
        arrays = (self.scalars, self.ints, self.ring, self.fill, self.weekly, self.counts)
        return sum(a.nbytes for a in arrays)

    def __len__(self) -> int:
        return self.size - len(self.free)

    # -- one scope in, one scope out --------------------------------------------------------

    @staticmethod
    def freezable(state: RobustState) -> bool:
        """Whether an empty window can be judged as a row: not in an episode (nor pending),
        seasonal, a ring of 4-byte values, and a per-request size to expect from."""
        episode = state.episode
        history = state.history
        return (
            episode.start is None
            and not episode.pending
            and episode.pending_start is None
            and not episode.firing_windows
            and not episode.normal_streak
            and history.window != 0
            and history.residuals is None
            and history.values.typecode in CODES
            and state.per_request > 0
        )

    def freeze(self, state: RobustState) -> int:
        """Move a hot scope's state into a row (the object keeps its episode only)."""
        if not self.free:
            self._allocate(self.size + max(self.size // 2, 64))
        row = self.free.pop()
        fit, corr, cal, weekly = state.fit, state.corr, state.calibration, state.weekly
        counted = state.count_fit
        self.scalars[row] = (
            state.per_request, state.level, state.last_z, state.trend_value,
            state.trend_expected, fit.suu, fit.suw, fit.sww, fit.sue, fit.swe, corr.total,
            corr.weight, cal.windows, cal.over, cal.excess, cal.peak, weekly.spread,
            weekly.noise, *state.cusum, counted.suu, counted.suw, counted.sww, counted.sue,
            counted.swe, state.count_trend_value, state.count_trend_expected,
        )  # fmt: skip
        self.counts[:, row] = np.frombuffer(state.counts, dtype=np.float32)
        history = state.history
        cap, values = history.cap, history.values
        self.ints[row] = (
            history.seen,
            weekly.week,
            cap,
            CODES.index(values.typecode),
            history.short,
        )
        cells = np.frombuffer(values, dtype=np.int32).reshape(-1, cap) if cap else 0
        if cap == self.limit:
            self.ring[:, row] = cells
        else:
            ring = self.ring[:, row]
            ring[:, cap:] = 0
            ring[:, :cap] = cells
        self.fill[:, row] = np.frombuffer(history.fill, dtype=self.fill_dtype)
        self.weekly[row] = np.frombuffer(weekly.current + weekly.ratios, dtype=np.float32)
        for name in state.COLD_FIELDS:
            delattr(state, name)
        state._cold = (self, row)
        return row

    def fields(self, row: int) -> dict[str, Any]:
        """The state fields a row stands for, as the objects the per-scope code keeps."""
        s = self.scalars[row].tolist()
        seen, week, cap, code, short = self.ints[row].tolist()
        fit = _new(sequential.VarianceFit)
        fit.suu, fit.suw, fit.sww, fit.sue, fit.swe = s[SUU : SWE + 1]
        counted = _new(sequential.VarianceFit)
        counted.suu, counted.suw, counted.sww, counted.sue, counted.swe = s[COUNT_FIT:CTV]
        corr = _new(sequential.Shrunk)
        corr.total, corr.weight = s[CT], s[CW]
        calibration = _new(sequential.TailCalibration)
        calibration.windows, calibration.over, calibration.excess, calibration.peak = s[
            CAL_W : CAL_P + 1
        ]
        weekly = _new(WeeklyFactor)
        weekly.week, weekly.spread, weekly.noise = week, s[W_SPREAD], s[W_NOISE]
        sums = self.weekly[row].tobytes()
        weekly.current, weekly.ratios = array("f", sums[: 8 * CELLS]), array("f", sums[8 * CELLS :])
        history = _new(SlotHistory)
        history.window, history.days = self.window, self.days
        history.residual_memory, history.residuals = self.residual_memory, None
        history.seen, history.cap, history.short = seen, cap, short
        ring = self.ring[:, row] if cap == self.limit else self.ring[:, row, :cap]
        history.values = array(CODES[code], ring.tobytes())
        history.fill = array(self.fill_code, self.fill[:, row].tobytes())
        return {
            "calibration": calibration, "corr": corr, "cusum": s[CUSUM:COUNT_FIT], "fit": fit,
            "count_fit": counted, "counts": array("f", self.counts[:, row].tobytes()),
            "history": history, "last_z": s[LAST_Z], "level": s[LEVEL],
            "per_request": s[PR], "trend_expected": s[TE], "trend_value": s[TV],
            "weekly": weekly, "count_trend_value": s[CTV], "count_trend_expected": s[CTE],
        }  # fmt: skip

    def thaw(self, state: RobustState) -> None:
        """Give a cold scope its fields back as objects and free its row."""
        _, row = state._cold
        for name, value in self.fields(row).items():
            setattr(state, name, value)
        state._cold = None
        self.release(row)

    def windows_seen(self, row: int) -> int:
        return int(self.ints[row, SEEN])

    def release(self, row: int) -> None:
        """Free a row (its scope thawed or forgotten); a row on the engine's roster leaves
        it, and its scope is noted in ``thawed`` for the engine to judge scope by scope."""
        self.free.append(row)
        if self.held[row]:
            self.held[row] = False
            self.thawed.append(self.scope_at[row])
            self.scope_at[row] = None

    # -- the engine's roster: which scope a row is, and how far it is judged -----------------

    def hold(self, row: int, scope: tuple[str, ...], judged: int, last_data: int) -> None:
        """Put a cold scope's row on the roster: judged through window ``judged``, last
        data in window ``last_data`` (the engine's progress of it, kept here as arrays so
        a close judges the roster without visiting its scopes one by one)."""
        self.held[row] = True
        self.scope_at[row] = scope
        self.judged_to[row] = judged
        self.last_data[row] = last_data

    # -- the noise prior's exp, from math ----------------------------------------------------

    def prior_exp(self, seen: np.ndarray, alpha: float) -> np.ndarray:
        """``math.exp(-seen · alpha)`` per row (numpy's exp may differ in the last bit)."""
        table = self._prior_table
        top = int(seen.max()) + 1 if seen.size else 0
        if top > len(table):
            table.extend(math.exp(-k * alpha) for k in range(len(table), top))
        return np.asarray(table)[seen] if table else np.zeros(0)


def step(
    detector: RobustSeasonal,
    store: QuietRows,
    rows: np.ndarray,
    start: int,
    values: np.ndarray | None = None,
    requests: np.ndarray | None = None,
    learning: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Judge window ``start`` of cold ``rows``: empty, or with ``values`` (the metric's)
    and ``requests`` per row (0 and 0 for a row without events). Return the positions it
    could not judge exactly (left untouched: the caller thaws them and judges them scope
    by scope: what may fire or be held back, what a ring cannot hold) and, per position,
    whether the scope is in its normal regime after the window (``RobustSeasonal.learning``:
    what a driver mix may learn from; with ``learning`` only, else all False)."""
    c = detector.config
    total = len(rows)
    order = np.argsort(rows, kind="stable")  # rows in memory order: faster gathers
    rows = rows[order]
    data = values is not None
    if data:
        values = np.asarray(values, dtype=np.float64)[order]
        requests = np.asarray(requests, dtype=np.float64)[order]
        events = (values != 0.0) | (requests != 0.0)  # rows with events (the others: empty)
    else:
        values = requests = np.zeros(total)
        events = np.zeros(total, dtype=bool)
    s = store.scalars[rows].T.copy()  # [field, row]: each field contiguous
    ints = store.ints[rows]
    here = (start % _DAY) // store.window
    limit = store.limit
    _, ok, expected, variance, u, w, factor, prior = _band(detector, store, rows, s, ints, start)
    if detector.weekly_enabled:
        ok &= ints[:, WEEK_OF] == start // WEEK  # a week to roll: the per-scope code rolls it
    cells = np.zeros(total, dtype=np.int32)  # the value as its ring holds it
    if data:
        ok &= values >= 0.0  # (a credit: scope by scope)
        if c.metric != "requests":
            ok &= ~events | (requests > 0)  # (spend without requests: no size to learn)
        with np.errstate(over="ignore", invalid="ignore"):
            as_float = values.astype(np.float32)
            nanos = np.rint(values * _PER_UNIT)
            fits_nanos = (values < 2.2) & (nanos < 2**31) & (nanos / _PER_UNIT == values)
            floats = ints[:, CODE] == 0
            # a float32 ring keeps what float32 holds exactly, billionths what they hold
            # (SlotHistory._keep): anything else changes the ring's form, scope by scope
            ok &= np.where(floats, as_float.astype(np.float64) == values, fits_nanos)
            cells = np.where(floats, as_float.view(np.int32), np.where(fits_nanos, nanos, 0))
            cells = cells.astype(np.int32)
    failed = [order[~ok]]

    def narrow(mask: np.ndarray) -> None:
        nonlocal rows, s, ints, expected, variance, u, w, factor, prior, values, requests, cells
        nonlocal events
        rows, s, ints, cells, events = rows[mask], s[:, mask], ints[mask], cells[mask], events[mask]
        expected, variance, u, w = expected[mask], variance[mask], u[mask], w[mask]
        factor, prior, values, requests = factor[mask], prior[mask], values[mask], requests[mask]

    positions = order
    if not ok.all():
        narrow(ok)
        positions = order[ok]
    seen = ints[:, SEEN]
    judged = seen >= detector.warmup_windows

    # -- the expected count and its noise (RobustSeasonal._count_test, before learning) -----
    counting = c.metric != "requests"
    if counting:
        from spendwatch.detectors.robust_seasonal import COUNT_MEMORY_DAYS, LEVEL_PRIOR_REQUESTS

        at = (start % _DAY) * store.count_cells // _DAY
        cell = _pooled_counts(store, rows, at, c.neighbours)
        days = seen * detector.count_day
        days = np.where(days > COUNT_MEMORY_DAYS, COUNT_MEMORY_DAYS, days)
        level = s[LEVEL] / s[PR]
        shrink = _level_prior(level * detector.cell_windows, 1.0, LEVEL_PRIOR_REQUESTS)
        shrunk = (days * cell + shrink * level) / (days + shrink)
        least = 0.5 * detector.count_weight
        base = np.where(least > shrunk, least, shrunk)
        count = np.where(cell < 0, expected / s[PR], base * _count_trend(s) * factor)
        cu = c.overdispersion * count
        cw = count * count
        cvar = _fitted_variance(
            detector, s[COUNT_FIT : COUNT_FIT + 5], prior, cu, cw, 1.0 / c.overdispersion
        )

    # -- surprise (RobustSeasonal._z): an empty window's chance (sequential.empty_z), a value
    # of 0 with requests by gamma_z's closed form, the rest row by row below --------------
    z = sequential.empty_z(count, cvar) if counting else sequential.empty_z(expected, variance)
    if data:  # (an empty step's rows are all empty: their z is that)
        with np.errstate(divide="ignore", invalid="ignore"):
            shape = expected * expected / variance
            cc = 1.0 / (9.0 * shape)
            zero = np.where(shape >= 1.0, (0.0 - (1.0 - cc)) / np.sqrt(cc), _Z_EMPTY_THIN)
        z = np.where((values == 0.0) & (requests == 0.0), z, zero)
        z = np.where(judged, z, 0.0)  # (unused where not judged)
    material = np.zeros(len(rows), dtype=bool)
    if data:
        busy = np.flatnonzero(judged & (values > 0.0))
        if busy.size:
            z[busy] = _data_z(
                detector, values[busy], requests[busy], expected[busy], variance[busy],
                s[PR, busy], count[busy] if counting else None, cvar[busy] if counting else None,
            )  # fmt: skip
        material = judged & (values >= c.min_ratio * expected) & (values - expected >= c.min_impact)

    # -- evidence (sequential.update with the scope's damping) -------------------------------
    zc = np.where(material, z, np.minimum(z, 0.0))
    zc = np.minimum(zc, sequential.Z_CAP)
    damping = None
    damped = np.flatnonzero(zc > 0.0)
    if damped.size:  # correlated windows carry less evidence (RobustSeasonal._damping)
        damping = np.ones((len(sequential.GRID), len(rows)))
        rho = s[CT, damped] / (prior[damped] + s[CW, damped])  # Shrunk.value(0, prior)
        for k, r in zip(damped.tolist(), rho.tolist(), strict=True):
            r = min(max(r, 0.0), 0.8)
            damping[:, k] = sequential.correlation_damping(r, detector.threshold)
    evidence = np.zeros(len(rows))
    moved_all = []
    for i, d in enumerate(sequential.GRID):
        zi = zc if damping is None else np.where(zc > 0.0, zc * damping[i], zc)
        moved = s[CUSUM + i] + d * zi - 0.5 * d * d
        moved = np.where(moved > 0.0, moved, 0.0)
        moved_all.append(moved)
        evidence = np.where(moved > evidence, moved, evidence)
    if data:
        from spendwatch.detectors.robust_seasonal import STRONG_Z

        # what fires (evidence at the threshold) or is held back (far out): scope by scope
        candidates = np.flatnonzero(material)
        out = np.zeros(len(rows), dtype=bool)
        out[candidates] = z[candidates] >= STRONG_Z
        for k in candidates[~out[candidates]].tolist():
            out[k] = evidence[k] >= _threshold(detector, s[CAL_W : CAL_P + 1, k])
        if out.any():
            failed.append(positions[out])
            keep = ~out
            narrow(keep)
            positions, seen, judged, z, evidence = (
                positions[keep],
                seen[keep],
                judged[keep],
                z[keep],
                evidence[keep],
            )
            moved_all = [moved[keep] for moved in moved_all]
            if counting:
                count, cu, cw, cvar = count[keep], cu[keep], cw[keep], cvar[keep]
    for i, moved in enumerate(moved_all):
        s[CUSUM + i] = np.where(judged, moved, s[CUSUM + i])

    # -- the tail's calibration (settle_window of a window that moved the CUSUM) ------------
    keep = 1.0 - c.window / (sequential.CALIBRATION_DAYS * 86400.0)
    windows = s[CAL_W] * keep + 1.0
    over = s[CAL_O] * keep
    excess = s[CAL_E] * keep
    peak = s[CAL_P]
    rising = evidence > 0.0
    peak_up = np.where(evidence > peak, evidence, peak)
    closing = ~rising & (peak >= sequential.CALIBRATION_LEVEL)
    over = np.where(closing, over + 1.0, over)
    excess = np.where(
        closing,
        excess + np.minimum(peak - sequential.CALIBRATION_LEVEL, sequential.CALIBRATION_EXCESS_CAP),
        excess,
    )
    s[CAL_W] = np.where(judged, windows, s[CAL_W])
    s[CAL_O] = np.where(judged, over, s[CAL_O])
    s[CAL_E] = np.where(judged, excess, s[CAL_E])
    s[CAL_P] = np.where(judged, np.where(rising, peak_up, 0.0), peak)

    # -- learning (RobustSeasonal._learn) -----------------------------------------------------
    alpha = detector.alpha
    keep = 1.0 - alpha
    error = values - expected
    e2 = np.minimum(error * error, 25.0 * variance)
    s[SUU] = s[SUU] * keep + u * u
    s[SUW] = s[SUW] * keep + u * w
    s[SWW] = s[SWW] * keep + w * w
    s[SUE] = s[SUE] * keep + u * e2
    s[SWE] = s[SWE] * keep + w * e2
    from spendwatch.detectors.robust_seasonal import TREND_WINDOWS, TREND_Z

    trending = ~judged | (z < TREND_Z)  # a jump is not growth
    trend_keep = 1.0 - 1.0 / TREND_WINDOWS
    if counting:  # the count's trend and fit
        from spendwatch.detectors.robust_seasonal import COUNT_WINSOR

        s[CTV] = np.where(trending, s[CTV] * trend_keep + requests, s[CTV])
        s[CTE] = np.where(trending, s[CTE] * trend_keep + count / _count_trend(s), s[CTE])
        counted = s[COUNT_FIT : COUNT_FIT + 5]
        miss = requests - count
        ce2 = np.minimum(miss * miss, COUNT_WINSOR * cvar)
        counted[0] = counted[0] * keep + cu * cu
        counted[1] = counted[1] * keep + cu * cw
        counted[2] = counted[2] * keep + cw * cw
        counted[3] = counted[3] * keep + cu * ce2
        counted[4] = counted[4] * keep + cw * ce2
    product = np.maximum(np.minimum(z * s[LAST_Z], 4.0), -4.0) / 1.0
    s[CT] = np.where(judged, s[CT] * keep + product, s[CT])
    s[CW] = np.where(judged, s[CW] * keep + 1.0, s[CW])
    s[LAST_Z] = np.where(judged, np.maximum(np.minimum(z, 4.0), -4.0), s[LAST_Z])
    s[TV] = np.where(trending, s[TV] * trend_keep + values, s[TV])
    s[TE] = np.where(trending, s[TE] * trend_keep + expected / _trend(s), s[TE])
    if detector.weekly_enabled:
        cell = (start % WEEK) // BLOCK
        pushed = rows[trending]
        sums = store.weekly[pushed, 2 * cell].astype(np.float64) + values[trending]
        store.weekly[pushed, 2 * cell] = sums.astype(np.float32)
        sums = store.weekly[pushed, 2 * cell + 1].astype(np.float64) + (expected / factor)[trending]
        store.weekly[pushed, 2 * cell + 1] = sums.astype(np.float32)
    # the slot ring (SlotHistory._keep) and the seen count
    slot = here
    fill = store.fill[slot, rows].astype(np.int64)
    position = np.where(fill < limit, fill, fill - limit)
    store.fill[slot, rows] = np.where(fill + 1 < 2 * limit, fill + 1, limit)
    cap = ints[:, CAP]
    grown = position >= cap
    cap = np.where(grown, np.minimum(limit, cap + 1 + cap // 4), cap)
    ints[:, CAP] = cap
    short = np.where(grown, store.per_day, ints[:, SHORT])  # a grown ring: every row is short
    ints[:, SHORT] = short - ((fill < limit) & (fill + 1 == cap))  # this row just filled
    store.ring[slot, rows, position] = cells
    seen = seen + 1
    ints[:, SEEN] = seen
    if counting:  # the count profile (Huber's mean, as there)
        mine = store.counts[at, rows].astype(np.float64)
        bound = 2.0 * np.sqrt(cvar)  # (the expected count's variance, before its learning)
        miss = requests - mine
        miss = np.where(-bound > miss, -bound, miss)
        miss = np.where(bound < miss, bound, miss)
        learned = np.where(mine < 0, requests, mine + detector.count_weight * miss)
        store.counts[at, rows] = learned.astype(np.float32)
    s[LEVEL] = np.where(seen - 1 == 0, values, s[LEVEL] + 0.02 * (values - s[LEVEL]))
    if c.metric == "requests":  # a window's requests per request is 1, even an empty one's
        s[PR] = np.where(s[PR] == 0, 1.0, s[PR] + 0.05 * (1.0 - s[PR]))
    elif data:
        with np.errstate(divide="ignore", invalid="ignore"):
            unit = values / requests
        s[PR] = np.where(
            requests > 0, np.where(s[PR] == 0, unit, s[PR] + 0.05 * (unit - s[PR])), s[PR]
        )
    store.scalars[rows] = s.T
    store.ints[rows] = ints
    store.judged += len(rows)
    store.judged_data += int(np.count_nonzero(events))
    calm = np.zeros(total, dtype=bool)
    if data and learning:  # not in an episode, and the CUSUM below half the threshold
        top = s[CUSUM : CUSUM + len(sequential.GRID)].max(axis=0)
        calm[positions] = [
            t < _threshold(detector, s[CAL_W : CAL_P + 1, k]) / 2
            for k, t in enumerate(top.tolist())
        ]
    return np.concatenate(failed), calm


def _data_z(
    detector: RobustSeasonal,
    values: np.ndarray,
    requests: np.ndarray,
    expected: np.ndarray,
    variance: np.ndarray,
    per_request: np.ndarray,
    count: np.ndarray | None,
    count_variance: np.ndarray | None,
) -> np.ndarray:
    """RobustSeasonal._z of windows with data, row by row: its tails (incomplete gamma and
    beta) are the scalar functions of ``sequential``, so each z is the per-scope one."""
    gamma_z, heavy, by_count, either = (
        sequential.gamma_z, sequential.heavy_tail_z, sequential.count_z, sequential.either_z
    )  # fmt: skip
    out = []
    counts = count.tolist() if count is not None else None
    variances = count_variance.tolist() if count_variance is not None else None
    for k, (v, n, e, var, pr) in enumerate(
        zip(values.tolist(), requests.tolist(), expected.tolist(), variance.tolist(),
            per_request.tolist(), strict=True)
    ):  # fmt: skip
        z = gamma_z(v, e, var)
        if counts is not None and z > 0 and pr > 0:
            honest = min(z, heavy(z, n))
            z = either(honest, by_count(min(n, v / pr), counts[k], variances[k]))
        out.append(z)
    return np.asarray(out)


def _threshold(detector: RobustSeasonal, calibration: np.ndarray) -> float:
    """The scope's evidence threshold from its row's tail (``TailCalibration.threshold``)."""
    tail = _new(sequential.TailCalibration)
    tail.windows, tail.over, tail.excess, tail.peak = calibration.tolist()
    return tail.threshold(detector.threshold, detector.config.window)


def _rows_from_parts(parts: tuple) -> QuietRows:
    rows = _new(QuietRows)
    for name, value in zip(QuietRows._PARTS, parts, strict=True):
        setattr(rows, name, np.ascontiguousarray(value) if isinstance(value, np.ndarray) else value)
    rows.fill_dtype = np.dtype(rows.fill_code)
    if rows.scalars.shape[1] < SCALARS:  # a store from before the count's trend: none yet
        missing = SCALARS - rows.scalars.shape[1]
        rows.scalars = np.hstack([rows.scalars, np.zeros((len(rows.scalars), missing))])
    rows.judged = rows.judged_data = 0
    rows._prior_table = []
    _roster(rows, rows.size)  # (not kept: a restored store is read, then emptied by thaws)
    return rows


def _roster_arrays(capacity: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row: on the roster, judged through (window start), last data (window start)."""
    return (
        np.zeros(capacity, dtype=bool),
        np.zeros(capacity, dtype=np.int64),
        np.zeros(capacity, dtype=np.int64),
    )


def _roster(store: QuietRows, capacity: int) -> None:
    """An empty roster of ``capacity`` rows."""
    store.held, store.judged_to, store.last_data = _roster_arrays(capacity)
    store.scope_at = [None] * capacity
    store.thawed = []


def _new(kind: type) -> Any:
    """An instance without running ``__init__`` (its fields are set from a row)."""
    return kind.__new__(kind)


def _band(
    detector: RobustSeasonal,
    store: QuietRows,
    rows: np.ndarray,
    s: np.ndarray,
    ints: np.ndarray,
    start: int,
) -> tuple[np.ndarray, ...]:
    """RobustSeasonal.band and ._variance per row: (values pooled, judgeable, expected,
    variance, u, w, weekly factor, the noise prior's weight); not judgeable as a row where
    the pooled slots hold nothing, or the expectation or its variance is not positive."""
    c = detector.config
    seen = ints[:, SEEN]
    per_day, limit = store.per_day, store.limit
    here = (start % _DAY) // store.window
    slots = [(here + offset) % per_day for offset in range(-c.neighbours, c.neighbours + 1)]

    # -- band (RobustSeasonal.band) -----------------------------------------------------------
    pick = np.ix_(slots, rows)
    cells = store.ring[pick].transpose(1, 0, 2)  # [r, pooled slots, limit]
    counts = np.minimum(store.fill[pick].T.astype(np.int64), limit)
    floats = np.where(
        (ints[:, CODE] == 0)[:, None, None],
        cells.view(np.float32).astype(np.float64),
        cells.astype(np.float64) / 1e9,
    )
    valid = np.arange(limit)[None, None, :] < counts[:, :, None]
    values = np.where(valid, floats, np.inf).reshape(len(rows), -1)
    values.sort(axis=1)
    count = counts.sum(axis=1)
    ok = count > 0
    n = np.maximum(count, 1)
    mid = n // 2
    take = np.arange(len(rows))
    upper = values[take, mid]
    lower = values[take, np.maximum(mid - 1, 0)]
    median = np.where(n % 2 == 1, upper, 0.5 * (lower + upper))
    kept = np.maximum(n - np.maximum(n // 8, 1), 1)
    # prefix sums down the pooled values, all rows at once: sequential per row, as sum()
    mean = np.cumsum(values.T, axis=0)[kept - 1, take] / kept
    center = np.where(mean > median, mean, median)
    with np.errstate(invalid="ignore"):  # an empty pool (inf · 0) is handed back below
        from spendwatch.detectors.robust_seasonal import LEVEL_PRIOR_REQUESTS

        shrink = _level_prior(s[LEVEL], s[PR], LEVEL_PRIOR_REQUESTS)
        expected = (center * count + shrink * s[LEVEL]) / (count + shrink)
    floor = 0.5 * s[PR] / (count + 1)
    expected = np.where(floor > expected, floor, expected)
    expected = expected * _trend(s)
    if detector.weekly_enabled:
        factor = _weekly_factor(store, rows, ints, s, start)
        expected = expected * factor
    else:
        factor = np.ones(len(rows))
    ok &= expected > 0  # (a band of nothing to expect: handed back, as is variance 0)

    # -- variance (RobustSeasonal._variance, VarianceFit.coefficients) -----------------------
    per_request = np.maximum(s[PR], 0.0)
    u = per_request * c.overdispersion * np.maximum(expected, 0.0)
    w = expected * expected
    prior = c.prior_weight * store.prior_exp(seen, detector.alpha)
    variance = _fitted_variance(detector, s[SUU : SWE + 1], prior, u, w, 0.3)
    ok &= variance > 0
    return count, ok, expected, variance, u, w, factor, prior


def baselines(
    detector: RobustSeasonal, store: QuietRows, rows: np.ndarray, start: int
) -> list[tuple[float, float] | None]:
    """(expected, variance) of window ``start`` per cold row, or ``None`` where the pooled
    slots hold nothing: ``RobustSeasonal.band`` without thawing (the query API's view)."""
    s = store.scalars[rows].T.copy()
    ints = store.ints[rows]
    count, _, expected, variance, *_ = _band(detector, store, rows, s, ints, start)
    empty = count == 0
    return [
        None if none else (e, v)
        for none, e, v in zip(empty.tolist(), expected.tolist(), variance.tolist(), strict=True)
    ]


def _pooled_counts(store: QuietRows, rows: np.ndarray, at: int, neighbours: int) -> np.ndarray:
    """RobustSeasonal._pooled_count per row: the mean of the known cells around ``at``."""
    cells = store.count_cells
    total = np.zeros(len(rows))
    known = np.zeros(len(rows))
    for offset in range(-neighbours, neighbours + 1):
        cell = store.counts[(at + offset) % cells, rows].astype(np.float64)
        here = cell >= 0
        total = np.where(here, total + cell, total)
        known = known + here
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(known > 0, total / known, -1.0)


def _trend(s: np.ndarray) -> np.ndarray:
    """RobustSeasonal._trend per row."""
    from spendwatch.detectors.robust_seasonal import TREND_MAX, TREND_PRIOR_REQUESTS

    prior = TREND_PRIOR_REQUESTS * np.maximum(s[PR], 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = (s[TV] + prior) / (s[TE] + prior)
    ratio = np.minimum(np.maximum(ratio, 1.0), TREND_MAX)
    return np.where(s[TE] + prior <= 0, 1.0, ratio)


def _count_trend(s: np.ndarray) -> np.ndarray:
    """RobustSeasonal._count_trend per row."""
    from spendwatch.detectors.robust_seasonal import TREND_MAX, TREND_PRIOR_REQUESTS

    ratio = (s[CTV] + TREND_PRIOR_REQUESTS) / (s[CTE] + TREND_PRIOR_REQUESTS)
    return np.minimum(np.maximum(ratio, 1.0), TREND_MAX)


def _weekly_factor(
    store: QuietRows, rows: np.ndarray, ints: np.ndarray, s: np.ndarray, start: int
) -> np.ndarray:
    """WeeklyFactor.factor per row (rows of another week get 1, as there)."""
    cell = (start % WEEK) // BLOCK
    one = store.weekly[rows, 2 * CELLS + cell].astype(np.float64)
    two = store.weekly[rows, 3 * CELLS + cell].astype(np.float64)
    spread, noise = s[W_SPREAD], s[W_NOISE]
    with np.errstate(divide="ignore", invalid="ignore"):
        factor = 1.0 + (np.where(two > one, two, one) - 1.0) * spread / (spread + noise)
    this_week = ints[:, WEEK_OF] == start // WEEK
    usable = this_week & (spread > 0) & ~np.isnan(one) & ~np.isnan(two)
    return np.where(usable, factor, 1.0)


def _fitted_variance(
    detector: RobustSeasonal,
    fit: np.ndarray,
    prior: np.ndarray,
    u: np.ndarray,
    w: np.ndarray,
    floor_a: float,
) -> np.ndarray:
    """RobustSeasonal._fitted per row (``fit``: the five sums of a VarianceFit, ``[5, row]``;
    ``np.where`` keeps ``max``'s choice of its first argument, NaN included)."""
    min_std = detector.config.min_relative_std
    coef_a, coef_b = _coefficients(fit, min_std**2, prior, u, w)
    floor_b = (min_std / 2) ** 2
    return (
        np.where(floor_a > coef_a, floor_a, coef_a) * u
        + np.where(floor_b > coef_b, floor_b, coef_b) * w
    )


def _coefficients(
    fit: np.ndarray, prior_b: float, prior_weight: np.ndarray, u: np.ndarray, w: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """VarianceFit.coefficients per row, branch by branch (``fit``: its five sums, ``[5, row]``)."""
    suu, suw, sww, sue, swe = fit
    pu, pw = prior_weight * u * u, prior_weight * w * w
    a11, a12, a22 = suu + pu, suw, sww + pw
    b1, b2 = sue + pu * 1.0, swe + pw * prior_b
    det = a11 * a22 - a12 * a12
    with np.errstate(divide="ignore", invalid="ignore"):
        coef_a = (b1 * a22 - b2 * a12) / det
        coef_b = (a11 * b2 - a12 * b1) / det
        negative_a = coef_a < 0.0
        coef_a = np.where(negative_a, 0.0, coef_a)
        coef_b = np.where(negative_a, b2 / a22, coef_b)
        negative_b = coef_b < 0.0
        coef_a = np.where(negative_b, b1 / a11, coef_a)
        coef_b = np.where(negative_b, 0.0, coef_b)
    singular = det <= 0
    return np.where(singular, 1.0, coef_a), np.where(singular, prior_b, coef_b)


def _level_prior(level: np.ndarray, per_request: np.ndarray | float, requests: float) -> np.ndarray:
    """``robust_seasonal.level_prior`` for rows, operation for operation."""
    cap = requests * per_request
    capped = (cap > 0.0) & (cap < level)
    return np.where(capped, cap / np.where(capped, level, 1.0), 1.0)
