"""A real Kafka-protocol broker for the Kafka tests, started once per session.

Each test uses its own topics (``topic_name``), so tests never see each other's messages.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from spendwatch.testing.devbroker import start_broker, stop_broker


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``host:port`` of a broker that lives for the whole test session."""
    process, address = start_broker(tmp_path_factory.mktemp("tansu") / "broker.log")
    try:
        yield address
    finally:
        stop_broker(process)


@pytest.fixture
def topic_name() -> Iterator[str]:
    yield f"t-{uuid.uuid4().hex[:12]}"
