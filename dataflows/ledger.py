"""Which alerts each receiver already got, so a replay after a restart pages nobody twice.

Bytewax resumes from the last committed epoch: alerts raised after it are raised
again when their input is re-read. Alert identities are deterministic
(fingerprint, status, episode), so a unique key on (receiver, identity) turns the
replay into a no-op. The ledger records a delivery *after* the receiver accepted
it; a crash between the two would re-send once, except for file receivers, whose
own file is read back at start-up (an ``O_APPEND`` line is all or nothing), so for
them delivery is exactly once. The durable outbox of the delivery layer supersedes
this for remote receivers.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable

import orjson

Identity = tuple[str, str, str]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS delivered (
    receiver TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    status TEXT NOT NULL,
    episode TEXT NOT NULL,
    PRIMARY KEY (receiver, fingerprint, status, episode)
) WITHOUT ROWID
"""


class DeliveryLedger:
    """A SQLite set of delivered (receiver, identity) pairs, shared by all workers."""

    def __init__(self, path: str) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self._db = sqlite3.connect(path, timeout=30, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(_SCHEMA)

    def delivered(self, receiver: str, identity: Identity) -> bool:
        row = self._db.execute(
            "SELECT 1 FROM delivered WHERE receiver=? AND fingerprint=? AND status=? AND episode=?",
            (receiver, *identity),
        ).fetchone()
        return row is not None

    def record(self, receiver: str, identities: Iterable[Identity]) -> None:
        self._db.executemany(
            "INSERT OR IGNORE INTO delivered VALUES (?, ?, ?, ?)",
            [(receiver, *identity) for identity in identities],
        )

    def close(self) -> None:
        self._db.close()


def identities_in_file(path: str) -> list[Identity]:
    """Identities of the alerts already in a JSONL alerts file (a torn last line is skipped)."""
    found: list[Identity] = []
    try:
        with open(path, "rb") as handle:
            for line in handle:
                try:
                    record = orjson.loads(line)
                    found.append((record["fingerprint"], record["status"], record["episode"]))
                except (orjson.JSONDecodeError, KeyError, TypeError):
                    continue
    except FileNotFoundError:
        pass
    return found
