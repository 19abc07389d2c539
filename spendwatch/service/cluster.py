"""``spendwatch run --processes N``: N Bytewax cluster processes on this machine.

The supervisor picks N free localhost ports, starts N ``spendwatch run`` children
as processes ``0..N-1`` of one cluster (Bytewax's ``addresses``/``process_id``
addressing, the same a multi-machine deployment uses), forwards SIGTERM/SIGINT to
them and coordinates reloads: a valid SIGHUP config stops all children and starts
them again, and they resume from the shared recovery directory. One child alone
cannot reload, because the others would lose their peer.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from types import FrameType

import orjson

from spendwatch.config import SpendwatchConfig
from spendwatch.core.logging import get_logger
from spendwatch.dataflows.decodepool import LOCAL_PROCESSES_ENV
from spendwatch.service.worker import WorkerOptions, reload_config

log = get_logger("spendwatch.service.cluster")

# Consecutive failed cluster runs before giving up. Timely's network threads can panic
# while a cluster tears down at the end of input ("Send thread panic"), and any process
# may die; a restart resumes from the last committed snapshot and delivers nothing twice.
MAX_RESTARTS = 3


def free_ports(count: int) -> list[int]:
    """Ports the OS says are free right now (bound together so they are distinct)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


class Supervisor:
    """Starts, signals and restarts the processes of a local cluster."""

    def __init__(
        self,
        config: SpendwatchConfig,
        options: WorkerOptions,
        processes: int,
        log_level: str = "info",
    ) -> None:
        self.config = config
        self.log_level = log_level
        self.options = options
        self.processes = processes
        self._children: list[subprocess.Popen] = []
        self._stopping = False
        self._reload = False
        self._stop_deadline: float | None = None
        self._signals: list[int] = []

    def run(self) -> int:
        from spendwatch.dataflows.recovery import ensure_partitions

        scratch = None if self.options.state_dir else tempfile.mkdtemp(prefix="spendwatch-state-")
        state_dir = self.options.state_dir or scratch
        assert state_dir is not None
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        try:
            ensure_partitions(state_dir, self.processes * self.options.workers)
            failures = 0
            while True:
                codes = self._run_once(state_dir)
                if self._reload and not self._stopping:
                    self._reload = False
                    log.info("reloaded", config=self.options.config_path)
                    continue
                if any(codes) and not self._stopping and failures < MAX_RESTARTS:
                    failures += 1
                    log.warning(
                        "cluster process failed, restarting from the last snapshot",
                        exit_codes=codes,
                        attempt=failures,
                    )
                    continue
                break
        finally:
            if scratch:
                shutil.rmtree(scratch, ignore_errors=True)
        if self.options.dump_state:
            merge_dumps(self.options.dump_state, self.processes)
        if self._stopping:
            return 0
        return max(codes, default=0)

    def _run_once(self, state_dir: str) -> list[int]:
        ports = free_ports(self.processes)
        addresses = ";".join(f"127.0.0.1:{port}" for port in ports)
        self._children = []
        for index in range(self.processes):
            command = [
                sys.executable,
                "-m",
                "spendwatch.cli",
                "run",
                "--config",
                self.options.config_path,
                "--state-dir",
                state_dir,
                "--workers",
                str(self.options.workers),
                "--process-id",
                str(index),
                "--addresses",
                addresses,
                "--log-level",
                self.log_level,
            ]
            if self.options.dump_state:
                command += ["--dump-state", f"{self.options.dump_state}.{index}"]
            # The CPUs are shared: each process sizes its decode helpers to its share.
            env = {**os.environ, LOCAL_PROCESSES_ENV: str(self.processes)}
            self._children.append(subprocess.Popen(command, env=env))
        log.info("cluster started", processes=self.processes, addresses=addresses)
        while any(child.poll() is None for child in self._children):
            self._handle_signals()
            if self._stop_deadline is not None and time.monotonic() > self._stop_deadline:
                log.warning("grace period over, killing the cluster processes")
                for child in self._children:
                    if child.poll() is None:
                        child.kill()
            time.sleep(0.05)
        self._stop_deadline = None
        return [child.returncode for child in self._children]

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # Only note it (no logging or locks in a handler); the polling loop acts on it.
        self._signals.append(signum)

    def _handle_signals(self) -> None:
        while self._signals:
            signum = self._signals.pop(0)
            if signum == signal.SIGHUP:
                new = reload_config(self.options.config_path, self.config)
                if new is None:
                    continue
                self.config = new
                self._reload = True
                log.info("reloading", config=self.options.config_path)
            else:
                self._stopping = True
                log.info("stopping", signal=signal.Signals(signum).name)
            self._stop_deadline = time.monotonic() + self.config.engine.shutdown_grace
            for child in self._children:
                if child.poll() is None:
                    child.send_signal(signal.SIGTERM)


def merge_dumps(path: str, processes: int) -> None:
    """Combine the children's state dumps (``PATH.0`` …) into ``PATH``."""
    budgets: list = []
    summaries: list = []
    for index in range(processes):
        part = f"{path}.{index}"
        if not os.path.exists(part):
            continue
        with open(part, "rb") as handle:
            dump = orjson.loads(handle.read())
        budgets.extend(dump["budgets"])
        summaries.append(dump["summary"])
        os.remove(part)
    budgets.sort(key=lambda r: (r["budget"], sorted(r["scope"].items()), r["period"]))
    with open(path, "wb") as handle:
        handle.write(
            orjson.dumps({"budgets": budgets, "processes": summaries}, option=orjson.OPT_INDENT_2)
        )
