"""The dead-letter file across restarts: cut back to the snapshot, rows already in it skipped."""

from __future__ import annotations

import json
from pathlib import Path

from spendwatch.dataflows.sinks import DeadLetterSink
from spendwatch.dataflows.sources import with_offsets
from spendwatch.ingest.events import DeadLetter


def _letter(offset: int, raw: bytes = b"{bad") -> DeadLetter:
    return DeadLetter("malformed JSON: x", raw + str(offset).encode(), "in.jsonl", offset)


def _rows(path: Path) -> list[int]:
    return [json.loads(line)["offset"] for line in path.read_text().splitlines()]


def test_a_restart_cuts_back_to_the_snapshot_and_skips_rows_it_already_holds(tmp_path):
    path = tmp_path / "dead.jsonl"
    sink = DeadLetterSink(str(path), recoverable=True)
    assert path.exists() and path.read_text() == ""  # there from the start
    first = sink.build_part("dead", "dead_letters", None)
    first.write_batch([_letter(0), _letter(10)])
    snapshot = first.snapshot()
    first.write_batch([_letter(20)])  # written as it arrived, in an epoch never committed
    # killed; the replay brings 10 again (Bytewax wrote it before the snapshot's epoch
    # closed), then 20 and 30
    second = sink.build_part("dead", "dead_letters", snapshot)
    assert _rows(path) == [0, 10]
    second.write_batch([_letter(10), _letter(20), _letter(30)])
    assert _rows(path) == [0, 10, 20, 30]
    # a kill before any snapshot: rows already there are recognised by their key
    third = sink.build_part("dead", "dead_letters", None)
    third.write_batch([_letter(0), _letter(40)])
    assert _rows(path) == [0, 10, 20, 30, 40]


def test_offsets_are_the_byte_offsets_of_the_lines(tmp_path):
    block = b'{"ok": 1}\n{bad\n\n  {bad\n{"ok": 2}'
    placed = with_offsets(
        [DeadLetter("malformed JSON: a", b"{bad"), DeadLetter("malformed JSON: b", b"{bad")],
        block,
        1000,
    )
    assert [d.offset for d in placed] == [1000 + block.index(b"{bad"), 1000 + block.rindex(b"{bad")]


def test_without_recovery_every_run_appends(tmp_path):
    path = tmp_path / "dead.jsonl"
    for _ in range(2):
        part = DeadLetterSink(str(path)).build_part("dead", "dead_letters", None)
        part.write_batch([_letter(0)])
        part.close()
    assert _rows(path) == [0, 0]
