"""Prometheus metrics of a worker, read at scrape time from the run counters and live view.

Nothing on the hot path touches prometheus-client: workers bump plain counters
(``spendwatch.core.stats``) and publish shard copies (``spendwatch.core.liveview``); this
collector turns them into metric families when Prometheus asks. Its registry is
private to the server, so tests and several workers in one process never collide.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from spendwatch.core import liveview, stats


class WorkerCollector(Collector):
    """Every spendwatch_* metric; see the README for their meaning."""

    def collect(self) -> Iterator[Metric]:
        counters = stats.current()
        view = liveview.current()
        yield _counter("spendwatch_events", "Events parsed and accepted", counters.events)
        yield _counter(
            "spendwatch_duplicate_events", "Events dropped as repeats", counters.duplicates
        )
        dead = CounterMetricFamily(
            "spendwatch_dead_lettered_events", "Events rejected, by reason", labels=["reason"]
        )
        for reason, count in sorted(counters.dead_reasons.items()):
            dead.add_metric([reason], count)
        yield dead
        yield _counter(
            "spendwatch_late_events",
            "Events more than the allowed lateness behind their partition's stream time "
            "(each once; counted in budgets, not in detectors whose window closed)",
            counters.late_events,
        )
        yield _counter(
            "spendwatch_dedup_unchecked_events",
            "Events older than the oldest dedup bucket held (engine.dedup_horizon): admitted "
            "without a duplicate check",
            counters.dedup_unchecked,
        )
        unpriced = CounterMetricFamily(
            "spendwatch_fallback_priced_events",
            "Events of models missing from the price table, priced by the fallback",
            labels=["model"],
        )
        for model, count in sorted(counters.fallback_priced.items()):
            unpriced.add_metric([str(model)], count)
        yield unpriced
        yield _counter(
            "spendwatch_windows_closed", "Scope windows closed and judged", counters.windows_closed
        )
        yield _counter(
            "spendwatch_evicted_scopes",
            "Scopes forgotten to stay within max_scopes (budgets: lowest spenders; detectors: "
            "longest quiet)",
            counters.evicted_scopes,
        )
        alerts = CounterMetricFamily(
            "spendwatch_alerts", "Alerts raised (replays excluded)", labels=["kind", "rule"]
        )
        for (kind, rule), count in sorted(counters.alerts_by_kind_rule.items()):
            alerts.add_metric([kind, rule], count)
        yield alerts
        yield _counter(
            "spendwatch_alerts_replayed",
            "Alerts raised again by the replay after a restart or reload (held by the outbox: "
            "neither counted in spendwatch_alerts nor delivered again)",
            counters.alerts_replayed,
        )
        # Deliveries are counted by the outbox itself (spendwatch_deliveries_total).
        lag = GaugeMetricFamily(
            "spendwatch_consumer_lag",
            "Input not read yet, per source partition (bytes for files, messages for Kafka)",
            labels=["partition"],
        )
        for partition, remaining in sorted(dict(counters.lag).items()):
            lag.add_metric([partition], remaining)
        yield lag
        scopes = GaugeMetricFamily(
            "spendwatch_active_scopes", "Scopes holding state, per rule", labels=["rule"]
        )
        for rule, count in sorted(view.active_scopes().items()):
            scopes.add_metric([rule], count)
        yield scopes
        watermark = view.watermark()
        if watermark is not None:
            yield GaugeMetricFamily(
                "spendwatch_watermark_timestamp_seconds",
                "Event-time watermark of the slowest shard (windows before it are closed)",
                value=watermark,
            )
            yield GaugeMetricFamily(
                "spendwatch_watermark_delay_seconds",
                "Wall clock minus the watermark: how far behind real time judgement runs",
                value=max(time.time() - watermark, 0.0),
            )
        yield GaugeMetricFamily(
            "spendwatch_ready", "1 while the dataflow runs", value=float(view.ready.is_set())
        )


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)


def build_registry() -> CollectorRegistry:
    """A registry with the worker metrics and the standard process metrics."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(WorkerCollector())
    from spendwatch.notifiers.outbox import DELIVERIES, PENDING

    registry.register(DELIVERIES)  # the outbox counts its own deliveries
    registry.register(PENDING)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry
