"""Helpers for the notifier tests: alert factories and a recording receiver."""

from __future__ import annotations

import threading
from collections.abc import Callable

from spendwatch.core.alerts import Alert, make_alert
from spendwatch.notifiers.base import Delivery, Notifier, NotifyError

DAY = 1763251200  # 2025-11-16T00:00:00Z


def budget_alert(
    threshold: float = 85.0,
    status: str = "firing",
    tenant: str = "acme",
    period_start: int = DAY,
    rule: str = "tenant-daily",
) -> Alert:
    from datetime import datetime, timezone

    period = datetime.fromtimestamp(period_start, tz=timezone.utc).strftime("%Y-%m-%d")
    window = period_start + 3600 * 10 if status == "firing" else period_start + 86400 - 300
    return make_alert(
        kind="budget",
        rule=rule,
        status=status,
        severity="critical" if threshold >= 100 else "warning",
        scope={"tenant": tenant},
        metric="spend_usd",
        window_start=window,
        window_end=window + 300,
        observed=threshold * 1.01,
        expected=100.0,
        score=threshold * 1.01,
        threshold=threshold,
        episode_start=period_start,
        period=period,
        fingerprint_threshold=threshold,
    )


def anomaly_alert(
    status: str = "firing",
    prompt: str = "summarize@v2",
    episode: int = DAY,
    rule: str = "prompt-output-tokens",
    severity: str = "warning",
) -> Alert:
    window = episode if status == "firing" else episode + 7200
    return make_alert(
        kind="anomaly",
        rule=rule,
        status=status,
        severity=severity,
        scope={"prompt_id": prompt},
        metric="output_tokens_per_request",
        window_start=window,
        window_end=window + 3600,
        observed=1800.0,
        expected=400.0,
        score=12.5,
        threshold=5.0,
        episode_start=episode,
    )


class Recorder(Notifier):
    """A receiver that records what it got; ``fail`` decides per call whether to raise."""

    idempotent = True

    def __init__(
        self, name: str = "rec", fail: Callable[[Alert, Delivery], NotifyError | None] | None = None
    ) -> None:
        self.name = name
        self.fail = fail
        self.calls: list[tuple[str, int]] = []
        self.effects: list[str] = []
        self._lock = threading.Lock()

    def notify(self, alert: Alert) -> None:
        self.deliver(alert, Delivery())

    def deliver(self, alert: Alert, delivery: Delivery) -> None:
        with self._lock:
            self.calls.append((alert.alert_id, delivery.attempt))
        error = self.fail(alert, delivery) if self.fail else None
        if error is not None:
            raise error
        with self._lock:
            if delivery.maybe_done and alert.alert_id in self.effects:
                return
            self.effects.append(alert.alert_id)
