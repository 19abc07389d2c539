"""The FOCUS specification's own example exports (AI billing, prompt caching, model identity,
correction handling) and the 1.0 sample: every file loads, and its money, models and tokens
are what the file says.

Expected values are computed here from the CSV text with the csv module, json and Decimal,
independently of the mapping under test.
"""

from __future__ import annotations

import csv
import json
from collections import Counter, defaultdict
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path

import orjson
import pytest
import yaml

from spendwatch.config import load_config
from spendwatch.ingest.focus import FocusMapper, FocusSourceConfig
from spendwatch.ingest.parser import EventParser
from spendwatch.ingest.pricing import PriceTable, PricingConfig
from spendwatch.ops.backtest import backtest

REAL = Path(__file__).resolve().parents[2] / "shared" / "real"
EXAMPLES = REAL / "focus_examples"
FILES = sorted(EXAMPLES.rglob("*.csv"))
SAMPLE = REAL / "focus_1.0_sample.csv"
NANOS = Decimal(1_000_000_000)
NULL_TEXT = {"", "NULL", "null", "(null)"}
DIMENSIONS = ["provider", "model", "labels.host_provider"]


def rows_of(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8-sig") as handle:
        return list(csv.DictReader(handle))


def is_null(text: str | None) -> bool:
    return text is None or text.strip() in NULL_TEXT


def month(text: str) -> str:
    return text.strip()[:7]  # "2025-05-01T00:00:00Z" and "2024-09-18 22:00:00" alike


def parse(path: Path, **source: object):
    config = FocusSourceConfig(path=str(path), **source)
    lines, dead = FocusMapper(config, path.name).map_rows(rows_of(path))
    parser = EventParser(PriceTable(PricingConfig()), DIMENSIONS, dedup_horizon=86400 * 800)
    batch = parser.parse(lines)
    return batch, dead + batch.dead


def batch_months(batch) -> dict[str, int]:
    totals: dict[str, int] = defaultdict(int)
    for ts, nanos in zip(batch.ts.tolist(), batch.spend_nanos.tolist(), strict=True):
        totals[datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m")] += nanos
    return dict(totals)


def expected_months(rows: list[dict[str, str]], billing_period: bool) -> dict[str, int]:
    totals: dict[str, int] = defaultdict(int)
    for row in rows:
        period = month(row["ChargePeriodStart"])
        if billing_period and row.get("ChargeClass", "").strip() == "Correction":
            period = max(period, month(row["BillingPeriodStart"]))
        totals[period] += round(Decimal(row["BilledCost"]) * NANOS)
    return dict(totals)


def test_the_folder_holds_the_49_files_its_readme_lists() -> None:
    listed = (EXAMPLES / "README.md").read_text()
    assert len(FILES) == 49
    for path in FILES:
        assert f"| {path.relative_to(EXAMPLES).as_posix()} |" in listed


@pytest.mark.parametrize("billing_period", [False, True], ids=["charge", "billing"])
@pytest.mark.parametrize("path", [*FILES, SAMPLE], ids=lambda p: p.relative_to(REAL).as_posix())
def test_every_file_loads_whole_with_its_totals_per_period(path: Path, billing_period: bool):
    rows = rows_of(path)
    mode = "billing_period" if billing_period else "charge_period"
    batch, dead = parse(path, corrections_count_in=mode)
    assert dead == []
    assert batch.size == len(rows)  # no two rows share an id: nothing is dropped as a repeat
    found, expected = batch_months(batch), expected_months(rows, billing_period)
    assert set(found) == set(expected)
    # exact in nano-dollars; a cost with more than 9 decimals (the 1.0 sample has some) is
    # rounded to a nano-dollar once, so it may differ by one in the last place
    finer = sum(-Decimal(r["BilledCost"]).as_tuple().exponent > 9 for r in rows)
    for period, nanos in expected.items():
        assert abs(found[period] - nanos) <= finer, period


def test_closed_period_corrections_move_to_the_billing_period_only_when_configured() -> None:
    path = (
        EXAMPLES
        / "correction-handling/closed-billing-period/scenario_2_late_arriving_usage_delta.csv"
    )
    charge, _ = parse(path)
    billing, _ = parse(path, corrections_count_in="billing_period")
    assert batch_months(charge) == {"2025-05": 1500 * 10**9}
    assert batch_months(billing) == {"2025-06": 1500 * 10**9}
    # an open-period correction has no ChargeClass: it stays where it was charged
    path = EXAMPLES / "correction-handling/open-billing-period-previous"
    path = path / "scenario_2_late_arriving_usage_delta.csv"
    assert batch_months(parse(path, corrections_count_in="billing_period")[0]) == {
        "2025-06": 1500 * 10**9
    }


AI_FILES = [p for p in FILES if p.parts[-2].startswith("ai_")]


def expected_tokens(rows: list[dict[str, str]]) -> dict[str, Counter]:
    """model -> input, cached_input and output token sums, read from the CSV by hand."""
    tokens: dict[str, Counter] = defaultdict(Counter)
    for row in rows:
        if is_null(row["SkuPriceDetails"]):
            continue
        details = json.loads(row["SkuPriceDetails"])
        model = details["ModelId"]
        tokens[model]["rows"] += 1
        if row["ConsumedUnit"] != "Tokens":
            continue
        count = int(Decimal(row["ConsumedQuantity"]))
        direction = details.get("TokenDirection") or row["SkuMeter"].split()[-2]
        if direction == "Output":
            tokens[model]["output"] += count
        else:
            assert direction == "Input", row["SkuMeter"]
            tokens[model]["input"] += count
            if (details.get("TokenCacheAction") or details.get("CacheRole")) == "Read":
                tokens[model]["cached_input"] += count
    return tokens


@pytest.mark.parametrize("path", AI_FILES, ids=lambda p: p.name)
def test_ai_rows_carry_model_provider_and_token_counts(path: Path) -> None:
    rows = rows_of(path)
    mapper = FocusMapper(FocusSourceConfig(path=str(path)))
    events = [mapper.event(r) for r in rows]
    found: dict[str, Counter] = defaultdict(Counter)
    for event in events:
        if "model" not in event:
            continue
        counts = found[event["model"]]
        counts["rows"] += 1
        counts["input"] += event.get("input_tokens", 0)
        counts["cached_input"] += event.get("cached_input_tokens", 0)
        counts["output"] += event.get("output_tokens", 0)
    assert {m: +c for m, c in found.items()} == {m: +c for m, c in expected_tokens(rows).items()}
    assert found  # every AI file names at least one model
    for row, event in zip(rows, events, strict=True):
        provider = row.get("ServiceProviderName") or row.get("ProviderName")
        assert event["provider"] == provider
        assert event["labels"]["host_provider"] == row["HostProviderName"]
    batch, dead = parse(path)
    assert dead == []
    assert "unattributed" not in batch.dims["provider"].tolist()
    assert int(batch.input_tokens.sum()) == sum(c["input"] for c in found.values())
    assert int(batch.output_tokens.sum()) == sum(c["output"] for c in found.values())


def test_the_ai_files_name_these_models_and_providers() -> None:
    models: set[str] = set()
    providers: set[str] = set()
    for path in AI_FILES:
        batch, _ = parse(path)
        models |= set(batch.dims["model"].tolist())
        providers |= set(batch.dims["provider"].tolist())
    assert providers == {"Solora AI", "Aura Web", "LatticeScale"}
    assert "solora-neptune-5.0" in models and "latticescale.solora-reasoning-pro" in models
    # only the prepayment purchase row (no SkuPriceDetails) has no model
    assert "unattributed" in models
    assert len(models - {"unattributed"}) == 11


def test_a_focus_ai_row_is_the_same_event_as_a_gateway_line() -> None:
    """A cache-read row parses exactly like the JSONL event a gateway would send."""
    path = EXAMPLES / "ai_model_billing/cached_tokens_via_csp_marketplace.csv"
    row = rows_of(path)[0]
    event = FocusMapper(FocusSourceConfig(path=str(path))).event(row)
    assert event["model"] == "solora-neptune-5.0"
    assert event["input_tokens"] == event["cached_input_tokens"] == 50_000_000
    assert "output_tokens" not in event
    gateway = {
        "event_id": event["event_id"],
        "ts": "2025-05-01T00:00:00Z",
        "model": "solora-neptune-5.0",
        "provider": "Solora AI",
        "input_tokens": 50_000_000,
        "cached_input_tokens": 50_000_000,
        "cost_usd": 10.0,
        "labels": {"host_provider": "Aura Web"},
    }
    batches = []
    for line in (event, gateway):
        parser = EventParser(PriceTable(PricingConfig()), DIMENSIONS, dedup_horizon=60)
        batches.append(parser.parse([orjson.dumps(line)]))
    focus, jsonl = batches
    for column in ("ts", "spend_nanos", "requests", "input_tokens", "output_tokens"):
        assert getattr(focus, column).tolist() == getattr(jsonl, column).tolist(), column
    for dimension in DIMENSIONS:
        assert focus.dims[dimension].tolist() == jsonl.dims[dimension].tolist()


def test_negative_token_corrections_keep_their_cost_and_drop_their_tokens() -> None:
    path = EXAMPLES / "ai_model_billing/per_token_ai_model_api.csv"
    row = dict(rows_of(path)[0], ConsumedQuantity="-8400000", BilledCost="-42.00")
    row["ChargeClass"] = "Correction"
    event = FocusMapper(FocusSourceConfig(path=str(path))).event(row)
    assert event["charge_category"] == "adjustment"
    assert event["cost_usd"] == -42.0
    assert "input_tokens" not in event and event["model"] == "solora-saturn-4.8"


def test_the_malformed_export_time_is_in_an_ignored_x_column() -> None:
    """The spec's example has ``x_ExportDateTime: 2025-07-5T00:00:00Z``; ``x_`` columns are
    not read, so that row loads; the same text in a column that is read dead-letters."""
    path = EXAMPLES / "correction-handling/open-billing-period-current"
    path = path / "scenario_1_partial_reallocation_delta.csv"
    rows = rows_of(path)
    assert [r["x_ExportDateTime"] for r in rows].count("2025-07-5T00:00:00Z") == 1
    batch, dead = parse(path)
    assert dead == [] and batch.size == 3
    broken = dict(rows[2], ChargePeriodStart="2025-07-5T00:00:00Z")
    lines, dead = FocusMapper(FocusSourceConfig(path=str(path)), "x").map_rows([broken])
    assert lines == []
    assert dead[0].reason == "FOCUS row: ChargePeriodStart '2025-07-5T00:00:00Z' is not a timestamp"
    # x_ columns are not part of the row id either: a re-export differs only there
    mapper = FocusMapper(FocusSourceConfig(path=str(path)))
    again = dict(rows[2], x_ExportDateTime="2025-08-01T00:00:00Z")
    assert mapper.event(again)["event_id"] == mapper.event(rows[2])["event_id"]


def test_every_null_spelling_is_missing() -> None:
    path = (
        EXAMPLES / "correction-handling/closed-billing-period/scenario_4_bulk_cost_only_ledger.csv"
    )
    rows = rows_of(path)
    spellings = {v for r in rows for v in r.values() if is_null(v)}
    assert spellings == {"", "(null)"}
    mapper = FocusMapper(
        FocusSourceConfig(
            path=str(path), columns={"labels.sku": "SkuId", "labels.unit": "PricingUnit"}
        )
    )
    for text in ("", "NULL", "null", "(null)", " (null) "):
        event = mapper.event(dict(rows[0], SkuId=text, PricingUnit=text))
        assert "labels" not in event, text


# -- a correction to a closed period, through the whole flow -----------------------------------

CLOSED = EXAMPLES / "correction-handling/closed-billing-period"


def filler(header: list[str], start: str, number: int) -> dict[str, str]:
    """A zero-cost row later in time: moves the stream clock (three are needed)."""
    row = dict.fromkeys(header, "")
    row.update(
        ChargeDescription=f"filler {start} {number}",
        ChargeCategory="Usage",
        ChargePeriodStart=start,
        BillingPeriodStart=start[:8] + "01T00:00:00Z",
        BilledCost="0",
        ResourceId="R-111",
    )
    return row


def run_closed_period(tmp_path: Path, mode: str) -> tuple[list[dict], list[dict[str, str]]]:
    """May's original usage, June usage that closes May, then the corrections for May
    (booked in June's invoice), then July usage that closes June."""
    original = rows_of(CLOSED / "scenario_1_partial_reallocation_original.csv")
    header = list(original[0])
    corrections = rows_of(CLOSED / "scenario_1_partial_reallocation_ledger.csv") + rows_of(
        CLOSED / "scenario_2_late_arriving_usage_delta.csv"
    )
    stream = [
        *original,
        *(filler(header, "2025-06-02T00:00:00Z", i) for i in range(3)),
        *corrections,
        *(filler(header, "2025-07-02T00:00:00Z", i) for i in range(3)),
    ]
    export = tmp_path / "export.csv"
    with export.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=header)
        writer.writeheader()
        writer.writerows(stream)
    config_file = tmp_path / "focus.yaml"
    config_file.write_text(
        yaml.safe_dump(
            {
                "source": {
                    "type": "focus",
                    "path": str(export),
                    "corrections_count_in": mode,
                    "columns": {"labels.resource": "ResourceId"},
                    "batch_rows": 1,  # one row per batch: each correction is its own message
                },
                "dimensions": ["labels.resource"],
                "dead_letter": {"path": str(tmp_path / "dead.jsonl")},
                "budgets": [
                    {
                        "name": "per-resource",
                        "scope_by": ["labels.resource"],
                        "amount_usd": 1000,
                        "period": "month",
                        "thresholds": [100, 200],
                    },
                ],
                "receivers": [],
            }
        )
    )
    summary = backtest(load_config(config_file), str(export), str(tmp_path / "alerts.jsonl"))
    assert summary["events"] == len(stream)
    assert summary["dead_lettered"] == 0
    alerts = [json.loads(x) for x in (tmp_path / "alerts.jsonl").read_text().splitlines()]
    return alerts, stream


def final_totals(alerts: list[dict]) -> dict[tuple[str, str], float]:
    """(resource, period) -> the observed total of its last resolved alert."""
    totals = {}
    for alert in alerts:
        if alert["status"] == "resolved":
            totals[(alert["scope"]["labels.resource"], alert["period"])] = alert["observed"]
    return totals


@pytest.mark.parametrize("mode", ["charge_period", "billing_period"])
def test_a_correction_to_a_closed_period_corrects_its_alert_and_never_duplicates(
    tmp_path: Path, mode: str
) -> None:
    alerts, stream = run_closed_period(tmp_path, mode)
    assert len({a["alert_id"] for a in alerts}) == len(alerts)  # nothing is sent twice
    firing = Counter(a["fingerprint"] for a in alerts if a["status"] == "firing")
    assert set(firing.values()) == {1}  # each threshold of each period fires once
    expected: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    for row in stream:
        period = month(row["ChargePeriodStart"])
        if mode == "billing_period" and row["ChargeClass"] == "Correction":
            period = month(row["BillingPeriodStart"])
        expected[(row["ResourceId"] or "unattributed", period)] += Decimal(row["BilledCost"])
    crossing = {key: total for key, total in expected.items() if total >= 1000}
    totals = final_totals(alerts)
    # R-111 in May: 1500, then 1200 after the ledger's negation and re-bill; the late
    # usage (no ResourceId) 1500 in whichever period the mode books it
    assert {k: Decimal(str(v)) for k, v in totals.items() if k in crossing} == crossing
    may = [
        a for a in alerts if a["scope"]["labels.resource"] == "R-111" and a["period"] == "2025-05"
    ]
    if mode == "charge_period":
        assert [(a["status"], a["observed"], a.get("correction", False)) for a in may] == [
            ("firing", 1500.0, False),
            ("resolved", 1500.0, False),
            ("resolved", 0.0, True),  # the negation, then the re-bill
            ("resolved", 1200.0, True),
        ]
    else:
        assert [(a["status"], a["observed"]) for a in may] == [
            ("firing", 1500.0),
            ("resolved", 1500.0),
        ]


def test_budget_snapshots_from_before_closed_periods_still_restore() -> None:
    import pickle

    from spendwatch.detectors.budget import BudgetState

    state = BudgetState()
    state.__setstate__((None, {}))  # the two slots of before: model, periods
    assert state.closed is None and state.periods == {} and state.model is None
    again = pickle.loads(pickle.dumps(state))
    assert again.closed is None and again.periods == {}
