"""Detectors: pure functions of closed windows (no I/O, no clocks) that return alerts."""
