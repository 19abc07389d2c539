"""A read-only picture of one shard's state, for the query API and the metrics.

The engine's state lives inside Bytewax and is mutated by the worker thread; the
HTTP thread must never iterate those dicts. So the worker *copies* what humans
ask about (budget spend, detector baselines, watermark) into plain values here,
throttled by the caller, and hands the copy to :mod:`spendwatch.core.liveview`.
"""

from __future__ import annotations

import math
from typing import Any

from spendwatch.core.timefmt import rfc3339
from spendwatch.dataflows.engine import ShardEngine
from spendwatch.detectors.base import GroupDetector
from spendwatch.ingest.pricing import NANOS_PER_USD


def describe(engine: ShardEngine) -> dict[str, Any]:
    """Budgets, detector baselines and the watermark of one shard, as plain JSON values."""
    plan = engine.plan
    max_ts = engine.max_ts if engine.max_ts != -math.inf else None
    reached = engine.event_time()
    budgets: list[dict[str, Any]] = []
    for rule in plan.budgets:
        for scope, state in engine.budget_states.get(rule.name, {}).items():
            scope_map = dict(zip(rule.aggregation.dims, scope, strict=True))
            amount = rule.amount_usd(scope_map)
            for key, period in sorted(state.periods.items()):
                spend = period.total_nanos / NANOS_PER_USD
                budgets.append(
                    {
                        "budget": rule.name,
                        "scope": scope_map,
                        "period": key,
                        "period_start": rfc3339(period.start),
                        "period_end": rfc3339(period.end),
                        "spend_nanos": period.total_nanos,
                        "spend_usd": round(spend, 9),
                        "amount_usd": amount,
                        "percent": round(100.0 * spend / amount, 4),
                        "crossed": sorted(period.crossed),
                        "thresholds": list(rule.config.thresholds),
                        **_amount_set(engine, rule, scope_map),
                        **(
                            {"allocated_nanos": period.allocated_nanos}
                            if rule.allocation is not None
                            else {}
                        ),
                    }
                )
    scopes: dict[str, list[dict[str, Any]]] = {}
    for detector in plan.detectors:
        states = engine.detector_states.get(detector.name, {})
        progress = engine.detector_progress.get(detector.name, {})
        rows = scopes.setdefault(detector.name, [])
        if isinstance(detector, GroupDetector):  # state per peer group, not per scope
            continue
        known = _baselines(detector, states, progress)
        for scope, state in states.items():
            judged, last_data = progress.get(scope, (None, None))
            rows.append(_baseline(detector, scope, state, judged, last_data, known.get(scope)))
    return {
        "max_event_time": max_ts,
        "watermark": None if reached == -math.inf else reached - plan.allowed_lateness,
        "budgets": budgets,
        "scopes": scopes,
        "series": _series(engine),
        "budget_overrides": {
            name: dict(settings) for name, settings in engine.budget_overrides.items()
        },
    }


def _series(engine: ShardEngine) -> dict[str, dict[str, Any]]:
    """Each rule's recent series per scope, copied once per change (windows close rarely)."""
    cached = getattr(engine, "_series_copy", None)
    if cached is not None and cached[0] == engine.series_version:
        return cached[1]
    plan = engine.plan
    copies = {
        aggregation: {scope: tuple(points) for scope, points in rows.items()}
        for aggregation, rows in engine.series.items()
    }
    out: dict[str, dict[str, Any]] = {}
    for rule in [*plan.detectors, *plan.budgets]:
        aggregation = rule.aggregation
        out[rule.name] = {
            "dims": aggregation.dims,
            "step": plan.series_step(aggregation),
            "rows": copies.get(aggregation, {}),
        }
    engine._series_copy = (engine.series_version, out)  # type: ignore[attr-defined]
    return out


def _amount_set(engine: ShardEngine, rule: Any, scope: dict[str, str]) -> dict[str, Any]:
    """``amount_set_at``: when the amount in force was set at run time, if it was."""
    settings = engine.budget_overrides.get(rule.name, {})
    key = "/".join(scope[d] for d in rule.config.scope_by) if rule.config.scope_by else "*"
    setting = settings.get(key)
    base = getattr(rule, "configured", rule.config)
    if setting is None and key not in base.overrides:
        setting = settings.get("*")
    return {} if setting is None else {"amount_set_at": rfc3339(setting[1])}


def _baselines(detector: Any, states: dict, progress: dict) -> dict[tuple[str, ...], Any]:
    """Baselines of a rule's scopes at once, where the rule reads many in one pass
    (``baselines``: ``robust_seasonal``'s quiet scopes, from their rows), per next window."""
    many = getattr(detector, "baselines", None)
    if many is None:
        return {}
    window = detector.aggregation.window
    by_window: dict[int, list[tuple[str, ...]]] = {}
    for scope in states:
        judged = progress.get(scope, (None, None))[0]
        if judged is not None:
            by_window.setdefault(judged + window, []).append(scope)
    found: dict[tuple[str, ...], Any] = {}
    for start, scopes in by_window.items():
        found.update(zip(scopes, many([states[s] for s in scopes], start), strict=True))
    return found


def _baseline(
    detector: Any,
    scope: tuple[str, ...],
    state: Any,
    judged: Any,
    last: Any,
    known: Any = None,
) -> dict:
    """One scope's current baseline: what the next window will be judged against
    (``known``: already computed by ``_baselines``)."""
    window = detector.aggregation.window
    next_window = None if judged is None else judged + window
    row: dict[str, Any] = {
        "scope": dict(zip(detector.aggregation.dims, scope, strict=True)),
        "last_judged_window": None if judged is None else rfc3339(judged),
        "last_window_with_data": None if last is None else rfc3339(last),
        "windows_seen": detector.windows_seen(state),
        "firing_since": None,
        "expected": None,
        "std": None,
    }
    episode = getattr(state, "episode_start", None)
    if episode is not None:
        row["firing_since"] = rfc3339(episode)
    baseline_of = getattr(detector, "baseline", None)
    if baseline_of is not None and next_window is not None:
        baseline = known if known is not None else baseline_of(state, next_window)
        if baseline is not None:
            row["next_window"] = rfc3339(next_window)
            row["expected"] = baseline.expected
            row["std"] = baseline.std
    return row
