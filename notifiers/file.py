"""``type: file``: alerts appended as JSON lines (the contract's wire format)."""

from __future__ import annotations

import os
from typing import Literal

from pydantic import Field

from spendwatch.alerts import Alert
from spendwatch.configtypes import StrictModel
from spendwatch.notifiers.base import Notifier, NotifyError, register_notifier


class FileConfig(StrictModel):
    type: Literal["file"] = "file"
    name: str = "file"
    path: str = Field(description="JSONL file the alerts are appended to")
    fsync: bool = Field(default=False, description="fsync after each alert (durable, slower)")


@register_notifier("file", FileConfig)
class FileNotifier(Notifier):
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
            message = f"cannot write {self.config.path}: {error}"
            raise NotifyError(message, retryable=True) from error

    def close(self) -> None:
        os.close(self._fd)
