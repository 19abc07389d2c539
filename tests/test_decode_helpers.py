"""Decoding in helper processes gives exactly the batches (and alerts) of inline decoding."""

from __future__ import annotations

import gc
import json
import os
import signal
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spendwatch.config import load_config
from spendwatch.core.gctuning import GC_THRESHOLDS
from spendwatch.dataflows.aggregate import _group_sums
from spendwatch.dataflows.decodepool import LOCAL_PROCESSES_ENV, DecodePool, helper_count
from spendwatch.dataflows.sources import _FilePartition
from spendwatch.ops import demo
from spendwatch.ops.backtest import backtest
from tests.conftest import comparable, read_alerts, write_config

BLOCK = 16 << 10


@pytest.fixture(scope="module")
def messy_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Demo events with bad lines, repeats and blank lines mixed in."""
    lines = demo.generate(days=1, scale=0.1, seed=3).lines[:20_000]
    mixed: list[bytes] = []
    for i, raw in enumerate(lines):
        mixed.append(raw)
        if i % 997 == 0:
            mixed.append(b'{"event_id": "broken", "ts": ')
        if i % 1499 == 0:
            mixed.append(lines[max(i - 3, 0)])  # a repeat: counted once
        if i % 2003 == 0:
            mixed.append(b"")
    path = tmp_path_factory.mktemp("messy") / "events.jsonl"
    path.write_bytes(b"\n".join(mixed) + b"\n")
    return path


def slices(config):
    """What a file partition is given: its source section and the parser settings."""
    return config.source, config.parser_settings()


def config_for(tmp_path: Path, helpers: int, follow: bool = False):
    text = f"""
        source: {{type: jsonl, batch_bytes: {BLOCK}, decode_processes: {helpers},
                  follow: {str(follow).lower()}, poll_interval: 0.05}}
        dead_letter: {{path: {tmp_path}/dead-{helpers}.jsonl}}
        detectors:
          - {{name: tenant-spend, type: robust_seasonal, scope: [tenant], window: 15m}}
        budgets:
          - {{name: daily, scope_by: [tenant], amount_usd: 40, period: day}}
        receivers:
          - {{type: file, path: {tmp_path}/alerts-{helpers}.jsonl}}
        delivery: {{outbox_path: {tmp_path}/outbox-{helpers}.sqlite}}
    """
    text = textwrap.dedent(text) + demo.pricing_yaml()
    return load_config(write_config(tmp_path, text, f"config-{helpers}.yaml"))


def read_all(partition: _FilePartition, kill_helpers_after: int | None = None) -> list[tuple]:
    batches = []
    try:
        while True:
            for batch in partition.next_batch():
                if batch.caught_up:
                    continue
                batches.append(
                    (
                        batch.ts.tolist(),
                        batch.spend_nanos.tolist(),
                        batch.requests.tolist(),
                        {d: c.tolist() for d, c in batch.dims.items()},
                        [(d.reason, d.raw) for d in batch.dead],
                        batch.duplicates,
                    )
                )
                if len(batches) == kill_helpers_after:
                    for helper in DecodePool._shared._helpers:
                        os.kill(helper._process.pid, signal.SIGKILL)
    except StopIteration:
        pass
    finally:
        partition.close()
    return batches


def test_helpers_decode_the_same_batches_as_inline(messy_file, tmp_path):
    inline = read_all(_FilePartition(*slices(config_for(tmp_path, 0)), str(messy_file), None))
    helped = _FilePartition(*slices(config_for(tmp_path, 2)), str(messy_file), None)
    pool = helped._pool
    assert pool is not None, "a backlog of many blocks is decoded by helpers"
    assert read_all(helped) == inline
    assert len(inline) > 8
    assert pool.decoded == len(inline), "every block was decoded by a helper, none inline"
    assert sum(len(b[4]) for b in inline) >= 5 and sum(b[5] for b in inline) >= 3


def test_a_helper_that_dies_is_replaced_by_inline_decoding(messy_file, tmp_path):
    inline = read_all(_FilePartition(*slices(config_for(tmp_path, 0)), str(messy_file), None))
    helped = _FilePartition(*slices(config_for(tmp_path, 2)), str(messy_file), None)
    assert read_all(helped, kill_helpers_after=2) == inline
    assert DecodePool._shared is None, "the pool is released when its partition closes"


def test_a_short_file_is_decoded_inline(tmp_path):
    path = tmp_path / "short.jsonl"
    path.write_bytes(b"\n".join(demo.generate(days=1, scale=0.01, seed=1).lines[:100]))
    partition = _FilePartition(*slices(config_for(tmp_path, 2)), str(path), None)
    assert partition._pool is None
    assert sum(len(b[0]) for b in read_all(partition)) == 100


def test_a_followed_file_stops_its_helpers_once_caught_up(messy_file, tmp_path):
    path = tmp_path / "growing.jsonl"
    path.write_bytes(messy_file.read_bytes())
    partition = _FilePartition(*slices(config_for(tmp_path, 2, follow=True)), str(path), None)
    assert partition._pool is not None
    events, caught_up = 0, False
    first_line = messy_file.read_bytes().split(b"\n", 1)[0]
    try:
        while not caught_up:
            batches = partition.next_batch()
            events += sum(batch.size for batch in batches)
            caught_up = any(batch.caught_up for batch in batches)
        assert partition._pool is None and DecodePool._shared is None
        with path.open("ab") as handle:
            handle.write(first_line.replace(b'"event_id":"', b'"event_id":"new-') + b"\n")
        more = []
        while not more:
            more = [batch for batch in partition.next_batch() if batch.size]
        assert [batch.size for batch in more] == [1], "new lines are decoded inline"
    finally:
        partition.close()
    assert events > 1000


def test_backtest_alerts_do_not_depend_on_helpers(planted_file, tmp_path):
    alerts = {}
    for helpers in (0, 2):
        config = config_for(tmp_path, helpers)
        out = tmp_path / f"backtest-{helpers}.jsonl"
        summary = backtest(config, str(planted_file), str(out))
        alerts[helpers] = comparable(read_alerts(out))
        assert summary["events"] > 100_000
        assert DecodePool._shared is None, "no helper outlives the run"
        assert gc.get_threshold() == GC_THRESHOLDS, "a run collects cyclic garbage rarely"
    assert alerts[0] == alerts[2]
    assert any(json.loads(dict(a)["kind"]) == "budget" for a in alerts[0])


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 40), st.integers(-(2**62), 2**62) | st.integers(-100, 100)),
        min_size=1,
        max_size=200,
    )
)
def test_group_sums_are_exact_integer_sums(rows):
    key = np.array([k for k, _ in rows], dtype=np.int64)
    values = np.array([v for _, v in rows], dtype=np.int64)
    groups, counts, [sums], _ = _group_sums(key, 41, [values], [])
    expected: dict[int, list[int]] = {}
    for k, v in rows:
        expected.setdefault(k, []).append(v)
    assert groups.tolist() == sorted(expected)
    assert counts.tolist() == [len(expected[k]) for k in sorted(expected)]
    assert sums.tolist() == [
        (sum(expected[k]) + 2**63) % 2**64 - 2**63 for k in sorted(expected)
    ], "int64 sums, wrapping like the sorted path's integer additions"


def test_auto_helpers_share_the_cpus_among_the_local_processes(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    monkeypatch.delenv(LOCAL_PROCESSES_ENV, raising=False)
    assert helper_count("auto") == 4, "capped: beyond 4 the aggregation limits"
    monkeypatch.setenv(LOCAL_PROCESSES_ENV, "4")
    assert helper_count("auto") == 2
    monkeypatch.setenv(LOCAL_PROCESSES_ENV, "8")
    assert helper_count("auto") == 0, "one CPU per process: decode inline"
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    monkeypatch.delenv(LOCAL_PROCESSES_ENV)
    assert helper_count("auto") == 0
    assert helper_count(3) == 3, "an explicit count is taken as given"


def test_helpers_that_cannot_start_leave_decoding_inline(messy_file, tmp_path, monkeypatch):
    inline = read_all(_FilePartition(*slices(config_for(tmp_path, 0)), str(messy_file), None))
    monkeypatch.setattr(sys, "executable", "/bin/false")  # exits at once, decodes nothing
    helped = _FilePartition(*slices(config_for(tmp_path, 2)), str(messy_file), None)
    assert helped._pool is not None
    assert read_all(helped) == inline
