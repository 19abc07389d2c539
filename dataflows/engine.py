"""The per-shard engine: event-time windows, watermark, detectors and budgets of many scopes.

One ``ShardEngine`` owns every scope that hashes to its shard. It receives partial
sums (never raw events) together with the max event time of each input batch,
so its watermark advances even for quiet scopes. A window closes when the
watermark (max event time - allowed lateness) passes its end; closed windows are
judged scope by scope in window order, which makes the outcome independent of
batching and of arrival order within the lateness. Events later than that still
count toward budgets; detectors count them as late. The wall clock is never read.
"""

from __future__ import annotations

import ast
import heapq
import math
import pickle
from array import array
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any

import numpy as np

from spendwatch.core.alerts import Alert
from spendwatch.dataflows.aggregate import PartialRow
from spendwatch.dataflows.allocation import AllocationTally, Allocator
from spendwatch.detectors import drivers as driver_mix
from spendwatch.detectors.base import (
    SUM_FIELDS,
    ZERO,
    Aggregation,
    Detector,
    GroupDetector,
    Totals,
    WindowDetector,
    driver_aggregation,
)
from spendwatch.detectors.budget import BudgetRule, BudgetState

Tracer = Callable[[Detector, Mapping[str, str], int, Totals, "dict[str, float] | None"], None]
"""Called with a detector's explanation of a window just before it judges it (``explain``
and reports record with it)."""


UNLEARNED = frozenset({"severity", "max_scopes"})
"""Detector settings a learned state does not depend on: changing them keeps baselines
(``max_scopes`` only bounds how many scopes are kept; the longest-quiet go first)."""


def _learned(signature: Any) -> Any:
    """A rule signature without the settings in ``UNLEARNED``, as one saved by any version
    compares (older snapshots recorded ``max_scopes`` among the settings)."""
    if not (isinstance(signature, (tuple, list)) and len(signature) == 3):
        return signature
    if signature[0] != "detector":
        return signature
    try:
        settings = ast.literal_eval(signature[2])
    except (ValueError, SyntaxError):
        return tuple(signature)
    kept = [item for item in settings if item[0] not in UNLEARNED]
    return (signature[0], signature[1], repr(kept))


@dataclass
class EnginePlan:
    """The rules of a config, and the distinct aggregations they need."""

    detectors: list[Detector]
    budgets: list[BudgetRule]
    allowed_lateness: int
    scope_idle_ttl: int
    aggregations: list[Aggregation] = field(default_factory=list)
    # Input partitions known in advance (e.g. the files of the source): the watermark
    # waits until each has been heard from. Empty: only partitions seen so far count.
    partitions: tuple[str, ...] = ()
    # the recent series of each rule scope (GET /costs): event time kept, finest step,
    # scopes per aggregation (the longest quiet are dropped first); 0 keeps none
    series_horizon: int = 0
    series_resolution: int = 900
    series_max_scopes: int = 256

    def __post_init__(self) -> None:
        for rule in [*self.detectors, *self.budgets]:
            if rule.aggregation not in self.aggregations:
                self.aggregations.append(rule.aggregation)
        # parent aggregation -> breakdown aggregations (closed together with their parent)
        self.breakdowns: dict[Aggregation, list[Aggregation]] = {}
        for detector in self.detectors:
            for dimension in detector.drivers:
                child = driver_aggregation(detector.aggregation, dimension)
                children = self.breakdowns.setdefault(detector.aggregation, [])
                if child not in children:
                    children.append(child)
                if child not in self.aggregations:
                    self.aggregations.append(child)
        # A breakdown can also be a rule's own aggregation (drivers [model] on [tenant]
        # and a rule on [tenant, model]): its parents close first and only read its rows,
        # then its own close judges them.
        children = {c for kids in self.breakdowns.values() for c in kids}
        judged = [
            a
            for a in self.aggregations
            if any(r.aggregation == a for r in [*self.detectors, *self.budgets])
        ]
        self.judged = [a for a in judged if a not in children] + [
            a for a in judged if a in children
        ]
        self.shared_breakdowns = {a for a in judged if a in children}
        self.detectors_by_aggregation = {
            a: [d for d in self.detectors if d.aggregation == a] for a in self.aggregations
        }
        self.budgets_by_aggregation = {
            a: [b for b in self.budgets if b.aggregation == a] for a in self.aggregations
        }
        # aggregations whose rules judge single requests (the pre-aggregation's log sums)
        self.per_request = {
            a
            for a, rules in self.detectors_by_aggregation.items()
            if any(getattr(d, "per_request", False) for d in rules)
        }

    def signatures(self) -> dict[str, tuple]:
        """What each rule's state depends on, by rule name (compared after a reload).

        Budgets keep their totals when only amounts, thresholds or severity change;
        a detector keeps its baseline unless its configuration changed beyond severity.
        """
        signatures: dict[str, tuple] = {}
        for detector in self.detectors:
            config = getattr(detector, "config", None)
            settings = config.model_dump(exclude=UNLEARNED) if config is not None else {}
            signatures[detector.name] = (
                "detector",
                detector.aggregation,
                repr(sorted(settings.items())),
            )
        for budget in self.budgets:
            config = budget.config
            signatures[budget.name] = ("budget", budget.aggregation, config.period, config.timezone)
        return signatures

    @classmethod
    def from_config(cls, config: Any, partitions: Sequence[str] = ()) -> EnginePlan:
        from spendwatch.detectors.registry import build_detector

        allocators = {a.name: Allocator(a) for a in getattr(config, "allocation", ())}

        def allocator_of(budget: Any) -> Allocator | None:
            rule = config.allocation_of(budget) if allocators else None
            return None if rule is None else allocators[rule.name]

        return cls(
            detectors=[build_detector(d) for d in config.detectors],
            budgets=[BudgetRule(b, allocator_of(b)) for b in config.budgets],
            allowed_lateness=config.engine.allowed_lateness,
            scope_idle_ttl=config.engine.scope_idle_ttl,
            partitions=tuple(partitions),
            series_horizon=config.engine.series_horizon,
            series_resolution=config.engine.series_resolution,
            series_max_scopes=config.engine.series_max_scopes,
        )

    def series_step(self, aggregation: Aggregation) -> int:
        """The step of an aggregation's series: its window, at least the resolution."""
        window = aggregation.window
        return window * max(1, -(-self.series_resolution // window))


_UNJUDGED = (None, None)
"""A scope's progress before its first judged window."""


class SnapshotError(ValueError):
    """A recovery snapshot this version cannot restore (the message says what to do)."""


@dataclass
class EngineCounters:
    """What a shard saw, for metrics and the backtest summary."""

    windows_closed: int = 0
    late_events: int = 0
    evicted_scopes: int = 0
    # budget name -> what its allocation moved (nano-dollars)
    allocation: dict[str, AllocationTally] = field(default_factory=dict)


class ShardEngine:
    """Windows, watermark and rule state of one shard; pure apart from its own state."""

    def __init__(
        self,
        plan: EnginePlan,
        snapshot: bytes | None = None,
        tracer: Tracer | None = None,
        *,
        quiet_rows: bool = True,
    ) -> None:
        """``quiet_rows=False`` judges every quiet scope scope by scope: the reference the
        row-wise judging of quiet scopes is tested against (``tests/test_robust_columns.py``)."""
        self.plan = plan
        self.tracer = tracer
        # rule name -> its quiet scopes' rows (``detectors/robust_columns.py``); not in
        # the snapshot itself: cold states carry their store into it, and after a restore
        # they move into this one at the next close
        self.quiet_stores: dict[str, Any] | None = {} if quiet_rows else None
        self.max_ts = -math.inf
        # input partition -> max event time seen from it (several files or topics)
        self.partition_max: dict[str, float] = {}
        # partitions that said they have read everything there is (transient: after a
        # restart they say it again once they catch up)
        self.idle_partitions: set[str] = set()
        # aggregation -> {(scope, window start): totals}
        self.open: dict[Aggregation, dict[tuple[tuple[str, ...], int], Totals]] = {}
        # aggregation -> every window starting before this is closed
        self.closed_before: dict[Aggregation, int] = {}
        # rule name -> scope -> state; rule name -> scope -> (last judged window, last data window)
        self.detector_states: dict[str, dict[tuple[str, ...], Any]] = {}
        self._progress: dict[str, dict[tuple[str, ...], tuple[int, int]]] = {}
        self.budget_states: dict[str, dict[tuple[str, ...], BudgetState]] = {}
        # budget name -> group (scope without the allocated dimension) -> (window, usage
        # metric, usage by value): the last known shares of budgets with include_allocated
        self.allocation_shares: dict[str, dict[tuple[str, ...], tuple[int, str, dict]]] = {}
        # rule name -> scope -> breakdown mix (drivers)
        self.driver_states: dict[str, dict[tuple[str, ...], driver_mix.MixState]] = {}
        # aggregation -> scope -> flat int64 array of (start, *Totals) per step, oldest first
        self.series: dict[Aggregation, dict[tuple[str, ...], Any]] = {}
        self.series_version = 0
        # budget name -> amount key ('*' or scope_by values joined by '/') -> (USD, set at)
        self.budget_overrides: dict[str, dict[str, tuple[float, float]]] = {}
        self.counters = EngineCounters()
        # rule name -> heap of (last data window, scope) (derived from detector_progress)
        self._idle: dict[str, list[tuple[int, tuple[str, ...]]]] = {}
        # rule name -> its scopes not on its store's roster (rules with rows only)
        self._hot: dict[str, dict[tuple[str, ...], None]] = {}
        if snapshot is not None:
            self._restore(snapshot)

    # -- input -------------------------------------------------------------------------------

    def on_message(
        self,
        max_ts: float | None,
        rows: Sequence[PartialRow],
        partition: str | None = None,
        *,
        idle: bool = False,
    ) -> list[Alert]:
        """Add one batch's partial rows, advance the watermark, judge the windows it closes.

        With several input partitions the watermark follows the *slowest* one, so a
        file or topic partition read ahead of another cannot make the other's events
        late: which windows close, and with what in them, is then the same whatever
        the interleaving (and so whatever the number of processes).
        """
        alerts: list[Alert] = []
        aggregations = self.plan.aggregations
        # Looked up once per message, not per row: hashing an Aggregation is not free.
        closed = [self.closed_before.get(a, -math.inf) for a in aggregations]
        buckets = [self.open.setdefault(a, {}) for a in aggregations] if rows else []
        for index, scope, window_start, *values in rows:
            totals = Totals(*values)
            if window_start < closed[index]:
                alerts.extend(self._late(aggregations[index], scope, window_start, totals))
                continue
            bucket = buckets[index]
            key = (scope, window_start)
            previous = bucket.get(key)
            bucket[key] = totals if previous is None else previous.add(totals)
        if max_ts is not None and max_ts > self.max_ts:
            self.max_ts = max_ts
        if partition is not None:
            if idle:
                self.idle_partitions.add(partition)
            elif max_ts is not None:
                self.idle_partitions.discard(partition)
                if max_ts > self.partition_max.get(partition, -math.inf):
                    self.partition_max[partition] = max_ts
        alerts.extend(self.advance(self.event_time() - self.plan.allowed_lateness))
        return alerts

    def event_time(self) -> float:
        """Event time every input partition has reached (the watermark before lateness)."""
        if not self.partition_max:
            return self.max_ts
        waiting = (set(self.plan.partitions) | set(self.partition_max)) - self.idle_partitions
        if not waiting:  # everyone is caught up: nothing is still on its way
            return self.max_ts
        return min(self.partition_max.get(p, -math.inf) for p in waiting)

    def advance(self, watermark: float) -> list[Alert]:
        """Close every window that ends at or before ``watermark``."""
        if watermark == -math.inf:
            return []
        alerts: list[Alert] = []
        for aggregation in self.plan.judged:
            bound = math.floor(watermark / aggregation.window) * aggregation.window
            alerts.extend(self._close(aggregation, bound))
        for rule in self.plan.budgets:
            states = self.budget_states.get(rule.name, {})
            for scope in list(states):
                scope_map = _scope_map(rule.aggregation, scope)
                alerts.extend(rule.expire(states[scope], scope_map, watermark))
                if rule.disposable(states[scope], watermark, self.plan.scope_idle_ttl):
                    del states[scope]
        return alerts

    def flush(self) -> list[Alert]:
        """End of input: close every window up to the one holding the last event.

        The watermark follows the robust stream time, which lags the last few events of
        the input: at its end, every open window is history and is judged.
        """
        end = self._input_end()
        if end == -math.inf:
            return []
        alerts: list[Alert] = []
        for aggregation in self.plan.judged:
            bound = (math.floor(end / aggregation.window) + 1) * aggregation.window
            alerts.extend(self._close(aggregation, bound))
        return alerts

    def _input_end(self) -> float:
        """The time of the last event input, to the resolution of the finest window."""
        end = self.max_ts
        for bucket in self.open.values():
            if bucket:  # the finest window's start is in every coarser window of that event
                end = max(end, max(start for _, start in bucket))
        return end

    # -- windows -----------------------------------------------------------------------------

    def _close(self, aggregation: Aggregation, bound: int) -> list[Alert]:
        if bound <= self.closed_before.get(aggregation, -math.inf):
            return []
        self.closed_before[aggregation] = bound
        bucket = self.open.get(aggregation, {})
        by_scope: dict[tuple[str, ...], list[tuple[int, Totals]]] = {}
        for key in [k for k in bucket if k[1] < bound]:
            by_scope.setdefault(key[0], []).append((key[1], bucket.pop(key)))
        for windows in by_scope.values():
            windows.sort()
        self.counters.windows_closed += sum(len(w) for w in by_scope.values())
        self._record_series(aggregation, by_scope, bound)
        breakdowns = self._close_breakdowns(aggregation, bound)
        alerts: list[Alert] = []
        windows: list[tuple[int, dict]] | None = None
        for detector in self.plan.detectors_by_aggregation[aggregation]:
            if self._quiet_store(detector) is None:
                alerts.extend(self._judge(detector, by_scope, bound, breakdowns))
                continue
            # Window by window, so the quiet scopes of every window in a close of many
            # (a backtest's large batches) are judged as rows; each scope still sees its
            # windows in order, and scopes are forgotten only at the end, as in one step.
            windows = (
                windows if windows is not None else _by_window(by_scope, bound, aggregation.window)
            )
            for end, part in windows:
                alerts.extend(self._judge(detector, part, end, breakdowns, evict=end == bound))
        for rule in self.plan.budgets_by_aggregation[aggregation]:
            states = self.budget_states.setdefault(rule.name, {})
            if rule.allocation is not None:
                alerts.extend(self._add_allocated(rule, states, by_scope, bound))
                self.counters.evicted_scopes += rule.bound(states)
                continue
            for scope, windows in by_scope.items():
                state = states.get(scope)
                if state is None:
                    state = states[scope] = rule.new_state()
                scope_map = _scope_map(aggregation, scope)
                for window_start, totals in windows:
                    alerts.extend(rule.add(state, scope_map, window_start, totals.spend_nanos))
            self.counters.evicted_scopes += rule.bound(states)
        return alerts

    def _add_allocated(
        self,
        rule: BudgetRule,
        states: dict[tuple[str, ...], BudgetState],
        by_scope: Mapping[tuple[str, ...], list[tuple[int, Totals]]],
        bound: int,
    ) -> list[Alert]:
        """A budget with ``include_allocated``: split each group's windows (in window
        order, groups in sorted order) and add every value's direct + allocated spend.

        The scope's last value is the allocated dimension; the rows of every value of a
        group are on this shard (the aggregation routes by the rest), so the split sees
        the whole window and depends on nothing but it and the shares of earlier windows.
        """
        allocator = rule.allocation
        assert allocator is not None
        if not by_scope:
            return []
        memory = self.allocation_shares.setdefault(rule.name, {})
        tally = self.counters.allocation.setdefault(rule.name, AllocationTally())
        groups: dict[tuple[str, ...], dict[int, dict[str, Totals]]] = {}
        for scope, windows in by_scope.items():
            per_window = groups.setdefault(scope[:-1], {})
            for window_start, totals in windows:
                per_window.setdefault(window_start, {})[scope[-1]] = totals
        adds: dict[tuple[str, ...], list[tuple[int, int, int]]] = {}
        for group in sorted(groups):
            for window_start, values in sorted(groups[group].items()):
                split, remember = allocator.split(
                    {value: totals.spend_nanos for value, totals in values.items()},
                    {value: allocator.usage(totals) for value, totals in values.items()},
                    self._last_shares(rule, group),
                    tally,
                )
                if remember is not None:
                    memory[group] = (window_start, allocator.config.by, remember)
                for value in sorted(split.spend):
                    adds.setdefault((*group, value), []).append(
                        (window_start, split.spend[value], split.allocated.get(value, 0))
                    )
        alerts = self._add_budget_parts(rule, states, adds)
        oldest = bound - self.plan.scope_idle_ttl  # shares of long-quiet groups go
        for group in [g for g, (start, *_) in memory.items() if start < oldest]:
            del memory[group]
        return alerts

    def _last_shares(self, rule: BudgetRule, group: tuple[str, ...]) -> dict[str, int] | None:
        """The usage of the group's latest window that had any, if measured by the rule's
        current metric (a reload may have changed ``by``: other usage is no share)."""
        found = self.allocation_shares.get(rule.name, {}).get(group)
        if found is None or rule.allocation is None or found[1] != rule.allocation.config.by:
            return None
        return found[2]

    def _add_budget_parts(
        self,
        rule: BudgetRule,
        states: dict[tuple[str, ...], BudgetState],
        adds: Mapping[tuple[str, ...], list[tuple[int, int, int]]],
    ) -> list[Alert]:
        """Add (window, spend, allocated part) per scope to an allocating budget."""
        alerts: list[Alert] = []
        for scope, parts in adds.items():
            if not rule.keeps(scope):
                continue
            state = states.get(scope)
            if state is None:
                state = states[scope] = rule.new_state()
            scope_map = _scope_map(rule.aggregation, scope)
            for window_start, spend, allocated in parts:
                alerts.extend(rule.add(state, scope_map, window_start, spend, allocated))
        return alerts

    def _late_allocated(
        self, rule: BudgetRule, scope: tuple[str, ...], window_start: int, totals: Totals
    ) -> list[Alert]:
        """A late row of an allocating budget: a real value's spend is its own; a shared
        value's is spread by the group's last known shares (its window's usage was
        split when the window closed and is no longer held)."""
        allocator = rule.allocation
        assert allocator is not None
        states = self.budget_states.setdefault(rule.name, {})
        value, group = scope[-1], scope[:-1]
        if value not in allocator.shared:
            parts = {scope: [(window_start, totals.spend_nanos, 0)]}
            return self._add_budget_parts(rule, states, parts)
        tally = self.counters.allocation.setdefault(rule.name, AllocationTally())
        split, _ = allocator.split(
            {value: totals.spend_nanos}, {}, self._last_shares(rule, group), tally
        )
        adds = {
            (*group, v): [(window_start, split.spend[v], split.allocated.get(v, 0))]
            for v in sorted(split.spend)
        }
        return self._add_budget_parts(rule, states, adds)

    def _close_breakdowns(
        self, parent: Aggregation, bound: int
    ) -> dict[tuple[tuple[str, ...], int], dict[str, dict[str, Totals]]]:
        """Pop the breakdown rows of windows the parent closes: (scope, window) -> dim -> value."""
        found: dict[tuple[tuple[str, ...], int], dict[str, dict[str, Totals]]] = {}
        for child in self.plan.breakdowns.get(parent, ()):
            shared = child in self.plan.shared_breakdowns  # its own rules close it later
            if not shared:
                self.closed_before[child] = bound
            bucket = self.open.get(child, {})
            dimension = child.dims[-1]
            for key in [k for k in bucket if k[1] < bound]:
                scope, window_start = key
                parts = found.setdefault((scope[:-1], window_start), {})
                parts.setdefault(dimension, {})[scope[-1]] = (
                    bucket[key] if shared else bucket.pop(key)
                )
        return found

    def _observe(
        self,
        detector: WindowDetector,
        state: Any,
        scope: tuple[str, ...],
        scope_map: Mapping[str, str],
        window_start: int,
        totals: Totals,
        breakdown: Mapping[str, Mapping[str, Totals]] | None,
    ) -> list[Alert]:
        """One detector call, with tracing and driver attribution around it."""
        if self.tracer is not None:
            explained = detector.explain(state, window_start, totals)
            self.tracer(detector, scope_map, window_start, totals, explained)
        alerts = detector.observe(state, scope_map, window_start, totals)
        if not detector.drivers or not breakdown:
            return alerts
        mix = self._driver_mix(detector.name, scope)
        metric = detector.config.metric
        firing = False
        for index, alert in enumerate(alerts):
            if alert.kind == "anomaly" and alert.status == "firing":
                firing = True
                found = driver_mix.attribute(mix, breakdown, metric, alert.expected, totals)
                alerts[index] = alert.model_copy(update={"drivers": found})
        if not firing and detector.learning(state):
            driver_mix.learn(mix, breakdown, metric, _driver_alpha(detector))
        return alerts

    def _driver_mix(self, rule: str, scope: tuple[str, ...]) -> driver_mix.MixState:
        """The scope's driver mix of a rule (new and empty the first time)."""
        mixes = self.driver_states.setdefault(rule, {})
        mix = mixes.get(scope)
        if mix is None:
            mix = mixes[scope] = driver_mix.MixState()
        return mix

    def _judge(
        self,
        detector: Detector,
        by_scope: Mapping[tuple[str, ...], list[tuple[int, Totals]]],
        bound: int,
        breakdowns: Mapping[tuple[tuple[str, ...], int], Mapping[str, Mapping[str, Totals]]],
        evict: bool = True,
    ) -> list[Alert]:
        """Judge a rule's windows before ``bound``: the scopes with data window by window,
        the quiet ones (zero-filled rules only) a run of empty windows at a time; then,
        with ``evict``, keep the rule within ``max_scopes``.

        Scopes are independent of each other: the order they are judged in changes
        nothing but the order of the alerts of one close.
        """
        if isinstance(detector, GroupDetector):
            return self._judge_peers(detector, by_scope)
        states = self.detector_states.setdefault(detector.name, {})
        progress = self._progress.setdefault(detector.name, {})
        alerts: list[Alert] = []
        store = self._quiet_store(detector) if detector.zero_fill else None
        by_row, cold = by_scope, None
        if store is not None:
            by_row, cold = self._cold_with_data(detector, store, states, progress, by_scope)
        for scope, windows in by_row.items():
            alerts.extend(
                self._judge_scope(detector, states, progress, scope, windows, bound, breakdowns)
            )
        if store is not None:  # judged scope by scope: hot (or gone: skipped when next seen)
            self._hot_scopes(detector.name, states, store).update(dict.fromkeys(by_row))
        if detector.zero_fill:  # a quiet scope's windows count as zero: judge them
            if store is not None:
                alerts.extend(
                    self._judge_quiet_rows(
                        detector, store, states, progress, by_scope, bound, cold, breakdowns
                    )
                )
            else:
                quiet = [scope for scope in states if scope not in by_scope]
                for scope in quiet:
                    alerts.extend(self._judge_quiet(detector, states, progress, scope, bound))
        else:  # a quiet scope has nothing to judge: only the idle ones need finding
            self._expire_idle(detector.name, states, progress, by_scope, bound)
        cap = getattr(getattr(detector, "config", None), "max_scopes", None)
        if evict and cap is not None and len(states) > cap:
            self._forget_quietest(detector.name, cap)
        return alerts

    def _judge_scope(
        self,
        detector: WindowDetector,
        states: dict[tuple[str, ...], Any],
        progress: dict[tuple[str, ...], tuple[int, int]],
        scope: tuple[str, ...],
        windows: list[tuple[int, Totals]],
        bound: int,
        breakdowns: Mapping[tuple[tuple[str, ...], int], Mapping[str, Mapping[str, Totals]]],
    ) -> list[Alert]:
        """One scope's closed windows with data, in order, and the empty ones between them."""
        window = detector.aggregation.window
        ttl = self.plan.scope_idle_ttl
        alerts: list[Alert] = []
        state = states.get(scope)
        if state is None:
            state = states[scope] = detector.new_state()
        judged, last_data = progress.get(scope, (None, None))
        scope_map = _scope_map(detector.aggregation, scope)
        cursor = None if judged is None else judged + window
        for window_start, totals in [*windows, (bound, None)]:
            if cursor is not None and last_data is not None:
                if window_start - last_data > ttl:
                    _release(state)
                    state = states[scope] = detector.new_state()  # idle: start afresh
                elif detector.zero_fill and cursor < window_start:
                    # sums: windows without events count as zero
                    empty = range(cursor, window_start, window)
                    alerts.extend(self._observe_empty(detector, state, scope, scope_map, empty))
                    judged = empty[-1]
            if totals is None:
                break
            alerts.extend(
                self._observe(
                    detector,
                    state,
                    scope,
                    scope_map,
                    window_start,
                    totals,
                    breakdowns.get((scope, window_start)),
                )
            )
            judged = last_data = window_start
            cursor = window_start + window
        if last_data is not None and bound - last_data > ttl:
            self._drop_scope(detector.name, scope)
        else:
            progress[scope] = (judged, last_data)
            if not detector.zero_fill and last_data is not None:
                self._note_data(detector.name, scope, last_data)
        return alerts

    def _judge_quiet(
        self,
        detector: WindowDetector,
        states: dict[tuple[str, ...], Any],
        progress: dict[tuple[str, ...], tuple[int, int]],
        scope: tuple[str, ...],
        bound: int,
    ) -> list[Alert]:
        """A zero-filled scope without data before ``bound``: its empty windows, or forget it
        once idle for longer than ``scope_idle_ttl`` (what ``_judge_scope`` does for it)."""
        judged, last_data = progress.get(scope, (None, None))
        if judged is None or last_data is None:
            progress.setdefault(scope, (judged, last_data))  # nothing judged yet: nothing to do
            return []
        if bound - last_data > self.plan.scope_idle_ttl:
            self._drop_scope(detector.name, scope)
            return []
        empty = range(judged + detector.aggregation.window, bound, detector.aggregation.window)
        if not empty:
            return []
        scope_map = _scope_map(detector.aggregation, scope)
        alerts = self._observe_empty(detector, states[scope], scope, scope_map, empty)
        progress[scope] = (empty[-1], last_data)
        return alerts

    def _cold_with_data(
        self,
        detector: Any,
        store: Any,
        states: dict[tuple[str, ...], Any],
        progress: dict[tuple[str, ...], tuple[int, int]],
        by_scope: Mapping[tuple[str, ...], list[tuple[int, Totals]]],
    ) -> tuple[Mapping[tuple[str, ...], list[tuple[int, Totals]]], ColdData | None]:
        """Split a window's scopes with data: those on the store's roster with no gap before
        this window (judged as rows with the roster's step, ``_judge_roster``: a thin
        scope's window with events costs an array update, not a thaw, a Python judgement
        and a freeze) and the rest, scope by scope (the roster's progress of those written
        back: they leave it)."""
        window = detector.aggregation.window
        ttl = self.plan.scope_idle_ttl
        cold = ColdData()
        rest: dict[tuple[str, ...], list[tuple[int, Totals]]] = {}
        held_rows, judged_to, last_of = store.held, store.judged_to, store.last_data
        for scope, windows in by_scope.items():
            state = states.get(scope)
            held = None if state is None else state._cold
            if held is not None and held[0] is store and held_rows[held[1]]:
                row = held[1]
                judged, last_data = int(judged_to[row]), int(last_of[row])
                at = windows[0][0]
                if (
                    len(windows) == 1
                    and judged + window == at
                    and at - last_data <= ttl
                    and cold.start in (None, at)
                ):
                    cold.start = at
                    cold.rows.append(row)
                    cold.totals.append(windows[0][1])
                    cold.before.append((judged, last_data))
                    continue
                progress[scope] = (judged, last_data)  # it leaves the roster: scope by scope
            rest[scope] = windows
        if not cold.rows:
            return by_scope, None
        return rest, cold

    def _quiet_store(self, detector: WindowDetector) -> Any:
        """The rule's store of quiet scopes as rows, if it has one (and no tracer watches
        window by window)."""
        stores = self.quiet_stores
        if stores is None or self.tracer is not None or not hasattr(detector, "quiet_rows"):
            return None
        if detector.name not in stores:
            stores[detector.name] = self._adopt_rows(detector.name, detector.quiet_rows())
        return stores[detector.name]

    def _adopt_rows(self, rule: str, fresh: Any) -> Any:
        """The store a rule's rows live in: after a restore its cold scopes are rows of the
        snapshot's store, which becomes the rule's (its roster rebuilt from their progress,
        so they stay rows instead of each being thawed and frozen again at the first
        close); ``fresh`` where there is none or its layout is not the rule's."""
        if fresh is None:
            return None
        states = self.detector_states.get(rule, {})
        restored = next((s._cold[0] for s in states.values() if _cold_of(s) is not None), None)
        if restored is None or not restored.same_layout(fresh):
            return fresh
        progress = self._progress.get(rule, {})
        for scope, state in states.items():
            cold = _cold_of(state)
            judged, last_data = progress.get(scope, _UNJUDGED)
            if cold is not None and cold[0] is restored and None not in (judged, last_data):
                restored.hold(cold[1], scope, judged, last_data)
        return restored

    def _hot_scopes(self, rule: str, states: Mapping, store: Any) -> dict:
        """The rule's scopes not on its store's roster (built from the states the first
        time, e.g. after a restore, whose rows are in the snapshot's store, not this one)."""
        hot = self._hot.get(rule)
        if hot is None:
            held = store.held
            hot = self._hot[rule] = {
                scope: None
                for scope, state in states.items()
                if state._cold is None or state._cold[0] is not store or not held[state._cold[1]]
            }
        if store.thawed:  # rows that left the roster: their scopes are hot again
            hot.update(dict.fromkeys(store.thawed))
            store.thawed.clear()
        return hot

    def _judge_quiet_rows(
        self,
        detector: Any,
        store: Any,
        states: dict[tuple[str, ...], Any],
        progress: dict[tuple[str, ...], tuple[int, int]],
        by_scope: Mapping[tuple[str, ...], Any],
        bound: int,
        cold: ColdData | None = None,
        breakdowns: Mapping[tuple[tuple[str, ...], int], Mapping[str, Mapping[str, Totals]]]
        | None = None,
    ) -> list[Alert]:
        """The quiet scopes of a rule with rows, and its roster's scopes with data in this
        window (``cold``): the roster's in array steps without visiting them
        (``_judge_roster``); of the others (hot), those quiet for
        ``quiet_windows`` a window at a time across scopes (``observe_quiet``, which
        freezes them: they join the roster), the rest (and whatever the rows hand back)
        scope by scope, exactly as ``_judge_quiet`` would."""
        alerts = self._judge_roster(detector, store, states, progress, bound, cold, breakdowns)
        window = detector.aggregation.window
        oldest = bound - self.plan.scope_idle_ttl  # idle: last data before this
        settled = detector.quiet_windows * window
        runs: dict[int, tuple[list, list, list]] = {}  # first empty window -> scopes
        by_scope_judged: list[tuple[str, ...]] = []  # scope by scope, after the scan
        get = progress.get
        run_first, run = None, None
        hot = self._hot_scopes(detector.name, states, store)
        gone = []
        for scope in hot:
            state = states.get(scope)
            if state is None:
                gone.append(scope)
                continue
            if scope in by_scope:
                continue
            judged, last_data = get(scope, _UNJUDGED)
            if judged is None or last_data is None or last_data < oldest:
                by_scope_judged.append(scope)
                continue
            first = judged + window
            if first >= bound:
                continue
            if first - last_data < settled and state._cold is None:
                # busy a moment ago, and hot: scope by scope
                by_scope_judged.append(scope)
                continue
            if first != run_first:
                run = runs.get(first)
                if run is None:
                    run = runs[first] = ([], [], [])
                run_first = first
            run[0].append(scope)
            run[1].append(state)
            run[2].append(last_data)
        for scope in gone:
            del hot[scope]
        for scope in by_scope_judged:
            alerts.extend(self._judge_quiet(detector, states, progress, scope, bound))
        for first, (scopes, group, lasts) in runs.items():
            starts = range(first, bound, window)
            for start in starts:
                for position in detector.observe_quiet(store, group, start):
                    scope_map = _scope_map(detector.aggregation, scopes[position])
                    alerts.extend(detector.observe_empty(group[position], scope_map, (start,)))
            progress.update(zip(scopes, zip(repeat(starts[-1]), lasts), strict=True))
            for scope, state, last_data in zip(scopes, group, lasts, strict=True):
                cold = state._cold
                if cold is not None and cold[0] is store:  # frozen: onto the roster
                    store.hold(cold[1], scope, starts[-1], last_data)
                    del hot[scope]
        return alerts

    def _judge_roster(
        self,
        detector: Any,
        store: Any,
        states: dict[tuple[str, ...], Any],
        progress: dict[tuple[str, ...], tuple[int, int]],
        bound: int,
        cold: ColdData | None,
        breakdowns: Mapping[tuple[tuple[str, ...], int], Mapping[str, Mapping[str, Totals]]] | None,
    ) -> list[Alert]:
        """The windows before ``bound`` of the scopes on the store's roster, window by window
        as array steps over their rows (the last with the events of ``cold``): no scope is
        visited but those forgotten as idle, those a step hands back (judged scope by
        scope from there: hot) and the driver mixes of those with data."""
        window = detector.aggregation.window
        alerts: list[Alert] = []
        if cold is not None:  # (they have data now: not idle)
            store.last_data[cold.rows] = cold.start
        rows = np.flatnonzero(store.held)
        if not rows.size:
            return alerts
        idle = rows[store.last_data[rows] < bound - self.plan.scope_idle_ttl]
        for row in idle.tolist():  # forgotten as ``_judge_quiet`` forgets them
            scope = store.scope_at[row]
            progress[scope] = (int(store.judged_to[row]), int(store.last_data[row]))
            alerts.extend(self._judge_quiet(detector, states, progress, scope, bound))
        if idle.size:
            rows = rows[store.held[rows]]
        rows = rows[store.judged_to[rows] < bound - window]
        if not rows.size:
            return alerts
        for start in range(int(store.judged_to[rows].min()) + window, bound, window):
            due = rows[store.judged_to[rows] < start]
            if not due.size:
                continue
            data = None
            if cold is not None and start == cold.start:
                at = np.full(store.size, -1, dtype=np.int64)
                at[cold.rows] = np.arange(len(cold.rows))
                found = at[due]
                data = (np.flatnonzero(found >= 0), [cold.totals[k] for k in found[found >= 0]])
            failed, learning = detector.observe_rows(store, due, start, data)
            store.judged_to[due] = start
            for position in failed.tolist():  # scope by scope from here (thawed: hot)
                row = int(due[position])
                scope = store.scope_at[row]
                state = states[scope]
                store.thaw(state)
                k = -1 if data is None else int(found[position])
                if k >= 0:  # its window with events, as if it had never been a row
                    progress[scope] = cold.before[k]
                    windows = [(start, cold.totals[k])]
                    alerts.extend(
                        self._judge_scope(
                            detector, states, progress, scope, windows, bound, breakdowns or {}
                        )
                    )
                    continue
                alerts.extend(
                    detector.observe_empty(
                        state,
                        _scope_map(detector.aggregation, scope),
                        range(start, bound, window),
                    )
                )
                progress[scope] = (bound - window, int(store.last_data[row]))
            if failed.size:
                rows = rows[store.held[rows]]
            if data is not None and detector.drivers and breakdowns:
                self._learn_driver_mixes(detector, store, due, data, learning, start, breakdowns)
        return alerts  # (their progress stays in the roster's arrays: ``sync_progress``)

    def _learn_driver_mixes(
        self,
        detector: Any,
        store: Any,
        due: np.ndarray,
        data: tuple[np.ndarray, list[Totals]],
        learning: np.ndarray,
        start: int,
        breakdowns: Mapping[tuple[tuple[str, ...], int], Mapping[str, Mapping[str, Totals]]],
    ) -> None:
        """The driver mixes of the roster's scopes whose window with events a step judged:
        what ``_observe`` learns after a window that did not fire."""
        alpha = _driver_alpha(detector)
        metric = detector.config.metric
        held = store.held
        for position in data[0].tolist():
            row = int(due[position])
            if not held[row] or not learning[position]:  # handed back, or not learning
                continue
            scope = store.scope_at[row]
            breakdown = breakdowns.get((scope, start))
            if breakdown:
                driver_mix.learn(self._driver_mix(detector.name, scope), breakdown, metric, alpha)

    def _observe_empty(
        self,
        detector: WindowDetector,
        state: Any,
        scope: tuple[str, ...],
        scope_map: Mapping[str, str],
        starts: range,
    ) -> list[Alert]:
        """Windows without events of one scope: one detector call for the run (per window
        while a tracer records each); an empty window has no breakdown to learn from."""
        if self.tracer is None:
            return detector.observe_empty(state, scope_map, starts)
        alerts: list[Alert] = []
        for start in starts:
            alerts.extend(self._observe(detector, state, scope, scope_map, start, ZERO, None))
        return alerts

    def _drop_scope(self, rule: str, scope: tuple[str, ...]) -> None:
        _release(self.detector_states.get(rule, {}).pop(scope, None))
        self._progress.get(rule, {}).pop(scope, None)
        self.driver_states.get(rule, {}).pop(scope, None)

    # Rules that do not zero-fill judge only the scopes with data; their idle scopes are
    # found by a heap of (last data window, scope) per rule instead of a scan of all of
    # them at every close. The heap is derived from ``detector_progress`` (rebuilt from it
    # after a restore, and whenever stale entries make it twice the size of the rule's
    # scopes): an entry counts only while it is the scope's last data window.

    def _idle_heap(self, rule: str) -> list[tuple[int, tuple[str, ...]]]:
        heap = self._idle.get(rule)
        if heap is None:
            progress = self._progress.get(rule, {})
            heap = [(last, scope) for scope, (_, last) in progress.items() if last is not None]
            heapq.heapify(heap)
            self._idle[rule] = heap
        return heap

    def _note_data(self, rule: str, scope: tuple[str, ...], last_data: int) -> None:
        heap = self._idle_heap(rule)
        heapq.heappush(heap, (last_data, scope))
        if len(heap) > 2 * len(self._progress.get(rule, ())) + 64:
            del self._idle[rule]  # mostly stale: rebuild from progress

    def _expire_idle(
        self,
        rule: str,
        states: dict[tuple[str, ...], Any],
        progress: dict[tuple[str, ...], tuple[int, int]],
        by_scope: Mapping[tuple[str, ...], Any],
        bound: int,
    ) -> None:
        """Forget the scopes of a rule without data for longer than ``scope_idle_ttl``."""
        heap = self._idle_heap(rule)
        oldest = bound - self.plan.scope_idle_ttl  # idle: last data before this
        while heap and heap[0][0] < oldest:
            last, scope = heapq.heappop(heap)
            if scope in by_scope or progress.get(scope, (None, None))[1] != last:
                continue  # stale: the scope has had data since (or is gone)
            self._drop_scope(rule, scope)

    def _forget_quietest(self, rule: str, cap: int) -> None:
        """Keep a rule's scopes within ``cap``: forget those quiet longest, down to 90 %.

        Deterministic (ties go by scope), so a replay forgets what a live run forgot.
        """
        self.sync_progress()  # (the quietest are likely on a roster)
        states, progress = self.detector_states[rule], self._progress[rule]
        drivers = self.driver_states.get(rule, {})

        def last_seen(scope: tuple[str, ...]) -> tuple[float, tuple[str, ...]]:
            last_data = progress.get(scope, (None, None))[1]
            return (-math.inf if last_data is None else last_data, scope)

        keep = max(int(cap * 0.9), 1)
        for scope in heapq.nsmallest(len(states) - keep, states, key=last_seen):
            _release(states.pop(scope))
            progress.pop(scope, None)
            drivers.pop(scope, None)
            self.counters.evicted_scopes += 1

    def _judge_peers(
        self, detector: GroupDetector, by_scope: Mapping[tuple[str, ...], list[tuple[int, Totals]]]
    ) -> list[Alert]:
        """Peer-group detectors see all members of a group per window, in window order."""
        k = detector.peer_dims
        groups: dict[tuple[str, ...], dict[int, dict[tuple[str, ...], Totals]]] = {}
        for scope, windows in by_scope.items():
            per_window = groups.setdefault(scope[:k], {})
            for window_start, totals in windows:
                per_window.setdefault(window_start, {})[scope[k:]] = totals
        states = self.detector_states.setdefault(detector.name, {})
        alerts: list[Alert] = []
        peer_names, member_names = detector.aggregation.dims[:k], detector.aggregation.dims[k:]
        for group in sorted(set(groups) | set(states)):
            state = states.get(group)
            if state is None:
                state = states[group] = detector.new_state()
            peers = dict(zip(peer_names, group, strict=True))
            for window_start, members in sorted(groups.get(group, {}).items()):
                if self.tracer is not None:
                    for member, seen in detector.explain_group(members, state).items():
                        scope_map = {**peers, **dict(zip(member_names, member, strict=True))}
                        self.tracer(detector, scope_map, window_start, members[member], seen)
                alerts.extend(detector.observe_group(state, peers, window_start, members))
            if not detector.keep_state(state):
                del states[group]
        return alerts

    def _late(
        self, aggregation: Aggregation, scope: tuple[str, ...], window_start: int, totals: Totals
    ) -> list[Alert]:
        """A window that already closed: budgets still count it, detectors cannot."""
        alerts: list[Alert] = []
        budgets = self.plan.budgets_by_aggregation[aggregation]
        for rule in budgets:
            if rule.allocation is not None:
                alerts.extend(self._late_allocated(rule, scope, window_start, totals))
                continue
            states = self.budget_states.setdefault(rule.name, {})
            state = states.get(scope)
            if state is None:
                state = states[scope] = rule.new_state()
            alerts.extend(
                rule.add(state, _scope_map(aggregation, scope), window_start, totals.spend_nanos)
            )
        if self.plan.detectors_by_aggregation[aggregation]:
            self.counters.late_events += totals.events
        return alerts

    # -- series and run-time settings ---------------------------------------------------------

    def _record_series(
        self,
        aggregation: Aggregation,
        by_scope: Mapping[tuple[str, ...], list[tuple[int, Totals]]],
        bound: int,
    ) -> None:
        """Append the closed windows of a rule aggregation to each scope's recent series."""
        horizon = self.plan.series_horizon
        if horizon <= 0 or aggregation not in self.plan.judged:
            return
        step = self.plan.series_step(aggregation)
        keep = max(1, horizon // step) * SERIES_FIELDS
        series = self.series.setdefault(aggregation, {})
        for scope, windows in by_scope.items():
            points = series.get(scope)
            if points is None:
                points = series[scope] = array("q")
            for window_start, totals in windows:
                start = window_start - window_start % step
                try:
                    _append_point(points, start, totals)
                except OverflowError:  # sums past int64 stay exact as Python integers
                    points = series[scope] = list(points)
                    _append_point(points, start, totals)
            if len(points) > keep:
                del points[: len(points) - keep]
        if by_scope:
            self.series_version += 1
        # The horizon is event time, not a number of steps: a scope with data in only a
        # few windows a day would otherwise keep a step count's worth, weeks of them.
        cutoff = bound - horizon
        quiet = []
        for scope, points in series.items():
            if not points or points[-SERIES_FIELDS] < cutoff:
                quiet.append(scope)
                continue
            old = 0
            while points[old] < cutoff:
                old += SERIES_FIELDS
            if old:
                del points[:old]
                self.series_version += 1
        for scope in quiet:
            del series[scope]
        cap = self.plan.series_max_scopes
        if len(series) > cap:
            by_last = sorted(series, key=lambda s: (series[s][-SERIES_FIELDS], s))
            for scope in by_last[: len(series) - max(int(cap * 0.9), 1)]:
                del series[scope]

    def sync_budget_overrides(self, shared: dict[str, dict[str, tuple[float, float]]]) -> bool:
        """Merge run-time budget amounts both ways with the process's ``shared`` ones (the
        latest setting of each wins) and apply them; whether this engine's changed."""
        changed = False
        names = {rule.name for rule in self.plan.budgets}
        for name in names:
            mine = self.budget_overrides.get(name, {})
            theirs = shared.setdefault(name, {})
            for key, setting in theirs.items():
                if key not in mine or mine[key][1] < setting[1]:
                    mine[key] = setting
                    changed = True
            for key, setting in mine.items():
                if key not in theirs or theirs[key][1] < setting[1]:
                    theirs[key] = setting
            if mine:
                self.budget_overrides[name] = mine
        apply_budget_overrides(self.plan, self.budget_overrides)
        return changed

    # -- recovery ----------------------------------------------------------------------------

    @property
    def detector_progress(self) -> dict[str, dict[tuple[str, ...], tuple[int, int]]]:
        """Per rule, scope -> (last window judged, last window with data): what a snapshot
        keeps and the query API shows (complete: the rosters' progress written in)."""
        self.sync_progress()
        return self._progress

    def sync_progress(self) -> None:
        """Write the progress of the scopes on the stores' rosters (kept there as arrays
        while they are cold: a close does not visit them) into the per-scope progress, for
        what reads it whole: a snapshot, the query API, eviction."""
        for rule, store in (self.quiet_stores or {}).items():
            if store is None:
                continue
            rows = np.flatnonzero(store.held)
            scope_at = store.scope_at
            self._progress.setdefault(rule, {}).update(
                zip(
                    [scope_at[row] for row in rows.tolist()],
                    zip(
                        store.judged_to[rows].tolist(), store.last_data[rows].tolist(), strict=True
                    ),
                    strict=True,
                )
            )

    def snapshot(self) -> bytes:
        """An immutable copy of the whole shard state (pickled bytes)."""
        return pickle.dumps(
            {
                "rules": self.plan.signatures(),
                "max_ts": self.max_ts,
                "partition_max": self.partition_max,
                "open": self.open,
                "closed_before": self.closed_before,
                "detector_states": self.detector_states,
                "detector_progress": self.detector_progress,
                "budget_states": self.budget_states,
                "allocation_shares": self.allocation_shares,
                "driver_states": self.driver_states,
                "counters": (self.counters.windows_closed, self.counters.evicted_scopes),
                "allocation_tally": {
                    name: tally.as_list() for name, tally in self.counters.allocation.items()
                },
                "series": self.series,
                "budget_overrides": self.budget_overrides,
            },
            protocol=pickle.HIGHEST_PROTOCOL,
        )

    def _restore(self, snapshot: bytes) -> None:
        try:
            state = pickle.loads(snapshot)
        except Exception as error:  # any layout this version cannot read: say what to do
            raise SnapshotError(
                f"cannot restore a shard's state snapshot ({type(error).__name__}: {error}); "
                "it was written by an incompatible spendwatch version: run the version that "
                "wrote it, or start from an empty state directory (--state-dir) to relearn "
                "baselines from the input"
            ) from error
        self.max_ts = state["max_ts"]
        self.partition_max = state.get("partition_max", {})
        self.open = state["open"]
        self.closed_before = state["closed_before"]
        self.detector_states = state["detector_states"]
        self._progress = state["detector_progress"]
        self.budget_states = state["budget_states"]
        self.driver_states = state.get("driver_states", {})
        self.series = state.get("series", {})
        self.budget_overrides = state.get("budget_overrides", {})
        windows, evicted = state.get("counters", (0, 0))
        self.counters = EngineCounters(windows_closed=windows, evicted_scopes=evicted)
        self.allocation_shares = state.get("allocation_shares", {})
        for name, counts in state.get("allocation_tally", {}).items():
            self.counters.allocation[name] = AllocationTally(*counts)
        self._reconcile(state.get("rules"))

    def _reconcile(self, saved: dict[str, tuple] | None) -> None:
        """Drop state the current plan cannot use, keep every unchanged rule's state.

        A config reload restores the snapshot of the previous config: removed rules and
        aggregations nobody uses any more are dropped, a rule whose state-relevant
        settings changed starts afresh, and added rules start empty.
        """
        current = self.plan.signatures()
        for states in (
            self.detector_states,
            self._progress,
            self.driver_states,
            self.budget_states,
            self.allocation_shares,
            self.counters.allocation,
        ):
            for name in list(states):
                if name not in current or (
                    saved is not None and _learned(saved.get(name)) != _learned(current[name])
                ):
                    del states[name]
        for aggregation in [a for a in self.open if a not in self.plan.aggregations]:
            del self.open[aggregation]
        for aggregation in [a for a in self.series if a not in self.plan.judged]:
            del self.series[aggregation]
        budgets = {b.name for b in self.plan.budgets}
        for name in [n for n in self.budget_overrides if n not in budgets]:
            del self.budget_overrides[name]
        for aggregation in [a for a in self.closed_before if a not in self.plan.aggregations]:
            del self.closed_before[aggregation]


SERIES_FIELDS = 1 + SUM_FIELDS  # the window start and the integer sums


@dataclass
class ColdData:
    """A window's events of scopes on a store's roster: judged with the roster's step."""

    start: int | None = None
    rows: list[int] = field(default_factory=list)
    totals: list[Totals] = field(default_factory=list)
    before: list[tuple[int, int]] = field(default_factory=list)  # their progress until now


def _driver_alpha(detector: Any) -> float:
    """How fast a rule's driver mixes learn: its own history's memory (8 windows without)."""
    return 1.0 / getattr(detector.config, "history", 8)


def _cold_of(state: Any) -> Any:
    """(store, row) of a state held as a row, else ``None`` (any detector's state)."""
    return getattr(state, "_cold", None)


def _release(state: Any) -> None:
    """A forgotten scope's row (if it is one) goes back to its store now, not whenever the
    state object is collected: the store's roster must not judge a scope that is gone."""
    cold = _cold_of(state)
    if cold is not None:
        state._cold = None
        cold[0].release(cold[1])


def _by_window(
    by_scope: Mapping[tuple[str, ...], list[tuple[int, Totals]]], bound: int, window: int
) -> list[tuple[int, dict[tuple[str, ...], list[tuple[int, Totals]]]]]:
    """A close's windows with data as (end, scope -> [(start, totals)]) in window order, and
    the close's own bound last (with nothing, if no window ends there)."""
    starts: dict[int, dict[tuple[str, ...], list[tuple[int, Totals]]]] = {}
    for scope, windows in by_scope.items():
        for start, totals in windows:
            starts.setdefault(start, {})[scope] = [(start, totals)]
    out = [(start + window, starts[start]) for start in sorted(starts)]
    if not out or out[-1][0] < bound:
        out.append((bound, {}))
    return out


def _append_point(points: Any, start: int, totals: Totals) -> None:
    """Add a window to the last step of ``points`` if it is the same step, else append one."""
    totals = totals[:SUM_FIELDS]
    if points and points[-SERIES_FIELDS] == start:
        base = len(points) - SERIES_FIELDS + 1
        sums = [points[base + i] + value for i, value in enumerate(totals)]
        points[base:] = type(points)("q", sums) if isinstance(points, array) else sums
    elif isinstance(points, array):
        points.extend(array("q", (start, *totals)))  # raises before changing ``points``
    else:
        points.extend((start, *totals))


def apply_budget_overrides(
    plan: EnginePlan, overrides: Mapping[str, Mapping[str, tuple[float, float]]]
) -> None:
    """Give the plan's budgets the amounts set at run time (``PUT /budgets/NAME/SCOPE``).

    ``*`` replaces the default amount, any other key the amount of one scope_by value.
    The configured amounts stay underneath: an amount set at run time is kept in the
    recovered state, so it outlives restarts and reloads of the config."""
    for rule in plan.budgets:
        base = getattr(rule, "configured", None)
        if base is None:
            base = rule.configured = rule.config
        runtime = overrides.get(rule.name, {})
        if not runtime:
            rule.config = base
            continue
        update: dict[str, Any] = {}
        if "*" in runtime:
            update["amount_usd"] = runtime["*"][0]
        scoped = {key: amount for key, (amount, _) in runtime.items() if key != "*"}
        if scoped:
            update["overrides"] = {**base.overrides, **scoped}
        rule.config = base.model_copy(update=update)


def _scope_map(aggregation: Aggregation, scope: tuple[str, ...]) -> dict[str, str]:
    return dict(zip(aggregation.dims, scope, strict=True))
