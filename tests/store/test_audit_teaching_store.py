"""store.audit and store.teaching: the operational-store side of the audit and teaching stages,
on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from store import repo
from store.audit import attempt_rows, error_dedup_key, record_attempt, save_audit_batch
from store.db import session_scope
from store.models import AuditAttempt, ReviewItem
from store.teaching import (
    approved_sample_rows,
    create_samples,
    decision_notes,
    error_parents,
    interactions_with_sample,
    open_errors,
    sample_dedup_key,
    sample_problems,
)

A = dict(auditor="rules", prompt_version="rules-v1")


def _flag(iid: str, **extra) -> dict:
    return dict(actor="auditor:rules", tenant_id="acme", interaction_id=iid, session_id="s1",
                messages=[{"role": "user", "content": "q"}], original_response="bad",
                confidence=0.9, auditor="rules", prompt_version="rules-v1",
                category="factual_error", severity="high", explanation="wrong price",
                tags=["auditor:rules"], extra=extra)


def test_record_attempt_counts_ok_and_request_failures_but_not_outages(store_url):
    with session_scope(store_url) as s:
        record_attempt(s, interaction_id="i1", tenant_id="acme", status="failed", is_error=None,
                       reason="[outage] 503", counted=False, **A)
        record_attempt(s, interaction_id="i1", tenant_id="acme", status="failed", is_error=None,
                       reason="[request] 400", counted=True, **A)
        record_attempt(s, interaction_id="i2", tenant_id="acme", status="ok", is_error=True,
                       reason=None, **A)
    with session_scope(store_url) as s:
        rows = attempt_rows(s, **A)
        assert rows == [("acme", "i1", "failed", 1, "[request] 400"), ("acme", "i2", "ok", 1, None)]
        assert attempt_rows(s, auditor="rules", prompt_version="rules-v2") == []
        with pytest.raises(ValueError, match="'ok' or 'failed'"):
            record_attempt(s, interaction_id="i3", tenant_id="acme", status="maybe",
                           is_error=None, reason=None, **A)


def test_save_audit_batch_is_idempotent_and_reports_what_reached_the_cap(store_url):
    clean = {**_flag("i2"), "category": None, "severity": None,
             "extra": {"verdict": "no error found", "is_error": False}}
    verdicts = [{"interaction_id": "i1", "tenant_id": "acme", "is_error": True},
                {"interaction_id": "i2", "tenant_id": "acme", "is_error": False}]
    failure = {"interaction_id": "i3", "tenant_id": "acme", "reason": "[request] 422 too long",
               "counted": True}
    with session_scope(store_url) as s:
        saved = save_audit_batch(s, verdicts=verdicts, items=[_flag("i1"), clean],
                                 failures=[failure], max_attempts=2, **A)
    assert (saved.created, saved.clean_created, saved.given_up) == (1, 1, [])
    with session_scope(store_url) as s:  # the same batch again: nothing new; i3 reaches the cap
        again = save_audit_batch(s, verdicts=verdicts, items=[_flag("i1"), clean],
                                 failures=[failure], max_attempts=2, **A)
    assert (again.created, again.clean_created, again.given_up) == (0, 0, ["i3"])
    with session_scope(store_url) as s:
        keys = set(s.scalars(select(ReviewItem.dedup_key)))
        assert keys == {error_dedup_key("acme", "i1", **A), error_dedup_key("acme", "i2", **A)}
        assert s.scalar(select(func.count()).select_from(AuditAttempt)) == 3
        assert [r[3] for r in attempt_rows(s, **A)] == [2, 2, 2]


def test_a_failing_item_rolls_back_the_whole_batch(store_url):
    bad = {**_flag("i9"), "no_such_column": 1}
    with pytest.raises(TypeError):
        with session_scope(store_url) as s:
            save_audit_batch(s, verdicts=[{"interaction_id": "i9", "tenant_id": "acme",
                                           "is_error": True}],
                             items=[bad], failures=[], max_attempts=5, **A)
    with session_scope(store_url) as s:
        assert attempt_rows(s, **A) == []


def _error(s, iid: str, severity: str = "high"):
    item, _ = repo.create_item(s, kind="error", dedup_key=error_dedup_key("acme", iid, **A),
                               **{**_flag(iid), "severity": severity})
    return item


def test_open_errors_leave_out_interactions_with_a_sample_and_carry_the_decision_note(store_url):
    with session_scope(store_url) as s:
        e1, e2, e3 = _error(s, "i1"), _error(s, "i2", "low"), _error(s, "i3")
        ids = (e1.id, e2.id, e3.id)
    with session_scope(store_url) as s:
        repo.decide(s, ids[0], decision="confirm", expected_version=1, actor="ann",
                    note="the price is 12, not 10")
        repo.decide(s, ids[2], decision="dismiss", expected_version=1, actor="ann")
        created = create_samples(s, [dict(actor="teacher:retrieval", tenant_id="acme",
                                          interaction_id="i2", parent_id=ids[1],
                                          original_response="bad", proposed_response="good",
                                          source="retrieval")])
        assert created == [("retrieval", True)]
    with session_scope(store_url) as s:
        errors = open_errors(s)
        # i2 has a sample, i3 was dismissed: only i1, with its reviewer's note
        assert [(e.interaction_id, e.status, e.note) for e in errors] == [
            ("i1", "confirmed", "the price is 12, not 10")]
        assert decision_notes(s, [ids[2]]) == {}
        assert interactions_with_sample(s) == {("acme", "i2")}
        assert error_parents(s) == {("acme", "i1"): ids[0], ("acme", "i2"): ids[1],
                                    ("acme", "i3"): ids[2]}
        # a second proposal for i2 (another teacher) is not created: one sample per interaction
        assert create_samples(s, [dict(actor="teacher:llm", tenant_id="acme",
                                       interaction_id="i2", proposed_response="other",
                                       source="llm:openai")]) == [("llm:openai", False)]
        assert s.scalar(select(func.count()).select_from(ReviewItem).where(
            ReviewItem.dedup_key == sample_dedup_key("acme", "i2"))) == 1


def test_approved_sample_rows_hold_the_reviewers_final_text(store_url):
    with session_scope(store_url) as s:
        [(_, new)] = create_samples(s, [dict(actor="teacher:human_agent", tenant_id="acme",
                                             interaction_id="i1", original_response="bad",
                                             proposed_response="good", source="human_agent",
                                             messages=[{"role": "user", "content": "q?"}])])
        item_id = s.scalar(select(ReviewItem.id))
    with session_scope(store_url) as s:
        assert approved_sample_rows(s) == []
        repo.decide(s, item_id, decision="edit", expected_version=1, actor="ann",
                    final_response="better")
    with session_scope(store_url) as s:
        [row] = approved_sample_rows(s)
    assert (row["final_response"], row["original_response"], row["status"], row["decided_by"]) \
        == ("better", "bad", "edited", "ann")
    assert row["messages"] == [{"role": "user", "content": "q?"}] and row["decided_at"].tzinfo is None


def test_sample_problems_names_unreviewable_samples(store_url):
    with session_scope(store_url) as s:
        create_samples(s, [
            dict(actor="t", tenant_id="acme", interaction_id="ok", parent_id=None,
                 proposed_response="fine", source="human_agent"),
            dict(actor="t", tenant_id="acme", interaction_id="blank", proposed_response="  ",
                 source="human_agent"),
            dict(actor="t", tenant_id="acme", interaction_id="orphan", proposed_response="x",
                 source="retrieval"),
            dict(actor="t", tenant_id="acme", interaction_id="odd", proposed_response="x",
                 source="oracle"),
        ])
    with session_scope(store_url) as s:
        assert sample_problems(s, "human_agent") == {
            "no_proposed_reply": 1, "teacher_sample_without_parent": 2, "unknown_source": 1}


def test_the_same_id_in_two_tenants_is_two_interactions(store_url):
    """Ids are per tenant (issue 8, item 4): an attempt row, an error item and a sample each."""
    with session_scope(store_url) as s:
        for tenant in ("acme", "globex"):
            save_audit_batch(s, verdicts=[{"interaction_id": "i1", "tenant_id": tenant,
                                           "is_error": True}],
                             items=[{**_flag("i1"), "tenant_id": tenant}], failures=[],
                             max_attempts=2, **A)
            create_samples(s, [dict(actor="teacher:retrieval", tenant_id=tenant,
                                    interaction_id="i1", proposed_response="good",
                                    source="retrieval")])
    with session_scope(store_url) as s:
        assert [r[:3] for r in attempt_rows(s, **A)] == [("acme", "i1", "ok"),
                                                         ("globex", "i1", "ok")]
        assert s.scalar(select(func.count()).select_from(ReviewItem).where(
            ReviewItem.kind == "error")) == 2
        assert interactions_with_sample(s) == {("acme", "i1"), ("globex", "i1")}
