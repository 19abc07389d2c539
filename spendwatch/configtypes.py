"""Field types shared by every config model (durations, dimensions, metrics, severities).

They live apart from ``config.py`` so detector and receiver modules can define their
own config classes without importing the root model.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, WithJsonSchema

from spendwatch.timefmt import parse_duration

STANDARD_DIMENSIONS: tuple[str, ...] = (
    "tenant",
    "feature",
    "team",
    "environment",
    "service",
    "user",
    "session",
    "model",
    "provider",
    "prompt_id",
)
_LABEL_DIMENSION = re.compile(r"^labels\.[A-Za-z0-9_.:/-]+$")


def _check_dimension(value: object) -> object:
    if isinstance(value, str) and (value in STANDARD_DIMENSIONS or _LABEL_DIMENSION.match(value)):
        return value
    raise ValueError(
        f"unknown dimension {value!r}: use one of {', '.join(STANDARD_DIMENSIONS)} or labels.KEY"
    )


Dimension = Annotated[
    str,
    BeforeValidator(_check_dimension),
    WithJsonSchema(
        {
            "type": "string",
            "title": "dimension",
            "pattern": "^(" + "|".join(STANDARD_DIMENSIONS) + r")$|^labels\..+$",
        }
    ),
]

Duration = Annotated[
    int,
    BeforeValidator(parse_duration),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": r"^\d+(s|m|h|d|w)$"},
                {"type": "integer", "minimum": 0},
            ],
            "description": "a duration such as 30s, 5m, 1h, 1d, 1w (or seconds)",
        }
    ),
]

Metric = Literal[
    "spend_usd",
    "requests",
    "input_tokens",
    "output_tokens",
    "cost_per_request_usd",
    "output_tokens_per_request",
]
RATIO_METRICS: frozenset[str] = frozenset({"cost_per_request_usd", "output_tokens_per_request"})
COUNT_METRICS: frozenset[str] = frozenset({"requests", "input_tokens", "output_tokens"})

Severity = Literal["info", "warning", "critical"]


class StrictModel(BaseModel):
    """Base for config sections: unknown keys are errors, so typos never pass silently."""

    model_config = ConfigDict(extra="forbid", frozen=True)
