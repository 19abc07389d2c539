"""FinOps FOCUS 1.x billing exports mapped onto usage events.

Cloud billing lines become ordinary usage events so that cloud spend and LLM
gateway usage feed the same detectors and budgets. The mapping produces the JSON
of the input contract and hands it to the same :class:`~spendwatch.ingest.events.EventParser`
as every other input, so validation, dedup and counting have one definition.

Mapping (FOCUS column -> event field):

* ``ChargePeriodStart`` -> ``ts`` (a timestamp without offset is UTC, as exports write it)
* the configured cost column (``BilledCost`` by default, or ``EffectiveCost``,
  ``ListCost``, ``ContractedCost``) -> ``cost_usd``, converted with ``currency_rates``
  when ``BillingCurrency`` is not USD
* ``ChargeCategory`` -> ``charge_category`` (lower case). A negative line that is not a
  credit or adjustment (providers issue negative *usage* lines as corrections) and
  any ``ChargeClass: Correction`` line become ``adjustment``: they reduce budget totals
  but are not anomaly input, where a refund would look like a drop in usage.
* ``columns`` (default: provider, service, tenant and two labels) -> dimensions; a
  dimension may name several columns, the first non-null one wins (``ServiceProviderName``
  of FOCUS 1.3, else ``ProviderName`` of earlier versions)
* every key of the ``Tags`` JSON object -> ``labels.KEY``
* AI rows (FOCUS 1.2+): ``SkuPriceDetails.ModelId`` -> ``model``; ``ConsumedQuantity`` with
  ``ConsumedUnit: Tokens`` -> ``input_tokens`` / ``output_tokens`` by ``TokenDirection``
  (or the ``SkuMeter``, for the older layout), cache reads (``TokenCacheAction: Read``, the
  older ``CacheRole: Read``) also -> ``cached_input_tokens``
* ``Id`` -> ``event_id`` when the export has it, else a hash of the row's FOCUS columns
* ``x_`` (provider extension) columns are not read, and not part of the row hash
* empty cells, ``NULL``, ``null`` and ``(null)`` -> missing
* a correction booked in a later billing period keeps the time of the charge period it
  corrects, unless ``corrections_count_in: billing_period``
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import math
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime, timezone
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Any, Literal

import orjson
from pydantic import Field, field_validator

from spendwatch.core.configtypes import Dimension, StrictModel
from spendwatch.ingest.events import NON_ANOMALY_CATEGORIES, DeadLetter

TS_COLUMN = "ChargePeriodStart"
BILLING_PERIOD_COLUMN = "BillingPeriodStart"
CATEGORY_COLUMN = "ChargeCategory"
CLASS_COLUMN = "ChargeClass"
COST_COLUMNS = ("BilledCost", "EffectiveCost", "ListCost", "ContractedCost")
SKU_DETAILS_COLUMN = "SkuPriceDetails"
QUANTITY_COLUMN = "ConsumedQuantity"
UNIT_COLUMN = "ConsumedUnit"
METER_COLUMN = "SkuMeter"
NULLS = frozenset({"", "NULL", "null", "(null)"})
EXTENSION_PREFIX = "x_"
DEFAULT_COLUMNS: dict[str, str | list[str]] = {
    "provider": ["ServiceProviderName", "ProviderName"],
    "labels.host_provider": ["HostProviderName", "PublisherName"],
    "service": "ServiceName",
    "tenant": "SubAccountName",
    "labels.service_category": "ServiceCategory",
    "labels.region": "RegionId",
    "labels.commitment": "CommitmentDiscountId",
    "labels.commitment_status": "CommitmentDiscountStatus",
}


class FocusSourceConfig(StrictModel):
    """``type: focus``: a FOCUS 1.x billing export (CSV, CSV.gz, or Parquet with pyarrow)."""

    type: Literal["focus"] = "focus"
    path: str = Field(description="the export file")
    format: Literal["auto", "csv", "parquet"] = Field(
        default="auto", description="auto: by file extension (.parquet/.pq, else CSV)"
    )
    cost_column: str = Field(
        default="BilledCost",
        description="column that becomes cost_usd: BilledCost (invoiced), EffectiveCost "
        "(amortised, after commitment discounts), ListCost, ContractedCost",
    )
    columns: dict[Dimension, str | list[str]] = Field(
        default_factory=lambda: dict(DEFAULT_COLUMNS),
        description="dimension (standard or labels.KEY) -> FOCUS column, or a list of "
        "columns of which the first non-null one is used",
    )
    tags_column: str | None = Field(
        default="Tags", description="JSON object column whose keys become labels.KEY"
    )
    id_column: str | None = Field(
        default="Id", description="row id column, used when present; else a hash of the row"
    )
    null: str = Field(
        default="NULL",
        description="cell text that means a missing value, besides empty, NULL, null, (null)",
    )
    corrections_count_in: Literal["charge_period", "billing_period"] = Field(
        default="charge_period",
        description="ChargeClass Correction rows: charge_period books them at the "
        "ChargePeriodStart they correct; billing_period at the (later) BillingPeriodStart "
        "of the invoice that carries them",
    )
    ai_usage: bool = Field(
        default=True,
        description="read model (SkuPriceDetails.ModelId) and token counts "
        "(ConsumedQuantity in Tokens) from AI model rows",
    )
    currency_column: str = Field(
        default="BillingCurrency", description="column naming each row's billing currency"
    )
    currency_rates: dict[str, float] = Field(
        default_factory=dict,
        description="USD per unit of each non-USD billing currency; rows in other "
        "currencies are dead-lettered",
    )
    batch_rows: int = Field(default=10_000, ge=1, description="rows mapped and parsed together")

    @field_validator("currency_rates")
    @classmethod
    def _positive(cls, value: dict[str, float]) -> dict[str, float]:
        for currency, rate in value.items():
            if not (rate > 0 and math.isfinite(rate)):
                raise ValueError(f"rate for {currency!r} must be a positive number")
        return value

    def resolved_format(self) -> Literal["csv", "parquet"]:
        if self.format != "auto":
            return self.format
        return "parquet" if self.path.lower().endswith((".parquet", ".pq")) else "csv"


class FocusRowError(ValueError):
    """A row that cannot become a usage event; the message is the dead-letter reason."""


class FocusMapper:
    """Turns FOCUS rows (dicts of column -> cell) into usage-event JSON lines."""

    def __init__(self, config: FocusSourceConfig, source: str = "") -> None:
        self.config = config
        self.source = source
        self._nulls = NULLS | {config.null}
        self._rates = {"USD": 1.0, **{k.upper(): v for k, v in config.currency_rates.items()}}
        columns = {
            dim: (column,) if isinstance(column, str) else tuple(column)
            for dim, column in config.columns.items()
        }
        self._dimensions = [
            (dim, names) for dim, names in columns.items() if not dim.startswith("labels.")
        ]
        self._labels = [
            (dim[len("labels.") :], names)
            for dim, names in columns.items()
            if dim.startswith("labels.")
        ]

    def required_columns(self) -> list[str]:
        return [TS_COLUMN, self.config.cost_column]

    def check_header(self, header: Sequence[str]) -> None:
        """Fail fast (naming the columns) when the export lacks what the mapping needs."""
        missing = [c for c in self.required_columns() if c not in header]
        if missing:
            raise ValueError(
                f"{self.config.path}: not a FOCUS export with the configured columns: "
                f"missing {', '.join(missing)}"
            )

    def map_rows(
        self, rows: Sequence[Mapping[str, Any]], first_row: int = 1
    ) -> tuple[list[bytes], list[DeadLetter]]:
        """JSON lines for the parser, and dead letters for rows that cannot be mapped."""
        lines: list[bytes] = []
        dead: list[DeadLetter] = []
        for number, row in enumerate(rows, start=first_row):
            try:
                lines.append(orjson.dumps(self.event(row)))
            except FocusRowError as error:
                raw = orjson.dumps({k: _jsonable(v) for k, v in row.items()})
                dead.append(DeadLetter(f"FOCUS row: {error}", raw, f"{self.source}:{number}"))
        return lines, dead

    def event(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """The usage event (contract JSON) of one row, or :class:`FocusRowError`."""
        cost_column = self.config.cost_column
        start = self._cell(row, TS_COLUMN)
        if start is None:
            raise FocusRowError(f"{TS_COLUMN} is missing")
        ts = _timestamp(start, TS_COLUMN)
        cost = self._cell(row, cost_column)
        if cost is None:
            raise FocusRowError(f"{cost_column} is missing")
        cost_usd = _money(cost, cost_column, self._rate(row))
        category = str(self._cell(row, CATEGORY_COLUMN) or "usage").lower()
        charge_class = str(self._cell(row, CLASS_COLUMN) or "").lower()
        refund = cost_usd < 0 and category not in NON_ANOMALY_CATEGORIES
        correction = charge_class == "correction"
        if correction and self.config.corrections_count_in == "billing_period":
            billed = self._cell(row, BILLING_PERIOD_COLUMN)
            if billed is not None:
                billed_ts = _timestamp(billed, BILLING_PERIOD_COLUMN)
                if _epoch(billed_ts) > _epoch(ts):
                    ts = billed_ts
        event: dict[str, Any] = {
            "event_id": self._event_id(row),
            "ts": ts,
            "cost_usd": cost_usd,
            "charge_category": category,
        }
        if self.config.ai_usage:
            negative = self._ai_usage(row, event)
            refund = refund or negative
        if refund or correction:
            event["charge_category"] = "adjustment"
        for dimension, columns in self._dimensions:
            value = self._first(row, columns)
            if value is not None:
                event[dimension] = str(value)
        labels = self._tags(row)
        for key, columns in self._labels:
            value = self._first(row, columns)
            if value is not None:
                labels[key] = str(value)
        if labels:
            event["labels"] = labels
        return event

    def _ai_usage(self, row: Mapping[str, Any], event: dict[str, Any]) -> bool:
        """Model and token counts of an AI model row into ``event``; True when the token
        quantity is negative (a correction: its tokens are left out, its cost counts)."""
        details = self._cell(row, SKU_DETAILS_COLUMN)
        if details is None:
            return False
        if isinstance(details, str):
            try:
                details = orjson.loads(details)
            except orjson.JSONDecodeError as error:
                raise FocusRowError(f"{SKU_DETAILS_COLUMN} is not JSON: {error}") from None
        elif isinstance(details, list):  # Parquet map columns arrive as (key, value) pairs
            details = dict(details)
        if not isinstance(details, dict):
            raise FocusRowError(f"{SKU_DETAILS_COLUMN} is not a JSON object")
        model = details.get("ModelId")
        if model in (None, "") or not isinstance(model, (str, int, float)):
            return False
        event["model"] = str(model)
        unit = self._cell(row, UNIT_COLUMN)
        quantity = self._cell(row, QUANTITY_COLUMN)
        if quantity is None or unit is None or str(unit).strip().lower() != "tokens":
            return False
        tokens = _number(quantity, QUANTITY_COLUMN)
        if tokens < 0:
            return True
        count = round(tokens)
        direction = str(details.get("TokenDirection") or "").lower()
        if not direction:  # the older layout: the direction is in the meter's name
            meter = str(self._cell(row, METER_COLUMN) or "").lower()
            direction = "output" if "output" in meter else "input" if "input" in meter else ""
        if direction == "output":
            event["output_tokens"] = count
        elif direction == "input":
            event["input_tokens"] = count
            cache = details.get("TokenCacheAction") or details.get("CacheRole") or ""
            if str(cache).lower() == "read":
                event["cached_input_tokens"] = count
        return False

    def _cell(self, row: Mapping[str, Any], column: str) -> Any:
        value = row.get(column)
        if value is None or (isinstance(value, str) and value.strip() in self._nulls):
            return None
        return value

    def _first(self, row: Mapping[str, Any], columns: Sequence[str]) -> Any:
        for column in columns:
            value = self._cell(row, column)
            if value is not None:
                return value
        return None

    def _rate(self, row: Mapping[str, Any]) -> float:
        currency = self._cell(row, self.config.currency_column)
        if currency is None:
            return 1.0
        rate = self._rates.get(str(currency).upper())
        if rate is None:
            raise FocusRowError(
                f"billing currency {currency} has no entry in currency_rates (USD per {currency})"
            )
        return rate

    def _event_id(self, row: Mapping[str, Any]) -> str:
        if self.config.id_column is not None:
            value = self._cell(row, self.config.id_column)
            if value is not None:
                return str(value)
        material = "\x1f".join(
            f"{k}\x1e{_jsonable(v)}"
            for k, v in row.items()
            if not (isinstance(k, str) and k.startswith(EXTENSION_PREFIX))
        )
        return "focus-" + hashlib.sha256(material.encode("utf-8")).hexdigest()[:32]

    def _tags(self, row: Mapping[str, Any]) -> dict[str, str]:
        if self.config.tags_column is None:
            return {}
        tags = self._cell(row, self.config.tags_column)
        if tags is None:
            return {}
        if isinstance(tags, str):
            try:
                tags = orjson.loads(tags)
            except orjson.JSONDecodeError as error:
                raise FocusRowError(f"{self.config.tags_column} is not JSON: {error}") from None
        elif isinstance(tags, list):  # Parquet map columns arrive as (key, value) pairs
            tags = dict(tags)
        if not isinstance(tags, dict):
            raise FocusRowError(f"{self.config.tags_column} is not a JSON object")
        return {str(k): _tag_text(v) for k, v in tags.items() if v is not None}


def _tag_text(value: Any) -> str:
    return value if isinstance(value, str) else orjson.dumps(value).decode("utf-8")


NANO = Decimal("1e-9")


def _money(value: Any, column: str, rate: float) -> float:
    """A cost cell in USD, rounded to the nano-dollar from its decimal text.

    Billing exports carry more digits than a nano-dollar (``15.95809931449999``); through a
    float they would round to the other side of a half nano-dollar, one nano-dollar away
    from the export's own total. The USD amount is rounded once, half to even, in decimal,
    and handed on as the float nearest to that whole number of nano-dollars, which the
    decoder's ``round(cost × 1e9)`` turns back into exactly that integer."""
    _number(value, column)  # the same errors as any number
    text = str(value).strip() if not isinstance(value, float) else repr(value)
    amount = Decimal(text) * Decimal(repr(rate))
    return float(amount.quantize(NANO, rounding=ROUND_HALF_EVEN))


def _number(value: Any, column: str) -> float:
    if isinstance(value, (int, float, Decimal)) and not isinstance(value, bool):
        number = float(value)
    else:
        try:
            number = float(Decimal(str(value).strip()))
        except (InvalidOperation, ValueError):
            raise FocusRowError(f"{column} {value!r} is not a number") from None
    if not math.isfinite(number):
        raise FocusRowError(f"{column} {value!r} is not a finite number")
    return number


def _epoch(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _timestamp(value: Any, column: str = TS_COLUMN) -> str:
    """RFC 3339 text for the parser; naive timestamps are UTC (FOCUS exports omit the offset)."""
    if isinstance(value, str):
        text = value.strip()
        if len(text) == 19 and text[10] in " T":  # "2024-09-18 22:00:00": the common case
            return f"{text[:10]}T{text[11:]}Z"
        try:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise FocusRowError(f"{column} {value!r} is not a timestamp") from None
    elif isinstance(value, datetime):
        moment = value
    else:
        raise FocusRowError(f"{column} {value!r} is not a timestamp")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.isoformat()


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


# -- readers --------------------------------------------------------------------------------


def open_rows(config: FocusSourceConfig) -> tuple[list[str], Iterator[list[dict[str, Any]]], Any]:
    """(header, iterator of row batches, closeable) for the export at ``config.path``."""
    if config.resolved_format() == "parquet":
        return _parquet_rows(config)
    return _csv_rows(config)


def _csv_rows(config: FocusSourceConfig) -> tuple[list[str], Iterator[list[dict[str, Any]]], Any]:
    raw = gzip.open(config.path, "rb") if config.path.endswith(".gz") else open(config.path, "rb")  # noqa: SIM115
    text = io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")
    reader = csv.DictReader(text)
    header = list(reader.fieldnames or [])

    def batches() -> Iterator[list[dict[str, Any]]]:
        batch: list[dict[str, Any]] = []
        for row in reader:
            batch.append(row)
            if len(batch) >= config.batch_rows:
                yield batch
                batch = []
        if batch:
            yield batch

    return header, batches(), text


def _parquet_rows(
    config: FocusSourceConfig,
) -> tuple[list[str], Iterator[list[dict[str, Any]]], Any]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ValueError(
            f"{config.path}: reading Parquet needs pyarrow (pip install pyarrow), "
            "or export the FOCUS data as CSV"
        ) from None
    file = pq.ParquetFile(config.path)
    header = list(file.schema_arrow.names)
    batches = (b.to_pylist() for b in file.iter_batches(batch_size=config.batch_rows))
    return header, batches, file
