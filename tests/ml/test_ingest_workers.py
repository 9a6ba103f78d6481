"""Nothing outlives a killed ingest: its worker processes die with it, and the exchange directory
it leaves in /dev/shm is swept by the next pool (``ml.ingest.workers``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from ml.demo.generate import generate_records
from ml.ingest import workers
from ml.ingest.workers import (
    LEGACY_EXCHANGE_AGE_S,
    _ChunkPool,
    process_start_ticks,
    sweep_exchange_dirs,
)

ROOT = Path(__file__).resolve().parents[2]
linux_only = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")

SCRIPT = textwrap.dedent("""
    import sys
    from pathlib import Path
    from ml.ingest import ingest_files

    if __name__ == "__main__":
        ingest_files([Path(sys.argv[1])], "2026-11-01", b"k" * 32, chunk_bytes=1 << 16,
                     workers=2)
""")


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return out


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    """Running (a zombie, dead but not yet reaped by its new parent, counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


@linux_only
def test_killed_ingest_leaves_no_worker_processes(tmp_path):
    data = tmp_path / "big.jsonl"
    data.write_text("\n".join(generate_records(6000, seed=3, days=1)) + "\n")
    script = tmp_path / "ingest.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, str(script), str(data)], cwd=ROOT, env=env)
    try:
        deadline = time.monotonic() + 60
        found: list[int] = []
        while time.monotonic() < deadline and proc.poll() is None:
            found = [c for c in _children(proc.pid) if "spawn_main" in _cmdline(c)]
            if len(found) >= 2:
                break
            time.sleep(0.05)
        assert len(found) >= 2, "the ingest started no worker processes"
        time.sleep(1.0)  # workers past their start-up, busy with chunks
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_alive(p) for p in found):
            time.sleep(0.1)
        left = [p for p in found if _alive(p)]
    finally:
        for p in _children(proc.pid) if proc.poll() is None else []:
            os.kill(p, signal.SIGKILL)
        proc.kill()
    try:
        assert left == [], f"worker processes outlived the killed ingest: {left}"
    finally:
        for p in left:
            os.kill(p, signal.SIGKILL)
    # its exchange directory is left behind, named after it; the next pool's sweep removes it
    base = Path(workers._exchange_base() or tempfile.gettempdir())
    mine = list(base.glob(f"learnloop-ingest-{proc.pid}-*"))
    assert len(mine) == 1
    assert sweep_exchange_dirs() and not mine[0].exists()


@linux_only
def test_exchange_dir_is_named_after_its_owner_and_swept_when_the_owner_is_dead(tmp_path):
    base = tmp_path
    # a dead owner: a process that has exited
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = base / f"learnloop-ingest-{dead.pid}-1-abc"
    stale.mkdir()
    (stale / "0.arrow").write_bytes(b"x" * 1024)
    # a reused pid: this process's pid with another start time
    reused = base / f"learnloop-ingest-{os.getpid()}-{process_start_ticks(os.getpid()) + 1}-d"
    reused.mkdir()
    # the live owner: this process, with its start time
    mine = base / f"learnloop-ingest-{os.getpid()}-{process_start_ticks(os.getpid())}-e"
    mine.mkdir()
    # the older unnamed layout: removed only when untouched for hours
    legacy_fresh = base / "learnloop-ingest-q1w2e3"
    legacy_fresh.mkdir()
    legacy_old = base / "learnloop-ingest-z9x8c7"
    legacy_old.mkdir()
    old = time.time() - LEGACY_EXCHANGE_AGE_S - 60
    os.utime(legacy_old, (old, old))
    other = base / "unrelated-dir"
    other.mkdir()
    removed = sweep_exchange_dirs(base)
    assert sorted(removed) == sorted([stale, reused, legacy_old])
    assert mine.exists() and legacy_fresh.exists() and other.exists()


@linux_only
def test_a_new_pool_sweeps_dead_exchange_dirs_and_names_its_own(tmp_path, monkeypatch):
    monkeypatch.setattr(workers, "_exchange_base", lambda: str(tmp_path))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f"learnloop-ingest-{dead.pid}-5-xyz"
    stale.mkdir()
    pool = _ChunkPool(1)
    try:
        assert not stale.exists()
        own = Path(pool._exchange)
        assert own.parent == tmp_path
        assert own.name.startswith(
            f"learnloop-ingest-{os.getpid()}-{process_start_ticks(os.getpid())}-")
    finally:
        pool.close()
    assert not own.exists()
