"""The pricing catalog, applied to whole columns at once.

Prices are USD per million tokens; results are integer nano-dollars so sums stay
exact whatever the batching or order.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from pydantic import Field, model_validator

from spendwatch.core.configtypes import StrictModel
from spendwatch.ingest.columns import Categorical

NANOS_PER_USD = 1_000_000_000
_NANOS_PER_TOKEN_PER_USD_PER_MILLION = NANOS_PER_USD / 1_000_000


class ModelPrice(StrictModel):
    """USD per million tokens; ``cached_input`` defaults to ``input``."""

    input: float = Field(ge=0, description="USD per million uncached input tokens")
    output: float = Field(ge=0, description="USD per million output tokens")
    cached_input: float | None = Field(
        default=None, ge=0, description="USD per million cached input tokens (default: input)"
    )

    @model_validator(mode="after")
    def _finite(self) -> ModelPrice:
        for value in (self.input, self.output, self.cached_input or 0.0):
            if not np.isfinite(value):
                raise ValueError("prices must be finite numbers")
        return self

    def as_row(self) -> tuple[float, float, float]:
        cached = self.input if self.cached_input is None else self.cached_input
        return (self.input, cached, self.output)


class PricingConfig(StrictModel):
    """Model → price catalog, with an optional fallback for models missing from it."""

    models: dict[str, ModelPrice] = Field(
        default_factory=dict, description="model name → prices (USD per million tokens)"
    )
    fallback: ModelPrice | None = Field(
        default=None,
        description="price for models missing from the catalog; such events are counted "
        "and reported. Without it they are dead-lettered.",
    )


class PriceTable:
    """Vectorised pricing: factorise the model column once, look prices up by code."""

    def __init__(self, config: PricingConfig) -> None:
        self._rows: Mapping[str, tuple[float, float, float]] = {
            name: price.as_row() for name, price in config.models.items()
        }
        self._fallback = config.fallback.as_row() if config.fallback else None

    def price_nanos(
        self,
        models: Categorical,
        input_tokens: np.ndarray,
        cached_input_tokens: np.ndarray,
        output_tokens: np.ndarray,
        needed: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Price every row where ``needed``.

        Returns (nanos, priced_by_fallback, unknown_without_fallback) arrays.
        """
        distinct = len(models.values)
        table = np.zeros((distinct, 3))
        is_fallback = np.zeros(distinct, dtype=bool)
        is_unknown = np.zeros(distinct, dtype=bool)
        for code, name in enumerate(models.values):
            row = self._rows.get(name) if name is not None else None
            if row is None:
                if self._fallback is None:
                    is_unknown[code] = True
                    continue
                row = self._fallback
                is_fallback[code] = True
            table[code] = row
        model_codes = models.codes
        prices = table[model_codes]
        uncached = np.maximum(input_tokens - cached_input_tokens, 0)
        cached = np.minimum(cached_input_tokens, input_tokens)
        usd_millionths = (
            uncached * prices[:, 0] + cached * prices[:, 1] + output_tokens * prices[:, 2]
        )
        # Saturate instead of wrapping: a cost this large is rejected by the cost bound.
        nanos = np.minimum(np.round(usd_millionths * _NANOS_PER_TOKEN_PER_USD_PER_MILLION), 2.0**62)
        return (
            np.where(needed, nanos, 0).astype(np.int64),
            is_fallback[model_codes] & needed,
            is_unknown[model_codes] & needed,
        )
