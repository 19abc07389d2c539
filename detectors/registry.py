"""Imports every built-in detector so it registers itself, and builds detectors from config."""

from __future__ import annotations

from typing import Any

from spendwatch.detectors import (  # noqa: F401 - registration side effects
    fan_out,
    idle_commitment,
    new_value,
    peers,
    river_model,
    robust_seasonal,
    seasonal,
    unattributed,
    unit_cost,
    unit_margin,
    zombie,
)
from spendwatch.detectors.base import DETECTOR_TYPES, Detector


def build_detector(config: Any) -> Detector:
    return DETECTOR_TYPES[config.type].build(config)
