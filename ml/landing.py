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

The landing zone may also be a prefix of an S3-compatible bucket (``LEARNLOOP_LANDING_URL``):
``ml.landing_store`` holds both kinds behind one interface. The functions that read the days
(``scan_partitions``, ``list_partitions``, ``day_fingerprints``, ``describe_bad_folder``) and
``write_parts`` take a folder or a store (``ml.landing_store.LandingStore``, either kind); the
others work on a folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import NamedTuple

PARTITION_RE = re.compile(r"^date=(\d{4}-\d{2}-\d{2})$")
LANDING_SUFFIXES = (".jsonl", ".parquet")

# The first landing day the pipeline knows (the start of the daily partitions of
# ``assets.partitions``): a day folder before it is rejected, and so is a record timestamp.
FIRST_DAY = date(2000, 1, 1)
# How far ahead of today (UTC) a day folder may be: one day, for clocks a little ahead and for
# records written just before midnight elsewhere (the daily partitions end one day ahead too).
MAX_FUTURE_DAYS = 1
# Clock skew allowed between the writers of the logs and this machine: a record timestamped later
# than ``now + FUTURE_TOLERANCE`` is in the future; it is quarantined, never put on a future day.
FUTURE_TOLERANCE = timedelta(hours=1)
# A record whose timestamp's UTC day is more than this many days from its landing day is kept,
# with a note in ``ingest_notes`` (late uploads, a wrong clock, a file put in the wrong folder).
FAR_FROM_LANDING_DAYS = 1


class BadDayFolder(NamedTuple):
    """A folder of the landing zone that is not a valid day folder, and why."""

    folder: str
    reason: str


def check_day(day: str, today: date | None = None) -> date:
    """The date of a landing day ``YYYY-MM-DD``; ``ValueError`` with a clear reason when it is not
    a calendar date, is before ``FIRST_DAY`` or more than ``MAX_FUTURE_DAYS`` after ``today``
    (default: today in UTC)."""
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", day):
        raise ValueError(f"{day!r} is not a day: expected YYYY-MM-DD")
    try:
        d = date.fromisoformat(day)
    except ValueError as exc:
        raise ValueError(f"{day!r} is not a calendar date ({exc})") from None
    if d < FIRST_DAY:
        raise ValueError(f"{day} is before the first landing day {FIRST_DAY.isoformat()}")
    today = today or datetime.now(UTC).date()
    if d > today + timedelta(days=MAX_FUTURE_DAYS):
        raise ValueError(f"{day} is in the future (today is {today.isoformat()} UTC; at most "
                         f"{MAX_FUTURE_DAYS} day ahead is accepted)")
    return d


def timestamp_problem(ts: datetime, now: datetime | None = None) -> str | None:
    """Why a record's timestamp cannot go into the landing zone, or None: more than
    ``FUTURE_TOLERANCE`` after ``now`` (default: now; it would create a day that has not
    happened), or before ``FIRST_DAY``. A naive ``ts`` is UTC."""
    ts = ts if ts.tzinfo else ts.replace(tzinfo=UTC)
    now = now or datetime.now(UTC)
    now = now if now.tzinfo else now.replace(tzinfo=UTC)
    if ts > now + FUTURE_TOLERANCE:
        return (f"timestamp {ts.astimezone(UTC).isoformat()} is in the future (more than "
                f"{FUTURE_TOLERANCE} after {now.astimezone(UTC).isoformat(timespec='seconds')})")
    if ts.astimezone(UTC).date() < FIRST_DAY:
        return (f"timestamp {ts.astimezone(UTC).isoformat()} is before the first landing day "
                f"{FIRST_DAY.isoformat()}")
    return None


def scan_partitions(landing, today: date | None = None
                    ) -> tuple[list[str], list[BadDayFolder]]:
    """(valid days, sorted; the folders that are not valid day folders, with the reason).

    Never raises for one folder: a folder named ``date=2026-02-30`` (no such date), ``date=1999-
    12-31`` (before ``FIRST_DAY``), a day more than ``MAX_FUTURE_DAYS`` ahead or any other folder
    name is reported and skipped; the other days go on. Hidden folders (``.name``) and the
    importers' registry (``_imports``) are not day folders and not reported."""
    if _is_store(landing):
        return landing.scan_days(today)
    landing = Path(landing)
    if not landing.exists():
        return [], []
    days: list[str] = []
    bad: list[BadDayFolder] = []
    for p in sorted(landing.iterdir()):
        if not p.is_dir() or p.name.startswith((".", "_")):
            continue
        m = PARTITION_RE.match(p.name)
        if not m:
            bad.append(BadDayFolder(p.name, "not a day folder: expected date=YYYY-MM-DD"))
            continue
        try:
            check_day(m.group(1), today)
        except ValueError as exc:
            bad.append(BadDayFolder(p.name, str(exc)))
            continue
        days.append(m.group(1))
    return sorted(days), bad


def describe_bad_folder(landing, bad: BadDayFolder) -> str:
    """One line for an operator: which folder, why, what happens."""
    where = f"{landing.url}/{bad.folder}" if _is_store(landing) else Path(landing) / bad.folder
    return (f"landing folder {where} skipped: {bad.reason}; rename it to "
            f"date=YYYY-MM-DD (a real day) or move it out of the landing zone")


def partition_dir(landing: Path, day: date | str) -> Path:
    _is_store(landing)  # a URL is refused: never a local folder called "s3:"
    day_s = day if isinstance(day, str) else day.isoformat()
    date.fromisoformat(day_s)  # validates
    return Path(landing) / f"date={day_s}"


def fsync_dir(path: Path) -> None:
    """Make a folder's entries (a rename, a new file) durable."""
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
        fsync_dir(folder)
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
        fsync_dir(new)
        fsync_dir(new.parent)


def write_landing_file(landing: Path, day: date | str, source: str,
                       lines: Iterable[str | dict]) -> Path:
    """Write JSONL lines (strings are written verbatim, dicts are JSON-encoded)."""
    return write_landing_bytes(landing, day, source, encode_lines(lines))


def encode_lines(lines: Iterable[str | dict]) -> bytes:
    """JSONL bytes of ``lines`` (strings verbatim, dicts JSON-encoded), one per line."""
    return "".join(
        (ln if isinstance(ln, str) else json.dumps(ln, ensure_ascii=False)).rstrip("\n") + "\n"
        for ln in lines
    ).encode("utf-8")


EMPTY_FINGERPRINT = hashlib.sha256().hexdigest()[:16]


def fingerprint(paths: Iterable[Path]) -> str:
    """What a set of landing files looks like (names, sizes, modification times): equal
    fingerprints mean the same files, so a day already ingested with it needs no new run."""
    h = hashlib.sha256()
    for p in sorted(Path(x) for x in paths):
        st = p.stat()
        h.update(f"{p.name}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def day_fingerprints(landing, days: Iterable[str] | None = None) -> dict[str, str]:
    """day -> ``fingerprint`` of its finished files, for ``days`` (default: every valid day
    folder, ``list_partitions``). ``landing``: a folder or a store."""
    if _is_store(landing):
        return landing.fingerprints(days)
    days = list_partitions(landing) if days is None else days
    return {day: fingerprint(list_files(landing, day)) for day in days}


def list_partitions(landing) -> list[str]:
    """The valid days that have a folder in the landing zone, sorted (invalid folders are
    skipped: ``scan_partitions`` reports them)."""
    return scan_partitions(landing)[0]


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


def _is_store(landing: object) -> bool:
    """Whether ``landing`` is a store (``ml.landing_store.LandingStore``, by its methods: this
    module is below that one) rather than a folder; a URL string is refused with a TypeError
    (open it with ``ml.landing_store.open_landing``)."""
    if isinstance(landing, str) and "://" in landing:
        raise TypeError(f"{landing} is not a folder: open it with "
                        f"ml.landing_store.open_landing")
    return not isinstance(landing, (str, os.PathLike)) and hasattr(landing, "scan_days")


def write_parts(landing, source: str, parts: Mapping[date | str, bytes],
                suffix: str = ".jsonl") -> list[str]:
    """``write_landing_files`` on any landing zone (a folder or a store: a bucket prefix too):
    one file per day as one unit; returns each file's name relative to the landing zone
    (``date=D/<name>``), in the order of ``parts``."""
    if _is_store(landing):
        return [landing.relative(ref) for ref in landing.write(source, parts, suffix)]
    return [str(p.relative_to(landing)) for p in write_landing_files(landing, source, parts,
                                                                      suffix)]
