"""A pool of worker processes for the collector's CPU work (decode, validate, encode, write).

A worker thread shares the interpreter lock with the event loop: while it validates a batch, every
request the loop serves waits for the lock in turn (5 ms each time), so ``/healthz`` slows down
under batches even when nothing runs on the loop. A worker process has its own lock.

The pool starts on first use (``spawn``: a clean interpreter, no copy of the server's threads or
sockets), and each worker exits by itself when the service process is gone (even after SIGKILL,
which runs no clean-up): it watches its parent's pid.
"""

from __future__ import annotations

import asyncio
import functools
import multiprocessing
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any


def _exit_with_parent(parent_pid: int) -> None:
    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os._exit(0)  # the service is gone: nothing is waiting for an answer

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


class ProcessPool:
    """``await pool.run(fn, *args)`` runs a module-level ``fn`` in one of ``workers`` processes."""

    def __init__(self, workers: int):
        self.workers = workers
        self._executor: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()

    def _get(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._executor is None:
                self._executor = ProcessPoolExecutor(
                    self.workers, mp_context=multiprocessing.get_context("spawn"),
                    initializer=_exit_with_parent, initargs=(os.getpid(),))
            return self._executor

    async def run(self, fn, *args) -> Any:
        return await asyncio.get_running_loop().run_in_executor(
            self._get(), functools.partial(fn, *args))

    def reset(self) -> None:
        """Drop a broken pool (a worker died); the next ``run`` starts a new one."""
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)

    def shutdown(self) -> None:
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)

    def pids(self) -> list[int]:
        """The pids of the running workers (none before the first ``run``)."""
        with self._lock:
            procs = getattr(self._executor, "_processes", None) or {}
            return sorted(procs)
