"""Test kit for spendwatch and for code built on it (as ``bytewax.testing``): local HTTP
servers speaking the Slack Web API and Jira REST shapes with injectable faults, and a
local Kafka-protocol broker. Shipped, but never imported by the product itself.
"""
