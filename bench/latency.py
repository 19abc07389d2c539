"""Alert latency of a live worker: from the event that closes a window to the alert on disk.

A `spendwatch run` follows a growing JSONL file (`follow: true`, `poll_interval` 0.1 s)
and delivers to a file receiver. Each trial appends spend that crosses one tenant's daily
budget, then, at wall time T, one event stamped past the crossing window's end plus the
allowed lateness, which lets the watermark close that window. The latency is the time
from T until the budget alert's line is in the receiver's file: the file follower, the
parse, the engine, the durable outbox (SQLite) and the receiver together.

Baseline, in the same run: a bare follower, a Python loop polling a growing file with the
same interval, timed from appending a line to reading it back. Event time is what makes an
alert due; this measures the wall time the pipeline adds once it is. Prints medians; the
last line is one JSON object.

    .venv/bin/python bench/latency.py [--trials 25]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

POLL = 0.1
# Appends land at a random point of the poll cycle (seeded: runs are comparable); a fixed
# pause would lock onto the follower's phase and measure a lucky or unlucky poll each time.
SEED = 7
WINDOW = 300
LATENESS = 60
T0 = 1_795_000_000 - 1_795_000_000 % 86400 + 8 * 3600  # 08:00 UTC on a day in 2026

CONFIG = """
source: {{type: jsonl, path: {events}, follow: true, poll_interval: {poll}}}
engine: {{allowed_lateness: {lateness}s}}
dead_letter: {{path: {dir}/dead.jsonl}}
budgets:
  - {{name: tenant-daily, scope_by: [tenant], amount_usd: 100, period: day,
      thresholds: [100], window: {window}s}}
receivers:
  - {{type: file, path: {alerts}}}
delivery: {{outbox_path: {dir}/outbox.sqlite}}
"""


def event(event_id: str, ts: float, tenant: str, cost: float) -> bytes:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + "Z"
    record = {"event_id": event_id, "ts": stamp, "tenant": tenant, "cost_usd": cost}
    return (json.dumps(record, separators=(",", ":")) + "\n").encode()


def append(path: Path, data: bytes) -> None:
    with path.open("ab") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def wait_for_line(path: Path, needle: str, timeout: float = 30.0) -> float:
    """Poll ``path`` until a line contains ``needle``; the time it was seen."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and needle in path.read_text():
            return time.perf_counter()
        time.sleep(0.002)
    raise TimeoutError(f"{needle!r} did not appear in {path} within {timeout}s")


def spendwatch_latencies(directory: Path, trials: int) -> list[float]:
    events, alerts = directory / "events.jsonl", directory / "alerts.jsonl"
    events.write_bytes(event("warm-0", T0, "warm", 1.0))
    config = directory / "config.yaml"
    config.write_text(
        CONFIG.format(
            events=events, alerts=alerts, dir=directory, poll=POLL, lateness=LATENESS, window=WINDOW
        )
    )
    cli = Path(sys.executable).with_name("spendwatch")
    worker = subprocess.Popen(
        [str(cli), "run", "--config", str(config), "--log-level", "warning"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    latencies = []
    jitter = random.Random(SEED)
    try:
        time.sleep(3)  # start-up: not part of the latency
        for trial in range(trials):
            tenant = f"tenant-{trial}"
            start = T0 + trial * 2 * WINDOW  # a fresh window per trial
            append(events, event(f"{tenant}-spend", start + 10, tenant, 150.0))
            time.sleep(0.5 + jitter.uniform(0, POLL))  # read; its window still open
            closing = event(f"{tenant}-tick", start + WINDOW + LATENESS + 1, "warm", 0.01)
            sent = time.perf_counter()
            append(events, closing)
            seen = wait_for_line(alerts, f'"tenant":"{tenant}"')
            latencies.append(seen - sent)
            print(f"trial {trial + 1}: {latencies[-1] * 1000:.0f} ms", file=sys.stderr)
    finally:
        worker.terminate()
        worker.wait(timeout=30)
    return latencies


def bare_latencies(directory: Path, trials: int) -> list[float]:
    """A plain follower with the same poll interval: append a line, time until it is read."""
    path = directory / "bare.jsonl"
    path.write_bytes(b"")
    seen: dict[str, float] = {}
    stop = threading.Event()

    def follow() -> None:
        with path.open("rb") as handle:
            pending = b""
            while not stop.is_set():
                data = handle.read(1 << 20)
                if not data:
                    time.sleep(POLL)
                    continue
                pending += data
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    seen[json.loads(line)["event_id"]] = time.perf_counter()

    follower = threading.Thread(target=follow, daemon=True)
    follower.start()
    latencies = []
    jitter = random.Random(SEED)
    for trial in range(trials):
        time.sleep(0.5 + jitter.uniform(0, POLL))
        sent = time.perf_counter()
        append(path, event(f"bare-{trial}", T0, "bare", 1.0))
        while f"bare-{trial}" not in seen:
            time.sleep(0.002)
        latencies.append(seen[f"bare-{trial}"] - sent)
    stop.set()
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=25)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        bare = bare_latencies(directory, args.trials)
        worker = spendwatch_latencies(directory, args.trials)
    bare_ms = statistics.median(bare) * 1000
    worker_ms = statistics.median(worker) * 1000
    print(f"medians: bare {bare_ms:.0f} ms, spendwatch {worker_ms:.0f} ms", file=sys.stderr)
    print(
        json.dumps(
            {
                "bench": "latency",
                "trials": args.trials,
                "alert_latency_ms": round(worker_ms, 1),
                "alert_latency_max_ms": round(max(worker) * 1000, 1),
                "bare_follower_ms": round(bare_ms, 1),
                "ratio": round(worker_ms / bare_ms, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
