"""Bulk writes of the producers (auditor, teacher): one INSERT per chunk of rows, idempotent on
the table's unique key, on SQLite and PostgreSQL.

``insert_items`` is the bulk form of :func:`store.repo.create_item`: ``INSERT ... ON CONFLICT
(kind, dedup_key) DO NOTHING RETURNING`` tells which rows are new (an item a concurrent producer
created first is left as it is, never overwritten), then one INSERT writes the ``created`` review
events of the new items. ``upsert_attempts`` is the bulk form of :func:`store.audit.record_attempt`:
``ON CONFLICT (tenant_id, interaction_id, auditor, prompt_version) DO UPDATE`` with the counter
incremented in SQL (``attempts = audit_attempts.attempts + excluded.attempts``), so two writers
that record the same interaction both count.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from sqlalchemy import JSON, Table, func, null
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from store.models import AuditAttempt, ReviewEvent, ReviewItem, utcnow

# bound parameters per statement: SQLite allows 32,766, PostgreSQL 65,535
MAX_PARAMS = 30_000
_ITEM_COLUMNS = frozenset(c.key for c in ReviewItem.__table__.columns)
_JSON_COLUMNS = frozenset(c.key for c in ReviewItem.__table__.columns
                          if isinstance(c.type, JSON))
_ITEM_SET_BY_INSERT = frozenset({"id", "kind", "dedup_key", "status", "version"})


def _insert(session: Session, table: Table):
    """The dialect's INSERT (the one with ``on_conflict_do_*``)."""
    name = session.get_bind().dialect.name
    if name == "postgresql":
        return postgresql.insert(table)
    if name == "sqlite":
        return sqlite.insert(table)
    raise NotImplementedError(f"bulk inserts for dialect {name!r} (SQLite and PostgreSQL only)")


def _chunks(rows: Sequence[dict[str, Any]], n_columns: int) -> Iterator[Sequence[dict[str, Any]]]:
    size = max(1, MAX_PARAMS // max(1, n_columns))
    for start in range(0, len(rows), size):
        yield rows[start:start + size]


def item_row(kind: str, dedup_key: str, fields: Mapping[str, Any]) -> dict[str, Any]:
    """The ``review_items`` row of a new item (what :func:`store.repo.create_item` would add).
    Raises ``TypeError`` naming a field that is not a column."""
    unknown = sorted(set(fields) - (_ITEM_COLUMNS - _ITEM_SET_BY_INSERT))
    if unknown:
        raise TypeError(f"review item {dedup_key!r}: {unknown} not review_items columns "
                        f"(or set by the store: {sorted(_ITEM_SET_BY_INSERT)})")
    now = utcnow()
    # a column the spec leaves out is SQL NULL (as the ORM leaves it); a JSON column the spec
    # sets to None holds JSON null (as the ORM writes it)
    row: dict[str, Any] = {c: (null() if c in _JSON_COLUMNS else None)
                           for c in _ITEM_COLUMNS - {"id"}}
    row.update(fields)
    row.update(kind=kind, dedup_key=dedup_key, status="pending", version=1,
               tags=list(fields.get("tags") or []), extra=dict(fields.get("extra") or {}),
               tenant_id=fields.get("tenant_id") or "default",
               created_at=fields.get("created_at") or now,
               updated_at=fields.get("updated_at") or now)
    return row


def insert_items(session: Session, kind: str,
                 items: Sequence[tuple[str, str, Mapping[str, Any]]]) -> set[str]:
    """Create the review items ``items`` ((dedup_key, actor, fields): the keyword arguments of
    :func:`store.repo.create_item`) that do not exist yet, each with its ``created`` event, in
    the caller's transaction. Returns the dedup keys created; the others existed already (made
    earlier or by a concurrent producer) and are not touched. A key twice in ``items``: the
    first wins."""
    if kind not in ("error", "sample"):
        raise ValueError(f"kind must be one of ['error', 'sample'], got {kind!r}")
    first: dict[str, tuple[str, dict[str, Any]]] = {}
    for key, actor, fields in items:
        row = item_row(kind, key, fields)
        first.setdefault(key, (actor, row))
    if not first:
        return set()
    rows = [row for _, row in first.values()]
    table = ReviewItem.__table__
    created: dict[str, int] = {}
    for chunk in _chunks(rows, len(rows[0])):
        stmt = (_insert(session, table).values(list(chunk))
                .on_conflict_do_nothing(index_elements=["kind", "dedup_key"])
                .returning(table.c.id, table.c.dedup_key))
        created.update({key: item_id for item_id, key in session.execute(stmt).all()})
    events = []
    for key, item_id in created.items():
        actor, row = first[key]
        events.append({
            "item_id": item_id, "tenant_id": row["tenant_id"], "actor": actor,
            "action": "created", "before": None, "note": None, "at": utcnow(),
            "after": {"status": "pending", "version": 1,
                      "final_response": row["final_response"], "tags": row["tags"],
                      "decided_by": row["decided_by"]}})
    for chunk in _chunks(events, 8):
        session.execute(ReviewEvent.__table__.insert().values(list(chunk)))
    return set(created)


def upsert_attempts(session: Session, *, auditor: str, prompt_version: str,
                    rows: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str], int]:
    """Insert or update the attempt rows ``rows`` (``tenant_id``, ``interaction_id``, ``status``,
    ``is_error``, ``reason``, ``step``: how much the attempt counts, 0 or 1) in one statement per
    chunk. Repeats of a key in ``rows`` collapse into one row (the last one's values, the steps
    summed), as calling :func:`store.audit.record_attempt` for each would leave it. Returns
    (tenant_id, interaction_id) -> ``attempts`` after the write."""
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    for r in rows:
        if r["status"] not in ("ok", "failed"):
            raise ValueError(f"attempt status must be 'ok' or 'failed', got {r['status']!r}")
        key = (r["tenant_id"], r["interaction_id"])
        step = merged[key]["attempts"] if key in merged else 0
        merged[key] = {"tenant_id": key[0], "interaction_id": key[1], "auditor": auditor,
                       "prompt_version": prompt_version, "status": r["status"],
                       "is_error": r["is_error"], "reason": r["reason"],
                       "attempts": step + int(r["step"]), "updated_at": utcnow()}
    if not merged:
        return {}
    table = AuditAttempt.__table__
    values = list(merged.values())
    out: dict[tuple[str, str], int] = {}
    for chunk in _chunks(values, len(values[0])):
        ins = _insert(session, table).values(list(chunk))
        stmt = ins.on_conflict_do_update(
            index_elements=["tenant_id", "interaction_id", "auditor", "prompt_version"],
            set_={"status": ins.excluded.status, "is_error": ins.excluded.is_error,
                  "reason": ins.excluded.reason, "updated_at": ins.excluded.updated_at,
                  "attempts": func.coalesce(table.c.attempts, 0) + ins.excluded.attempts},
        ).returning(table.c.tenant_id, table.c.interaction_id, table.c.attempts)
        out.update({(t, i): n for t, i, n in session.execute(stmt).all()})
    return out
