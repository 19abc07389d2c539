"""Running a dataflow in this process: worker threads, recovery, and clean shutdown on signals."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from types import FrameType

from bytewax.dataflow import Dataflow
from bytewax.errors import BytewaxRuntimeError
from bytewax.recovery import RecoveryConfig
from bytewax.testing import cluster_main, run_main

from spendwatch.dataflows.decodepool import DecodePool


class Shutdown(KeyboardInterrupt):
    """Raised inside the worker when SIGTERM/SIGINT (or a reload) asks it to stop."""


# A plain flag, not a threading.Event: signal handlers set it and must not take locks.
_stop_requested = [False]

# Called with the signal number before the dataflow is aborted; returning False
# ignores the signal (e.g. a SIGHUP whose new config is invalid).
SignalHook = Callable[[int], bool]


def request_stop(reason: str) -> None:
    """Abort the running dataflow from the main thread (used by signal handlers)."""
    _stop_requested[0] = True
    # Bytewax stops by unwinding its Rust worker as a panic; this one is deliberate, so
    # its stack trace would only alarm whoever pressed Ctrl-C.
    os.environ["RUST_BACKTRACE"] = "0"
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
    return True
