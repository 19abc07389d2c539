"""spendwatch: streaming FinOps anomaly and budget alerting."""

__version__ = "0.1.0"
