"""False alerts per day and detection delays of each detector on a realistic stream.

Generates two weeks of multi-tenant usage starting on a Thursday (so the detectors meet
a weekend and a Monday with one week of history at most), with Monday-morning surges,
a noisy-but-normal tenant and four planted incidents at unaligned onsets: a ×5 output
token regression, a ×8 request loop on one tenant, a silent model switch, and one
session looping ×8. Runs ``config/precision.yaml`` (or ``--config``) through the real
backtest and prints, per rule, false alerts/day and minutes from onset to the first
alert; the last line is the same as JSON.

    .venv/bin/python bench/precision.py [--days 14] [--out out/precision]
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from spendwatch.config import load_config  # noqa: E402
from spendwatch.ops import demo  # noqa: E402
from spendwatch.ops.backtest import backtest  # noqa: E402
from spendwatch.ops.evaluation import as_dict, dump_incidents, load_incidents, score_rules  # noqa: E402

START = datetime(2026, 11, 12, tzinfo=timezone.utc)  # a Thursday


def realistic(days: float = 14.0, seed: int = 21, scale: float = 0.3) -> demo.DemoStream:
    """The evaluation stream (also used by the tests, with fewer days)."""
    return demo.generate(
        days=days,
        start=START,
        seed=seed,
        scale=scale,
        monday_surge=1.4,
        regression_at_hours=6 * 24 + 14 + 7 / 60,
        spike_at_hours=8 * 24 + 10 + 20 / 60,
        switch_tenant="acme",
        switch_at_hours=11 * 24 + 9 + 40 / 60,
        loop_tenant="umbrella",
        loop_at_hours=12 * 24 + 15 + 10 / 60,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=float, default=14.0)
    parser.add_argument("--seed", type=int, default=21)
    parser.add_argument("--config", default=str(REPO / "config" / "precision.yaml"))
    parser.add_argument("--out", default="out/precision")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stream = realistic(args.days, args.seed)
    stream.write(str(out / "events.jsonl"))
    dump_incidents(out / "incidents.json", stream.incidents, stream.start, stream.end)
    config = load_config(args.config)
    alerts_path = out / "alerts.jsonl"
    backtest(config, str(out / "events.jsonl"), str(alerts_path), dead_letter=str(out / "dl"))
    alerts = [json.loads(line) for line in alerts_path.read_text().splitlines()]
    incidents, start, end = load_incidents(out / "incidents.json")
    scores = score_rules(alerts, incidents, start, end, [d.name for d in config.detectors])
    kinds = [i.kind for i in incidents]
    print("| rule | firing | false | false/day | " + " | ".join(kinds) + " |")
    print("|---|---:|---:|---:|" + "---:|" * len(kinds))
    for score in scores.values():
        delays = " | ".join(
            "–" if score.delays_minutes[k] is None else f"{score.delays_minutes[k]:g} min"
            for k in kinds
        )
        print(
            f"| {score.rule} | {score.firing} | {score.false_alerts} | "
            f"{score.false_per_day:.2f} | {delays} |"
        )
    print(json.dumps(as_dict(scores)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
