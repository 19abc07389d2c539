"""Tag each input batch with the source partition it came from.

The engine's watermark follows the slowest input partition (see
``ShardEngine.on_message``), so it must know where a batch came from. This wrapper
adds that without touching the sources: it delegates everything (including the
snapshot, so recovery state is unchanged) and emits ``(partition, batch)`` pairs.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Generic, TypeVar

from bytewax.inputs import FixedPartitionedSource, Source, StatefulSourcePartition

X = TypeVar("X")

Tagged = tuple[str | None, Any]


class _TaggedPartition(StatefulSourcePartition[Tagged, Any], Generic[X]):
    def __init__(self, name: str, inner: StatefulSourcePartition[X, Any]) -> None:
        self._name = name
        self._inner = inner

    def next_batch(self) -> list[Tagged]:
        return [(self._name, item) for item in self._inner.next_batch()]

    def next_awake(self) -> datetime | None:
        return self._inner.next_awake()

    def snapshot(self) -> Any:
        return self._inner.snapshot()

    def close(self) -> None:
        self._inner.close()


class TaggedSource(FixedPartitionedSource[Tagged, Any]):
    """A partitioned source whose items are ``(partition name, item)``."""

    def __init__(self, inner: FixedPartitionedSource[Any, Any]) -> None:
        self.inner = inner

    def list_parts(self) -> list[str]:
        return self.inner.list_parts()

    def build_part(self, step_id: str, for_part: str, resume_state: Any) -> _TaggedPartition:
        return _TaggedPartition(for_part, self.inner.build_part(step_id, for_part, resume_state))


def tagged(source: Source) -> tuple[Source, bool]:
    """``source`` wrapped when it is partitioned (and whether it was)."""
    if isinstance(source, FixedPartitionedSource):
        return TaggedSource(source), True
    return source, False
