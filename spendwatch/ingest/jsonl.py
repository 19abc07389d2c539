"""The settings of the JSONL input (files, globs, stdin), the embedded default source."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from spendwatch.core.configtypes import StrictModel


class JsonlSourceConfig(StrictModel):
    """``type: jsonl``: a JSONL file (``-`` for stdin), optionally followed like ``tail -f``."""

    type: Literal["jsonl"] = "jsonl"
    path: str | list[str] = Field(
        default="-",
        description="JSONL file of usage events, - for stdin, or glob pattern(s) / a list "
        "of files (one input partition per file, spread over the workers)",
    )
    follow: bool = Field(default=False, description="keep reading as the file grows")
    batch_bytes: int = Field(
        default=4 << 20,
        ge=1024,
        le=1 << 30,
        description="bytes read per batch (throughput vs latency)",
    )
    poll_interval: float = Field(
        default=0.5, gt=0, le=3600, description="seconds between polls at EOF"
    )
    decode_processes: Annotated[int, Field(ge=0, le=64)] | Literal["auto"] = Field(
        default="auto",
        description="helper processes that decode a file's backlog (8+ batches: a backtest, "
        "a catch-up) while the worker aggregates; 0 decodes inline; auto: one per CPU "
        "(shared among the processes of run --processes), at most 4, none with one CPU",
    )
