"""Served turns waiting for their feedback (table ``served_turns``).

The serving API stores every reply it gives as a full interaction record (``ServedTurn.record``)
and keeps it here while feedback may still come: thumbs/rating/comment, signals and a human
correction are merged into the pending record (:func:`add_feedback`); the session's next turn
marks the earlier pending turns ``signals.user_continued = True`` (:func:`add_turn`); ending the
session merges its last signals/feedback (:func:`end_session`). A turn is written to the landing
zone once (the service's flush: :func:`pending_to_flush`, write, :func:`mark_flushed`) when its
feedback window has passed, when its session ends, or on ``learnloop serving flush --all``; after
that it is immutable and feedback on it gets :class:`AlreadyWritten`.

Flushing writes the records to the landing zone first and marks them written after, in the same
transaction that selected them. A crash between the two leaves the rows pending, so the next
flush writes the same records again: byte-identical copies (the records did not change: the
rows were locked), which ingest drops as exact duplicates. Nothing is lost and nothing is
written twice with different content (ingest would quarantine that as a conflicting duplicate).

Locking: on PostgreSQL the rows are read ``FOR UPDATE`` (a flush skips rows locked by a feedback
write and takes them next time); SQLite has no row locks, so each of these transactions takes the
database's write lock before it reads (:func:`lock_writes`), and they run one after another.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select, text, update
from sqlalchemy.orm import Session

from store.models import ServedTurn
from store.repo import NotFound, StoreError

DEFAULT_FLUSH_LIMIT = 500
# merged field by field into the record's part of the same name
MERGED_PARTS = ("feedback", "signals", "human_correction")

Validator = Callable[[dict], Any]


class AlreadyWritten(StoreError):
    """The turn was already written to the landing zone: its record can no longer change."""

    def __init__(self, interaction_id: str, landing_file: str | None,
                 flushed_at: datetime | None):
        when = flushed_at.isoformat(timespec="seconds") if flushed_at else "earlier"
        super().__init__(f"interaction {interaction_id!r} was already written to the landing "
                         f"zone ({landing_file or 'file unknown'}, {when}); feedback must "
                         f"arrive within the feedback window and before the session ends")
        self.interaction_id, self.landing_file, self.flushed_at = (interaction_id, landing_file,
                                                                   flushed_at)


def _now() -> datetime:
    return datetime.now(UTC)


def lock_writes(session: Session) -> None:
    """Serialise this transaction with the other writers of ``served_turns``: on SQLite take the
    database's write lock now, before reading (a no-op UPDATE does it; the transaction then
    waits for the others up to the busy timeout); on PostgreSQL nothing (the reads lock their
    rows ``FOR UPDATE``)."""
    if session.get_bind().dialect.name == "sqlite":
        session.execute(text("UPDATE served_turns SET flushed_at = flushed_at WHERE 1 = 0"))


def _merge(record: dict, part: str, values: Mapping[str, Any] | None) -> dict:
    """``record`` with ``values`` merged into its ``part`` (None values leave a field as it is)."""
    if not values:
        return record
    if not isinstance(values, Mapping):
        raise ValueError(f"{part} must be an object, got {type(values).__name__}")
    current = record.get(part)
    merged = dict(current) if isinstance(current, Mapping) else {}
    merged.update({k: v for k, v in values.items() if v is not None})
    return {**record, part: merged}


def _session_rows(session: Session, tenant_id: str, session_id: str, *,
                  pending_only: bool) -> list[ServedTurn]:
    q = select(ServedTurn).where(ServedTurn.tenant_id == tenant_id,
                                 ServedTurn.session_id == session_id)
    if pending_only:
        q = q.where(ServedTurn.flushed_at.is_(None))
    q = q.order_by(ServedTurn.created_at, ServedTurn.interaction_id).with_for_update()
    return list(session.scalars(q))


def count_turns(session: Session, tenant_id: str, session_id: str) -> int:
    """How many turns the session has had (written or pending)."""
    return int(session.scalar(select(func.count()).select_from(ServedTurn).where(
        ServedTurn.tenant_id == tenant_id, ServedTurn.session_id == session_id)) or 0)


def add_turn(session: Session, *, record: dict, subject: str, model_version: str,
             experiment_id: int | None, arm: str | None) -> ServedTurn:
    """Store a served reply (``record``: a full interaction record with ``interaction_id``,
    ``tenant_id`` and ``session_id``, validated by the caller) as a pending turn. The same
    session's earlier pending turns get ``signals.user_continued = True`` (the user went on
    after them); they stay pending (feedback on them is still welcome) until their window
    passes or the session ends. A record without ``turn_index`` (or with None) gets the number of the session's
    turns so far. An interaction id that exists raises ValueError."""
    for key in ("interaction_id", "tenant_id", "session_id"):
        if not isinstance(record.get(key), str) or not record[key]:
            raise ValueError(f"add_turn: the record needs a non-empty string {key!r}")
    iid, tenant, sid = record["interaction_id"], record["tenant_id"], record["session_id"]
    if arm not in (None, "control", "treatment"):
        raise ValueError(f"add_turn: arm must be control, treatment or None, got {arm!r}")
    lock_writes(session)
    if session.get(ServedTurn, iid) is not None:
        raise ValueError(f"served turn {iid!r} already exists")
    if record.get("turn_index") is None:
        record = {**record, "turn_index": count_turns(session, tenant, sid)}
    for earlier in _session_rows(session, tenant, sid, pending_only=True):
        earlier.record = _merge(earlier.record, "signals", {"user_continued": True})
    row = ServedTurn(interaction_id=iid, tenant_id=tenant, session_id=sid, subject=subject,
                     model_version=str(model_version), experiment_id=experiment_id, arm=arm,
                     record=dict(record), created_at=_now())
    session.add(row)
    session.flush()
    return row


def get_turn(session: Session, interaction_id: str, tenant_id: str, *,
             for_update: bool = False) -> ServedTurn:
    """The turn ``interaction_id`` of ``tenant_id``; NotFound for an unknown id and for another
    tenant's (the same answer: ids of other tenants are not disclosed)."""
    q = select(ServedTurn).where(ServedTurn.interaction_id == interaction_id)
    if for_update:
        q = q.with_for_update()
    row = session.scalar(q)
    if row is None or row.tenant_id != tenant_id:
        raise NotFound(f"no served turn {interaction_id!r} for tenant {tenant_id!r}")
    return row


def add_feedback(session: Session, interaction_id: str, *, feedback: Mapping | None = None,
                 signals: Mapping | None = None, human_correction: Mapping | None = None,
                 tenant_id: str, validate: Validator | None = None) -> ServedTurn:
    """Merge feedback, signals and a human correction into a pending turn's record, field by
    field (a later value replaces an earlier one; None leaves a field as it is). ``validate``
    is called with the merged record before it is kept (raise to refuse it). NotFound for an
    unknown id or another tenant's; :class:`AlreadyWritten` when the turn is in the landing
    zone already."""
    lock_writes(session)
    row = get_turn(session, interaction_id, tenant_id, for_update=True)
    if row.flushed_at is not None:
        raise AlreadyWritten(row.interaction_id, row.landing_file, row.flushed_at)
    record = row.record
    for part, values in (("feedback", feedback), ("signals", signals),
                         ("human_correction", human_correction)):
        record = _merge(record, part, values)
    if validate is not None:
        validate(record)
    row.record = record
    session.flush()
    return row


def end_session(session: Session, session_id: str, tenant_id: str, *,
                signals: Mapping | None = None, feedback: Mapping | None = None,
                validate: Validator | None = None) -> list[ServedTurn]:
    """The session ended: merge its last ``signals`` and ``feedback`` into its last turn
    (``feedback.conversation_rating``, a rating of the whole conversation, goes on every
    pending turn) and return the pending turns, oldest first, for the caller to write now.
    NotFound when the tenant has no turn in that session; :class:`AlreadyWritten` when
    signals/feedback are given and the last turn was written already."""
    lock_writes(session)
    rows = _session_rows(session, tenant_id, session_id, pending_only=False)
    if not rows:
        raise NotFound(f"no served turns in session {session_id!r} for tenant {tenant_id!r}")
    pending = [r for r in rows if r.flushed_at is None]
    if signals or feedback:
        last = rows[-1]
        if last.flushed_at is not None:
            raise AlreadyWritten(last.interaction_id, last.landing_file, last.flushed_at)
        feedback = dict(feedback or {})
        conversation_rating = feedback.pop("conversation_rating", None)
        for row in pending:
            record = row.record
            if conversation_rating is not None:
                record = _merge(record, "feedback", {"conversation_rating": conversation_rating})
            if row is last:
                record = _merge(_merge(record, "signals", signals), "feedback", feedback)
            if validate is not None:
                validate(record)
            row.record = record
        session.flush()
    return pending


def pending_to_flush(session: Session, *, older_than: datetime | None,
                     session_id: str | None = None, tenant_id: str | None = None,
                     limit: int = DEFAULT_FLUSH_LIMIT) -> list[ServedTurn]:
    """Pending turns to write, oldest first, locked for this transaction: those created before
    ``older_than`` (None: every pending turn), of one session when ``session_id`` is given
    (with ``tenant_id``). On PostgreSQL rows another transaction holds are skipped (they come
    next time)."""
    if limit < 1:
        raise ValueError(f"limit must be positive, got {limit}")
    if session_id is not None and tenant_id is None:
        raise ValueError("pending_to_flush: a session_id needs its tenant_id (session ids are "
                         "per tenant)")
    lock_writes(session)
    q = select(ServedTurn).where(ServedTurn.flushed_at.is_(None))
    if older_than is not None:
        q = q.where(ServedTurn.created_at < older_than)
    if tenant_id is not None:
        q = q.where(ServedTurn.tenant_id == tenant_id)
    if session_id is not None:
        q = q.where(ServedTurn.session_id == session_id)
    q = (q.order_by(ServedTurn.created_at, ServedTurn.interaction_id).limit(limit)
         .with_for_update(skip_locked=True))
    return list(session.scalars(q))


def mark_flushed(session: Session, ids: Iterable[str], landing_file: str,
                 at: datetime | None = None) -> int:
    """Record that the turns ``ids`` are in ``landing_file`` (call it after the file is written,
    in the transaction that selected them); returns how many were marked (turns already marked
    keep their first file)."""
    ids = list(ids)
    if not ids:
        return 0
    res = session.execute(update(ServedTurn).where(
        ServedTurn.interaction_id.in_(ids), ServedTurn.flushed_at.is_(None))
        .values(flushed_at=at or _now(), landing_file=landing_file)
        .execution_options(synchronize_session="evaluate"))
    return int(res.rowcount or 0)


def pending_count(session: Session, tenant_id: str | None = None) -> int:
    q = select(func.count()).select_from(ServedTurn).where(ServedTurn.flushed_at.is_(None))
    if tenant_id is not None:
        q = q.where(ServedTurn.tenant_id == tenant_id)
    return int(session.scalar(q) or 0)


def turn_dict(row: ServedTurn) -> dict[str, Any]:
    """A turn for the API: its ids, routing, whether it is written, and its record."""
    iso = lambda t: t.isoformat() if t else None  # noqa: E731
    return {"interaction_id": row.interaction_id, "tenant_id": row.tenant_id,
            "session_id": row.session_id, "model_version": row.model_version,
            "experiment_id": row.experiment_id, "arm": row.arm,
            "created_at": iso(row.created_at), "written": row.flushed_at is not None,
            "flushed_at": iso(row.flushed_at), "landing_file": row.landing_file,
            "record": row.record}


__all__ = ["AlreadyWritten", "add_feedback", "add_turn", "count_turns", "end_session",
           "get_turn", "lock_writes", "mark_flushed", "pending_count", "pending_to_flush",
           "turn_dict"]
