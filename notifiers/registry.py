"""Imports every built-in notifier so it registers itself, and builds receivers from config."""

from __future__ import annotations

from typing import Any

from spendwatch.notifiers import (  # noqa: F401 - registration side effect
    console,
    file,
    flags,
    jira,
    kafka,
    slack,
)
from spendwatch.notifiers.base import NOTIFIER_TYPES, Notifier


def build_notifier(config: Any) -> Notifier:
    return NOTIFIER_TYPES[config.type].build(config)
