"""Deliveries per second through the outbox to the local Slack API, against a same-run floor.

Baseline: the same Block Kit messages posted with a bare slack-sdk WebClient in a loop
(no storage, no retries). Outbox: the alerts are stored (SQLite, WAL) and delivered by the
outbox thread through the Slack receiver (intent commit, post, result commit). The ratio
says what durability and exactly-once bookkeeping cost. Prints one JSON object last.

    .venv/bin/python bench/deliveries.py [--alerts 400] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time

import structlog
from slack_sdk import WebClient

from spendwatch.core.alerts import make_alert
from spendwatch.notifiers.outbox import DeliveryConfig, Outbox
from spendwatch.notifiers.slack import SlackConfig, SlackNotifier
from spendwatch.notifiers.slack_blocks import blocks, fallback_text, metadata
from spendwatch.testing.fake_slack import FakeSlack

TOKEN = "xoxb-bench-token"


def alerts(count: int, run: int) -> list:
    start = 1763251200 + run * 10_000_000
    return [
        make_alert(
            kind="anomaly",
            rule="prompt-output-tokens",
            status="firing",
            severity="warning",
            scope={"prompt_id": f"prompt-{i}@v1"},
            metric="output_tokens_per_request",
            window_start=start + i * 3600,
            window_end=start + i * 3600 + 3600,
            observed=1800.0,
            expected=400.0,
            score=12.5,
            threshold=5.0,
            episode_start=start + i * 3600,
        )
        for i in range(count)
    ]


def baseline(slack: FakeSlack, batch: list) -> float:
    client = WebClient(token=TOKEN, base_url=slack.api_url, retry_handlers=[])
    started = time.perf_counter()
    for alert in batch:
        client.chat_postMessage(
            channel="C0ALERTS",
            text=fallback_text(alert),
            blocks=blocks(alert),
            metadata=metadata(alert),
            unfurl_links=False,
        )
    return len(batch) / (time.perf_counter() - started)


def through_outbox(slack: FakeSlack, batch: list, directory: str) -> float:
    receiver = SlackNotifier(SlackConfig(token=TOKEN, channel="C0ALERTS", base_url=slack.api_url))
    outbox = Outbox(os.path.join(directory, "outbox.sqlite"), [receiver], config=DeliveryConfig())
    started = time.perf_counter()
    outbox.start()
    outbox.put_many(batch)
    if not outbox.flush(300):
        raise SystemExit("outbox did not drain")
    elapsed = time.perf_counter() - started
    outbox.close()
    return len(batch) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alerts", type=int, default=400)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
    )
    raw, boxed = [], []
    with FakeSlack(token=TOKEN) as slack, tempfile.TemporaryDirectory() as scratch:
        for run in range(args.runs):
            batch = alerts(args.alerts, run)
            raw.append(baseline(slack, batch))
            boxed.append(through_outbox(slack, batch, os.path.join(scratch, f"run{run}")))
            print(
                f"run {run + 1}: raw WebClient {raw[-1]:,.0f}/s, outbox {boxed[-1]:,.0f}/s",
                file=sys.stderr,
            )
        posted = len(slack.messages())
    expected = 2 * args.alerts * args.runs
    if posted != expected:
        raise SystemExit(f"expected {expected} messages, the server has {posted}")
    result = {
        "bench": "deliveries",
        "alerts_per_run": args.alerts,
        "runs": args.runs,
        "raw_webclient_per_s": round(statistics.median(raw), 1),
        "outbox_per_s": round(statistics.median(boxed), 1),
        "ratio": round(statistics.median(boxed) / statistics.median(raw), 3),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
