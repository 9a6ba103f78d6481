"""The operational store's side of landing-data retention (``ml.retention`` is the warehouse's).

* ``close_items_of_deleted_interactions``: the *pending* review items of deleted interactions are
  closed (error items dismissed, sample items rejected) by the deleting actor, with the reason as
  the event's note, and tagged ``data-deleted``; decided items and every review event stay (the
  review history is append-only, and versioned datasets already hold their approved samples).
* ``delete_audit_attempts``: the auditing attempts of those interactions go (idempotency state
  of work on rows that no longer exist, not history).
* ``record_retention_event``: one append-only ``retention_events`` row per archive or deletion.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import delete, select, tuple_
from sqlalchemy.orm import Session

from store.models import RETENTION_ACTIONS, AuditAttempt, RetentionEvent, ReviewItem
from store.repo import decide, set_tags

DELETED_TAG = "data-deleted"
_CLOSE = {"error": "dismiss", "sample": "reject"}
_BATCH = 500  # keys per IN (...) query


def _batches(keys: Sequence[tuple[str, str]]):
    for i in range(0, len(keys), _BATCH):
        yield list(keys[i:i + _BATCH])


def close_items_of_deleted_interactions(session: Session, keys: Sequence[tuple[str, str]], *,
                                        actor: str, reason: str) -> dict[str, int]:
    """Close the pending review items of the interactions ``keys`` ((tenant_id,
    interaction_id)); return {closed, kept_decided}."""
    closed = kept = 0
    for batch in _batches(keys):
        items = list(session.scalars(
            select(ReviewItem).where(tuple_(ReviewItem.tenant_id, ReviewItem.interaction_id)
                                     .in_(batch)).order_by(ReviewItem.id)))
        for item in items:
            if item.status != "pending":
                kept += 1
                continue
            decide(session, item.id, decision=_CLOSE[item.kind], expected_version=item.version,
                   actor=actor, note=f"data deleted: {reason}")
            set_tags(session, item.id, add=[DELETED_TAG], expected_version=item.version,
                     actor=actor)
            closed += 1
    return {"review_items_closed": closed, "review_items_decided_kept": kept}


def delete_audit_attempts(session: Session, keys: Sequence[tuple[str, str]]) -> int:
    """Delete the auditing attempts of the interactions ``keys``; return how many."""
    n = 0
    for batch in _batches(keys):
        n += session.execute(delete(AuditAttempt).where(
            tuple_(AuditAttempt.tenant_id, AuditAttempt.interaction_id).in_(batch))).rowcount or 0
    return n


def record_retention_event(session: Session, *, action: str, day: str, actor: str,
                           reason: str | None, files: Sequence[str],
                           counts: dict[str, Any]) -> RetentionEvent:
    if action not in RETENTION_ACTIONS:
        raise ValueError(f"retention action must be one of {RETENTION_ACTIONS}, got {action!r}")
    if not actor.strip():
        raise ValueError("a retention event needs an actor (who did it)")
    event = RetentionEvent(action=action, day=day, actor=actor, reason=reason,
                           files=[str(f) for f in files], counts=dict(counts))
    session.add(event)
    session.flush()
    return event


def retention_events(session: Session, day: str | None = None) -> list[RetentionEvent]:
    q = select(RetentionEvent).order_by(RetentionEvent.id)
    if day is not None:
        q = q.where(RetentionEvent.day == day)
    return list(session.scalars(q))
