"""Detection across a family of scenarios: the production detectors on streams nobody tuned.

Draws one scenario per seed from the family of ``bench/scenario_family.py`` (LLM usage
with tenant, feature, model and prompt_id; rates of 1–3,000 requests/h per tenant
feature; Poisson to heavy gamma noise; per-tenant diurnal and weekend cycles;
heavy-tailed tokens or, on odd seeds, the real Azure trace's token pairs and arrival
pattern; a 14-day warm-up, then incidents of four types at any hour and normal changes
that must not page), runs exactly the ``detectors:`` (and ``budgets:``) of
``config/production.yaml`` through the real backtest (only the source, the pricing and
the receivers are replaced), and scores the alerts (``bench/scenario_scoring.py``): recall
per incident type, scope-rate band and effect band, detection delays, false alerts per
scope-day and per day, the worst seed, and the same figures for a naive baseline (an
hourly 3-sigma z-score per scope, computed here with numpy). The last line is JSON.

    .venv/bin/python bench/scenarios.py                      # held-out seeds 100-139
    .venv/bin/python bench/scenarios.py --seeds 0-19         # the tuning seeds
    .venv/bin/python bench/scenarios.py --quick              # CI size: 2 seeds, < 60 s

Per seed, ``--out`` keeps ``labels.json`` (incidents and normal changes with scope,
onset, end, type, effect and scope rate), ``alerts.jsonl`` and, with ``--keep-events``,
``events.jsonl``.

The Azure background resamples ``../shared/real/azure_llm_inference_code_2023.csv``:
Azure LLM inference trace (code, 2023-11-16), Azure Public Dataset, CC BY 4.0, from
"Splitwise: Efficient generative LLM inference using phase splitting" (ISCA 2024).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import scenario_family as family  # noqa: E402
from bench import scenario_scoring as scoring  # noqa: E402
from spendwatch.config import JsonlSourceConfig, SpendwatchConfig, load_config  # noqa: E402
from spendwatch.core.logging import configure as configure_logging  # noqa: E402
from spendwatch.ingest.pricing import ModelPrice, PricingConfig  # noqa: E402
from spendwatch.ops.backtest import backtest  # noqa: E402  (the one place the bench imports it)

PRODUCTION = REPO / "config" / "production.yaml"
TUNING_SEEDS = "0-19"
REPORT_SEEDS = "100-139"


def parse_seeds(text: str) -> list[int]:
    """``100-139``, ``3`` or ``0-4,9``."""
    seeds: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.strip().partition("-")
        seeds.extend(range(int(lo), int(hi or lo) + 1))
    return seeds


def rule_scopes(config: SpendwatchConfig) -> dict[str, list[str]]:
    return {d.name: list(d.scope) for d in config.detectors}


def bench_config(
    config: SpendwatchConfig, events: str, decode_processes: int | str = "auto"
) -> SpendwatchConfig:
    """``config`` reading ``events`` with the family's prices and no receivers."""
    pricing = PricingConfig(
        models={
            m: ModelPrice(input=p_in, output=p_out) for m, (_, p_in, p_out) in family.MODELS.items()
        }
    )
    source = JsonlSourceConfig(path=events, follow=False, decode_processes=decode_processes)
    return config.model_copy(update={"source": source, "pricing": pricing, "receivers": []})


def family_options(config: SpendwatchConfig, base: family.FamilyOptions) -> family.FamilyOptions:
    return replace(base, windows=tuple(sorted({int(d.window) for d in config.detectors})))


def evaluate(
    spec: family.Spec,
    config: SpendwatchConfig,
    out: Path,
    *,
    decode_processes: int | str = "auto",
    keep_events: bool = False,
) -> dict[str, Any]:
    """Render one scenario, backtest it, score the detectors and the baseline."""
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    stream = family.render(spec)
    events = out / "events.jsonl"
    stream.write(events)
    labels = stream.labels()
    (out / "labels.json").write_text(json.dumps(labels, indent=1))
    generated = time.perf_counter()
    alerts_path = out / "alerts.jsonl"
    summary = backtest(
        bench_config(config, str(events), decode_processes),
        str(events),
        str(alerts_path),
        dead_letter=str(out / "dead_letter.jsonl"),
    )
    replayed = time.perf_counter()
    alerts = [json.loads(line) for line in alerts_path.read_text().splitlines() if line]
    rules = rule_scopes(config)
    result = scoring.score(alerts, labels, rules)
    dims = list(dict.fromkeys(tuple(d) for d in rules.values()))
    base = scoring.baseline_alerts(stream.series_dims, stream.hourly_spend, spec.start, dims)
    result["baseline"] = scoring.score(
        base, labels, {f"{scoring.BASELINE}[{','.join(d)}]": d for d in dims}
    )
    result["dead_lettered"] = summary["dead_lettered"]
    result["seconds"] = {
        "generate": round(generated - started, 2),
        "backtest": round(replayed - generated, 2),
        "score": round(time.perf_counter() - replayed, 2),
    }
    if not keep_events:
        events.unlink()
    return result


def run_seed(task: tuple[int, family.FamilyOptions, str, str, int | str, bool]) -> dict[str, Any]:
    seed, options, config_path, out, decode_processes, keep_events = task
    configure_logging("warning")  # the backtest logs every alert at info
    config = load_config(config_path)
    spec = family.draw(seed, options)
    return evaluate(
        spec,
        config,
        Path(out) / f"seed-{seed}",
        decode_processes=decode_processes,
        keep_events=keep_events,
    )


# ----------------------------------------------------------------------------------------
# Report


def _cell(entry: dict[str, Any]) -> str:
    if not entry["n"]:
        return "–"
    return f"{entry['detected']}/{entry['n']} {100 * entry['recall']:.0f}%"


def _delay(entry: dict[str, Any]) -> str:
    return "–" if not entry["n"] else f"{entry['median']:g} / {entry['p95']:g}"


def print_tables(summary: dict[str, Any], baseline: dict[str, Any], out: Any = None) -> None:
    rates = [name for _, _, name in family.RATE_BANDS]
    effects = [name for _, _, name in family.EFFECT_BANDS]

    def line(text: str = "") -> None:
        print(text, file=out or sys.stdout)

    line(
        f"{summary['scenarios']} scenarios (seeds {_seed_text(summary['seeds'])}), "
        f"{summary['events']:,} events standing for {summary['requests']:,} requests, "
        f"{summary['incidents']} incidents, {summary['post_warmup_days']:g} days after warm-up"
    )
    line()
    line(
        "Recall (detected/planted) by scope rate and effect size; by chance: the same "
        "series one day earlier, matched by false alerts; above chance: (recall - chance) "
        "/ (1 - chance)"
    )
    line(
        "| type | all | "
        + " | ".join(rates)
        + " | "
        + " | ".join("×" + e for e in effects)
        + " | by chance | above chance |"
    )
    line("|---|---:|" + "---:|" * (len(rates) + len(effects) + 2))
    for kind in [*family.INCIDENT_TYPES, "all"]:
        if kind == "all":
            total = {
                "n": summary["incidents"],
                "recall": summary["recall"] or 0,
                "detected": summary["detected"],
            }
            by_rate = summary["recall_by_rate_band"]
            by_effect = summary["recall_by_effect_band"]
            chance = summary["chance_recall"]
            above = summary["recall_above_chance"]
        else:
            total = summary["recall_by_type"][kind]
            by_rate = summary["recall_by_type_rate_band"][kind]
            by_effect = summary["recall_by_type_effect_band"][kind]
            chance = summary["chance_recall_by_type"][kind]
            above = summary["recall_above_chance_by_type"][kind]
        cells = [
            _cell(total),
            *(_cell(by_rate[b]) for b in rates),
            *(_cell(by_effect[b]) for b in effects),
            _percent(chance),
            _percent(above),
        ]
        line(f"| {kind} | " + " | ".join(cells) + " |")
    oracle = [name for _, _, name in family.ORACLE_BANDS]
    line()
    line(
        "Recall by the evidence an oracle knowing the true noise would gather over the "
        "incident (nats, family.oracle_evidence); about 12 are needed at the default budget"
    )
    line("| incidents | all | " + " | ".join(oracle) + " |")
    line("|---|---:|" + "---:|" * len(oracle))
    rows = (
        (
            "all",
            summary["recall"]
            and {
                "n": summary["incidents"],
                "detected": summary["detected"],
                "recall": summary["recall"],
            },
            summary["recall_by_oracle_band"],
        ),
        ("×2+ on ≥ 1/h", summary["recall_target"], summary["recall_target_by_oracle_band"]),
    )
    for name, total, by_band in rows:
        line(f"| {name} | {_cell(total)} | " + " | ".join(_cell(by_band[b]) for b in oracle) + " |")
    line()
    line(
        "Detection delay, minutes from onset to the end of the first matching window (median / p95)"
    )
    line("| type | all | " + " | ".join(rates) + " |")
    line("|---|---:|" + "---:|" * len(rates))
    for kind in family.INCIDENT_TYPES:
        cells = [
            _delay(summary["delay_minutes"][kind]),
            *(_delay(summary["delay_minutes_by_type_rate_band"][kind][b]) for b in rates),
        ]
        line(f"| {kind} | " + " | ".join(cells) + " |")
    busy, thin = summary["delay_target_busy"], summary["thin_within_five_requests"]
    line(
        f"×3+ on scopes of ≥ 20 requests/h: {_delay(busy)} min (median / p95, "
        f"{busy['n']} found); ×3+ on 1–20/h: {thin['met']} of {thin['n']} found within "
        f"the time the scope takes to make five requests ({thin['detected']} found at all; "
        f"the oracle's own evidence is decisive that soon for {thin['oracle_met']})"
    )
    line()
    print_oracle_delays(summary, line)
    line()
    line("False alerts after the warm-up (anomaly alerts matching no incident)")
    line("| detector | false | per scope-day | per day | recall | by chance | above chance |")
    line("|---|---:|---:|---:|---:|---:|---:|")
    for name, s in (("production set", summary), (scoring.BASELINE, baseline)):
        line(
            f"| {name} | {s['false_alerts']} | {s['false_per_scope_day']:.5f} | "
            f"{s['false_per_day']:.3f} | {_percent(s['recall'])} | "
            f"{_percent(s['chance_recall'])} | {_percent(s['recall_above_chance'])} |"
        )
    line()
    by_band = summary["false_per_scope_day_by_rate_band"]
    line(
        "false per scope-day by the scope's usual rate: "
        + ", ".join(f"{k} {_number(v)}" for k, v in by_band.items())
    )
    by_rule = ", ".join(f"{k} {v}" for k, v in summary["false_by_rule"].items()) or "none"
    line(f"false alerts by rule: {by_rule}")
    on = summary["false_on_normal_changes"]
    rate = summary["false_per_scope_day_on_normal_changes"]
    line(
        "on normal changes (false alerts, per scope-day of the scopes each dominates): "
        + ", ".join(f"{k} {v} ({_number(rate[k])})" for k, v in on.items())
        + f"; on no labelled change: {summary['false_on_no_change']}"
    )
    line(
        "false per day by background: "
        + ", ".join(f"{k} {v:g}" for k, v in summary["false_by_background"].items())
        + "; recall by background: "
        + ", ".join(f"{k} {_cell(v)}" for k, v in summary["recall_by_background"].items())
    )
    line(
        f"before the incidents (warm-up days {scoring.DETECTOR_WARMUP_DAYS}–end of warm-up, "
        f"normal traffic): {summary['warmup_false_per_day']} false alerts/day"
    )
    line(f"caught first by: {summary['caught_first_by_rule']}")
    line(f"budget alerts (not anomalies, not counted as false): {summary['budget_alerts']}")
    wf, wr = summary["worst_seed_false"], summary["worst_seed_recall"]
    line(
        f"worst seed for false alerts: {wf['seed']} ({wf['background']}, {wf['false']} false, "
        f"{wf['false_per_day']:g}/day); for recall: {wr['seed']} ({wr['background']}, "
        f"recall {wr['recall']}, missed {wr['missed']})"
    )


def print_oracle_delays(summary: dict[str, Any], line: Any) -> None:
    """The delay against the physical limit: detected incidents' delays beside the
    oracle's (family.oracle_delay) on the same incidents."""
    against = summary["delay_against_oracle"]
    line(
        "Delay against the physical limit: minutes (median / p95) of the detected incidents "
        f"an oracle knowing the true noise reaches {summary['oracle_needed_nats']:g} nats on "
        "(family.oracle_delay; a lower bound, windows close every 15 min); excess = ours "
        "minus the oracle's, per incident"
    )
    line(
        "| incidents | found | oracle reaches | delay | oracle | excess "
        "| ≤ oracle + 15 min | ≤ oracle + 60 min |"
    )
    line("|---|---:|---:|---:|---:|---:|---:|---:|")
    rows = [
        *((kind, against["by_type"][kind]) for kind in family.INCIDENT_TYPES),
        ("all", against["all"]),
        ("×3+ on ≥ 20/h", against["target_busy"]),
    ]
    for name, entry in rows:
        cells = [
            str(entry["detected"]),
            str(entry["excess"]["n"]),
            _delay(entry["delay"]),
            _delay(entry["oracle"]),
            _delay(entry["excess"]),
            _share(entry["within_oracle_plus_15"]),
            _share(entry["within_oracle_plus_60"]),
        ]
        line(f"| {name} | " + " | ".join(cells) + " |")
    busy = summary["oracle_delay_target_busy"]
    line(
        f"the oracle on every ×3+ incident of ≥ 20 requests/h, found or not: {_delay(busy)} "
        f"min ({busy['n']} reached, {busy['unreached']} never within the first "
        f"{family.HORIZON // 3600} h)"
    )


def _share(entry: dict[str, Any]) -> str:
    return "–" if not entry["n"] else f"{entry['met']}/{entry['n']} {100 * entry['share']:.0f}%"


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.0f}%"


def _number(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def _seed_text(seeds: list[int]) -> str:
    ordered = sorted(seeds)
    if ordered == list(range(ordered[0], ordered[-1] + 1)):
        return f"{ordered[0]}-{ordered[-1]}" if len(ordered) > 1 else str(ordered[0])
    return ",".join(map(str, ordered))


def _ratio(ours: float | None, theirs: float | None) -> float | None:
    if ours is None or not theirs:
        return None
    return round(ours / theirs, 4)


def figures(summary: dict[str, Any], baseline: dict[str, Any], seconds: float) -> dict[str, Any]:
    """The JSON last line: the production set's figures and the baseline's."""
    keep = (
        "scenarios",
        "seeds",
        "events",
        "requests",
        "incidents",
        "recall",
        "recall_by_type",
        "chance_recall",
        "chance_recall_by_type",
        "recall_above_chance",
        "recall_above_chance_by_type",
        "recall_target",
        "recall_by_oracle_band",
        "recall_target_by_oracle_band",
        "recall_by_rate_band",
        "recall_by_effect_band",
        "recall_by_type_rate_band",
        "recall_by_type_effect_band",
        "recall_by_background",
        "delay_minutes",
        "delay_target_busy",
        "thin_within_five_requests",
        "delay_minutes_by_type_rate_band",
        "oracle_needed_nats",
        "delay_against_oracle",
        "oracle_delay_target_busy",
        "caught_first_by_rule",
        "false_alerts",
        "post_warmup_days",
        "scope_days",
        "false_per_scope_day",
        "false_per_day",
        "false_by_rule",
        "false_on_normal_changes",
        "false_per_scope_day_on_normal_changes",
        "false_on_no_change",
        "false_per_scope_day_by_rate_band",
        "false_by_background",
        "warmup_false_per_day",
        "budget_alerts",
        "worst_seed_false",
        "worst_seed_recall",
    )
    return {
        "bench": "scenarios",
        **{k: summary[k] for k in keep},
        "baseline": {
            "name": scoring.BASELINE,
            **{
                k: baseline[k]
                for k in (
                    "recall",
                    "recall_by_type",
                    "chance_recall",
                    "recall_above_chance",
                    "false_alerts",
                    "scope_days",
                    "false_per_scope_day",
                    "false_per_day",
                )
            },
        },
        "ratio_false_per_scope_day_vs_baseline": _ratio(
            summary["false_per_scope_day"], baseline["false_per_scope_day"]
        ),
        "ratio_false_per_day_vs_baseline": _ratio(
            summary["false_per_day"], baseline["false_per_day"]
        ),
        "ratio_recall_vs_baseline": _ratio(summary["recall"], baseline["recall"]),
        "ratio_recall_above_chance_vs_baseline": _ratio(
            summary["recall_above_chance"], baseline["recall_above_chance"]
        ),
        "seconds": round(seconds, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--seeds",
        default=None,
        help=f"e.g. {REPORT_SEEDS} (default) or {TUNING_SEEDS} (the tuning seeds)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="CI size: fewer days, tenants, features, incidents; seeds 0-1",
    )
    parser.add_argument("--days", type=int, default=None, help="stream length (default 21)")
    parser.add_argument("--warmup-days", type=int, default=None, help="default 14")
    parser.add_argument("--incidents", type=int, default=None, help="per scenario (default 6)")
    parser.add_argument("--background", choices=["mixed", "family", "azure"], default=None)
    parser.add_argument("--config", default=str(PRODUCTION))
    parser.add_argument("--out", default="out/scenarios")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--keep-events", action="store_true")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    config = load_config(args.config)
    options = family_options(config, family.QUICK if args.quick else family.FamilyOptions())
    overrides = {
        "days": args.days,
        "warmup_days": args.warmup_days,
        "incidents": args.incidents,
        "background": args.background,
    }
    options = replace(options, **{k: v for k, v in overrides.items() if v is not None})
    seeds = parse_seeds(args.seeds or ("0-1" if args.quick else REPORT_SEEDS))
    out = Path(args.out)
    for stale in out.glob("seed-*"):  # an earlier run's scenarios, not anything else there
        shutil.rmtree(stale)
    out.mkdir(parents=True, exist_ok=True)
    jobs = max(1, min(args.jobs, len(seeds)))
    # one decode helper per CPU is the default; scenarios in parallel take the CPUs instead
    decode: int | str = "auto" if jobs == 1 else 0
    tasks = [(s, options, args.config, str(out), decode, args.keep_events) for s in seeds]
    results = []
    if jobs == 1:
        iterator = map(run_seed, tasks)
        pool = None
    else:
        pool = multiprocessing.get_context("spawn").Pool(jobs)
        iterator = pool.imap_unordered(run_seed, tasks)
    try:
        for result in iterator:
            results.append(result)
            hit = sum(i["detected"] for i in result["incidents"])
            print(
                f"seed {result['seed']:>4} {result['background']:<6} "
                f"{result['events']:>7,} events  incidents {hit}/{len(result['incidents'])}  "
                f"false {len(result['false'])} (baseline {len(result['baseline']['false'])})  "
                f"{result['seconds']}",
                file=sys.stderr,
                flush=True,
            )
            if result["dead_lettered"]:
                print(f"  dead-lettered {result['dead_lettered']}", file=sys.stderr)
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    results.sort(key=lambda r: r["seed"])
    summary = scoring.summarise(results)
    baseline = scoring.summarise([r["baseline"] for r in results])
    (out / "summary.json").write_text(
        json.dumps({"production": summary, "baseline": baseline}, indent=1)
    )
    print_tables(summary, baseline)
    print(json.dumps(figures(summary, baseline, time.perf_counter() - started)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
