"""The foundation every layer imports: the alert record, config types, time formats, the
YAML loader, logs, run counters and the live view (what the query API reads).

Nothing here imports a layer (``dataflows``, ``detectors``, ``notifiers``) or a room above.
"""
