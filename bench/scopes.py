"""Scope scaling: the same events spread over 100 … 1,000,000 scopes, through the real engine.

For each scope count S, N events (default 300 k) over 3 days of event time are each given
one of S prompts at random (uniformly, seeded) and written to a JSONL file. Two rules key
on `prompt_id` with 15-minute windows: `robust_seasonal` spend and `unit_cost`
output tokens per request, all other settings at their defaults (16 shards, `max_scopes`
10,000 per shard). Each size then runs in its own subprocess (so peak RSS is that size's)
through the source partition, the pre-aggregator and the 16 shard engines in-process, as
`spendwatch explain` drives them (Bytewax not running, one thread). Per size it prints
events/s (whole pipeline: parse, aggregate, engine; also per CPU second, which a busy
neighbour on a shared machine does not inflate), engine seconds, data scope-windows
per second (the (rule, scope, window) cells that have events: what the events make),
bytes per (rule, scope) held at the end (pickled detector state and its share of the
RSS growth, and the bytes of the objects each rule's scopes hold, measured object by
object), and peak RSS. The last line is one JSON object with every figure and
`ratio_sparse_to_dense`: events/s of the sparsest over the densest size of this run.
`--million` adds the 1,000,000-scope size (opt-in: its zero-filled windows take tens of
CPU minutes, see the README's *Scope scaling*).
Last, for each rule alone, the CPU time of one window close of a shard holding
`--close-scopes` scopes (default 100 k), 1 % of them with data in that window.

    .venv/bin/python bench/scopes.py [--events 300000] [--scopes 100,10000,100000]
                                     [--million] [--close-scopes 100000]
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

from spendwatch.ops import demo

DAYS = 3
START = 1_795_000_000 - 1_795_000_000 % 86400  # a midnight, UTC
CONFIG = """
source: {{type: jsonl, path: {events}, decode_processes: 0}}
engine:
  allowed_lateness: 2m
dead_letter:
  path: null
{pricing}
detectors:
  - {{name: prompt-spend, type: robust_seasonal, scope: [prompt_id], window: 15m}}
  - name: prompt-output-tokens
    type: unit_cost
    scope: [prompt_id]
    metric: output_tokens_per_request
    window: 15m
receivers: []
"""


def write_events(path: Path, events: int, scopes: int, seed: int = 1) -> None:
    """``events`` LLM calls over three days, each on one of ``scopes`` prompts at random."""
    from spendwatch.core.timefmt import rfc3339

    rng = random.Random(seed)
    span = DAYS * 86400
    times = sorted(rng.random() * span for _ in range(events))
    models = list(demo.PRICES)
    with path.open("wb") as handle:
        for i, offset in enumerate(times):
            prompt = rng.randrange(scopes)
            handle.write(
                orjson.dumps(
                    {
                        "event_id": f"e{i}",
                        "ts": rfc3339(START + offset),
                        "tenant": f"t{prompt % 7}",
                        "prompt_id": f"p{prompt}",
                        "model": models[prompt % len(models)],
                        "input_tokens": 800 + rng.randrange(800),
                        "output_tokens": 100 + rng.randrange(300),
                        "requests": 1,
                    }
                )
                + b"\n"
            )


def rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def run_one(config_path: str) -> dict:
    """One size, in this process: the pipeline of ``spendwatch explain`` without a tracer."""
    from spendwatch.config import load_config
    from spendwatch.core.logging import configure
    from spendwatch.dataflows.aggregate import PreAggregator
    from spendwatch.dataflows.engine import EnginePlan, ShardEngine
    from spendwatch.dataflows.inputs import build_source
    from spendwatch.ops.backtest import replay_source
    from spendwatch.ops.replay import _batches

    configure("warning")
    config = load_config(config_path)
    path = config.source.path
    parts = build_source(replay_source(config, path), config.parser_settings()).list_parts()
    plan = EnginePlan.from_config(config, parts)
    aggregator = PreAggregator(plan.aggregations, config.engine.shards, plan.per_request)
    engines = {str(s): ShardEngine(plan) for s in range(config.engine.shards)}
    rss_before = rss_bytes()
    alerts = events = 0
    engine_seconds = 0.0
    clock = time.perf_counter
    cpu_started = time.process_time()
    started = clock()
    for part, batch in _batches(config, path):
        events += batch.size
        for key, (stream_time, rows) in aggregator.route(batch):
            tick = clock()
            alerts += len(engines[key].on_message(stream_time, rows, part, idle=batch.caught_up))
            engine_seconds += clock() - tick
    tick = clock()
    for engine in engines.values():
        alerts += len(engine.flush())
    engine_seconds += clock() - tick
    seconds = clock() - started
    cpu_seconds = time.process_time() - cpu_started
    rss_after = rss_bytes()
    from memory import deep_size  # bench/memory.py, next to this file

    held = {rule.name: 0 for rule in plan.detectors}
    pickled = {rule.name: 0 for rule in plan.detectors}
    objects = {rule.name: 0 for rule in plan.detectors}
    for engine in engines.values():
        for name in held:
            states = engine.detector_states.get(name, {})
            held[name] += len(states)
            pickled[name] += len(pickle.dumps(states, protocol=pickle.HIGHEST_PROTOCOL))
            # the state objects and the engine's own entry per scope (its progress), without
            # the scope tuples the rules share
            seen = {id(scope) for scope in states} | {id(s) for scope in states for s in scope}
            objects[name] += deep_size(states, seen) + deep_size(
                engine.detector_progress.get(name, {}), seen
            )  # a cold scope's row is in its store's arrays, reached through the state
    rule_scopes = sum(held.values())
    windows = sum(e.counters.windows_closed for e in engines.values())
    return {
        "events": events,
        "seconds": round(seconds, 3),
        "engine_seconds": round(engine_seconds, 3),
        "events_per_s": round(events / seconds),
        # the machines are shared: CPU time is what a busy neighbour does not inflate
        "cpu_seconds": round(cpu_seconds, 3),
        "events_per_cpu_s": round(events / cpu_seconds),
        # both rules judge the same aggregation: each data window is judged by each rule
        "scope_windows": windows * len(plan.detectors),
        "scope_windows_per_s": round(windows * len(plan.detectors) / seconds),
        "scopes_held": held,
        "evicted_scopes": sum(e.counters.evicted_scopes for e in engines.values()),
        "pickled_bytes_per_rule_scope": {
            name: round(pickled[name] / held[name]) if held[name] else None for name in held
        },
        "state_bytes_per_rule_scope": {
            name: round(objects[name] / held[name]) if held[name] else None for name in held
        },
        "rss_bytes_per_rule_scope": (
            round((rss_after - rss_before) / rule_scopes) if rule_scopes else None
        ),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "alerts": alerts,
    }


def close_cpu_seconds(kind: str, scopes: int, closes: int = 12, settle: int = 4) -> float:
    """CPU seconds (median) of one window close of a shard holding ``scopes`` scopes of one
    rule, 1 % of them with data in the window: what the quiet 99 % cost at every close.

    The median is over the closes after the first ``settle``: by then every quiet scope
    has been quiet long enough to be judged as a row (``robust_columns.QUIET_WINDOWS``);
    the closes before it pay once for moving the scopes into rows."""
    from spendwatch.config import SpendwatchConfig
    from spendwatch.dataflows.engine import EnginePlan, ShardEngine
    from spendwatch.ingest.pricing import NANOS_PER_USD

    rule = {"name": "r", "type": kind, "scope": ["prompt_id"], "window": "15m"}
    if kind == "unit_cost":
        rule["metric"] = "output_tokens_per_request"
    rule["max_scopes"] = 10 * scopes
    config = SpendwatchConfig.model_validate(
        {"detectors": [rule], "engine": {"allowed_lateness": 0}}
    )
    engine = ShardEngine(EnginePlan.from_config(config))
    rng = random.Random(1)
    names = [(f"p{i}",) for i in range(scopes)]

    def row(scope: tuple[str, ...], start: int) -> tuple:
        n = rng.randint(1, 3)
        return (0, scope, start, n * NANOS_PER_USD // 1000, n, 1000 * n, 200 * n, n)

    window = 900
    engine.on_message(START + window - 1, [row(s, START) for s in names])  # all scopes seen
    seconds = []
    for w in range(1, closes + 1):
        start = START + w * window
        rows = [row(s, start) for s in rng.sample(names, max(scopes // 100, 1))]
        tick = time.process_time()
        engine.on_message(start + window - 1, rows)  # closes the window before
        seconds.append(time.process_time() - tick)
    steady = sorted(seconds[settle:])
    return steady[len(steady) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--scopes", default="100,10000,100000")
    parser.add_argument("--million", action="store_true", help="add the 1,000,000-scope size")
    parser.add_argument(
        "--close-scopes", type=int, default=100_000, help="scopes of the window-close timing"
    )
    parser.add_argument("--one", help=argparse.SUPPRESS)  # a config: run one size, print JSON
    parser.add_argument("--close-one", help=argparse.SUPPRESS)  # KIND:SCOPES
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one)))
        return
    if args.close_one:
        kind, scopes = args.close_one.split(":")
        print(json.dumps(close_cpu_seconds(kind, int(scopes))))
        return
    sizes = [int(s) for s in args.scopes.split(",")] + ([1_000_000] if args.million else [])
    results = {}
    with tempfile.TemporaryDirectory(prefix="spendwatch-scopes-") as tmp:
        for scopes in sizes:
            events = Path(tmp) / f"events-{scopes}.jsonl"
            write_events(events, args.events, scopes)
            config = Path(tmp) / f"config-{scopes}.yaml"
            config.write_text(CONFIG.format(events=events, pricing=demo.pricing_yaml()))
            command = [sys.executable, __file__, "--one", str(config)]
            done = subprocess.run(command, check=True, capture_output=True, text=True)
            figures = json.loads(done.stdout.strip().splitlines()[-1])
            results[scopes] = figures
            events.unlink()
            pickled = figures["pickled_bytes_per_rule_scope"]
            print(
                f"{scopes:>9,} scopes: {figures['events_per_s']:>9,} events/s "
                f"({figures['seconds']:.1f} s, engine {figures['engine_seconds']:.1f} s, "
                f"CPU {figures['cpu_seconds']:.1f} s)  "
                f"{figures['scope_windows_per_s']:>9,} scope-windows/s  "
                f"state/rule-scope: objects {figures['state_bytes_per_rule_scope']}, "
                f"pickled {pickled}, RSS "
                f"{figures['rss_bytes_per_rule_scope']} B  held {figures['scopes_held']}  "
                f"peak RSS {figures['peak_rss_mb']} MB  {figures['alerts']} alerts",
                file=sys.stderr,
                flush=True,
            )
    closes = {}
    if args.close_scopes:
        for kind in ("robust_seasonal", "unit_cost"):
            command = [sys.executable, __file__, "--close-one", f"{kind}:{args.close_scopes}"]
            done = subprocess.run(command, check=True, capture_output=True, text=True)
            closes[kind] = round(json.loads(done.stdout.strip().splitlines()[-1]), 4)
            print(
                f"one window close, {args.close_scopes:,} scopes of {kind} (1 % with data): "
                f"{closes[kind]:.3f} CPU s",
                file=sys.stderr,
                flush=True,
            )
    densest, sparsest = results[min(sizes)], results[max(sizes)]
    print(
        json.dumps(
            {
                "bench": "scopes",
                "events": args.events,
                "days": DAYS,
                "rules": ["robust_seasonal spend", "unit_cost output_tokens_per_request"],
                "by_scopes": {str(k): v for k, v in results.items()},
                "close_scopes": args.close_scopes,
                "close_cpu_s": closes,
                "ratio_sparse_to_dense": round(
                    sparsest["events_per_s"] / densest["events_per_s"], 4
                ),
                "ratio_sparse_to_dense_cpu": round(
                    sparsest["events_per_cpu_s"] / densest["events_per_cpu_s"], 4
                ),
            }
        )
    )


if __name__ == "__main__":
    main()
