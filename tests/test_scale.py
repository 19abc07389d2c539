"""Scale-out: a cluster of two worker processes raises what one process raises."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
from pathlib import Path

import orjson

from spendwatch.core.liveview import budget_order
from spendwatch.ops import demo
from tests.conftest import comparable, read_alerts
from tests.workers import (
    CLI,
    budget_totals,
    free_port,
    http_get,
    run_cli,
    wait_for,
    worker_config,
)


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


def consecutive_free_ports(count: int) -> int:
    """A port ``p`` such that ``p .. p+count-1`` are all free now."""
    for _ in range(50):
        base = free_port()
        sockets = []
        try:
            for offset in range(count):
                sock = socket.socket()
                sockets.append(sock)
                sock.bind(("127.0.0.1", base + offset))
            return base
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
    raise AssertionError("no run of free ports")


def test_any_process_of_a_cluster_answers_queries_for_all_shards(tmp_path: Path):
    split_stream(tmp_path, 4)
    port = consecutive_free_ports(2)
    config, _ = worker_config(
        tmp_path, str(tmp_path / "events-*.jsonl"), batch_bytes=32768, port=port, follow=True
    )
    cluster = subprocess.Popen(
        [*CLI, "run", "--config", str(config), "--processes", "2"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:

        def budgets(process: int, local: bool) -> list[dict] | None:
            status, body = http_get(port + process, "/budgets" + ("?local=1" if local else ""))
            answer = json.loads(body)
            return answer["budgets"] if status == 200 and "unreachable" not in answer else None

        key = budget_order
        previous: list = []

        def settled() -> list[dict] | None:
            """All input read and published: the budget periods stop changing."""
            rows = budgets(0, local=False)
            keys = sorted(map(key, rows or []))
            stable = bool(rows) and keys == previous
            previous[:] = keys
            weekly = sum(row["budget"] == "tenant-weekly" for row in rows or [])
            return rows if stable and weekly == 5 else None

        merged = wait_for(settled, timeout=60, interval=1.5)
        own = [budgets(process, local=True) for process in (0, 1)]
        assert sorted(map(key, own[0] + own[1])) == sorted(map(key, merged)), "shards disjoint"
        fewer = min((0, 1), key=lambda process: len(own[process]))
        assert len(own[fewer]) < len(merged)
        answer = budgets(fewer, local=False)
        assert answer is not None and sorted(map(key, answer)) == sorted(map(key, merged))
        status, body = http_get(port + 1, "/scopes/tenant-spend")
        assert status == 200 and len(json.loads(body)["scopes"]) == 5
        assert http_get(port, "/scopes/no-such-rule")[0] == 404
    finally:
        cluster.send_signal(signal.SIGTERM)
        _, stderr = cluster.communicate(timeout=60)
    assert cluster.returncode == 0, stderr.decode()[-3000:]
