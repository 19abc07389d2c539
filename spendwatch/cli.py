"""The ``spendwatch`` command: run, backtest, explain, check-config, schema, demo."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import threading
from collections.abc import Sequence
from typing import Any

from spendwatch import __version__
from spendwatch.config import ConfigError, SpendwatchConfig, config_json_schema, load_config
from spendwatch.core import stats
from spendwatch.core.logging import configure, get_logger, status

_LEVELS = ["debug", "info", "warning", "error", "critical"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        code = args.handler(args)
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        # the reader went away (``spendwatch schema | head``): stop quietly, like cat does
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spendwatch", description="Streaming FinOps anomaly and budget alerting."
    )
    parser.add_argument("--version", action="version", version=f"spendwatch {__version__}")
    commands = parser.add_subparsers(dest="command")

    run = commands.add_parser("run", help="run the long-lived worker")
    run.add_argument("--config", required=True, help="YAML config file")
    run.add_argument("--workers", type=int, default=1, help="worker threads in this process")
    run.add_argument("--state-dir", help="directory for recovery snapshots (resume after a crash)")
    run.add_argument(
        "--processes", type=int, default=1, help="cluster processes to start on this machine"
    )
    run.add_argument(
        "--process-id", type=int, help="this process's index in a cluster (with --addresses)"
    )
    run.add_argument(
        "--addresses", help="host:port of every cluster process, separated by ';' (Bytewax)"
    )
    run.add_argument("--dump-state", help="write budgets and counters as JSON here on exit")
    run.add_argument(
        "--log-level",
        default="info",
        type=str.lower,
        choices=_LEVELS,
        help="least severe log level",
    )
    run.set_defaults(handler=_cmd_run)

    backtest = commands.add_parser("backtest", help="replay history and write the alerts raised")
    backtest.add_argument("--config", required=True, help="YAML config file")
    backtest.add_argument(
        "--input",
        required=True,
        help="JSONL usage events (a glob pattern reads several files, one partition each)",
    )
    backtest.add_argument("--alerts-out", required=True, help="JSONL file for the alerts")
    backtest.add_argument("--dead-letter", help="JSONL file for rejected events")
    backtest.add_argument(
        "--deliver", action="store_true", help="also deliver to the configured receivers"
    )
    backtest.add_argument("--workers", type=int, default=1, help="worker threads")
    backtest.add_argument("--quiet", action="store_true", help="no progress bar, no summary")
    backtest.add_argument(
        "--log-level",
        default="warning",
        type=str.lower,
        choices=_LEVELS,
        help="least severe log level",
    )
    backtest.add_argument(
        "--incidents", help="JSON of known incidents (demo --incidents-out): false alerts/day"
    )
    backtest.add_argument("--report", metavar="DIR", help="write an HTML report with timelines")
    backtest.set_defaults(handler=_cmd_backtest)

    explain = commands.add_parser(
        "explain", help="baseline, window value and z of one scope at one time"
    )
    explain.add_argument("--config", required=True, help="YAML config file")
    explain.add_argument("--input", required=True, help="JSONL usage events")
    explain.add_argument(
        "--scope", required=True, help="e.g. tenant=acme or tenant=acme,feature=chat"
    )
    explain.add_argument("--at", required=True, help="RFC 3339 time inside the window")
    explain.add_argument("--rule", help="only this rule")
    explain.set_defaults(handler=_cmd_explain)

    check = commands.add_parser("check-config", help="validate config files")
    check.add_argument("files", nargs="+", metavar="FILE", help="YAML config files")
    check.set_defaults(handler=_cmd_check)

    schema = commands.add_parser("schema", help="print the JSON Schema of the config")
    schema.add_argument("--events", action="store_true", help="the usage-event schema instead")
    schema.set_defaults(handler=_cmd_schema)

    reference = commands.add_parser(
        "config-reference", help="print the configuration reference (Markdown)"
    )
    reference.set_defaults(handler=_cmd_config_reference)

    demo = commands.add_parser("demo", help="write the bundled synthetic demo stream")
    demo.add_argument("--out", required=True, help="JSONL file to write")
    demo.add_argument("--days", type=float, default=4.0, help="days of usage (default 4)")
    demo.add_argument("--scale", type=float, default=1.0, help="event volume factor (default 1)")
    demo.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    demo.add_argument("--incidents-out", help="also write the planted incidents as JSON")
    demo.set_defaults(handler=_cmd_demo)
    return parser


def _load(path: str) -> SpendwatchConfig | None:
    try:
        return load_config(path)
    except ConfigError as error:
        for problem in error.problems:
            print(f"error: {problem}", file=sys.stderr)
        return None


def _cmd_check(args: argparse.Namespace) -> int:
    failed = False
    for path in args.files:
        config = _load(path)
        if config is None:
            failed = True
        else:
            print(
                f"{path}: ok ({len(config.detectors)} detectors, {len(config.budgets)} budgets, "
                f"{len(config.receivers)} receivers)"
            )
    return 1 if failed else 0


def _cmd_schema(args: argparse.Namespace) -> int:
    if args.events:
        from spendwatch.ingest.events import event_json_schema

        schema = event_json_schema()
    else:
        schema = config_json_schema()
    print(json.dumps(schema, indent=2))
    return 0


def _cmd_config_reference(args: argparse.Namespace) -> int:
    from spendwatch.ops.configdoc import render

    print(render())
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from spendwatch.ops.demo import generate

    stream = generate(days=args.days, scale=args.scale, seed=args.seed)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    stream.write(args.out)
    print(f"wrote {len(stream.lines)} events to {args.out}")
    for incident in stream.incidents:
        print(f"planted {incident.kind} on {incident.scope} x{incident.factor:g}")
    if args.incidents_out:
        from spendwatch.ops.evaluation import dump_incidents

        dump_incidents(args.incidents_out, stream.incidents, stream.start, stream.end)
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    as_json = configure(args.log_level)
    log = get_logger("spendwatch")
    config = _load(args.config)
    if config is None:
        return 2
    if not as_json and any(r.type == "console" for r in config.receivers):
        # the console receiver prints one line per alert: the log need not say it again
        configure(args.log_level, json=False, drop={"alert"})
    from spendwatch.dataflows.sources import clobbered_input, missing_input
    from spendwatch.service.worker import Worker, WorkerOptions

    problem = missing_input(config.source) or clobbered_input(
        config.source, {"dead_letter.path": config.dead_letter.path}
    )
    if problem:
        print(f"error: {args.config}: {problem}", file=sys.stderr)
        return 2
    if (args.process_id is None) != (args.addresses is None):
        log.error("--process-id and --addresses go together")
        return 2
    options = WorkerOptions(
        config_path=args.config,
        state_dir=args.state_dir,
        workers=args.workers,
        process_id=args.process_id or 0,
        addresses=args.addresses.split(";") if args.addresses else None,
        dump_state=args.dump_state,
    )
    stats.reset()
    if args.processes > 1 and options.addresses is None:
        from spendwatch.service.cluster import Supervisor

        return Supervisor(config, options, args.processes, args.log_level).run()
    return Worker(config, options).run()


def _cmd_backtest(args: argparse.Namespace) -> int:
    configure(args.log_level)
    config = _load(args.config)
    if config is None:
        return 2
    from spendwatch.dataflows.sources import clobbered_input, missing_input
    from spendwatch.ops.backtest import backtest, replay_source

    if os.path.isdir(args.input):
        print(
            f"error: --input {args.input} is a directory; give a file or a quoted glob "
            f"such as '{os.path.join(args.input, '*.jsonl')}'",
            file=sys.stderr,
        )
        return 2
    source = replay_source(config, args.input)
    problem = missing_input(source) or clobbered_input(
        source,
        {
            "--alerts-out": args.alerts_out,
            "--dead-letter": args.dead_letter or config.dead_letter.path,
            "--report": args.report and os.path.join(args.report, "index.html"),
        },
    )
    if problem is not None:
        print(f"error: {problem.replace('source.path', '--input')}", file=sys.stderr)
        return 2
    progress = None
    if not args.quiet and sys.stderr.isatty():
        progress = _Progress()
        progress.start()
    try:
        summary = backtest(
            config,
            args.input,
            args.alerts_out,
            dead_letter=args.dead_letter,
            deliver=args.deliver,
            workers=args.workers,
        )
    finally:
        if progress:
            progress.stop()
    if not args.quiet:
        _print_summary(summary, args.alerts_out)
    scores = None
    if args.incidents:
        scores = _score(config, args.incidents, args.alerts_out)
    if args.report:
        from spendwatch.ops.replay import replay
        from spendwatch.ops.report import write_report

        page = write_report(args.report, config, replay(config, args.input), scores)
        print(f"report -> {page}", file=sys.stderr)
    return 0


def _score(config: SpendwatchConfig, incidents_path: str, alerts_out: str) -> dict[str, Any]:
    """Print false alerts/day and detection delays per detector against known incidents."""
    from spendwatch.ops.evaluation import load_incidents, score_rules

    incidents, start, end = load_incidents(incidents_path)
    with open(alerts_out, "rb") as handle:
        alerts = [json.loads(line) for line in handle if line.strip()]
    scores = score_rules(alerts, incidents, start, end, [d.name for d in config.detectors])
    print(f"against {len(incidents)} known incidents over {(end - start) / 86400:g} days:")
    for score in scores.values():
        delays = ", ".join(
            f"{kind} {'missed' if minutes is None else f'{minutes:g} min'}"
            for kind, minutes in score.delays_minutes.items()
        )
        print(
            f"  {score.rule}: {score.firing} fired, {score.false_alerts} false "
            f"({score.false_per_day:.2f}/day); first alert after onset: {delays}"
        )
    return scores


def _cmd_explain(args: argparse.Namespace) -> int:
    from spendwatch.core.timefmt import parse_rfc3339, rfc3339
    from spendwatch.ops.replay import replay

    config = _load(args.config)
    if config is None:
        return 2
    wanted = _scope_arg(args.scope)
    if wanted is None:
        print(
            f"error: --scope {args.scope!r}: expected DIMENSION=VALUE pairs separated by "
            "commas, e.g. tenant=acme or tenant=acme,feature=chat",
            file=sys.stderr,
        )
        return 2
    if os.path.isdir(args.input):
        print(f"error: --input {args.input} is a directory; give a JSONL file", file=sys.stderr)
        return 2
    try:
        at = parse_rfc3339(args.at)
    except ValueError as error:
        print(f"error: --at: {error}", file=sys.stderr)
        return 2

    def keep(detector: Any, scope: Any, start: int) -> bool:
        return (
            (args.rule is None or detector.name == args.rule)
            and dict(scope) == wanted
            and start <= at < start + detector.aggregation.window
        )

    points = replay(config, args.input, keep).points
    if not points:
        print(f"no detector judged a window of {args.scope} at {args.at}", file=sys.stderr)
        return 1
    for point in points:
        fields = {
            "rule": point.rule,
            "scope": dict(point.scope),
            "window_start": rfc3339(point.window_start),
            "value": point.value,
            "expected": point.expected,
            "upper": point.upper,
            "z": point.z,
            "warm": point.warm,
            # evidence, threshold, the count test's figures, ...; "beyond counting" (an
            # infinite once_in_days) is null: the output stays strict JSON
            **{k: v if math.isfinite(v) else None for k, v in point.details.items()},
        }
        print(json.dumps(fields))
    return 0


def _scope_arg(text: str) -> dict[str, str] | None:
    """``tenant=acme,feature=chat`` as a dict; ``None`` when a part has no ``=``."""
    pairs = [part.split("=", 1) for part in text.split(",") if part.strip()]
    if not pairs or any(len(pair) != 2 or not pair[0].strip() for pair in pairs):
        return None
    return {key.strip(): value for key, value in pairs}


def _print_summary(summary: dict[str, Any], alerts_out: str) -> None:
    rate = summary["events"] / summary["seconds"] if summary["seconds"] else 0.0
    out = sys.stderr
    print(
        f"events {summary['events']:,}  dead-lettered {summary['dead_lettered']:,}  "
        f"duplicates {summary['duplicates']:,}  blank lines {summary['blank_lines']:,}  "
        f"late {summary['late_events']:,}  "
        f"in {summary['seconds']:.1f}s ({rate:,.0f} events/s)",
        file=out,
    )
    for model, count in summary["fallback_priced"].items():
        print(f"priced by fallback: {model} ({count:,} events)", file=out)
    for budget, moved in summary.get("allocation", {}).items():
        print(
            f"allocated in {budget}: ${moved['shared_nanos'] / 1e9:,.2f} shared, "
            f"${moved['by_window_nanos'] / 1e9:,.2f} by the window's usage, "
            f"${moved['by_last_shares_nanos'] / 1e9:,.2f} by the last known shares, "
            f"${moved['unallocated_nanos'] / 1e9:,.2f} unallocated",
            file=out,
        )
    print(f"alerts {summary['alerts']:,} -> {alerts_out}", file=out)
    for rule, count in summary["alerts_by_rule"].items():
        print(f"  {rule}: {count}", file=out)


class _Progress:
    """A one-line progress bar on stderr while a backtest runs (terminals only).

    Log lines go above it (``spendwatch.core.logging.status``), never onto it."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        status(None)

    def _loop(self) -> None:
        while not self._stop.wait(0.2):
            status(progress_line(stats.current()))


def progress_line(counters: stats.RunStats) -> str:
    """The bar for the counters so far. Input is read ahead of parsing: until the first
    events are counted the bar says so instead of showing the bytes read ahead."""
    alerts = sum(counters.alerts_by_rule.values())
    if counters.events == 0:
        return f"[{'':<30}] starting  {alerts} alerts"
    done = min(counters.bytes_read / max(counters.bytes_total, 1), 1.0)
    bar = "#" * int(done * 30)
    return f"[{bar:<30}] {done:5.1%} read  {counters.events:,} events  {alerts} alerts"


if __name__ == "__main__":
    raise SystemExit(main())
