"""Bytewax recovery partitions in a state directory: created once, reused on every restart."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from bytewax.recovery import init_db_dir

_PATTERN = "part-*.sqlite3"


def partition_count(state_dir: str | os.PathLike[str]) -> int:
    """How many recovery partitions ``state_dir`` holds (0: not initialised)."""
    return len(list(Path(state_dir).glob(_PATTERN)))


def ensure_partitions(state_dir: str | os.PathLike[str], count: int) -> int:
    """Create ``count`` partitions unless some exist; return the number present.

    The partitions are made in a scratch directory and moved in afterwards, so a crash
    half-way leaves either no partitions (made again next time) or all of them. The
    count never changes afterwards: Bytewax spreads partitions over whatever workers
    run, so restarting with more or fewer processes is fine.
    """
    directory = Path(state_dir)
    directory.mkdir(parents=True, exist_ok=True)
    # Snapshots hold scopes, dedup ids and budget totals: readable by their owner only.
    directory.chmod(0o700)
    existing = partition_count(directory)
    if existing:
        return existing
    scratch = Path(tempfile.mkdtemp(prefix=".init-", dir=directory))
    try:
        init_db_dir(scratch, max(count, 1))
        for part in sorted(scratch.glob(_PATTERN)):
            part.chmod(0o600)
            os.replace(part, directory / part.name)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return partition_count(directory)
