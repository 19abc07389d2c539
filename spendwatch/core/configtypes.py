"""Field types shared by every config model (durations, dimensions, metrics, severities).

They live apart from ``config.py`` so detector and receiver modules can define their
own config classes without importing the root model.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationInfo, WithJsonSchema

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

MAX_DURATION_DAYS = 3650
MAX_DURATION = MAX_DURATION_DAYS * 86400  # ten years: far beyond any setting, far from overflow
_DURATION_TEXT = re.compile(r"^\s*([0-9]{1,15})\s*(s|m|h|d|w)\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION_EXAMPLES = "e.g. 30s, 5m, 1h, 1d, 1w, or a whole number of seconds"


def parse_config_duration(value: object, info: ValidationInfo) -> int:
    """A config duration in whole seconds: ``30s``, ``5m``, ``1h``, ``1d``, ``1w`` or seconds.

    Every duration is at least 0 and at most :data:`MAX_DURATION` (so no arithmetic on
    it can overflow a ``timedelta`` or leave the calendar); a field named ``window``
    (or ``*_window``) must also be positive. Messages never repeat the value.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"expected a duration ({_DURATION_EXAMPLES})")
    if isinstance(value, str):
        match = _DURATION_TEXT.match(value)
        if not match:
            raise ValueError(f"invalid duration: expected {_DURATION_EXAMPLES}")
        seconds = int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    elif isinstance(value, float) and not math.isfinite(value):
        raise ValueError("a duration must be a finite number of seconds")
    elif isinstance(value, float) and not value.is_integer():
        raise ValueError("a duration must be a whole number of seconds")
    else:
        seconds = int(value)
    if seconds < 0:
        raise ValueError("duration must not be negative")
    if seconds > MAX_DURATION:
        raise ValueError(f"duration out of range: at most {MAX_DURATION_DAYS}d (ten years)")
    field = info.field_name or ""
    if seconds == 0 and (field == "window" or field.endswith("_window")):
        raise ValueError("a window must be positive (e.g. 5m, 1h), not 0")
    return seconds


Duration = Annotated[
    int,
    BeforeValidator(parse_config_duration),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": r"^\d+(s|m|h|d|w)$"},
                {"type": "integer", "minimum": 0, "maximum": MAX_DURATION},
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
    """Base for config sections: unknown keys are errors, so typos never pass silently.

    Floats must be finite: ``.inf`` would pass every ``gt``/``ge`` bound and ``.nan``
    compares false with everything, so neither is a usable setting.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
