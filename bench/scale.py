"""Scale-out: `spendwatch run` with 1 vs 2 processes on the same input (files as partitions).

Generates N events (default 1 M) of the demo stream in event-time order, deals them into
four files (four input partitions), then alternates, three times each, a run with
`--processes 1` and one with `--processes 2` (fresh state each time, input read to the
end). Wall time includes process start-up. Prints medians and the ratio; the last line
is one JSON object.

    .venv/bin/python bench/scale.py [--events N] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

from spendwatch.ops import demo

CONFIG = """
source:
  type: jsonl
  path: {pattern}
engine:
  allowed_lateness: 2m
  snapshot_interval: 5
dead_letter:
  path: null
{pricing}
detectors:
  - {{name: tenant-spend, type: seasonal_zscore, scope: [tenant], metric: spend_usd, window: 1h}}
  - {{name: feature-spend, type: seasonal_zscore, scope: [tenant, feature], window: 5m}}
  - name: prompt-tokens
    type: seasonal_zscore
    scope: [prompt_id]
    metric: output_tokens_per_request
    window: 1h
budgets:
  - {{name: tenant-daily, scope_by: [tenant], amount_usd: 500, period: day}}
receivers:
  - {{type: file, path: {alerts}}}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--files", type=int, default=4)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="spendwatch-scale-"))
    scale = args.events / 97_000 / 4.0  # the demo makes about 97 k events a day at scale 1
    stream = demo.generate(days=4.0, scale=scale, seed=3)
    lines = sorted(stream.lines, key=lambda line: orjson.loads(line)["ts"])
    for index in range(args.files):
        chunk = lines[index :: args.files]
        (work / f"events-{index}.jsonl").write_bytes(b"".join(x + b"\n" for x in chunk))
    config = work / "config.yaml"
    config.write_text(
        CONFIG.format(
            pattern=work / "events-*.jsonl", pricing=demo.pricing_yaml(), alerts=work / "a.jsonl"
        )
    )
    seconds: dict[int, list[float]] = {1: [], 2: []}
    for repeat in range(args.repeats):
        for processes in (1, 2):
            state = work / f"state-{processes}-{repeat}"
            command = [sys.executable, "-m", "spendwatch.cli", "run", "--config", str(config)]
            command += ["--processes", str(processes), "--state-dir", str(state)]
            command += ["--log-level", "warning"]
            started = time.perf_counter()
            subprocess.run(command, check=True)
            seconds[processes].append(time.perf_counter() - started)
            print(f"run {repeat + 1}: {processes} process(es) {seconds[processes][-1]:.2f}s")
    one, two = statistics.median(seconds[1]), statistics.median(seconds[2])
    events = len(lines)
    print(f"events {events:,} in {args.files} files")
    print(f"1 process:   {one:.2f}s  ({events / one:,.0f} events/s)")
    print(f"2 processes: {two:.2f}s  ({events / two:,.0f} events/s)")
    print(f"speed-up 2 vs 1: {one / two:.2f}x")
    summary = {
        "bench": "scale",
        "events": events,
        "files": args.files,
        "repeats": args.repeats,
        "seconds_1_process": round(one, 3),
        "seconds_2_processes": round(two, 3),
        "events_per_s_1_process": round(events / one),
        "events_per_s_2_processes": round(events / two),
        "speedup_2_vs_1": round(one / two, 3),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
