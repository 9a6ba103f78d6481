"""Ingest worker processes: the chunks of a large JSONL input processed in parallel.

``ml.ingest.vectorized.ingest_files`` cuts JSONL files into ~64 MB chunks; when the input spans
several chunks, ``_worker_count`` gives one worker process per CPU (at most 4; ``workers=``
overrides) and ``_ChunkPool`` runs the chunk jobs in them. A worker sends its rows back as an
Arrow IPC file in an exchange directory (``_exchange_dir``: in shared memory where there is one,
cheaper than pickling); the pool hands the results back in submission order, with a bounded
read-ahead so memory stays flat.

Worker processes are started with ``spawn``: like any ``multiprocessing`` user, a script that
calls ``ingest_files`` on a large input needs the ``if __name__ == "__main__":`` guard (without
it the workers fail at start and the ingest continues in-process: a ``logging`` warning, and
``stats["worker_failures"]`` = 1). The job a worker runs is a module-level function, pickled by
its name: spawned workers import it afresh.
"""

from __future__ import annotations

import collections
import itertools
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import polars as pl

from ml.ingest.common import CHUNK_BYTES, _Laps

# what a chunk job returns: the finished rows, the quarantine rows and the counts
ChunkResult = tuple[pl.DataFrame, list[dict], dict[str, int]]


def _chunk_worker(out_path: str, job: Callable[..., ChunkResult], *args: Any
                  ) -> tuple[str, list[dict], dict[str, int], dict[str, float]]:
    """``job(*args, lap)`` in a worker process. The rows go back as an Arrow IPC file at
    ``out_path``; the quarantine rows, the counts and the seconds per stage are pickled."""
    lap = _Laps()
    rows, quarantine, counts = job(*args, lap)
    rows.write_ipc(out_path)
    lap("hash")
    return out_path, quarantine, counts, lap.seconds


def _exchange_dir() -> str:
    shm = Path("/dev/shm")
    base = str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None
    return tempfile.mkdtemp(prefix="learnloop-ingest-", dir=base)


def _worker_count(paths: list[Path], chunk_bytes: int, workers: int | None) -> int:
    if workers is not None:
        return max(0, workers)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    jsonl = sum(p.stat().st_size for p in paths if p.suffix != ".parquet")
    # worker start-up (~1 s of imports) pays off only on several chunks
    return min(cpus or 1, 4) if cpus and cpus > 1 and jsonl >= 4 * min(chunk_bytes, CHUNK_BYTES) \
        else 0


class _ChunkPool:
    """``n_workers`` spawned processes running chunk jobs; ``close`` stops them and removes the
    exchange directory."""

    def __init__(self, n_workers: int) -> None:
        import multiprocessing  # noqa: PLC0415
        from concurrent.futures import ProcessPoolExecutor  # noqa: PLC0415
        # spawn: a forked child would inherit Polars' and DuckDB's thread pools mid-state
        self._pool = ProcessPoolExecutor(n_workers,
                                         mp_context=multiprocessing.get_context("spawn"))
        self._exchange = _exchange_dir()
        self._pending: collections.deque = collections.deque()
        self._names = itertools.count()
        self.read_ahead = 2 * n_workers  # jobs submitted but not taken back, at most

    def submit(self, key: Any, job: Callable[..., ChunkResult], *args: Any) -> None:
        """Run ``job(*args, lap)`` in a worker; ``key`` comes back with its result."""
        out_path = os.path.join(self._exchange, f"{next(self._names)}.arrow")
        self._pending.append((key, self._pool.submit(_chunk_worker, out_path, job, *args)))

    def results(self, limit: int
                ) -> Iterator[tuple[Any, pl.DataFrame, list[dict], dict[str, int],
                                    dict[str, float]]]:
        """(key, rows, quarantine rows, counts, seconds per stage) of the oldest jobs, in
        submission order, until at most ``limit`` are pending (waits for them)."""
        while len(self._pending) > limit:
            key, future = self._pending.popleft()
            out_path, bad, counts, secs = future.result()
            rows = pl.read_ipc(out_path)
            os.unlink(out_path)
            yield key, rows, bad, counts, secs

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        shutil.rmtree(self._exchange, ignore_errors=True)
