"""The scenario-family bench (bench/scenarios.py) in its quick mode: what it plants is in
the stream and labelled, it runs exactly the production detectors, its last line is the
JSON it promises, and a ×10 request loop on a busy scope is caught."""

from __future__ import annotations

import contextlib
import io
import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import orjson
import pytest

from bench import scenario_family as family
from bench.scenario_scoring import consistent
from bench.scenarios import PRODUCTION, bench_config, evaluate, family_options, main
from spendwatch.config import load_config
from spendwatch.core.timefmt import parse_rfc3339

SEEDS = (0, 1)  # one on the generated background, one on the Azure trace
KEYS = {
    "scenarios", "seeds", "incidents", "recall", "recall_by_type", "recall_by_rate_band",
    "recall_by_effect_band", "chance_recall", "recall_above_chance", "delay_minutes",
    "delay_minutes_by_type_rate_band", "false_alerts", "false_per_scope_day", "false_per_day",
    "false_on_normal_changes", "budget_alerts", "worst_seed_false", "worst_seed_recall",
    "baseline", "ratio_false_per_scope_day_vs_baseline", "ratio_recall_vs_baseline",
    "delay_against_oracle", "oracle_delay_target_busy", "oracle_needed_nats",
}  # fmt: skip


def _events(path: Path) -> list[dict]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("scenarios")
    stdout = io.StringIO()
    seeds = f"{SEEDS[0]}-{SEEDS[-1]}"
    argv = ["--quick", "--seeds", seeds, "--out", str(out), "--jobs", "2", "--keep-events"]
    with contextlib.redirect_stdout(stdout):
        assert main(argv) == 0
    return out, stdout.getvalue().splitlines()


def test_the_last_line_is_json_with_the_figures_and_the_baseline(quick):
    _, lines = quick
    figures = json.loads(lines[-1])
    assert set(figures) >= KEYS
    assert figures["scenarios"] == len(SEEDS) and figures["seeds"] == list(SEEDS)
    assert figures["baseline"]["name"] == "naive-z3-hourly-spend"
    assert 0 <= figures["recall"] <= 1 and figures["false_per_scope_day"] >= 0
    assert set(figures["recall_by_type"]) == set(family.INCIDENT_TYPES)
    assert set(figures["recall_by_rate_band"]) == {"<5/h", "5-20/h", "20-200/h", ">200/h"}
    assert any(line.startswith("| request_loop |") for line in lines), "the readable table"
    assert any(line.startswith("| ×3+ on ≥ 20/h |") for line in lines), "delay vs the oracle"
    against = figures["delay_against_oracle"]
    assert set(against["by_type"]) == set(family.INCIDENT_TYPES)
    for entry in (against["all"]["excess"], against["target_busy"]["oracle"]):
        assert set(entry) >= {"n", "median", "p95"}
    found = sum(entry["detected"] for entry in figures["recall_by_type"].values())
    assert against["all"]["excess"]["n"] + against["all"]["beyond_oracle"] == found


def test_incidents_and_normal_changes_are_labelled_and_inside_the_stream(quick):
    out, _ = quick
    for seed in SEEDS:
        labels = json.loads((out / f"seed-{seed}" / "labels.json").read_text())
        assert labels["background"] == ("azure" if seed % 2 else "family")
        assert {c["type"] for c in labels["normal_changes"]} == {"launch", "drift", "holiday"}
        assert all(not c["incident"] for c in labels["normal_changes"])
        assert len(labels["incidents"]) >= 3
        events = _events(out / f"seed-{seed}" / "events.jsonl")
        assert len(events) == labels["events"]
        assert sum(e.get("requests", 1) for e in events) == labels["requests"]
        stamps = [parse_rfc3339(e["ts"]) for e in events]
        for incident in labels["incidents"]:
            assert incident["type"] in family.INCIDENT_TYPES
            assert labels["warmup_end"] <= incident["onset"] < incident["end"] <= labels["end"]
            assert 1.5 <= incident["effect"] <= 10.0 + 1e-9
            assert incident["scope"] and incident["scope_rate"] > 0
            assert incident["rate_band"] and incident["effect_band"]
            reached = incident["oracle_delay_minutes"] is not None
            assert reached == (incident["oracle_nats"] >= family.ORACLE_NEEDED - 0.01)
            if reached:
                span = min(incident["end"], incident["onset"] + family.HORIZON)
                assert 0 <= incident["oracle_delay_minutes"] <= (span - incident["onset"]) / 60
            assert all(leaf in labels["series"] for leaf in incident["leaves"])
            inside = [
                e
                for e, ts in zip(events, stamps, strict=True)
                if incident["onset"] <= ts < incident["label_end"]
                and consistent(incident["scope"], e)
            ]
            assert inside, f"no traffic of {incident['scope']} during {incident['id']}"
            if incident["type"] == "model_switch":
                moved = incident["detail"]["model_to"]
                assert any(e["model"] == moved for e in inside), "the pricier model is used"


def test_the_bench_runs_exactly_the_production_detectors(quick, tmp_path):
    out, _ = quick
    config = load_config(PRODUCTION)
    replay = bench_config(config, str(tmp_path / "events.jsonl"))
    assert replay.detectors == config.detectors and replay.budgets == config.budgets
    assert replay.engine == config.engine
    names = {d.name for d in config.detectors} | {b.name for b in config.budgets}
    for seed in SEEDS:
        lines = (out / f"seed-{seed}" / "alerts.jsonl").read_text().splitlines()
        assert {json.loads(line)["rule"] for line in lines} <= names
        assert (out / f"seed-{seed}" / "dead_letter.jsonl").read_text() == ""


def test_a_tenfold_request_loop_on_a_busy_scope_is_caught(tmp_path):
    config = load_config(PRODUCTION)
    options = family_options(config, replace(family.QUICK, incidents=0))
    spec = family.draw(SEEDS[0], options)
    (tenant, feature), _ = max(
        spec.scopes().items(), key=lambda kv: sum(spec.leaves[i].rate for i in kv[1])
    )
    shape = spec.shapes[tenant]
    holiday = next(c for c in spec.changes if c.type == "holiday")
    day = next(
        d
        for d in range(spec.warmup_days, spec.days - 1)
        if not holiday.start - family.DAY < spec.start + d * family.DAY < holiday.label_end
    )
    peak = (shape.peak_hour - shape.tz_hours) % 24  # UTC hour of the tenant's busiest time
    onset = spec.start + day * family.DAY + peak * family.HOUR + 7 * 60
    loop = family.make_incident(
        spec, "request_loop", {"tenant": tenant, "feature": feature}, onset, 2 * family.HOUR, 10.0
    )
    spec = family.with_incidents(spec, [loop])
    assert loop.scope_rate > 200, "a busy scope"

    result = evaluate(spec, config, tmp_path, keep_events=True)

    def requests(lo: float, hi: float) -> int:
        return sum(
            e.get("requests", 1)
            for e in _events(tmp_path / "events.jsonl")
            if e["tenant"] == tenant
            and e.get("feature") == feature
            and lo <= parse_rfc3339(e["ts"]) < hi
        )

    during = requests(onset, onset + 2 * family.HOUR)
    day_before = requests(onset - family.DAY, onset - family.DAY + 2 * family.HOUR)
    assert during >= 5 * day_before > 0, (during, day_before)
    (caught,) = result["incidents"]
    assert caught["type"] == "request_loop" and caught["detected"], caught
    assert caught["delay_minutes"] <= 45, caught


def test_oracle_evidence_follows_the_noise_it_knows():
    """The physical limit the recall is read against: more requests, a larger effect or a
    quieter tenant give more evidence; the same loop on a gamma-noisy tenant gives less, and
    a Poisson hour's evidence is the closed form (ln x)² / (2 ln(1 + 1/λ))."""
    spec = family.draw(SEEDS[0], replace(family.QUICK, incidents=0))
    (tenant, feature), leaves = max(
        spec.scopes().items(), key=lambda kv: sum(spec.leaves[i].rate for i in kv[1])
    )
    scope = {"tenant": tenant, "feature": feature}
    onset = spec.warmup_end + 3 * family.HOUR

    def nats(kind: str, effect: float, shape: float, hours: float = 1.0) -> float:
        spec.dispersion[(tenant, feature)] = shape
        item = family.make_incident(spec, kind, scope, onset, hours * family.HOUR, effect)
        return family.oracle_evidence(spec, item)

    poisson = nats("request_loop", 3.0, 0.0)
    assert nats("request_loop", 6.0, 0.0) > poisson > nats("request_loop", 1.5, 0.0) > 0
    assert nats("request_loop", 3.0, 1.5) < poisson / 2, "hourly CV 0.8 hides a loop"
    assert nats("request_loop", 3.0, 0.0, hours=4) > 3 * poisson
    assert nats("request_loop", 1.0, 0.0) == 0.0
    rate = 0.0
    at = np.array([onset + family.HOUR / 2])
    for i in leaves:
        leaf = spec.leaves[i]
        r = leaf.rate * family.load_profile(spec.shapes[leaf.tenant], at, spec.start)[0]
        for change in spec.changes:
            if i in change.leaves:
                r *= float(family.change_factor(change, at)[0])
        rate += r
    assert poisson == pytest.approx(math.log(3.0) ** 2 / (2 * math.log1p(1 / rate)))
    per_request = nats("token_regression", 3.0, 0.0)
    assert per_request > 0 and nats("token_regression", 3.0, 1.5) == per_request, (
        "tokens per request do not see the tenant's volume noise"
    )
