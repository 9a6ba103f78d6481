"""The landing zone: where raw interaction files arrive, one folder per UTC day.

Layout: ``<landing>/date=YYYY-MM-DD/<source>-<unique>.jsonl`` (or ``.parquet``). Every writer goes
through ``write_landing_file``: the bytes are written to a temporary file in the same folder,
fsynced, then renamed into place, so a reader never sees a half-written file and a crash after the
call returns loses nothing (folders created on the way are fsynced too, with their parents; a
failed write removes its temporary file).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from collections.abc import Iterable
from datetime import UTC, date, datetime
from pathlib import Path

PARTITION_RE = re.compile(r"^date=(\d{4}-\d{2}-\d{2})$")
LANDING_SUFFIXES = (".jsonl", ".parquet")


def partition_dir(landing: Path, day: date | str) -> Path:
    day_s = day if isinstance(day, str) else day.isoformat()
    date.fromisoformat(day_s)  # validates
    return Path(landing) / f"date={day_s}"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_landing_bytes(landing: Path, day: date | str, source: str, data: bytes,
                        suffix: str = ".jsonl") -> Path:
    """Write one file durably and atomically into the day's partition folder; return its path."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", source):
        raise ValueError(f"landing source name {source!r} must be 1-64 of [A-Za-z0-9_.-]")
    folder = partition_dir(landing, day)
    _make_dirs_durably(folder)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    final = folder / f"{source}-{stamp}-{uuid.uuid4().hex[:12]}{suffix}"
    tmp = folder / f".{final.name}.tmp"
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a failed write (disk full, I/O error) leaves no temp file
        raise
    _fsync_dir(folder)
    return final


def _make_dirs_durably(folder: Path) -> None:
    """Create ``folder`` and missing parents; fsync each new folder and the folder holding it,
    so the new directory entries (e.g. ``date=...``) survive a crash along with the file."""
    missing: list[Path] = []
    p = Path(folder)
    while not p.exists():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    folder.mkdir(parents=True, exist_ok=True)
    for new in reversed(missing):  # outermost first
        _fsync_dir(new)
        _fsync_dir(new.parent)


def write_landing_file(landing: Path, day: date | str, source: str,
                       lines: Iterable[str | dict]) -> Path:
    """Write JSONL lines (strings are written verbatim, dicts are JSON-encoded)."""
    body = "".join(
        (ln if isinstance(ln, str) else json.dumps(ln, ensure_ascii=False)).rstrip("\n") + "\n"
        for ln in lines
    )
    return write_landing_bytes(landing, day, source, body.encode("utf-8"))


EMPTY_FINGERPRINT = hashlib.sha256().hexdigest()[:16]


def fingerprint(paths: Iterable[Path]) -> str:
    """What a set of landing files looks like (names, sizes, modification times): equal
    fingerprints mean the same files, so a day already ingested with it needs no new run."""
    h = hashlib.sha256()
    for p in sorted(Path(x) for x in paths):
        st = p.stat()
        h.update(f"{p.name}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def day_fingerprints(landing: Path) -> dict[str, str]:
    """day -> ``fingerprint`` of its finished files, for every day folder."""
    return {day: fingerprint(list_files(landing, day)) for day in list_partitions(landing)}


def list_partitions(landing: Path) -> list[str]:
    """The days that have a folder in the landing zone, sorted."""
    landing = Path(landing)
    if not landing.exists():
        return []
    days = [m.group(1) for p in landing.iterdir() if p.is_dir() and (m := PARTITION_RE.match(p.name))]
    return sorted(days)


def list_files(landing: Path, day: date | str) -> list[Path]:
    """Finished landing files of one day (temporary files are skipped), sorted by name."""
    folder = partition_dir(landing, day)
    if not folder.exists():
        return []
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix in LANDING_SUFFIXES and not p.name.startswith("."))
