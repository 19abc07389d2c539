"""Picks the Bytewax source for the configured ``source.type``.

Kept apart from the sources so that a Kafka- or FOCUS-less deployment never imports
their clients, and so ``get_flow`` has one place to ask.
"""

from __future__ import annotations

from typing import Any

from bytewax.inputs import Source

from spendwatch.ingest.parser import ParserSettings


def build_source(source: Any, parsing: ParserSettings) -> Source:
    """The Bytewax source for a ``source:`` config (``jsonl``, ``kafka``, ``focus`` or ``otlp``);
    each gets its own config section and the parser settings, nothing else."""
    kind = source.type
    if kind == "kafka":
        from spendwatch.dataflows.kafka import KafkaSource

        return KafkaSource(source, parsing)
    if kind == "focus":
        from spendwatch.dataflows.focus import FocusSource

        return FocusSource(source, parsing)
    if kind == "otlp":
        from spendwatch.dataflows.otlp import OtlpFileSource

        return OtlpFileSource(source, parsing)
    from spendwatch.dataflows.sources import JsonlSource

    return JsonlSource(source, parsing)


def describe_source(source: Any) -> str:
    """A short, secret-free description of a source config for logs."""
    if source.type == "kafka":
        return f"kafka:{','.join(source.topics)}"
    if source.type == "otlp":
        where = [source.path] if source.path else []
        return "otlp:" + "+".join([*where, *(["POST /v1/traces"] if source.receive else [])])
    return f"{source.type}:{source.path}"
