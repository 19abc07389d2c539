"""Helper processes that decode input blocks while the worker aggregates.

Decoding JSON is most of the per-event cost. A file partition with a backlog (a backtest,
a worker catching up) hands its blocks to a process-wide pool of helper processes,
several blocks in flight, and takes the results back in input order before applying its
dedup window: the batches are exactly those of inline decoding, only sooner.

Helpers are plain ``python -m spendwatch.dataflows.decodepool`` subprocesses speaking
length-prefixed frames over their stdin and stdout (a request is a small pickle and the
block's raw bytes, a reply a pickle of the decoded columns): no fork of the multi-threaded
worker, no re-import of the caller's main module, and a helper whose parent dies sees
end-of-file and exits. Helpers ignore SIGINT: the worker decides when to stop.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pickle
import queue
import signal
import struct
import subprocess
import sys
import threading
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from typing import IO, Literal

from spendwatch.core.gctuning import tune_gc
from spendwatch.ingest.decoding import BlockDecoder, DecodedBlock

# A partition uses helpers only for a backlog of at least this many blocks: starting
# them costs a fraction of a second, which a short file would not win back.
MIN_BACKLOG_BLOCKS = 8
_FRAME = struct.Struct("!Q")
# Set by ``run --processes N`` for its children: how many worker processes share the CPUs.
LOCAL_PROCESSES_ENV = "SPENDWATCH_LOCAL_PROCESSES"


def helper_count(setting: int | Literal["auto"]) -> int:
    """Helper processes for ``source.decode_processes``.

    ``auto`` runs one per CPU this process may use, at most 4: the worker itself mostly
    waits for decoded blocks, and beyond 4 it is the aggregation that limits. The CPUs
    are shared among the processes ``run --processes N`` started on this machine
    (:data:`LOCAL_PROCESSES_ENV`); a process with a single CPU decodes inline.
    """
    if setting == "auto":
        local_processes = max(int(os.environ.get(LOCAL_PROCESSES_ENV, "1")), 1)
        cpus = (os.cpu_count() or 1) // local_processes
        return min(cpus, 4) if cpus > 1 else 0
    return setting


def _write_frame(stream: IO[bytes], payload: bytes) -> None:
    stream.write(_FRAME.pack(len(payload)))
    stream.write(payload)
    stream.flush()


def _read_frame(stream: IO[bytes]) -> bytes | None:
    header = stream.read(_FRAME.size)
    if len(header) < _FRAME.size:
        return None
    (size,) = _FRAME.unpack(header)
    payload = stream.read(size)
    return payload if len(payload) == size else None


class _Helper:
    """One helper process; a reader thread resolves each task's future as results arrive."""

    def __init__(self) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "spendwatch.dataflows.decodepool"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        self._pending: dict[int, Future[DecodedBlock]] = {}
        self._lock = threading.Lock()
        self._requests: queue.SimpleQueue[tuple[bytes, bytes] | None] = queue.SimpleQueue()
        self._broken = False
        self.decoded = 0  # blocks this helper decoded
        threading.Thread(target=self._read_results, name="decode-results", daemon=True).start()
        threading.Thread(target=self._write_requests, name="decode-requests", daemon=True).start()

    def submit(self, task: int, meta: bytes, block: bytes) -> Future[DecodedBlock]:
        future: Future[DecodedBlock] = Future()
        with self._lock:
            if self._broken:
                future.set_exception(BrokenProcessPool("decode helper exited"))
                return future
            self._pending[task] = future
        self._requests.put((meta, block))  # never blocks the worker on a busy helper
        return future

    def _write_requests(self) -> None:
        while (request := self._requests.get()) is not None:
            try:
                for frame in request:  # the block goes as it is: no copy into a pickle
                    _write_frame(self._process.stdin, frame)
            except OSError:  # the helper is gone: the reader fails what is pending
                return
        with contextlib.suppress(OSError):
            self._process.stdin.close()  # end of input: the helper exits

    def _read_results(self) -> None:
        while (frame := _read_frame(self._process.stdout)) is not None:
            task, ok, result = pickle.loads(frame)
            with self._lock:
                future = self._pending.pop(task)
            if ok:
                self.decoded += 1
                future.set_result(result)
            else:
                future.set_exception(RuntimeError(f"decode helper failed: {result}"))
        with self._lock:
            self._broken = True
            pending, self._pending = list(self._pending.values()), {}
        for future in pending:
            future.set_exception(BrokenProcessPool("decode helper exited"))

    def close(self) -> None:
        self._requests.put(None)
        try:
            self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._process.kill()


class DecodePool:
    """Helper processes shared by the partitions of one worker process."""

    _lock = threading.Lock()
    _shared: DecodePool | None = None
    _users = 0

    def __init__(self, processes: int) -> None:
        self.processes = processes
        self._helpers = [_Helper() for _ in range(processes)]
        self._tasks = itertools.count()

    @classmethod
    def acquire(cls, processes: int) -> DecodePool:
        """The process's pool (started on first use); pair with :meth:`release`."""
        with cls._lock:
            if cls._shared is None:
                cls._shared = DecodePool(processes)
            cls._users += 1
            return cls._shared

    @classmethod
    def release(cls) -> None:
        with cls._lock:
            cls._users = max(cls._users - 1, 0)
            if cls._users == 0:
                cls._close_shared()

    @classmethod
    def shutdown(cls) -> None:
        """Stop the helpers whoever still holds them (a dataflow run has ended)."""
        with cls._lock:
            cls._users = 0
            cls._close_shared()

    @classmethod
    def _close_shared(cls) -> None:
        if cls._shared is not None:
            for helper in cls._shared._helpers:
                helper.close()
            cls._shared = None

    @property
    def decoded(self) -> int:
        """Blocks the helpers decoded (for tests and diagnostics)."""
        return sum(helper.decoded for helper in self._helpers)

    def submit(self, decoder: BlockDecoder, block: bytes, source: str) -> Future[DecodedBlock]:
        """Decode ``block`` in a helper (round robin); the future holds the result."""
        task = next(self._tasks)
        meta = pickle.dumps((task, decoder, source), protocol=pickle.HIGHEST_PROTOCOL)
        return self._helpers[task % len(self._helpers)].submit(task, meta, block)


def _serve() -> None:
    """Helper process: decode each block read from stdin, write each result to stdout."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    tune_gc()
    requests = sys.stdin.buffer
    results = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # stray prints cannot corrupt frames
    while (meta := _read_frame(requests)) is not None:
        block = _read_frame(requests)
        if block is None:
            break
        task, decoder, source = pickle.loads(meta)
        try:
            reply = (task, True, decoder.decode_block(block, source))
        except Exception as error:  # report, keep serving: the worker decides what to do
            reply = (task, False, f"{type(error).__name__}: {error}")
        _write_frame(results, pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL))


if __name__ == "__main__":
    _serve()
