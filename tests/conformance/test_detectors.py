"""Conformance suite for every registered detector type (``detectors:`` entries).

Each type gets a harness: a rule config and a stream of closed windows with a planted
incident. The same properties are then checked for all of them, through the engine
that runs them in production: a snapshot restores to exactly the same future, the
batching of windows changes nothing, ``explain`` reads without writing, no clock or I/O
is touched, and cold scopes and all-zero histories are ordinary input. A type
registered without a harness fails the first test.
"""

from __future__ import annotations

import builtins
import copy
import math
import pickle
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pytest

from spendwatch.config import SpendwatchConfig
from spendwatch.dataflows.engine import EnginePlan, ShardEngine
from spendwatch.detectors.base import (
    DETECTOR_TYPES,
    ZERO,
    GroupDetector,
    Totals,
    WindowDetector,
)
from spendwatch.detectors.registry import build_detector

T0 = 1_794_787_200  # 2026-11-16T00:00:00Z, a Monday
WINDOW = 900
DAY = 86400
NANOS = 1_000_000_000

Window = tuple[tuple[str, ...], int, Totals]  # (scope values, window start, totals)


@dataclass(frozen=True)
class Harness:
    rule: dict
    stream: Callable[[np.random.Generator], list[Window]]


def _diurnal(hour: float) -> float:
    return 0.35 + 0.65 * math.exp(-(((hour - 14) / 4) ** 2))


def _spend_stream(rng: np.random.Generator, days: int = 4, spike_day: float = 3.5) -> list[Window]:
    """Two tenants' spend with a daily cycle; ``acme`` spikes ×10 for two hours."""
    out: list[Window] = []
    for start in range(T0, T0 + days * DAY, WINDOW):
        hour = (start - T0) % DAY / 3600
        for tenant, scale in (("acme", 40), ("globex", 15)):
            factor = 10 if tenant == "acme" and 0 <= start - T0 - spike_day * DAY < 7200 else 1
            requests = int(rng.poisson(scale * _diurnal(hour) * factor)) + 1
            cost = int(requests * rng.uniform(0.9, 1.1) * 0.002 * NANOS)
            out.append(
                ((tenant,), start, Totals(cost, requests, requests * 900, requests * 300, requests))
            )
    return out


def _unit_stream(rng: np.random.Generator) -> list[Window]:
    """Steady requests whose output tokens per request rise ×5 on the last half day."""
    out: list[Window] = []
    for start in range(T0, T0 + 4 * DAY, WINDOW):
        hour = (start - T0) % DAY / 3600
        regression = 5 if start - T0 >= 3.5 * DAY else 1
        for tenant in ("acme", "globex"):
            requests = int(rng.poisson(60 * _diurnal(hour))) + 5
            tokens = int(requests * 300 * regression * rng.uniform(0.9, 1.1))
            cost = int((requests * 900 + tokens * 2) * 1e-6 * NANOS)
            out.append(((tenant,), start, Totals(cost, requests, requests * 900, tokens, requests)))
    return out


def _session_stream(rng: np.random.Generator) -> list[Window]:
    """Sessions of two tenants making a few calls each; one session loops for an hour."""
    out: list[Window] = []
    for start in range(T0, T0 + DAY, WINDOW):
        for tenant in ("acme", "globex"):
            for s in range(int(rng.integers(20, 40))):
                calls = int(rng.geometric(0.5))
                session = f"{tenant}-{start}-{s}"
                out.append(((tenant, session), start, Totals(calls * 10**6, calls, 0, 0, calls)))
            if tenant == "acme" and 12 * 3600 <= start - T0 < 13 * 3600:
                out.append(((tenant, "loop"), start, Totals(80 * 10**6, 80, 0, 0, 80)))
    return out


def _model_stream(rng: np.random.Generator) -> list[Window]:
    """Two tenants on a cheap model for three days; ``acme`` then moves to a dear one."""
    out: list[Window] = []
    for start in range(T0, T0 + 4 * DAY, WINDOW):
        for tenant in ("acme", "globex"):
            dear = tenant == "acme" and start - T0 >= 3 * DAY
            model, price = ("big", 4e-6) if dear else ("mini", 1e-6)
            requests = int(rng.poisson(3)) + 1
            tokens = int(rng.lognormal(6.0, 1.0, requests).sum())
            out.append(
                (
                    (tenant, model),
                    start,
                    Totals(int(tokens * price * NANOS), requests, tokens // 2, tokens // 2, 1),
                )
            )
    return out


def _commitment_stream(rng: np.random.Generator) -> list[Window]:
    """Two commitments' hourly cost by status; ``ri-1`` goes half unused on day 3."""
    out: list[Window] = []
    for start in range(T0, T0 + 4 * DAY, 3600):
        for commitment in ("ri-1", "ri-2"):
            idle = commitment == "ri-1" and 2 * DAY <= start - T0 < 3 * DAY
            used = int(NANOS * rng.uniform(0.9, 1.1))
            out.append(((commitment, "Used"), start, Totals(used, 1, 0, 0, 1)))
            if idle:
                out.append(((commitment, "Unused"), start, Totals(used, 1, 0, 0, 1)))
    return out


def _users_stream(rng: np.random.Generator) -> list[Window]:
    """Two tenants' users per hour for 15 days; ``acme``'s users fall to a fifth in the
    second week while its spend holds (a zombie feature)."""
    out: list[Window] = []
    for start in range(T0, T0 + 15 * DAY, 3600):
        for tenant in ("acme", "globex"):
            late = tenant == "acme" and start - T0 >= 7 * DAY
            users = 4 if late else 20
            for u in range(users):
                cost = int(NANOS * rng.uniform(0.9, 1.1) * (5 if late else 1) / 100)
                out.append(((tenant, f"u{u}"), start, Totals(cost, 1, 0, 0, 1)))
    return out


def _untagged_stream(rng: np.random.Generator) -> list[Window]:
    """Two tenants' spend per service for 17 days; untagged batch spend appears in week 2."""
    out: list[Window] = []
    for start in range(T0, T0 + 17 * DAY, 3600):
        week_two = 7 * DAY <= start - T0 < 14 * DAY
        for tenant, service in (("acme", "api"), ("globex", "api"), ("unattributed", "batch")):
            if tenant == "unattributed" and not week_two:
                continue
            cost = int(NANOS * rng.uniform(0.9, 1.1))
            out.append(((tenant, service), start, Totals(cost, 1, 0, 0, 1)))
    return out


HARNESSES: dict[str, Harness] = {
    "robust_seasonal": Harness(
        {"name": "r", "type": "robust_seasonal", "scope": ["tenant"], "window": "15m"},
        _spend_stream,
    ),
    "seasonal_zscore": Harness(
        {"name": "r", "type": "seasonal_zscore", "scope": ["tenant"], "window": "15m"},
        _spend_stream,
    ),
    "river": Harness(
        {
            "name": "r",
            "type": "river",
            "scope": ["tenant"],
            "window": "15m",
            "model": "anomaly.HalfSpaceTrees",
            "params": {"n_trees": 5, "height": 6, "window_size": 48, "seed": 7},
        },
        _spend_stream,
    ),
    "unit_cost": Harness(
        {
            "name": "r",
            "type": "unit_cost",
            "scope": ["tenant"],
            "window": "15m",
            "metric": "output_tokens_per_request",
        },
        _unit_stream,
    ),
    "agent_loop": Harness(
        {"name": "r", "type": "agent_loop", "scope": ["session"], "peers": ["tenant"]},
        _session_stream,
    ),
    "fan_out": Harness(
        {
            "name": "r",
            "type": "fan_out",
            "scope": ["session"],
            "peers": ["tenant"],
            "design_by": "tenant",
            "expected": {"*": 4},
        },
        _session_stream,
    ),
    "unit_margin": Harness(
        {
            "name": "r",
            "type": "unit_margin",
            "scope": ["tenant"],
            "value_by": "tenant",
            "value_per_request": {"*": 0.0025},
            "fixed_usd_per_month": {"acme": 500},
            "window": "15m",
            "min_elapsed": "12h",
        },
        _spend_stream,
    ),
    "idle_commitment": Harness(
        {"name": "r", "type": "idle_commitment", "window": "1h"}, _commitment_stream
    ),
    "zombie": Harness(
        {"name": "r", "type": "zombie", "scope": ["user"], "peers": ["tenant"]}, _users_stream
    ),
    "unattributed": Harness(
        {"name": "r", "type": "unattributed", "scope": [], "window": "1h", "min_cost_usd": 1},
        _untagged_stream,
    ),
    "new_value": Harness(
        {"name": "r", "type": "new_value", "scope": ["tenant"], "dimension": "model"},
        _model_stream,
    ),
}


def test_every_registered_detector_type_has_a_harness():
    assert set(DETECTOR_TYPES) == set(HARNESSES)


@pytest.fixture(params=sorted(DETECTOR_TYPES))
def harness(request) -> tuple[str, Harness]:
    return request.param, HARNESSES[request.param]


def _plan(rule: dict) -> EnginePlan:
    config = SpendwatchConfig.model_validate({"detectors": [rule]})
    return EnginePlan.from_config(config)


def _messages(plan: EnginePlan, windows: list[Window], per: int) -> Iterator[tuple]:
    """The windows as engine messages of ``per`` distinct window starts each, in order."""
    detector = plan.detectors[0]
    index = plan.aggregations.index(detector.aggregation)
    window = detector.aggregation.window
    starts = sorted({w[1] for w in windows})
    by_start: dict[int, list[Window]] = {}
    for w in windows:
        by_start.setdefault(w[1], []).append(w)
    for i in range(0, len(starts), per):
        chunk = starts[i : i + per]
        rows = [(index, scope, ws, *totals) for ws in chunk for scope, _, totals in by_start[ws]]
        yield chunk[-1] + window, rows  # the stream time: the chunk's last window has ended


def _run(plan: EnginePlan, windows: list[Window], per: int = 1, engine=None) -> list:
    engine = engine or ShardEngine(plan)
    alerts = []
    for max_ts, rows in _messages(plan, windows, per):
        alerts.extend(engine.on_message(max_ts, rows))
    return [*alerts, *engine.flush()]


def _key(alerts: list) -> list[str]:
    """Alerts as comparable text; order across scopes closed together is not part of it."""
    return sorted(a.model_dump_json(exclude={"detected_at"}) for a in alerts)


def test_the_harness_stream_fires(harness):
    _, h = harness
    alerts = _run(_plan(h.rule), h.stream(np.random.default_rng(1)))
    assert any(a.status == "firing" for a in alerts), "a harness must exercise alerting"


def test_a_snapshot_restores_exactly_the_same_future(harness):
    _, h = harness
    plan, windows = _plan(h.rule), h.stream(np.random.default_rng(2))
    whole = _run(plan, windows)
    cut = sorted({w[1] for w in windows})[len({w[1] for w in windows}) * 2 // 3]
    first = ShardEngine(plan)
    early = [w for w in windows if w[1] < cut]
    alerts = []
    for max_ts, rows in _messages(plan, early, 1):
        alerts.extend(first.on_message(max_ts, rows))
    restored = ShardEngine(plan, snapshot=first.snapshot())
    late = [w for w in windows if w[1] >= cut]
    alerts.extend(_run(plan, late, engine=restored))
    assert _key(alerts) == _key(whole)


@pytest.mark.parametrize("per", [4, 96])
def test_batching_of_the_same_windows_changes_no_alert(harness, per):
    _, h = harness
    plan, windows = _plan(h.rule), h.stream(np.random.default_rng(3))
    assert _key(_run(plan, windows, per=per)) == _key(_run(plan, windows, per=1))


def test_explain_reads_without_writing(harness):
    """``explain`` before a window is observed describes it and changes no state."""
    _, h = harness
    detector = build_detector(SpendwatchConfig.model_validate({"detectors": [h.rule]}).detectors[0])
    windows = h.stream(np.random.default_rng(4))
    explained = 0
    if isinstance(detector, GroupDetector):
        state = detector.new_state()
        groups: dict[tuple, dict[int, dict[tuple, Totals]]] = {}
        k = detector.peer_dims
        for scope, ws, totals in windows:
            groups.setdefault(scope[:k], {}).setdefault(ws, {})[scope[k:]] = totals
        for group, per_window in groups.items():
            for ws, members in sorted(per_window.items()):
                before = pickle.dumps(state)
                seen = detector.explain_group(members)
                assert pickle.dumps(state) == before
                for values in seen.values():
                    assert math.isfinite(values["value"]) and math.isfinite(values["expected"])
                    explained += 1
                peers = dict(zip(detector.aggregation.dims[:k], group, strict=True))
                detector.observe_group(state, peers, ws, members)
    else:
        assert isinstance(detector, WindowDetector)
        states: dict[tuple, object] = {}
        for scope, ws, totals in windows:
            state = states.setdefault(scope, detector.new_state())
            before = pickle.dumps(state)
            seen = detector.explain(state, ws, totals)
            assert pickle.dumps(state) == before, "explain must not learn"
            if seen is not None:
                assert math.isfinite(seen["value"]) and math.isfinite(seen["expected"])
                explained += 1
            detector.observe(
                state, dict(zip(detector.aggregation.dims, scope, strict=True)), ws, totals
            )
            after = detector.explain(state, ws + detector.aggregation.window, totals)
            assert after is None or math.isfinite(after["expected"])
    assert explained > 0, "a warm detector explains its windows"


def test_no_clock_and_no_io(harness, monkeypatch):
    """Detectors are pure: event time only, nothing read or written while judging."""
    _, h = harness
    plan, windows = _plan(h.rule), h.stream(np.random.default_rng(5))
    expected = _key(_run(plan, windows))

    def forbidden(*args, **kwargs):
        raise AssertionError("a detector touched the clock or I/O")

    class NoClock(datetime):
        now = utcnow = today = classmethod(forbidden)

    plan = _plan(h.rule)  # built before the clock goes away (river imports models)
    with monkeypatch.context() as patch:
        for name in ("time", "monotonic", "perf_counter", "time_ns"):
            patch.setattr(time, name, forbidden)
        patch.setattr("datetime.datetime", NoClock)
        patch.setattr(builtins, "open", forbidden)
        patch.setattr(socket, "socket", forbidden)
        observed = _key(_run(plan, windows))
    assert observed == expected


def test_a_cold_scope_and_an_all_zero_history_are_ordinary_input(harness):
    """A scope seen first mid-stream, and one whose history is all zeros, give only
    well-formed alerts (finite values, no division by an empty baseline)."""
    name, h = harness
    plan = _plan(h.rule)
    windows = h.stream(np.random.default_rng(6))
    last = max(w[1] for w in windows)
    dims = len(windows[0][0])
    cold = tuple(f"cold-{i}" for i in range(dims))
    zero = tuple(f"zero-{i}" for i in range(dims))
    extra: list[Window] = []
    for _, ws, _ in windows:
        if ws == last:
            extra.append((cold, ws, Totals(50 * NANOS, 500, 10**6, 10**6, 500)))
    for ws in sorted({w[1] for w in windows}):
        totals = Totals(0, 1, 0, 0, 1) if ws < last else Totals(5 * NANOS, 40, 10**5, 10**5, 40)
        extra.append((zero, ws, totals))
    alerts = _run(plan, [*windows, *extra])
    for alert in alerts:
        for value in (alert.observed, alert.expected, alert.score):
            assert value is None or math.isfinite(value), (name, alert)
        assert alert.status in ("firing", "resolved")
    assert copy.deepcopy(alerts) == alerts


@pytest.mark.parametrize("kind", ["robust_seasonal", "unit_cost", "seasonal_zscore"])
def test_the_query_api_view_has_each_scopes_baseline(kind):
    """``/scopes/<rule>`` reports expected, std and windows seen for a warm scope."""
    from spendwatch.dataflows.view import describe

    h = HARNESSES[kind]
    plan = _plan(h.rule)
    engine = ShardEngine(plan)
    for max_ts, rows in _messages(plan, h.stream(np.random.default_rng(7)), 1):
        engine.on_message(max_ts, rows)
    [rows] = describe(engine)["scopes"].values()
    acme = next(row for row in rows if row["scope"] == {"tenant": "acme"})
    assert acme["windows_seen"] > 100
    assert math.isfinite(acme["expected"]) and acme["expected"] > 0
    assert math.isfinite(acme["std"]) and acme["std"] > 0


def _zero_filled(rule: dict) -> bool:
    detector = _plan(rule).detectors[0]
    return isinstance(detector, WindowDetector) and detector.zero_fill


ZERO_FILLED = sorted(kind for kind, h in HARNESSES.items() if _zero_filled(h.rule))
"""The types that judge windows without events (only they have runs of empty windows)."""


@pytest.mark.parametrize("kind", ZERO_FILLED)
def test_a_run_of_empty_windows_at_once_equals_window_by_window(kind):
    """``observe_empty`` (what the engine calls for a quiet scope's windows) is exactly
    ``observe`` with zero totals window by window, and the engine judges a stream with
    quiet gaps the same either way (a tracer makes it go window by window)."""
    h = HARNESSES[kind]
    plan = _plan(h.rule)
    detector = plan.detectors[0]
    windows = h.stream(np.random.default_rng(4))
    # acme goes quiet for six hours on day 2 and for good after its spike
    gappy = [
        w
        for w in windows
        if w[0] != ("acme",) or not (2 * DAY <= w[1] - T0 < 2 * DAY + 6 * 3600)
        if w[0] != ("acme",) or w[1] - T0 < 3.5 * DAY + 7200
    ]
    traced = ShardEngine(plan, tracer=lambda *_: None)
    assert _key(_run(plan, gappy, per=8)) == _key(_run(plan, gappy, per=8, engine=traced))

    engine = ShardEngine(plan)
    _run(plan, windows[: len(windows) * 2 // 3], engine=engine)
    after = max(w[1] for w in windows[: len(windows) * 2 // 3]) + 2 * WINDOW
    starts = range(after, after + 48 * WINDOW, WINDOW)
    for scope, state in engine.detector_states[detector.name].items():
        scope_map = dict(zip(detector.aggregation.dims, scope, strict=True))
        one, many = copy.deepcopy(state), copy.deepcopy(state)
        single = [a for s in starts for a in detector.observe(one, scope_map, s, ZERO)]
        assert _key(detector.observe_empty(many, scope_map, starts)) == _key(single)
        assert pickle.dumps(many) == pickle.dumps(one)


ROWS = sorted(
    kind for kind in ZERO_FILLED if hasattr(_plan(HARNESSES[kind].rule).detectors[0], "quiet_rows")
)
"""The types that judge their quiet scopes as rows of arrays (``observe_quiet``)."""


@pytest.mark.parametrize("kind", ROWS)
@pytest.mark.parametrize("per", [1, 8])
def test_quiet_scopes_as_rows_equal_scope_by_scope(kind, per):
    """The engine judging quiet scopes as rows raises what it raises judging them scope
    by scope, and ends with the same state of every scope, bit for bit."""
    h = HARNESSES[kind]
    plan = _plan(h.rule)
    windows = [
        w
        for w in h.stream(np.random.default_rng(5))
        if w[0] != ("acme",) or not (2 * DAY <= w[1] - T0 < 2 * DAY + 6 * 3600)
    ]
    rows, reference = ShardEngine(plan), ShardEngine(plan, quiet_rows=False)
    assert _key(_run(plan, windows, per, rows)) == _key(_run(plan, windows, 1, reference))
    assert sum(store.judged for store in rows.quiet_stores.values()) > 0
    assert sum(store.judged_data for store in rows.quiet_stores.values()) > 0  # events too
    name = plan.detectors[0].name
    mine, theirs = rows.detector_states[name], reference.detector_states[name]
    assert mine.keys() == theirs.keys()
    for scope, state in mine.items():
        assert pickle.dumps(state.__getstate__()) == pickle.dumps(theirs[scope].__getstate__())
