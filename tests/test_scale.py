"""Scale-out: a cluster of two worker processes raises what one process raises."""

from __future__ import annotations

import json
from pathlib import Path

import orjson

from spendwatch import demo
from tests.conftest import comparable, read_alerts
from tests.workers import budget_totals, run_cli, worker_config


def split_stream(directory: Path, parts: int) -> list[Path]:
    """The demo stream in event-time order, dealt round-robin into ``parts`` files.

    Every file spans the whole period, like topic partitions do. (The generator appends
    its billing credits at the end, later than any lateness; such events are judged as
    they arrive, which legitimately depends on interleaving, so they are put in order.)
    """
    stream = demo.generate(days=4, scale=0.25, seed=8, spike_at_hours=2 * 24 + 9)
    lines = sorted(stream.lines, key=lambda line: orjson.loads(line)["ts"])
    paths = []
    for index in range(parts):
        path = directory / f"events-{index}.jsonl"
        path.write_bytes(b"".join(line + b"\n" for line in lines[index::parts]))
        paths.append(path)
    return paths


def test_two_processes_raise_the_same_alerts_as_one(tmp_path: Path):
    split_stream(tmp_path, 4)
    pattern = str(tmp_path / "events-*.jsonl")
    results = {}
    for processes in (1, 2):
        config, alerts = worker_config(tmp_path, pattern, name=f"p{processes}", batch_bytes=32768)
        dump = tmp_path / f"p{processes}.json"
        run_cli(
            "run",
            "--config",
            str(config),
            "--processes",
            str(processes),
            "--state-dir",
            str(tmp_path / f"state-{processes}"),
            "--dump-state",
            str(dump),
        )
        results[processes] = (
            read_alerts(alerts),
            budget_totals(dump),
            json.loads(dump.read_text()),
        )
    one, two = results[1], results[2]
    assert len(one[0]) >= 10
    assert {a["kind"] for a in one[0]} == {"anomaly", "budget"}
    assert comparable(one[0]) == comparable(two[0])
    assert one[1] == two[1]
    per_process = [summary["events"] for summary in two[2]["processes"]]
    assert len(per_process) == 2 and all(count > 0 for count in per_process), per_process
    assert sum(per_process) == one[2]["summary"]["events"]
