"""Retention of landing files: archiving is not deleting.

* **Archive** (``archive_day``): a day's landing files move, one atomic rename each, from
  ``<landing>/date=D/`` to ``<archive>/date=D/`` (default ``$LEARNLOOP_HOME/archive``). The
  warehouse keeps every row: ingest reads a day's landing *and* archived files (``day_files``),
  and names an archived file's rows by its landing path (``logical_path``), so re-ingesting an
  archived day writes the same rows.
* **Delete** (``delete_day_rows`` + ``delete_day_files``): an explicit operation that removes a
  day's files (landing and archive) and its rows from every warehouse table keyed by that day or
  by its interactions (``DAY_TABLES``, ``INTERACTION_TABLES``) and from the vector store; the
  operational store side (``store.retention``) closes the open review items of those
  interactions with the reason and records the deletion (who, when, why, counts).
* **A file gone without either** (``missing_files``): a file registered in ``raw_files`` for a
  day that is now in neither folder stops that day's ingest with a message naming the files and
  the two ways out (``gone_files_message``), instead of silently dropping its rows.

On object storage (``ml.landing_store.ObjectLandingStore``) the same operations work on the
bucket: ``day_entries``, ``logical_ref``, ``archive_day`` (a server-side copy to
``<archive prefix>/date=D/`` then the delete of the landing object: an object copy is atomic, and
an interrupted archive is finished by running it again, as on a folder), ``days_before`` and
``delete_day_files`` take a store (or an ``s3://`` URL) for ``landing`` and ``archive``.

Pure file and DuckDB functions; the ``learnloop landing`` commands (orchestration/landing_cli.py)
glue them to the operational store.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from collections.abc import Iterable
from datetime import date
from pathlib import Path

import duckdb

from ml.landing import LANDING_SUFFIXES, fsync_dir, list_files, partition_dir
from ml.landing_store import LandingEntry, LandingStore, ObjectLandingStore, open_landing

# tables whose rows belong to a landing day (partition_date)
DAY_TABLES = ("interactions", "interaction_quality", "quarantined_interactions", "raw_files")
# tables whose rows belong to an interaction ((tenant_id, interaction_id))
INTERACTION_TABLES = ("audit_candidates", "audited_errors", "teacher_attempts",
                      "preference_pairs")
# kept on purpose: review_decisions mirrors the operational store's append-only review events


def archive_files(archive: Path, day: date | str) -> list[Path]:
    """The archived files of one day, sorted by name (same rules as ``ml.landing.list_files``)."""
    return list_files(archive, day)


def day_files(landing: Path, archive: Path, day: date | str) -> list[Path]:
    """Every file of a day: its landing files, then its archived files (by name each)."""
    return list_files(landing, day) + archive_files(archive, day)


def logical_path(path: Path | str, landing: Path, archive: Path) -> str:
    """The name a file's rows carry (``source_file``): its landing path, also once archived."""
    p = Path(path)
    try:
        rel = p.relative_to(archive)
    except ValueError:
        return str(p)
    return str(Path(landing) / rel)


def missing_files(registered: Iterable[str], present: Iterable[Path]) -> list[str]:
    """The ``registered`` paths (``raw_files.path``) whose file name is in none of ``present``
    (the day's landing and archived files), sorted."""
    names = {Path(p).name for p in present}
    return sorted(p for p in registered if Path(p).name not in names)


def gone_files_message(day: str, gone: list[str], archive: Path) -> str:
    shown = ", ".join(gone[:10]) + (f" and {len(gone) - 10} more" if len(gone) > 10 else "")
    return (
        f"{len(gone)} landing file(s) registered for {day} are in neither the landing zone nor "
        f"the archive ({archive}): {shown}. Ingesting the day without them would delete their "
        f"rows from the warehouse, so it stops. Either restore the file(s) (into the landing "
        f"folder or {archive}/date={day}/), or delete the day explicitly: `learnloop landing "
        f"delete --day {day} --reason \"...\"` (removes its files and rows, recorded).")


def _same_bytes(a: Path, b: Path) -> bool:
    if a.stat().st_size != b.stat().st_size:
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(1 << 20), fb.read(1 << 20)
            if x != y:
                return False
            if not x:
                return True


def _move(src: Path, dst: Path) -> None:
    """Move ``src`` to ``dst`` atomically: a rename; across file systems, a copy to a temporary
    name in ``dst``'s folder, fsynced, renamed into place, then the source removed."""
    try:
        os.replace(src, dst)
        return
    except OSError as exc:
        if exc.errno != 18:  # EXDEV: another file system
            raise
    tmp = dst.with_name(f".{dst.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        shutil.copy2(src, tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    src.unlink()


def _is_store(*locations: object) -> bool:
    """Whether any of ``locations`` is a store or a URL (else: all are folders)."""
    return any(isinstance(x, LandingStore) or (isinstance(x, str) and "://" in x)
               for x in locations)


def _folders(landing, archive) -> tuple[Path, Path] | None:
    """(landing, archive) folders when both are local (a folder or a local store), else None."""
    if _is_store(landing, archive):
        a, b = open_landing(landing), open_landing(archive, "LEARNLOOP_ARCHIVE_URL")
        return (a.root, b.root) if a.is_local and b.is_local else None
    return Path(landing), Path(archive)


def day_entries(landing: LandingStore, archive: LandingStore,
                day: date | str) -> list[LandingEntry]:
    """Every file of a day with its size and version: its landing files, then its archived
    files (by name each); one listing per store, nothing read."""
    return landing.files(day) + archive.files(day)


def logical_ref(ref: str, landing: LandingStore, archive: LandingStore) -> str:
    """``logical_path`` for any store: an archived file's ref named as in the landing zone."""
    if landing.is_local and archive.is_local:
        return logical_path(ref, landing.root, archive.root)
    return landing.ref(archive.relative(ref)) if archive.owns(ref) else ref


def archive_day(landing, archive, day: date | str) -> list[tuple[Path, Path]]:
    """Move every landing file of ``day`` into ``<archive>/date=D/``; return (from, to) pairs.

    A file already archived under the same name with the same bytes is a finished earlier move
    (the landing copy is removed); with other bytes it is a conflict and nothing moves. The empty
    landing folder is removed (the landing sensor then stops seeing the day); the warehouse is
    not touched. ``landing``/``archive``: folders, or stores (pairs of refs are returned then)."""
    folders = _folders(landing, archive)
    if folders is None:
        return _archive_day_objects(open_landing(landing),
                                    open_landing(archive, "LEARNLOOP_ARCHIVE_URL"), day)
    landing, archive = folders
    files = list_files(landing, day)
    dest = partition_dir(archive, day)
    conflicts = [f.name for f in files if (dest / f.name).exists()
                 and not _same_bytes(f, dest / f.name)]
    if conflicts:
        raise FileExistsError(f"{day}: archive {dest} already holds other files named "
                              f"{conflicts}; nothing moved")
    dest.mkdir(parents=True, exist_ok=True)
    moved: list[tuple[Path, Path]] = []
    for f in files:
        target = dest / f.name
        if target.exists():  # same bytes: an interrupted earlier archive
            f.unlink()
        else:
            _move(f, target)
        moved.append((f, target))
    fsync_dir(dest)
    folder = partition_dir(landing, day)
    if folder.is_dir():
        fsync_dir(folder)
        if not any(p for p in folder.iterdir() if not p.name.startswith(".")):
            shutil.rmtree(folder)  # only temporary files of crashed writes were left
    return moved


def _archive_day_objects(landing: LandingStore, archive: LandingStore,
                         day: date | str) -> list[tuple[str, str]]:
    """``archive_day`` between two prefixes of object storage: server-side copies, then the
    deletes of the landing objects."""
    if not (isinstance(landing, ObjectLandingStore) and isinstance(archive, ObjectLandingStore)):
        raise ValueError(f"archiving from {landing} to {archive}: the landing zone and its "
                         f"archive must both be folders or both be on object storage")
    day_s = date.fromisoformat(day if isinstance(day, str) else day.isoformat()).isoformat()
    files = landing.files(day_s)
    there = {e.name: e for e in archive.files(day_s)}
    conflicts = [f.name for f in files if f.name in there
                 and not _same_object(landing, f, archive, there[f.name])]
    if conflicts:
        raise FileExistsError(f"{day_s}: archive {archive.day_url(day_s)} already holds other "
                              f"files named {conflicts}; nothing moved")
    moved: list[tuple[str, str]] = []
    for f in files:
        target = archive.ref(f"date={day_s}/{f.name}")
        if f.name not in there:
            archive.copy_from(landing, f.ref, archive._key_of_ref(target))
        landing.remove(f.ref)  # copied (or an interrupted earlier archive had copied it)
        moved.append((f.ref, target))
    return moved


def _same_object(a: LandingStore, ea: LandingEntry, b: LandingStore, eb: LandingEntry) -> bool:
    if ea.size != eb.size:
        return False
    if ea.version == eb.version:  # the same ETag: the same bytes (a copy keeps the ETag)
        return True
    return a.sha256(ea.ref) == b.sha256(eb.ref)  # multipart ETags differ for equal bytes


def days_before(landing, before: str) -> list[str]:
    """The landing days earlier than ``before`` (YYYY-MM-DD)."""
    date.fromisoformat(before)
    if _is_store(landing):
        return [d for d in open_landing(landing).scan_days()[0] if d < before]
    folders = [p.name[5:] for p in Path(landing).glob("date=*") if p.is_dir()
               and re.fullmatch(r"date=\d{4}-\d{2}-\d{2}", p.name)]
    return sorted(d for d in folders if d < before)


def delete_day_files(landing, archive, day: date | str) -> list[Path]:
    """Remove every file of ``day`` (landing and archive, temporary files too) and its folders;
    return the data files removed (refs, for stores)."""
    if _is_store(landing, archive):
        return (open_landing(landing).delete_day(day)
                + open_landing(archive, "LEARNLOOP_ARCHIVE_URL").delete_day(day))
    removed: list[Path] = []
    for root in (landing, archive):
        folder = partition_dir(root, day)
        if not folder.is_dir():
            continue
        removed += [p for p in sorted(folder.iterdir())
                    if p.is_file() and p.suffix in LANDING_SUFFIXES and not p.name.startswith(".")]
        shutil.rmtree(folder)
        fsync_dir(folder.parent)
    return removed


def day_interaction_keys(con: duckdb.DuckDBPyConnection, day: str) -> list[tuple[str, str]]:
    """(tenant_id, interaction_id) of the interactions of ``day`` in the warehouse."""
    if not _exists(con, "interactions"):
        return []
    return [tuple(r) for r in con.execute(
        "SELECT tenant_id, interaction_id FROM interactions WHERE partition_date = ?::DATE "
        "ORDER BY tenant_id, interaction_id", [day]).fetchall()]


def _exists(con: duckdb.DuckDBPyConnection, table: str) -> bool:
    return bool(con.execute("SELECT count(*) FROM information_schema.tables "
                            "WHERE table_name = ? AND table_schema = current_schema()",
                            [table]).fetchall()[0][0])


def delete_day_rows(con: duckdb.DuckDBPyConnection, day: str,
                    keys: list[tuple[str, str]]) -> dict[str, int]:
    """In one transaction: delete the rows of ``day`` from ``DAY_TABLES`` and the rows of the
    interactions ``keys`` (the day's, ``day_interaction_keys``) from ``INTERACTION_TABLES``;
    return rows deleted per table."""
    import pyarrow as pa

    counts: dict[str, int] = {}
    ids = pa.table({"tenant_id": pa.array([k[0] for k in keys], pa.string()),
                    "interaction_id": pa.array([k[1] for k in keys], pa.string())})
    con.execute("BEGIN TRANSACTION")
    try:
        con.register("_deleted_ids", ids)
        for table in DAY_TABLES:
            if _exists(con, table):
                counts[table] = con.execute(
                    f'DELETE FROM "{table}" WHERE partition_date = ?::DATE', [day]
                ).fetchall()[0][0]
        for table in INTERACTION_TABLES:
            if _exists(con, table):
                counts[table] = con.execute(
                    f'DELETE FROM "{table}" t WHERE EXISTS (SELECT 1 FROM _deleted_ids d WHERE '
                    f'd.tenant_id = t.tenant_id AND d.interaction_id = t.interaction_id)'
                ).fetchall()[0][0]
        con.unregister("_deleted_ids")
        con.execute("COMMIT")
    except BaseException:
        from ml.warehouse import rollback

        rollback(con)  # a failed COMMIT (a DuckLake conflict) has ended the transaction already
        raise
    return counts


def delete_day_embeddings(db, day: str) -> int:
    """Delete the rows of ``day`` (questions and approved replies of its interactions) from the
    LanceDB embeddings table; return how many."""
    from ml import embeddings

    if embeddings.EMBEDDINGS_TABLE not in embeddings.table_names(db):
        return 0
    table = db.open_table(embeddings.EMBEDDINGS_TABLE)
    where = f"partition_date = '{date.fromisoformat(day).isoformat()}'"
    n = table.count_rows(where)
    if n:
        table.delete(where)
    return n
