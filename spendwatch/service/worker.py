"""The long-lived worker behind ``spendwatch run``: recovery, signals, reload, HTTP.

One process runs the dataflow in a loop. Every run resumes from the recovery
snapshots in the state directory (a temporary one when none is given, so a
reload keeps state even then):

* SIGTERM/SIGINT abort the dataflow through Bytewax's signal check; whatever was
  not snapshotted is re-read on the next start. If stopping takes longer than
  ``engine.shutdown_grace`` the process exits anyway (recovery makes that safe).
* SIGHUP validates the config file again. An invalid file is logged and ignored;
  a valid one stops the dataflow and starts it again with the new rules, resuming
  from the snapshot: the engine keeps the state of unchanged rules.

``--processes N`` makes this process a supervisor of N cluster processes on
localhost (see :mod:`spendwatch.service.cluster`).
"""

from __future__ import annotations

import faulthandler
import os
import shutil
import signal
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import orjson

from spendwatch.config import ConfigError, SpendwatchConfig, load_config
from spendwatch.core import liveview, stats
from spendwatch.core.logging import get_logger

log = get_logger("spendwatch.service.worker")

OUTBOX_FILE = "outbox.sqlite"

# Seconds a cluster process stays up after its dataflow ended, so its peers' network
# threads can finish their last sends before our sockets close (Timely panics with
# "Send thread panic" in the peer otherwise).
CLUSTER_LINGER = 1.0


@dataclass
class WorkerOptions:
    """What ``spendwatch run`` was asked to do (beyond the config file)."""

    config_path: str
    state_dir: str | None = None
    workers: int = 1
    process_id: int = 0
    addresses: list[str] | None = None
    dump_state: str | None = None


def incompatible(old: SpendwatchConfig, new: SpendwatchConfig) -> str | None:
    """Why ``new`` cannot replace ``old`` in a running worker, or ``None``."""
    if new.engine.shards != old.engine.shards:
        return "engine.shards cannot change while state exists (it decides where scopes live)"
    return None


def reload_config(path: str, current: SpendwatchConfig) -> SpendwatchConfig | None:
    """Load ``path`` for a reload; log and return ``None`` if it is invalid or incompatible."""
    try:
        new = load_config(path)
    except ConfigError as error:
        log.error("reload rejected, keeping the running config", problems=error.problems)
        return None
    reason = incompatible(current, new)
    if reason:
        log.error("reload rejected, keeping the running config", problems=[reason])
        return None
    return new


def _exit_after_grace(seconds: float) -> None:
    time.sleep(seconds)
    log.warning(
        "grace period over, exiting; the next start resumes from the last snapshot",
        grace_seconds=seconds,
    )
    os._exit(0)


class Worker:
    """Runs the dataflow of one process until the input ends or a signal stops it."""

    def __init__(self, config: SpendwatchConfig, options: WorkerOptions) -> None:
        self.config = config
        self.options = options
        self._pending: SpendwatchConfig | None = None
        self._stopping = False
        self._running = False
        self._signals_r, self._signals_w = os.pipe()

    def run(self) -> int:
        from spendwatch.dataflows.recovery import ensure_partitions

        options = self.options
        scratch = None if options.state_dir else tempfile.mkdtemp(prefix="spendwatch-state-")
        state_dir = options.state_dir or scratch
        assert state_dir is not None
        server = None
        try:
            if options.process_id == 0:
                ensure_partitions(state_dir, options.workers * max(len(options.addresses or []), 1))
            server = self._start_server()
            self._install_signals()
            self._loop(state_dir)
        finally:
            liveview.current().ready.clear()
            if options.dump_state:
                dump_state(options.dump_state)
            if server is not None:
                server.stop()
            if scratch:
                shutil.rmtree(scratch, ignore_errors=True)
        return 0

    def _loop(self, state_dir: str) -> None:
        from spendwatch.dataflows.flow import get_flow
        from spendwatch.dataflows.inputs import describe_source
        from spendwatch.dataflows.runner import Shutdown, run_flow
        from spendwatch.notifiers.outbox import build_outbox
        from spendwatch.notifiers.slack_actions import Interactivity

        view = liveview.current()
        while not self._stopping:
            # A restart (a reload) re-reads the input after the last snapshot: the counts
            # start again from what the restored state counted.
            stats.forget_input_counts()
            log.info(
                "starting",
                config=self.options.config_path,
                source=describe_source(self.config.source),
                workers=self.options.workers,
                process=self.options.process_id,
                state_dir=self.options.state_dir,
            )
            view.clear_shards()
            outbox = build_outbox(self.config, path=self._outbox_path()).start()
            interactivity = Interactivity(outbox).start()  # clicks on Slack's buttons
            view.outbox, view.approvals = outbox, interactivity.approvals
            flow = get_flow(self.config, outbox=outbox, recoverable=bool(self.options.state_dir))
            view.ready.set()
            try:
                self._running = True
                finished = run_flow(
                    flow,
                    workers=self.options.workers,
                    epoch_interval=self.config.engine.snapshot_interval,
                    recovery_dir=state_dir,
                    addresses=self.options.addresses,
                    process_id=self.options.process_id,
                    signals=(),
                )
            except Shutdown:
                finished = False
            finally:
                self._running = False
                view.ready.clear()
                view.approvals = None
                interactivity.close()
                outbox.flush(self.config.delivery.flush_timeout)  # the rest resumes next start
                view.outbox = None
                outbox.close()
            if self.options.addresses and finished:
                time.sleep(CLUSTER_LINGER)
            if self._pending is not None and not self._stopping:
                self.config, self._pending = self._pending, None
                log.info("reloaded", config=self.options.config_path)
                continue
            log.info(
                "stopped",
                reason="end of input" if finished else "signal",
                **stats.current().summary(),
            )
            return

    def _outbox_path(self) -> str:
        """The outbox lives with the recovery state unless the config names a place for it.

        Each process of a cluster keeps its own (its shards raise their own alerts).
        """
        delivery = self.config.delivery
        if "outbox_path" in delivery.model_fields_set or not self.options.state_dir:
            path = delivery.outbox_path
        else:
            path = str(Path(self.options.state_dir) / OUTBOX_FILE)
        if self.options.addresses:
            path = f"{path}.p{self.options.process_id}"
        return path

    def _start_server(self):  # type: ignore[no-untyped-def]
        port = self.config.server.port
        if port is None:
            return None
        from spendwatch.service.server import OpsServer

        peers: list[str] = []
        if port:
            # Process i listens on port + i, on the host its cluster address names.
            addresses = self.options.addresses or []
            hosts = [address.rsplit(":", 1)[0] for address in addresses]
            peers = [
                f"{host}:{port + index}"
                for index, host in enumerate(hosts)
                if index != self.options.process_id
            ]
            port += self.options.process_id
        return OpsServer(self.config.server.host, port, peers).start()

    def _install_signals(self) -> None:
        # `kill -USR1` prints every thread's stack to stderr: how to see where a stuck
        # worker is without a debugger.
        faulthandler.register(signal.SIGUSR1, all_threads=True)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR2):
            signal.signal(sig, self._on_signal)
        threading.Thread(target=self._control, name="spendwatch-control", daemon=True).start()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        """Signal handler: no locks, no logging (the interrupted code may hold them).

        It only notes the signal on a pipe for the control thread and, to stop, aborts
        the dataflow. A reload is aborted by the control thread (through SIGUSR2) once
        the new config has been validated.
        """
        from spendwatch.dataflows.runner import request_stop

        if signum != signal.SIGUSR2:
            os.write(self._signals_w, bytes([signum]))
        if signum in (signal.SIGTERM, signal.SIGINT):
            self._stopping = True
        elif signum != signal.SIGUSR2:
            return
        if self._running:
            request_stop(signal.Signals(signum).name)

    def _control(self) -> None:
        """Acts on signals outside the handler: logs, validates reloads, enforces the grace."""
        while True:
            signum = os.read(self._signals_r, 1)[0]
            if signum == signal.SIGHUP:
                if self.options.addresses:
                    log.warning("reload ignored: restart every process of a cluster to reload")
                    continue
                new = reload_config(self.options.config_path, self.config)
                if new is None or self._stopping:
                    continue
                self._pending = new
                log.info("reloading", config=self.options.config_path)
                os.kill(os.getpid(), signal.SIGUSR2)
            else:
                grace = self.config.engine.shutdown_grace
                log.info("stopping", signal=signal.Signals(signum).name, grace_seconds=grace)
                threading.Thread(target=_exit_after_grace, args=(grace,), daemon=True).start()


def dump_state(path: str) -> None:
    """Write this process's budgets and run counters as JSON (for operators and tests)."""
    view = liveview.current()
    payload = {
        "budgets": view.budgets(),
        "summary": stats.current().summary(),
        "watermark": view.watermark(),
    }
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    temporary = f"{path}.tmp"
    with open(temporary, "wb") as handle:
        handle.write(orjson.dumps(payload, option=orjson.OPT_INDENT_2))
    os.replace(temporary, path)
