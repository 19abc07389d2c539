"""OpenTelemetry GenAI attribute names accepted as aliases of the usage-event fields.

Producers that export OTel spans or logs flatten attributes into keys such as
``gen_ai.usage.input_tokens``. Rather than a second schema, such a line is
rewritten to the canonical field names before decoding, so :class:`UsageEvent`
stays the single definition of the input. Only lines that contain ``gen_ai.``
take this slow path; everything else is decoded untouched.
"""

from __future__ import annotations

import orjson

MARKER = b"gen_ai."

# Alias -> canonical field, in precedence order: the first alias present for a field wins,
# so the current ``gen_ai.provider.name`` beats the deprecated ``gen_ai.system``.
ALIASES: tuple[tuple[str, str], ...] = (
    ("gen_ai.usage.input_tokens", "input_tokens"),
    ("gen_ai.usage.cache_read.input_tokens", "cached_input_tokens"),
    ("gen_ai.usage.output_tokens", "output_tokens"),
    ("gen_ai.request.model", "model"),
    ("gen_ai.response.model", "model"),
    ("gen_ai.provider.name", "provider"),
    ("gen_ai.system", "provider"),
    ("gen_ai.conversation.id", "session"),
)
LABEL_ALIASES: tuple[tuple[str, str], ...] = (("gen_ai.agent.name", "agent"),)


def apply_aliases(line: bytes) -> bytes:
    """Return ``line`` with GenAI attribute keys renamed to the canonical field names.

    A canonical field already present wins over its alias (the producer said it
    explicitly). Lines that are not a JSON object are returned unchanged so the
    parser reports them with its usual reason.
    """
    try:
        event = orjson.loads(line)
    except orjson.JSONDecodeError:
        return line
    if not isinstance(event, dict):
        return line
    changed = False
    for alias, field in ALIASES:
        if alias in event:
            value = event.pop(alias)
            event.setdefault(field, value)
            changed = True
    for alias, key in LABEL_ALIASES:
        if alias in event:
            value = event.pop(alias)
            labels = event.setdefault("labels", {})
            if isinstance(labels, dict):
                labels.setdefault(key, value)
            changed = True
    return orjson.dumps(event) if changed else line
