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

Nothing outlives a killed ingest. On Linux every worker asks the kernel for SIGKILL when its
parent dies (``prctl(PR_SET_PDEATHSIG)`` in the worker initializer ``_die_with_parent``; the
"parent" is the thread that started the worker, which is the thread that created the pool and
submits to it: a pool lives within one ``ingest_files`` call, in one thread). The exchange
directory is named ``learnloop-ingest-<pid>-<start>-*`` after the process that owns it (its pid
and its start time in clock ticks since boot, ``/proc/<pid>/stat``); a new pool first removes
(``sweep_exchange_dirs``) the exchange directories whose owner is gone: no process with that pid,
or one started at another time (the pid was reused). Directories of the older unnamed layout
(``learnloop-ingest-<random>``) are removed once untouched for ``LEGACY_EXCHANGE_AGE_S``.
"""

from __future__ import annotations

import collections
import ctypes
import itertools
import logging
import os
import re
import shutil
import signal
import sys
import tempfile
import time
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


log = logging.getLogger(__name__)

EXCHANGE_PREFIX = "learnloop-ingest-"
_OWNED = re.compile(r"^learnloop-ingest-(\d+)-(\d+)-")
LEGACY_EXCHANGE_AGE_S = 6 * 3600  # an unnamed exchange dir untouched this long has no owner
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _die_with_parent(parent_pid: int) -> None:
    """Worker initializer: have the kernel SIGKILL this worker when its parent dies (Linux); a
    parent already gone by now (killed while the worker started) ends the worker at once."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"prctl(PR_SET_PDEATHSIG) failed: {os.strerror(err)}")
    if os.getppid() != parent_pid:
        os._exit(1)


def process_start_ticks(pid: int) -> int | None:
    """Start time of process ``pid`` in clock ticks since boot (``/proc/<pid>/stat`` field 22);
    None when there is no such process or no /proc (then only the pid is compared)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: split after the last ')'
    return int(stat[stat.rindex(")") + 2:].split()[19])


def _alive(pid: int, start: int) -> bool:
    """A process ``pid`` started at ``start`` (ticks; 0 = unknown) exists."""
    if Path("/proc").is_dir():
        ticks = process_start_ticks(pid)
        return ticks is not None and (start == 0 or ticks == start)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _exchange_base() -> str | None:
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None


def sweep_exchange_dirs(base: str | Path | None = None, now: float | None = None) -> list[Path]:
    """Remove the exchange directories under ``base`` (default: /dev/shm, else the temporary
    folder) whose owner process is gone (module docstring); return them."""
    root = Path(base if base is not None else (_exchange_base() or tempfile.gettempdir()))
    now = time.time() if now is None else now
    removed: list[Path] = []
    try:
        entries = list(root.iterdir())
    except OSError:
        return removed
    for d in entries:
        if not d.name.startswith(EXCHANGE_PREFIX):
            continue
        m = _OWNED.match(d.name)
        try:
            if m:
                if _alive(int(m.group(1)), int(m.group(2))):
                    continue
            elif now - d.stat().st_mtime < LEGACY_EXCHANGE_AGE_S:
                continue
            if not d.is_dir() or d.stat().st_uid != os.getuid():  # another user's
                continue
        except OSError:  # gone meanwhile, or not ours to read
            continue
        shutil.rmtree(d, ignore_errors=True)
        if not d.exists():
            removed.append(d)
    if removed:
        log.info("removed %d exchange directories of dead ingest processes: %s", len(removed),
                 [str(p) for p in removed])
    return removed


def _exchange_dir() -> str:
    """A fresh exchange directory named after this process (pid and start time)."""
    pid = os.getpid()
    prefix = f"{EXCHANGE_PREFIX}{pid}-{process_start_ticks(pid) or 0}-"
    return tempfile.mkdtemp(prefix=prefix, dir=_exchange_base())


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
        sweep_exchange_dirs()
        # spawn: a forked child would inherit Polars' and DuckDB's thread pools mid-state
        self._pool = ProcessPoolExecutor(n_workers,
                                         mp_context=multiprocessing.get_context("spawn"),
                                         initializer=_die_with_parent, initargs=(os.getpid(),))
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
