"""Running a dataflow in this process: worker threads, recovery, and clean shutdown on signals."""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from types import FrameType

from bytewax.dataflow import Dataflow
from bytewax.errors import BytewaxRuntimeError
from bytewax.recovery import RecoveryConfig
from bytewax.testing import cluster_main, run_main

from spendwatch.core.gctuning import tune_gc
from spendwatch.dataflows.decodepool import DecodePool


class Shutdown(KeyboardInterrupt):
    """Raised inside the worker when SIGTERM/SIGINT (or a reload) asks it to stop."""


# A plain flag, not a threading.Event: signal handlers set it and must not take locks.
_stop_requested = [False]

# Called with the signal number before the dataflow is aborted; returning False
# ignores the signal (e.g. a SIGHUP whose new config is invalid).
SignalHook = Callable[[int], bool]


# What Rust prints when Bytewax unwinds its worker for the stop we asked for.
_ABORT_NOISE = (
    b"thread '<unnamed>' panicked at",
    b"Box<dyn Any>",
    b"note: run with `RUST_BACKTRACE",
)


class _AbortNoiseFilter:
    """Passes stderr (fd 2) through a pipe, dropping the lines of a deliberate abort.

    Bytewax stops by unwinding its Rust worker as a panic, and the panic hook prints a
    message meant for crashes; after Ctrl-C it would only alarm. Everything else written
    to stderr meanwhile (our logs among it) is forwarded unchanged.
    """

    def __init__(self) -> None:
        sys.stderr.flush()
        self._stderr = os.dup(2)
        read, write = os.pipe()
        os.dup2(write, 2)
        os.close(write)
        self._thread = threading.Thread(target=self._forward, args=(read,), daemon=True)
        self._thread.start()

    def _forward(self, read: int) -> None:
        with os.fdopen(read, "rb") as pipe:
            for line in pipe:
                if line.strip() and not line.startswith(_ABORT_NOISE):
                    os.write(self._stderr, line)

    def close(self) -> None:
        sys.stderr.flush()
        os.dup2(self._stderr, 2)  # the pipe's last writer is gone: the forwarder ends
        self._thread.join(timeout=2)
        os.close(self._stderr)


_abort_filter: list[_AbortNoiseFilter] = []


def request_stop(reason: str) -> None:
    """Abort the running dataflow from the main thread (used by signal handlers)."""
    _stop_requested[0] = True
    os.environ["RUST_BACKTRACE"] = "0"  # a deliberate stop has no stack worth showing
    if not _abort_filter:
        _abort_filter.append(_AbortNoiseFilter())
    raise Shutdown(reason)


def run_flow(
    flow: Dataflow,
    *,
    workers: int = 1,
    epoch_interval: float = 5.0,
    recovery_dir: str | None = None,
    addresses: Sequence[str] | None = None,
    process_id: int = 0,
    signals: Sequence[int] = (signal.SIGTERM, signal.SIGINT),
    on_signal: SignalHook | None = None,
) -> bool:
    """Run until the input ends (True) or a signal stops it (False).

    With ``recovery_dir`` every epoch (``epoch_interval`` seconds of wall time) ends with
    a snapshot of source offsets and shard state; a restart resumes from the last epoch
    all workers committed and re-reads the input after it. ``addresses`` (one
    ``host:port`` per process) makes this process ``process_id`` of a cluster.
    """

    def handle(signum: int, frame: FrameType | None) -> None:
        # Bytewax polls for signals between steps and aborts the dataflow with the error
        # we raise; nothing after the last snapshot is lost because recovery resumes there.
        if on_signal is not None and not on_signal(signum):
            return
        request_stop(signal.Signals(signum).name)

    _stop_requested[0] = False
    tune_gc()
    previous = {sig: signal.signal(sig, handle) for sig in signals}
    recovery = RecoveryConfig(str(Path(recovery_dir))) if recovery_dir else None
    interval = timedelta(seconds=epoch_interval)
    try:
        if workers == 1 and not addresses:
            run_main(flow, epoch_interval=interval, recovery_config=recovery)
        else:
            cluster_main(
                flow,
                list(addresses or []),
                process_id,
                epoch_interval=interval,
                recovery_config=recovery,
                worker_count_per_proc=workers,
            )
    except (KeyboardInterrupt, BytewaxRuntimeError):
        if _stop_requested[0]:
            return False
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        # An aborted run (a signal, a reload, a crash) never closed its partitions.
        DecodePool.shutdown()
        while _abort_filter:
            _abort_filter.pop().close()
    return True
