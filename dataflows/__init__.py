"""Bytewax dataflows: sources, pre-aggregation, the sharded engine and sinks."""
