"""What operators run besides the worker: ``backtest``, ``explain``, the HTML report,
scoring against labelled incidents, the demo stream and the config reference.

A new operator command gets its module here and a thin subcommand in ``cli.py``.
"""
