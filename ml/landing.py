"""The landing zone: where raw interaction files arrive, one folder per UTC day.

Layout: ``<landing>/date=YYYY-MM-DD/<source>-<unique>.jsonl`` (or ``.parquet``). Every writer goes
through ``write_landing_file``: the bytes are written to a temporary file in the same folder,
fsynced, then renamed into place, so a reader never sees a half-written file and a crash after the
call returns loses nothing (folders created on the way are fsynced too, with their parents; a
failed write removes its temporary file). ``write_landing_files`` writes the files of several days
as one unit: every temporary file is written and fsynced before the first rename, so a failure
(a folder that cannot be made, a full disk) leaves no day written.

A crash (SIGKILL, power loss) in the middle of a write leaves a ``.<name>.tmp`` file behind;
readers skip it, and ``remove_stale_temp_files`` (run when the service starts) deletes those older
than a grace period.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
import uuid
from collections.abc import Iterable, Mapping
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
    return write_landing_files(landing, source, {day: data}, suffix)[0]


def write_landing_files(landing: Path, source: str, parts: Mapping[date | str, bytes],
                        suffix: str = ".jsonl") -> list[Path]:
    """Write one file per day (``parts``: day -> bytes) as one unit; return the paths in order.

    All folders are made first, then every file is written to a temporary name and fsynced, and
    only then are they renamed into place (and the folders fsynced). Any failure before the
    renames (a folder that cannot be made, a full disk, an I/O error) removes the temporary
    files and raises with no day written; a failed rename takes back the renames already done.
    Only a crash between two renames (microseconds) can leave some days of the unit.
    """
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", source):
        raise ValueError(f"landing source name {source!r} must be 1-64 of [A-Za-z0-9_.-]")
    folders = [partition_dir(landing, day) for day in parts]  # validates every day first
    for folder in folders:
        _make_dirs_durably(folder)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    token = uuid.uuid4().hex[:12]
    plan = [(folder / f".{source}-{stamp}-{token}{suffix}.tmp",
             folder / f"{source}-{stamp}-{token}{suffix}", data)
            for folder, data in zip(folders, parts.values(), strict=True)]
    renamed: list[Path] = []
    try:
        for tmp, _, data in plan:
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        for tmp, final, _ in plan:
            os.replace(tmp, final)
            renamed.append(final)
    except BaseException:
        for tmp, _, _ in plan:  # a failed write (disk full, I/O error) leaves no temp file
            tmp.unlink(missing_ok=True)
        for final in renamed:  # nor a part of the unit
            final.unlink(missing_ok=True)
        raise
    for folder in dict.fromkeys(folders):
        _fsync_dir(folder)
    return [final for _, final, _ in plan]


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


STALE_TEMP_AGE_S = 3600  # a write takes milliseconds: an hour-old temporary file has no writer


def remove_stale_temp_files(landing: Path, older_than_s: float = STALE_TEMP_AGE_S,
                            now: float | None = None) -> list[Path]:
    """Delete the temporary files (``date=*/.<name>.tmp``) that a crashed write left behind.

    Only those not modified for ``older_than_s`` seconds go: a writer that is alive (in this
    process or another one sharing the landing zone) is writing its file right now, so its
    temporary file is fresh. Returns the deleted paths."""
    landing = Path(landing)
    if not landing.is_dir():
        return []
    cutoff = (time.time() if now is None else now) - older_than_s
    removed: list[Path] = []
    for folder in sorted(landing.iterdir()):
        if not (folder.is_dir() and PARTITION_RE.match(folder.name)):
            continue
        for p in sorted(folder.iterdir()):
            if not (p.name.startswith(".") and p.name.endswith(".tmp") and p.is_file()):
                continue
            try:
                if p.stat().st_mtime < cutoff:
                    p.unlink()
                    removed.append(p)
            except FileNotFoundError:  # its writer renamed or removed it meanwhile
                continue
    return removed
