"""The operational-store side of teaching: which error items want a proposed reply, the sample
items the teacher creates, and the approved samples the answer index and preference pairs read.

Samples are ``sample`` review items, one per interaction (``dedup_key`` = the interaction's sample
key, whoever proposed it: a human agent, the retrieval teacher or an LLM), so a producer that runs
twice or concurrently creates each at most once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session, aliased

from store.bulk import insert_items
from store.models import ReviewEvent, ReviewItem
from store.repo import approved_samples, bounded_key


@dataclass(frozen=True)
class OpenError:
    """An ``error`` item, pending or confirmed, whose interaction has no sample item yet."""

    id: int
    interaction_id: str
    tenant_id: str
    category: str | None
    severity: str | None
    status: str
    explanation: str | None
    note: str | None  # the note of the latest decision, when a reviewer wrote one


def sample_dedup_key(tenant_id: str, interaction_id: str) -> str:
    """One sample item per interaction (ids are per tenant), whoever proposed it (human,
    retrieval, LLM)."""
    return bounded_key(f"{tenant_id}/{interaction_id}:sample")


def sample_keys(session: Session) -> set[str]:
    """The dedup keys of every sample item."""
    return set(session.scalars(select(ReviewItem.dedup_key).where(ReviewItem.kind == "sample")))


def interactions_with_sample(session: Session) -> set[tuple[str, str]]:
    """The interactions, as (tenant_id, interaction_id), that have a sample item."""
    return {tuple(r) for r in session.execute(select(
        ReviewItem.tenant_id, ReviewItem.interaction_id).where(ReviewItem.kind == "sample"))}


def decision_notes(session: Session, item_ids: Sequence[int]) -> dict[int, str]:
    """The note of the latest ``decide`` event of each item that has one."""
    ids = list(item_ids)
    rows = []
    for start in range(0, len(ids), 1000):  # bound parameters per query
        rows += session.execute(select(ReviewEvent.id, ReviewEvent.item_id, ReviewEvent.note)
                                .where(ReviewEvent.item_id.in_(ids[start:start + 1000]),
                                       ReviewEvent.action == "decide",
                                       ReviewEvent.note.is_not(None))).all()
    # later events overwrite earlier ones
    return {item_id: note for _, item_id, note in sorted(rows, key=lambda r: r[0])}


def open_errors(session: Session) -> list[OpenError]:
    """Pending and confirmed error items whose interaction has no sample item yet, oldest
    first (one query: the items with a sample are left out in SQL, not read)."""
    sample = aliased(ReviewItem)
    has_sample = select(sample.id).where(
        sample.kind == "sample", sample.tenant_id == ReviewItem.tenant_id,
        sample.interaction_id == ReviewItem.interaction_id).exists()
    rows = session.execute(select(
        ReviewItem.id, ReviewItem.interaction_id, ReviewItem.tenant_id, ReviewItem.category,
        ReviewItem.severity, ReviewItem.status, ReviewItem.explanation).where(
        ReviewItem.kind == "error", ReviewItem.status.in_(("pending", "confirmed")), ~has_sample)
        .order_by(ReviewItem.id)).all()
    notes = decision_notes(session, [r.id for r in rows if r.status == "confirmed"])
    return [OpenError(id=r.id, interaction_id=r.interaction_id, tenant_id=r.tenant_id,
                      category=r.category, severity=r.severity, status=r.status,
                      explanation=r.explanation, note=notes.get(r.id)) for r in rows]


def error_parents(session: Session) -> dict[tuple[str, str], int]:
    """(tenant_id, interaction_id) -> the id of its oldest error item (the parent of a human
    correction's sample)."""
    rows = session.execute(select(ReviewItem.tenant_id, ReviewItem.interaction_id,
                                  ReviewItem.id).where(
        ReviewItem.kind == "error").order_by(ReviewItem.id.desc())).all()
    return {(t, i): item_id for t, i, item_id in rows}


def create_samples(session: Session, specs: Sequence[Mapping[str, Any]]) -> list[tuple[str, bool]]:
    """Create the sample items ``specs`` (keyword arguments of ``create_item`` but ``kind`` and
    ``dedup_key``: one sample per interaction); returns (source, created) per spec (False: the
    interaction had a sample item already, or an earlier spec of ``specs`` named it).

    Bulk (``store.bulk.insert_items``): one INSERT per chunk, ``ON CONFLICT DO NOTHING`` on the
    item's dedup key, so a concurrent producer's sample is kept, never overwritten."""
    keyed = [(sample_dedup_key(spec["tenant_id"], spec["interaction_id"]), spec)
             for spec in specs]
    created = insert_items(session, "sample", [
        (key, spec.get("actor", "system"), {k: v for k, v in spec.items() if k != "actor"})
        for key, spec in keyed])
    out = []
    for key, spec in keyed:
        new = key in created
        created.discard(key)  # a repeat of the key in specs was not created
        out.append((spec.get("source") or "", new))
    return out


def approved_sample_rows(session: Session, *, since: datetime | None = None) -> list[dict[str, Any]]:
    """Approved and edited sample items as plain rows (the reviewer's final text in
    ``final_response``), oldest first."""
    return [{
        "id": item.id, "parent_id": item.parent_id, "interaction_id": item.interaction_id,
        "tenant_id": item.tenant_id, "messages": item.messages or [],
        "original_response": item.original_response, "final_response": item.final_response,
        "source": item.source, "status": item.status, "category": item.category,
        "decided_by": item.decided_by,
        "decided_at": item.decided_at.replace(tzinfo=None) if item.decided_at else None,
    } for item in approved_samples(session, since=since)]


def sample_problems(session: Session, human_source: str) -> dict[str, int]:
    """Sample items a reviewer could not act on: no proposed reply, a teacher proposal without
    its parent error item (only ``human_source`` samples may have none), an unknown source."""

    def count(*conditions) -> int:
        return int(session.scalar(select(func.count()).select_from(ReviewItem).where(
            ReviewItem.kind == "sample", *conditions)) or 0)

    return {
        "no_proposed_reply": count(or_(ReviewItem.proposed_response.is_(None),
                                       func.trim(ReviewItem.proposed_response) == "")),
        "teacher_sample_without_parent": count(ReviewItem.source != human_source,
                                               ReviewItem.parent_id.is_(None)),
        "unknown_source": count(or_(ReviewItem.source.is_(None),
                                    ~(ReviewItem.source.in_((human_source, "retrieval"))
                                      | ReviewItem.source.like("llm:%")))),
    }
