"""The process-wide, thread-safe registry the HTTP endpoints read.

Workers publish copies (see ``spendwatch.dataflows.view``): one picture per
shard, replaced wholesale, plus the most recent alerts. Readers take the lock,
copy references and work outside it, so a slow HTTP client never stalls a worker.
Readiness also lives here: the worker is ready once its dataflow is running and
not ready while it stops or reloads.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Mapping
from typing import Any

RECENT_ALERTS = 500


def budget_order(row: Mapping[str, Any]) -> tuple:
    """How budget rows are listed: by budget, scope, then period."""
    return (row["budget"], sorted(row["scope"].items()), row["period"])


class LiveView:
    """Shard pictures, recent alerts and lifecycle flags of this process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._shards: dict[str, dict[str, Any]] = {}
        self._alerts: deque[dict[str, Any]] = deque(maxlen=RECENT_ALERTS)
        self.ready = threading.Event()
        self.started = time.time()
        # budget name -> amount key -> (USD, set at): amounts set at run time, shared by
        # the shard engines of this process (each keeps them in its recovered state)
        self._overrides: dict[str, dict[str, tuple[float, float]]] = {}
        self.overrides_version = 0
        self.config: Any = None  # the running config (status page, API token)
        self.outbox: Any = None  # the running outbox (silences set from Slack)
        self.approvals: Any = None  # decisions on alerts (POST /slack/actions)

    # -- writers (worker threads) ------------------------------------------------------------

    def publish_shard(self, shard: str, picture: dict[str, Any]) -> None:
        with self._lock:
            self._shards[shard] = picture

    def add_alerts(self, alerts: list[dict[str, Any]]) -> None:
        with self._lock:
            self._alerts.extend(alerts)

    def set_budget_amount(self, budget: str, key: str, amount: float) -> tuple[float, float]:
        """Record an amount set at run time; the engines pick it up. Its (amount, set at)."""
        with self._lock:
            setting = (float(amount), time.time())
            self._overrides.setdefault(budget, {})[key] = setting
            self.overrides_version += 1
            return setting

    def sync_overrides(self, sync: Any) -> Any:
        """Call ``sync(shared overrides)`` under the lock (an engine merging its own)."""
        with self._lock:
            before = repr(self._overrides)
            result = sync(self._overrides)
            if repr(self._overrides) != before:  # a restored engine brought settings
                self.overrides_version += 1
            return result

    def configure(self, config: Any) -> None:
        self.config = config

    def clear_shards(self) -> None:
        """Forget shard pictures (before a reload rebuilds the dataflow)."""
        with self._lock:
            self._shards.clear()

    # -- readers (HTTP thread) ---------------------------------------------------------------

    def _pictures(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._shards.values())

    def pictures(self) -> list[dict[str, Any]]:
        """Every shard's latest picture (read-only)."""
        return self._pictures()

    def budgets(self) -> list[dict[str, Any]]:
        rows = [row for picture in self._pictures() for row in picture["budgets"]]
        return sorted(rows, key=budget_order)

    def recent_alerts(self, limit: int = 100) -> list[dict[str, Any]]:
        with self._lock:
            alerts = list(self._alerts)
        return alerts[-limit:][::-1] if limit > 0 else []

    def scopes(self, rule: str, match: Mapping[str, str]) -> list[dict[str, Any]] | None:
        """Baselines of ``rule`` whose scope contains ``match``; ``None`` for an unknown rule."""
        found = False
        rows: list[dict[str, Any]] = []
        for picture in self._pictures():
            if rule in picture["scopes"]:
                found = True
                rows.extend(
                    row
                    for row in picture["scopes"][rule]
                    if all(row["scope"].get(k) == v for k, v in match.items())
                )
        if not found:
            return None
        return sorted(rows, key=lambda r: sorted(r["scope"].items()))

    def rules(self) -> set[str]:
        return {rule for picture in self._pictures() for rule in picture["scopes"]}

    def active_scopes(self) -> dict[str, int]:
        """Scopes holding state, per rule (detectors and budgets)."""
        counts: dict[str, int] = {}
        for picture in self._pictures():
            for rule, rows in picture["scopes"].items():
                counts[rule] = counts.get(rule, 0) + len(rows)
            seen: set[tuple] = set()
            for row in picture["budgets"]:
                key = (row["budget"], tuple(sorted(row["scope"].items())))
                if key not in seen:
                    seen.add(key)
                    counts[row["budget"]] = counts.get(row["budget"], 0) + 1
        return counts

    def watermark(self) -> float | None:
        """The slowest shard's watermark: every window before it is closed everywhere."""
        marks = [p["watermark"] for p in self._pictures() if p["watermark"] is not None]
        return min(marks) if marks else None


VIEW = LiveView()


def current() -> LiveView:
    return VIEW
