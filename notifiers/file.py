"""``type: file``: alerts appended as JSON lines (the contract's wire format)."""

from __future__ import annotations

import os
from typing import Literal

from pydantic import Field

from spendwatch.core.alerts import Alert
from spendwatch.core.configtypes import StrictModel
from spendwatch.notifiers.base import Delivery, Notifier, NotifyError, register_notifier


class FileConfig(StrictModel):
    """Append alerts to a JSONL file, one contract object per line."""

    type: Literal["file"] = "file"
    name: str = Field(default="file", description="receiver name used by routes")
    path: str = Field(description="JSONL file the alerts are appended to")
    fsync: bool = Field(default=False, description="fsync after each alert (durable, slower)")


@register_notifier("file", FileConfig)
class FileNotifier(Notifier):
    idempotent = True

    def __init__(self, config: FileConfig) -> None:
        self.name = config.name
        self.config = config
        directory = os.path.dirname(os.path.abspath(config.path))
        os.makedirs(directory, exist_ok=True)
        self._fd = os.open(config.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def notify(self, alert: Alert) -> None:
        try:
            # One write per line with O_APPEND: lines from several workers never interleave.
            os.write(self._fd, alert.to_json_bytes() + b"\n")
            if self.config.fsync:
                os.fsync(self._fd)
        except OSError as error:
            raise NotifyError(
                f"cannot write {self.config.path}: {error}", retryable=True
            ) from error

    def deliver(self, alert: Alert, delivery: Delivery) -> None:
        """Like :meth:`notify`, but a retry first checks whether the line is already there."""
        if delivery.maybe_done and self._contains(alert.alert_id):
            return
        self.notify(alert)

    def _contains(self, alert_id: str) -> bool:
        needle = b'"alert_id":"' + alert_id.encode() + b'"'
        try:
            with open(self.config.path, "rb") as handle:
                return any(needle in line for line in handle)
        except OSError:
            return False

    def close(self) -> None:
        os.close(self._fd)
