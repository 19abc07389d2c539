"""Throughput of `spendwatch backtest` against the floor of merely parsing each line with orjson.

Generates N events (default 1 M) of the demo stream, then alternates, three times each:
(a) the floor: read the file and `orjson.loads` every line; (b) a full backtest with four
detectors and one budget, decoding in helper processes (`source.decode_processes: auto`,
the default); (c) the same backtest decoding inline in one process. Prints medians; the
last line is one JSON object (`events_per_s` and `ratio` are (b); `inline_*` are (c)).

    .venv/bin/python bench/throughput.py [--events N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import orjson

from spendwatch.config import load_config
from spendwatch.core.logging import configure
from spendwatch.dataflows.decodepool import helper_count
from spendwatch.ops import demo
from spendwatch.ops.backtest import backtest

CONFIG = """
source: {{type: jsonl, decode_processes: {decode}}}
engine:
  allowed_lateness: 2m
dead_letter:
  path: {dir}/dead.jsonl
{pricing}
detectors:  # the production set of config/demo.yaml
  - name: tenant-spend
    type: robust_seasonal
    scope: [tenant]
    window: 15m
    min_impact: 0.25
    drivers: [feature, model, prompt_id]
  - name: feature-unit-cost
    type: unit_cost
    scope: [tenant, feature]
    metric: cost_per_request_usd
    window: 15m
    drivers: [model, prompt_id]
  - name: prompt-output-tokens
    type: unit_cost
    scope: [prompt_id]
    metric: output_tokens_per_request
    window: 15m
  - {{name: model-spend, type: robust_seasonal, scope: [model], window: 1h}}
budgets:
  - {{name: tenant-daily, scope_by: [tenant], amount_usd: 500, period: day, forecast: true}}
receivers: []
"""


def floor(path: Path) -> float:
    started = time.perf_counter()
    loads = orjson.loads
    count = 0
    with path.open("rb") as handle:
        for line in handle:
            loads(line)
            count += 1
    return count / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    configure("warning")
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        events = directory / "events.jsonl"
        scale = args.events / 386_000 * 1.02
        stream = demo.generate(days=4, scale=scale, seed=1)
        lines = stream.lines[: args.events]  # in time order, with the stream's own jitter
        events.write_bytes(b"".join(line + b"\n" for line in lines))
        count = len(lines)
        size = events.stat().st_size
        print(f"{count:,} events, {size / count:.0f} bytes each", file=sys.stderr)
        configs = {}
        for decode in ("auto", "0"):
            config_path = directory / f"config-{decode}.yaml"
            pricing = demo.pricing_yaml()
            config_path.write_text(CONFIG.format(dir=directory, pricing=pricing, decode=decode))
            configs[decode] = load_config(config_path)
        floors, rates, inline_rates = [], [], []
        for run in range(args.runs):
            floors.append(floor(events))
            helped = backtest(configs["auto"], str(events), str(directory / "alerts.jsonl"))
            inline = backtest(configs["0"], str(events), str(directory / "alerts-inline.jsonl"))
            assert helped["events"] == inline["events"] == count, (helped, inline)
            assert helped["alerts_by_rule"] == inline["alerts_by_rule"]
            rates.append(count / helped["seconds"])
            inline_rates.append(count / inline["seconds"])
            print(
                f"run {run + 1}: floor {floors[-1]:,.0f}/s  backtest {rates[-1]:,.0f}/s "
                f"inline {inline_rates[-1]:,.0f}/s ({helped['alerts']} alerts)",
                file=sys.stderr,
            )
    events_per_s = statistics.median(rates)
    inline_per_s = statistics.median(inline_rates)
    floor_per_s = statistics.median(floors)
    print(
        json.dumps(
            {
                "events": count,
                "events_per_s": round(events_per_s),
                "parse_floor_events_per_s": round(floor_per_s),
                "ratio": round(events_per_s / floor_per_s, 3),
                "decode_processes": helper_count("auto"),
                "inline_events_per_s": round(inline_per_s),
                "inline_ratio": round(inline_per_s / floor_per_s, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
