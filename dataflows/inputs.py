"""Picks the Bytewax source for the configured ``source.type``.

Kept apart from the sources so that a Kafka- or FOCUS-less deployment never imports
their clients, and so ``get_flow`` has one place to ask.
"""

from __future__ import annotations

from typing import Any

from bytewax.inputs import Source


def build_source(config: Any) -> Source:
    """The source for ``config.source`` (``jsonl``, ``kafka`` or ``focus``)."""
    kind = config.source.type
    if kind == "kafka":
        from spendwatch.dataflows.kafka import KafkaSource

        return KafkaSource(config)
    if kind == "focus":
        from spendwatch.dataflows.focus import FocusSource

        return FocusSource(config)
    from spendwatch.dataflows.sources import JsonlSource

    return JsonlSource(config)


def describe_source(source: Any) -> str:
    """A short, secret-free description of a source config for logs."""
    if source.type == "kafka":
        return f"kafka:{','.join(source.topics)}"
    return f"{source.type}:{source.path}"
