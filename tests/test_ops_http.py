"""The worker's HTTP endpoints, hit over real HTTP while a real worker process runs."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from spendwatch.ops import demo
from tests.conftest import read_alerts
from tests.workers import CLI, free_port, http_get, wait_for, worker_config


def _metrics(port: int) -> dict[tuple[str, tuple], float]:
    status, body = http_get(port, "/metrics")
    assert status == 200
    samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def test_metrics_health_and_query_api_of_a_running_worker(tmp_path: Path):
    stream = demo.generate(days=3, scale=0.2, seed=4, spike_at_hours=2 * 24 + 6)
    events = tmp_path / "events.jsonl"
    unpriced = (
        b'{"event_id":"u1","ts":"2026-11-16T00:10:00Z","tenant":"acme","model":"mystery-llm",'
        b'"input_tokens":10,"output_tokens":5}'
    )
    events.write_bytes(b"".join(line + b"\n" for line in [b"{broken", unpriced, *stream.lines]))
    port = free_port()
    fallback = "  fallback: {input: 5.0, output: 15.0}\n"
    config, alerts_file = worker_config(tmp_path, str(events), port=port, follow=True)
    text = config.read_text().replace("pricing:\n", "pricing:\n" + fallback, 1)
    config.write_text(text.replace("    amount_usd: 35\n", "    amount_usd: 20\n", 1))
    worker = subprocess.Popen(
        [*CLI, "run", "--config", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        wait_for(lambda: http_get(port, "/readyz")[0] == 200)
        assert http_get(port, "/healthz") == (200, b'{"status":"ok"}')
        total = len(stream.lines) + 1  # the unpriced event is accepted, the broken line is not
        wait_for(lambda: _metrics(port).get(("spendwatch_events_total", ())) == total)
        wait_for(lambda: json.loads(http_get(port, "/budgets")[1])["budgets"])

        metrics = wait_for(
            lambda: (
                (m := _metrics(port)).get(("spendwatch_active_scopes", (("rule", "tenant-spend"),)))
                and m
            )
        )
        assert (
            metrics[("spendwatch_dead_lettered_events_total", (("reason", "malformed JSON"),))] == 1
        )
        assert (
            metrics[("spendwatch_fallback_priced_events_total", (("model", "mystery-llm"),))] == 1
        )
        assert metrics[("spendwatch_active_scopes", (("rule", "tenant-spend"),))] == 5
        assert metrics[("spendwatch_windows_closed_total", ())] > 100
        assert metrics[("spendwatch_consumer_lag", (("partition", str(events)),))] == 0
        assert metrics[("spendwatch_ready", ())] == 1
        assert metrics[("spendwatch_watermark_delay_seconds", ())] > 0

        # Delivery is asynchronous (the outbox's thread): wait until the file caught up.
        def caught_up():
            delivered = read_alerts(alerts_file) if alerts_file.exists() else []
            sent = _metrics(port).get(
                ("spendwatch_deliveries_total", (("outcome", "sent"), ("receiver", "file")))
            )
            raised = _metrics(port).get(
                ("spendwatch_alerts_total", (("kind", "budget"), ("rule", "tenant-daily")))
            )
            budget_alerts = [a for a in delivered if a["rule"] == "tenant-daily"]
            if budget_alerts and sent == len(delivered) and raised == len(budget_alerts):
                return delivered
            return None

        delivered = wait_for(caught_up)

        budgets = json.loads(http_get(port, "/budgets")[1])["budgets"]
        weekly = {b["scope"]["tenant"]: b for b in budgets if b["budget"] == "tenant-weekly"}
        assert set(weekly) == {"acme", "globex", "initech", "umbrella", "hooli"}
        acme = weekly["acme"]
        assert acme["period"] == "2026-W47" and acme["amount_usd"] == 100000
        assert abs(acme["percent"] - 100 * acme["spend_usd"] / 100000) < 1e-3
        assert acme["spend_nanos"] > 0

        status, body = http_get(port, "/alerts?limit=3")
        recent = json.loads(body)["alerts"]
        assert status == 200 and len(recent) == 3
        assert [a["alert_id"] for a in recent] == [a["alert_id"] for a in delivered[::-1][:3]]

        # Events are counted as they are read; the engine's view is published within a
        # second of it judging them, so it may still be catching up here.
        def scope_view():
            status, body = http_get(port, "/scopes/tenant-spend?tenant=acme")
            assert status == 200
            scopes = json.loads(body)["scopes"]
            return scopes if scopes and scopes[0]["windows_seen"] > 24 else None

        scopes = wait_for(scope_view)
        assert len(scopes) == 1 and scopes[0]["scope"] == {"tenant": "acme"}
        assert scopes[0]["expected"] > 0
        status, body = http_get(port, "/scopes/tenant-spend")
        assert len(json.loads(body)["scopes"]) == 5
        assert http_get(port, "/scopes/no-such-rule")[0] == 404
        assert http_get(port, "/alerts?limit=x")[0] == 400
        assert http_get(port, "/nothing")[0] == 404
    finally:
        worker.send_signal(signal.SIGTERM)
        _, stderr = worker.communicate(timeout=30)
    assert worker.returncode == 0, stderr.decode()[-3000:]


def test_delivery_metrics_live_on_the_server_registry_only():
    """Importing the outbox registers nothing process-wide; the server's registry has them."""
    import prometheus_client

    from spendwatch.service.metrics import build_registry

    names = set(prometheus_client.REGISTRY._names_to_collectors)
    assert not any(n.startswith("spendwatch_deliveries") for n in names)
    ours = set(build_registry()._names_to_collectors)
    assert {"spendwatch_deliveries_total", "spendwatch_deliveries_pending"} <= ours
