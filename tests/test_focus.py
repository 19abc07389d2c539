"""FOCUS billing exports: the real sample export loads whole and its money adds up.

Expected values are computed here straight from the CSV with the csv module and
Decimal, independently of the mapping under test.
"""

from __future__ import annotations

import csv
import gzip
import json
import shutil
import sys
from collections import defaultdict
from datetime import datetime, timezone
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path

import orjson
import pytest
import yaml

from spendwatch.config import ConfigError, SpendwatchConfig, load_config
from spendwatch.core import stats
from spendwatch.dataflows.focus import FocusSource, _skip_rows
from spendwatch.ingest.focus import FocusMapper, FocusSourceConfig
from spendwatch.ingest.parser import EventParser
from spendwatch.ingest.pricing import PriceTable, PricingConfig
from spendwatch.ops.backtest import backtest

# the repository sits next to the team's shared/ folder: ../shared/real
SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "real" / "focus_1.0_sample.csv"
NANOS = Decimal(1_000_000_000)
DIMENSIONS = ["provider", "service", "tenant", "labels.application", "labels.environment"]


def sample_rows() -> list[dict[str, str]]:
    with SAMPLE.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def column_sum(rows: list[dict[str, str]], column: str, keep=lambda row: True) -> Decimal:
    return sum((Decimal(r[column]) for r in rows if r[column] != "NULL" and keep(r)), Decimal(0))


def parse_sample(**source: object):
    config = FocusSourceConfig(path=str(SAMPLE), **source)
    lines, dead = FocusMapper(config, "sample").map_rows(sample_rows())
    parser = EventParser(PriceTable(PricingConfig()), DIMENSIONS, dedup_horizon=86400 * 40)
    batch = parser.parse(lines)
    return batch, dead + batch.dead


def test_the_sample_is_what_the_data_readme_describes() -> None:
    rows = sample_rows()
    assert len(rows) == 1000
    assert {r["ProviderName"] for r in rows} == {"AWS", "Microsoft", "Oracle"}
    assert round(column_sum(rows, "BilledCost"), 2) == Decimal("20.52")
    assert round(column_sum(rows, "EffectiveCost"), 2) == Decimal("14.98")


@pytest.mark.parametrize("column", ["BilledCost", "EffectiveCost", "ListCost"])
def test_every_row_loads_and_the_column_total_matches_the_file(column: str) -> None:
    rows = sample_rows()
    batch, dead = parse_sample(cost_column=column)
    assert dead == []
    assert batch.size == 1000
    expected_nanos = column_sum(rows, column) * NANOS
    # each row is rounded to a nano-dollar once: the total is exact to well below a cent
    assert abs(int(batch.spend_nanos.sum()) - expected_nanos) <= len(rows)


@pytest.mark.parametrize("column", ["BilledCost", "EffectiveCost", "ListCost"])
def test_each_line_is_its_decimal_cost_rounded_once_to_the_nano_dollar(column: str) -> None:
    """Exports carry sub-nano digits; each line becomes the nano-dollar nearest its own
    decimal text (half to even), never the other side of a half through a float."""
    rows = sample_rows()
    batch, _ = parse_sample(cost_column=column)
    expected = sorted(
        int((Decimal(r[column]) * NANOS).to_integral_value(rounding=ROUND_HALF_EVEN))
        for r in rows
    )
    assert sorted(batch.spend_nanos.tolist()) == expected
    assert int(batch.spend_nanos.sum()) == sum(expected)


def test_null_costs_dead_letter_with_the_reason_and_the_rest_still_add_up() -> None:
    rows = sample_rows()
    nulls = sum(r["ContractedCost"] == "NULL" for r in rows)
    assert nulls == 7
    batch, dead = parse_sample(cost_column="ContractedCost")
    assert batch.size == 1000 - nulls
    assert [d.reason for d in dead] == ["FOCUS row: ContractedCost is missing"] * nulls
    assert all(orjson.loads(d.raw)["ContractedCost"] == "NULL" for d in dead)
    expected_nanos = column_sum(rows, "ContractedCost") * NANOS
    assert abs(int(batch.spend_nanos.sum()) - expected_nanos) <= len(rows)


def test_credits_and_negative_usage_corrections_count_for_budgets_only() -> None:
    rows = sample_rows()
    config = FocusSourceConfig(path=str(SAMPLE))
    mapper = FocusMapper(config)
    categories = [mapper.event(r)["charge_category"] for r in rows]
    negative_usage = sum(
        r["ChargeCategory"] == "Usage" and r["BilledCost"].startswith("-") for r in rows
    )
    assert negative_usage == 12
    assert categories.count("credit") == 1
    assert categories.count("adjustment") == 2 + negative_usage
    batch, _ = parse_sample()
    assert int((~batch.anomaly_input).sum()) == 1 + 2 + negative_usage


def test_tags_become_label_dimensions_and_columns_become_dimensions() -> None:
    rows = sample_rows()
    batch, _ = parse_sample()
    expected = [
        json.loads(r["Tags"]).get("application", "unattributed")
        if r["Tags"] != "NULL"
        else "unattributed"
        for r in rows
    ]
    assert batch.dims["labels.application"].tolist() == expected
    assert batch.dims["provider"].tolist() == [r["ProviderName"] for r in rows]
    assert batch.dims["service"].tolist() == [r["ServiceName"] for r in rows]
    assert batch.dims["tenant"].tolist() == [r["SubAccountName"] for r in rows]


def test_timestamps_without_offset_are_utc() -> None:
    rows = sample_rows()
    batch, _ = parse_sample()
    expected = [
        datetime.strptime(r["ChargePeriodStart"], "%Y-%m-%d %H:%M:%S")
        .replace(tzinfo=timezone.utc)
        .timestamp()
        for r in rows
    ]
    assert batch.ts.tolist() == expected


def test_row_hash_ids_are_stable_and_distinct_without_an_id_column() -> None:
    rows = sample_rows()
    mapper = FocusMapper(FocusSourceConfig(path="x.csv", id_column=None))
    ids = [mapper.event(r)["event_id"] for r in rows]
    assert len(set(ids)) == 1000
    assert ids == [mapper.event(dict(r))["event_id"] for r in rows]
    changed = dict(rows[0], BilledCost="1.5")
    assert mapper.event(changed)["event_id"] != ids[0]


def test_parquet_shaped_values_map_like_csv_text() -> None:
    """pyarrow hands typed cells (datetime, Decimal, map pairs): same event as the CSV row."""
    mapper = FocusMapper(FocusSourceConfig(path="x.parquet"))
    typed = {
        "Id": 7,
        "ChargePeriodStart": datetime(2024, 9, 18, 22, 0),
        "BilledCost": Decimal("-0.50"),
        "ChargeCategory": "Credit",
        "ProviderName": "AWS",
        "Tags": [("application", "shop"), ("cost_center", None)],
        "BillingCurrency": "USD",
    }
    text = {
        "Id": "7",
        "ChargePeriodStart": "2024-09-18 22:00:00",
        "BilledCost": "-0.50000",
        "ChargeCategory": "Credit",
        "ProviderName": "AWS",
        "Tags": '{"application": "shop"}',
        "BillingCurrency": "USD",
    }
    parser = EventParser(PriceTable(PricingConfig()), DIMENSIONS, dedup_horizon=60)
    typed_batch = parser.parse([orjson.dumps(mapper.event(typed))])
    parser = EventParser(PriceTable(PricingConfig()), DIMENSIONS, dedup_horizon=60)
    text_batch = parser.parse([orjson.dumps(mapper.event(text))])
    for batch in (typed_batch, text_batch):
        assert batch.dead == []
        assert batch.spend_nanos.tolist() == [-500_000_000]
        assert batch.dims["labels.application"].tolist() == ["shop"]
    assert typed_batch.ts.tolist() == text_batch.ts.tolist()


def test_parquet_without_pyarrow_says_what_to_install(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    config = SpendwatchConfig(source={"type": "focus", "path": str(tmp_path / "x.parquet")})
    with pytest.raises(ValueError, match="needs pyarrow"):
        FocusSource(config.source, config.parser_settings()).build_part(
            "events", str(tmp_path / "x.parquet"), None
        )


def test_currencies_convert_with_configured_rates_or_dead_letter() -> None:
    row = {"ChargePeriodStart": "2024-09-01 00:00:00", "BilledCost": "10", "BillingCurrency": "EUR"}
    converting = FocusMapper(FocusSourceConfig(path="x.csv", currency_rates={"EUR": 1.1}))
    assert converting.event(row)["cost_usd"] == pytest.approx(11.0)
    lines, dead = FocusMapper(FocusSourceConfig(path="x.csv")).map_rows([row])
    assert lines == []
    assert "currency_rates" in dead[0].reason


def test_a_file_without_the_cost_column_fails_fast_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "not_focus.csv"
    path.write_text("ChargePeriodStart,Cost\n2024-09-01 00:00:00,1\n")
    config = SpendwatchConfig(source={"type": "focus", "path": str(path)})
    with pytest.raises(ValueError, match="missing BilledCost"):
        FocusSource(config.source, config.parser_settings()).build_part("events", str(path), None)


def test_resume_skips_the_rows_already_consumed() -> None:
    assert [len(b) for b in _skip_rows(iter([[1] * 300, [2] * 300, [3] * 300]), 400)] == [200, 300]
    assert list(_skip_rows(iter([[1, 2]]), 5)) == []
    config = SpendwatchConfig(
        source={"type": "focus", "path": str(SAMPLE), "batch_rows": 300},
        dimensions=["provider"],
    )
    first = FocusSource(config.source, config.parser_settings()).build_part(
        "events", str(SAMPLE), None
    )
    first.next_batch()
    first.next_batch()
    state = first.snapshot()
    first.close()
    assert state[0] == 600
    resumed = FocusSource(config.source, config.parser_settings()).build_part(
        "events", str(SAMPLE), state
    )
    sizes = []
    with pytest.raises(StopIteration):
        while True:
            sizes.extend(b.size for b in resumed.next_batch())
    resumed.close()
    assert sizes == [300, 100]


def test_gzipped_csv_exports_load(tmp_path: Path) -> None:
    path = tmp_path / "export.csv.gz"
    with SAMPLE.open("rb") as source, gzip.open(path, "wb") as target:
        shutil.copyfileobj(source, target)
    config = SpendwatchConfig(source={"type": "focus", "path": str(path)}, dimensions=["provider"])
    part = FocusSource(config.source, config.parser_settings()).build_part(
        "events", str(path), None
    )
    assert sum(b.size for b in part.next_batch()) == 1000
    part.close()


# -- through the whole flow --------------------------------------------------------------------


def write_closed_export(export: Path) -> list[dict[str, str]]:
    """Write the sample and three zero-cost October rows as a CSV export, so the watermark
    passes September and its budget periods close; return the sample's rows."""
    rows = sample_rows()
    # three rows: no fewer move the stream clock (one event never moves the watermark)
    sentinels = [
        dict(
            rows[0],
            Id=f"sentinel-{i}",
            ChargePeriodStart="2024-10-02 00:00:00",
            ChargePeriodEnd="2024-10-02 01:00:00",
            BilledCost="0",
            EffectiveCost="0",
        )
        for i in range(3)
    ]
    with export.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), quoting=csv.QUOTE_ALL)
        writer.writeheader()
        writer.writerows([*rows, *sentinels])
    return rows


def run_focus_backtest(tmp_path: Path, cost_column: str = "BilledCost") -> list[dict]:
    """Backtest the sample plus October rows, so September's budget periods close and
    their resolved alerts report each scope's complete September total."""
    export = tmp_path / "export.csv"
    write_closed_export(export)
    config_file = tmp_path / "focus.yaml"
    config_file.write_text(
        yaml.safe_dump(
            {
                "source": {"type": "focus", "path": str(export), "cost_column": cost_column},
                "dimensions": ["provider", "labels.application"],
                "dead_letter": {"path": str(tmp_path / "dead.jsonl")},
                # a tiny amount: every scope with spend crosses, and resolves at period end
                "budgets": [
                    {
                        "name": "per-app",
                        "scope_by": ["labels.application"],
                        "amount_usd": 0.000001,
                        "period": "month",
                        "thresholds": [0.001],
                    },
                    {
                        "name": "per-provider",
                        "scope_by": ["provider"],
                        "amount_usd": 0.000001,
                        "period": "month",
                        "thresholds": [0.001],
                    },
                ],
                "receivers": [],
            }
        )
    )
    config = load_config(config_file)
    alerts_out = tmp_path / "alerts.jsonl"
    summary = backtest(config, str(export), str(alerts_out))
    assert summary["events"] == 1003
    assert summary["dead_lettered"] == 0
    return [json.loads(line) for line in alerts_out.read_text().splitlines()]


def september_totals(alerts: list[dict], rule: str, dimension: str) -> dict[str, float]:
    return {
        a["scope"][dimension]: a["observed"]
        for a in alerts
        if a["rule"] == rule and a["status"] == "resolved" and a["period"] == "2024-09"
    }


def test_application_tags_work_as_budget_scopes_with_exact_totals(tmp_path: Path) -> None:
    stats.reset()
    alerts = run_focus_backtest(tmp_path)
    expected: dict[str, Decimal] = defaultdict(Decimal)
    expected_nanos: dict[str, int] = defaultdict(int)  # money is kept in whole nano-dollars
    for row in sample_rows():
        tags = json.loads(row["Tags"]) if row["Tags"] != "NULL" else {}
        application = tags.get("application", "unattributed")
        expected[application] += Decimal(row["BilledCost"])
        expected_nanos[application] += round(Decimal(row["BilledCost"]) * NANOS)
    totals = september_totals(alerts, "per-app", "labels.application")
    positive = {app for app, nanos in expected_nanos.items() if nanos > 0}
    assert set(totals) == positive
    assert len(positive) > 50
    for app in positive:
        assert abs(Decimal(str(totals[app])) - expected[app]) < Decimal("0.000001"), app


def test_credits_reduce_budget_totals(tmp_path: Path) -> None:
    rows = sample_rows()
    alerts = run_focus_backtest(tmp_path)
    totals = september_totals(alerts, "per-provider", "provider")
    aws = column_sum(rows, "BilledCost", lambda r: r["ProviderName"] == "AWS")
    aws_without_credits = column_sum(
        rows, "BilledCost", lambda r: r["ProviderName"] == "AWS" and r["ChargeCategory"] != "Credit"
    )
    assert aws_without_credits - aws == Decimal("2.61370000000")
    assert abs(Decimal(str(totals["AWS"])) - aws) < Decimal("0.000001")
    all_providers = sum(Decimal(str(v)) for v in totals.values())
    assert round(all_providers, 2) == round(column_sum(rows, "BilledCost"), 2) == Decimal("20.52")


def test_effective_cost_feeds_the_budget_when_configured(tmp_path: Path) -> None:
    alerts = run_focus_backtest(tmp_path, cost_column="EffectiveCost")
    totals = september_totals(alerts, "per-provider", "provider")
    assert round(sum(Decimal(str(v)) for v in totals.values()), 2) == Decimal("14.98")


def test_config_errors_name_the_source_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("source:\n  type: focus\n  cost_colum: EffectiveCost\n  path: x.csv\n")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert error.value.problems == [
        f"{path}:3: source.cost_colum: unknown key (check the spelling; see `spendwatch schema`)"
    ]
