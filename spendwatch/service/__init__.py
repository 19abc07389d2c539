"""The long-lived worker behind ``spendwatch run``: recovery loop, signals and reload,
several processes, the HTTP server (health, metrics, query API).

A new endpoint goes in ``server.py``; a new metric in ``metrics.py``.
"""
