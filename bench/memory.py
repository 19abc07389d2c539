"""State per scope: the memory each kind of rule holds for one scope after days of windows.

For each rule of the production set (and a forecasting budget), one shard engine is fed
three days of 15-minute windows for N scopes; what it then holds is measured twice: the
Python heap it grew (tracemalloc) and its recovery snapshot (bytes written per epoch).
Baseline, in the same run: a plain dict giving each scope one day of 15-minute floats,
the least a seasonal baseline can remember. Prints a table; the last line is one JSON
object with bytes per scope and the ratio to the baseline. ``--breakdown`` also prints,
for one scope of each detector rule, the bytes of each field of its state (objects
reached from it, counted once; small ints and interned strings are shared, so this
slightly overstates), which is where to look when the heap figure grows. ``--quiet N``
ends the days with N windows without events, so scopes that hold their quiet state as
rows of arrays (``robust_seasonal``: ``detectors/robust_columns.py``) are measured so.

    .venv/bin/python bench/memory.py [--scopes 2000] [--days 3] [--rules a,b] [--breakdown]
                                     [--quiet N]
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import sys
import tracemalloc
from array import array
from collections import deque

from spendwatch.config import SpendwatchConfig
from spendwatch.dataflows.engine import EnginePlan, ShardEngine
from spendwatch.ingest.pricing import NANOS_PER_USD

WINDOW = 900
T0 = 1_795_000_000 - 1_795_000_000 % 86400
RULES = {
    "robust_seasonal": {
        "detectors": [
            {"name": "r", "type": "robust_seasonal", "scope": ["tenant"], "window": "15m"}
        ]
    },
    "unit_cost": {
        "detectors": [
            {
                "name": "r",
                "type": "unit_cost",
                "scope": ["tenant"],
                "metric": "cost_per_request_usd",
                "window": "15m",
            }
        ]
    },
    "seasonal_zscore": {
        "detectors": [
            {
                "name": "r",
                "type": "seasonal_zscore",
                "scope": ["tenant"],
                "window": "15m",
                "seasonality": "hour_of_week",
            }
        ]
    },
    "budget+forecast": {
        "budgets": [
            {
                "name": "r",
                "scope_by": ["tenant"],
                "amount_usd": 1e9,
                "period": "month",
                "forecast": True,
            }
        ]
    },
}


def _slot(obj: object, name: str) -> list[object]:
    """The value of a set slot (``[]`` if unset), read through its descriptor: a cold
    ``robust_seasonal`` state's unset fields must not thaw it (``__getattr__``)."""
    descriptor = getattr(type(obj), name, None)
    try:
        return [descriptor.__get__(obj, type(obj))] if descriptor is not None else []
    except AttributeError:
        return []


def deep_size(obj: object, seen: set[int]) -> int:
    """Bytes of ``obj`` and of everything it references not in ``seen`` (marked as it goes)."""
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    size = sys.getsizeof(obj)
    if isinstance(obj, dict):
        return size + sum(deep_size(k, seen) + deep_size(v, seen) for k, v in obj.items())
    if isinstance(obj, (list, tuple, set, frozenset, deque)):
        return size + sum(deep_size(v, seen) for v in obj)
    if isinstance(obj, (str, bytes, int, float, array)):
        return size
    names = [n for cls in type(obj).__mro__ for n in getattr(cls, "__slots__", ())]
    fields = [value for n in names for value in _slot(obj, n)]
    if hasattr(obj, "__dict__"):
        fields.append(obj.__dict__)
    return size + sum(deep_size(v, seen) for v in fields)


def breakdown(state: object) -> dict[str, int]:
    """Bytes per field of one scope's state (the object itself under ``(object)``)."""
    seen: set[int] = {id(state)}
    found = {"(object)": sys.getsizeof(state)}
    names = [n for cls in type(state).__mro__ for n in getattr(cls, "__slots__", ())]
    for name in names or list(vars(state)):
        if hasattr(state, name):
            found[name] = deep_size(getattr(state, name), seen)
    return found


def measure(
    rule: dict, scopes: int, days: int, fields: dict | None = None, quiet: int = 0
) -> tuple[float, float]:
    """Heap bytes and snapshot bytes per scope after ``days`` of windows for ``scopes``
    (and, given ``fields``, the per-field breakdown of one scope's state put in it)."""
    config = SpendwatchConfig.model_validate({**rule, "engine": {"allowed_lateness": 0}})
    rng = random.Random(1)
    names = [(f"tenant-{i}",) for i in range(scopes)]
    windows = days * 86400 // WINDOW
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    engine = ShardEngine(EnginePlan.from_config(config))
    for w in range(windows):
        start = T0 + w * WINDOW
        rows = []
        for scope in names:
            requests = rng.randint(50, 150)
            spend = requests * NANOS_PER_USD // 100
            rows.append((0, scope, start, spend, requests, 1000 * requests, 100 * requests, 1))
        engine.on_message(start + WINDOW - 1, rows)
    for k in range(quiet + 1):  # close the last window, then ``quiet`` empty ones
        engine.on_message(T0 + (windows + k) * WINDOW + 1, [])
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    if fields is not None:
        for states in engine.detector_states.values():
            if states:
                fields.update(breakdown(states[names[0]]))
        # the /costs series: at most series_max_scopes per shard, a fixed cost, not per scope
        fields["(series, per scope)"] = round(deep_size(engine.series, set()) / scopes)
    return held / scopes, len(engine.snapshot()) / scopes


def baseline(scopes: int) -> float:
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    profile = {(f"tenant-{i}",): [float(i + slot) for slot in range(96)] for i in range(scopes)}
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    del profile
    return held / scopes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scopes", type=int, default=2000)
    parser.add_argument("--days", type=int, default=3)
    parser.add_argument("--rules", default=",".join(RULES), help="comma-separated rules")
    parser.add_argument("--breakdown", action="store_true", help="bytes per state field")
    parser.add_argument("--quiet", type=int, default=0, help="empty windows at the end")
    args = parser.parse_args()
    floor = baseline(args.scopes)
    print(f"baseline (96 floats per scope in a dict): {floor:,.0f} bytes/scope", file=sys.stderr)
    figures = {}
    for name in args.rules.split(","):
        fields: dict[str, int] | None = {} if args.breakdown else None
        heap, snapshot = measure(RULES[name], args.scopes, args.days, fields, args.quiet)
        figures[name] = {"heap_bytes": round(heap), "snapshot_bytes": round(snapshot)}
        if fields:
            figures[name]["state_fields"] = fields
            print(f"{name} state of one scope, bytes per field: {fields}", file=sys.stderr)
        print(
            f"{name:18s} heap {heap:8,.0f} B/scope  snapshot {snapshot:8,.0f} B/scope  "
            f"({heap / floor:.2f}x baseline)",
            file=sys.stderr,
        )
    print(
        json.dumps(
            {
                "bench": "memory",
                "scopes": args.scopes,
                "days": args.days,
                "quiet_windows": args.quiet,
                "baseline_bytes": round(floor),
                "per_scope": figures,
                "ratio": {name: round(f["heap_bytes"] / floor, 2) for name, f in figures.items()},
            }
        )
    )


if __name__ == "__main__":
    main()
