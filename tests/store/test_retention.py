"""store.retention: the record of archives and deletions is append-only; closing the review items
of deleted interactions keeps decided ones and the review history."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DatabaseError

from store.db import session_scope
from store.models import AuditAttempt, ReviewEvent, ReviewItem
from store.repo import create_item, decide
from store.retention import (
    close_items_of_deleted_interactions,
    delete_audit_attempts,
    record_retention_event,
    retention_events,
)


def test_retention_events_are_append_only(store_url):
    with session_scope(store_url) as s:
        event = record_retention_event(s, action="delete", day="2026-11-03", actor="dpo",
                                       reason="request 7", files=["/l/a.jsonl"],
                                       counts={"warehouse.interactions": 3})
        event_id = event.id
    for sql in ("UPDATE retention_events SET reason = 'other'", "DELETE FROM retention_events"):
        with pytest.raises(DatabaseError, match="append-only"), session_scope(store_url) as s:
            s.execute(text(sql))
    with session_scope(store_url) as s:
        (kept,) = retention_events(s, "2026-11-03")
        assert (kept.id, kept.reason, kept.counts) == (event_id, "request 7",
                                                       {"warehouse.interactions": 3})
        with pytest.raises(ValueError, match="action"):
            record_retention_event(s, action="purge", day="2026-11-03", actor="x", reason=None,
                                   files=[], counts={})


def test_closing_items_of_deleted_interactions(store_url):
    with session_scope(store_url) as s:
        err, _ = create_item(s, kind="error", dedup_key="e", tenant_id="t", interaction_id="i1")
        sample, _ = create_item(s, kind="sample", dedup_key="s", tenant_id="t",
                                interaction_id="i1", proposed_response="better")
        done, _ = create_item(s, kind="error", dedup_key="d", tenant_id="t", interaction_id="i2")
        other_tenant, _ = create_item(s, kind="error", dedup_key="o", tenant_id="u",
                                      interaction_id="i1")
        s.flush()
        decide(s, done.id, decision="dismiss", expected_version=done.version, actor="ann")
        s.add(AuditAttempt(interaction_id="i1", tenant_id="t", auditor="rules",
                           prompt_version="v1", status="ok"))
        s.add(AuditAttempt(interaction_id="i1", tenant_id="u", auditor="rules",
                           prompt_version="v1", status="ok"))
        ids = err.id, sample.id, done.id, other_tenant.id
    with session_scope(store_url) as s:
        counts = close_items_of_deleted_interactions(s, [("t", "i1"), ("t", "i2")],
                                                     actor="retention:dpo", reason="request 7")
        assert counts == {"review_items_closed": 2, "review_items_decided_kept": 1}
        assert delete_audit_attempts(s, [("t", "i1"), ("t", "i2")]) == 1
    with session_scope(store_url) as s:
        assert [s.get(ReviewItem, i).status for i in ids] == ["dismissed", "rejected",
                                                              "dismissed", "pending"]
        assert s.get(ReviewItem, ids[0]).decided_by == "retention:dpo"
        notes = {e.note for e in s.query(ReviewEvent).filter(ReviewEvent.item_id == ids[1])}
        assert "data deleted: request 7" in notes
        assert s.query(AuditAttempt).count() == 1
