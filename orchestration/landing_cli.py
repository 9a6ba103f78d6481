"""``learnloop landing``: retention of landing files (archiving is not deleting; ml/retention.py).

* ``archive --day D | --before D``: move the day's landing files to ``$LEARNLOOP_HOME/archive/
  date=D/`` (atomic renames; on a bucket, ``<landing prefix>/_archive/date=D/`` by server-side
  copies); the warehouse keeps every row and ingest keeps reading them there.
* ``delete --day D --reason R``: remove the day's files (landing and archive) and its rows from
  every warehouse table keyed by that day or its interactions, and from the vector store; close
  the open review items of those interactions; record who, when, why and what.
* ``history [--day D]``: the recorded archives and deletions.

Each archive and deletion is a row of the operational store's append-only ``retention_events``.
"""

from __future__ import annotations

import getpass
import json
from datetime import date
from pathlib import Path

import click

from ml.config import Settings


def _settings() -> Settings:
    from store.db import upgrade

    s = Settings()
    s.ensure_dirs()
    upgrade(s.store)
    return s


def _day(value: str) -> str:
    try:
        return date.fromisoformat(value).isoformat()
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a day (YYYY-MM-DD)") from None


def _registered_names(warehouse, day: str) -> set[str] | None:
    """File names registered in raw_files for ``day`` (None: no warehouse or table yet)."""
    from ml import warehouse as wh

    if not wh.exists(warehouse):
        return None
    con = wh.connect(warehouse, read_only=True)
    try:
        if not wh.table_exists(con, "raw_files"):
            return None
        return {Path(r[0]).name for r in con.execute(
            "SELECT path FROM raw_files WHERE partition_date = ?::DATE", [day]).fetchall()}
    finally:
        con.close()


@click.group(help="Retention of landing files: archive (keeps the warehouse rows) or delete "
                  "(an explicit, recorded removal of a day's files and rows).")
def landing() -> None:
    pass


@landing.command(help="Move landing days into the archive ($LEARNLOOP_HOME/archive/date=D/). "
                      "The warehouse keeps their rows; ingest reads archived files too, so "
                      "re-ingesting an archived day changes nothing.")
@click.option("--day", "days", multiple=True, help="a day to archive (repeatable)")
@click.option("--before", help="archive every landing day earlier than this day")
@click.option("--actor", default=None, help="who archives (default: the OS user)")
@click.option("--force", is_flag=True,
              help="archive files that were never ingested too (default: refuse)")
def archive(days: tuple[str, ...], before: str | None, actor: str | None, force: bool) -> None:
    from ml import retention
    from store.db import session_scope
    from store.retention import record_retention_event

    if not days and not before:
        raise click.UsageError("name the days: --day D (repeatable) or --before D")
    s = _settings()
    # folders, or prefixes of a bucket (LEARNLOOP_LANDING_URL): server-side copies there
    landing_zone, archive_zone = s.landing_store, s.archive_store
    chosen = [_day(d) for d in days]
    if before:
        chosen += retention.days_before(landing_zone, _day(before))
    chosen = sorted(set(chosen))
    actor = actor or getpass.getuser()
    for day in chosen:
        files = landing_zone.files(day)
        if not files:
            click.echo(f"{day}: no landing files")
            continue
        registered = _registered_names(s.warehouse_target, day) or set()
        pending = [f.name for f in files if f.name not in registered]
        if pending and not force:
            raise click.ClickException(
                f"{day}: {len(pending)} landing file(s) were never ingested ({pending[:5]}): "
                f"ingest the day first (`learnloop run --date {day}`), or pass --force")
        moved = retention.archive_day(landing_zone, archive_zone, day)
        size = {f.ref: f.size for f in files}  # a file that came meanwhile: ask the archive
        size.update({str(src): archive_zone.entry(str(dst)).size for src, dst in moved
                     if str(src) not in size})
        with session_scope(s.store) as session:
            record_retention_event(
                session, action="archive", day=day, actor=actor, reason=None,
                files=[str(src) for src, _ in moved],
                counts={"files": len(moved), "bytes": sum(size[str(src)] for src, _ in moved)})
        click.echo(f"{day}: {len(moved)} file(s) archived to {archive_zone.day_url(day)}")


@landing.command(help="Delete one landing day for good: its files (landing and archive), its "
                      "rows in every warehouse table keyed by the day or its interactions, its "
                      "embeddings; closes the open review items of its interactions (decided "
                      "ones and all review events stay). Recorded with who, when and why.")
@click.option("--day", required=True, help="the landing day to delete (YYYY-MM-DD)")
@click.option("--reason", required=True, help="why (recorded; e.g. a retention policy, a "
                                              "data-subject request)")
@click.option("--actor", default=None, help="who deletes (default: the OS user)")
@click.option("--yes", is_flag=True, help="do not ask for confirmation")
def delete(day: str, reason: str, actor: str | None, yes: bool) -> None:
    from ml import retention
    from ml import warehouse as wh
    from store.db import session_scope
    from store.retention import (
        close_items_of_deleted_interactions,
        delete_audit_attempts,
        record_retention_event,
    )

    day = _day(day)
    if not reason.strip():
        raise click.BadParameter("a deletion needs a reason", param_hint="--reason")
    s = _settings()
    actor = actor or getpass.getuser()
    landing_zone, archive_zone = s.landing_store, s.archive_store
    files = retention.day_entries(landing_zone, archive_zone, day)
    con = wh.connect(s.warehouse_target)
    try:
        keys = retention.day_interaction_keys(con, day)
        if not yes:
            click.confirm(f"delete {day}: {len(files)} file(s) and {len(keys)} interaction(s) "
                          f"with their scores, quarantine, audits and embeddings?", abort=True)
        counts: dict[str, int] = {}
        # the store first, in its own transaction: a failure later leaves the day's rows in the
        # warehouse, so running the command again finds the same interactions (and the items
        # already closed are counted as decided)
        with session_scope(s.store) as session:
            counts.update(close_items_of_deleted_interactions(
                session, keys, actor=f"retention:{actor}", reason=reason))
            counts["audit_attempts"] = delete_audit_attempts(session, keys)
        counts.update({f"warehouse.{t}": n for t, n in
                       retention.delete_day_rows(con, day, keys).items()})
        if Path(s.lancedb).exists():
            from ml import embeddings

            counts["embeddings"] = retention.delete_day_embeddings(
                embeddings.connect(s.lancedb), day)
        removed = retention.delete_day_files(landing_zone, archive_zone, day)
        counts["files"] = len(removed)
        with session_scope(s.store) as session:
            record_retention_event(session, action="delete", day=day, actor=actor,
                                   reason=reason, files=[str(p) for p in removed], counts=counts)
    finally:
        con.close()
    click.echo(f"{day} deleted: " + ", ".join(f"{k} {v}" for k, v in counts.items()))


@landing.command(help="The recorded archives and deletions (who, when, why, what).")
@click.option("--day", default=None, help="only this day")
@click.option("--json", "as_json", is_flag=True)
def history(day: str | None, as_json: bool) -> None:
    from store.db import session_scope
    from store.retention import retention_events

    s = _settings()
    with session_scope(s.store) as session:
        rows = [dict(id=e.id, action=e.action, day=e.day, actor=e.actor, reason=e.reason,
                     at=e.at.isoformat(), files=e.files, counts=e.counts)
                for e in retention_events(session, _day(day) if day else None)]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        click.echo(f"{r['at']}  {r['action']:<7} {r['day']}  by {r['actor']}"
                   + (f"  ({r['reason']})" if r["reason"] else "")
                   + f"  {len(r['files'])} file(s)  {r['counts']}")


COMMANDS = [landing]
