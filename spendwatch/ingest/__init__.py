"""Input: the usage-event schema, decoding raw lines into priced columns, dedup, pricing,
and the mappings of other formats onto the schema (OpenTelemetry GenAI names, FOCUS).

A new input format goes here (its mapping) and in ``dataflows/`` (its Bytewax source).
"""
