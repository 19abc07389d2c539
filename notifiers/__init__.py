"""Notifiers: receivers that deliver alerts, registered by their YAML ``type:``."""
