"""Running a dataflow in this process: worker threads, recovery, and clean shutdown on signals."""

from __future__ import annotations

import signal
import threading
from datetime import timedelta
from pathlib import Path
from types import FrameType

from bytewax.dataflow import Dataflow
from bytewax.errors import BytewaxRuntimeError
from bytewax.recovery import RecoveryConfig
from bytewax.testing import cluster_main, run_main


class Shutdown(KeyboardInterrupt):
    """Raised inside the worker when SIGTERM/SIGINT asks it to stop."""


_stop_requested = threading.Event()


def _raise_shutdown(signum: int, frame: FrameType | None) -> None:
    # Bytewax polls for signals between steps and aborts the dataflow with the error we
    # raise; nothing after the last snapshot is lost because recovery resumes from it.
    _stop_requested.set()
    raise Shutdown(signal.Signals(signum).name)


def run_flow(
    flow: Dataflow,
    *,
    workers: int = 1,
    epoch_interval: float = 5.0,
    recovery_dir: str | None = None,
) -> bool:
    """Run until the input ends (True) or a signal stops it (False)."""
    _stop_requested.clear()
    previous = {sig: signal.signal(sig, _raise_shutdown) for sig in (signal.SIGTERM, signal.SIGINT)}
    recovery = RecoveryConfig(str(Path(recovery_dir))) if recovery_dir else None
    interval = timedelta(seconds=epoch_interval)
    try:
        if workers == 1:
            run_main(flow, epoch_interval=interval, recovery_config=recovery)
        else:
            cluster_main(
                flow,
                [],
                0,
                epoch_interval=interval,
                recovery_config=recovery,
                worker_count_per_proc=workers,
            )
    except (KeyboardInterrupt, BytewaxRuntimeError):
        if _stop_requested.is_set():
            return False
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return True
