"""store.bulk and the bulk paths of store.audit / store.teaching: one INSERT per chunk, idempotent
on the unique key, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

import store.audit as store_audit
import store.bulk as bulk
from store import repo
from store.audit import attempt_rows, ok_count, record_attempt, save_audit_batch
from store.db import session_scope
from store.models import AuditAttempt, ReviewEvent, ReviewItem
from store.teaching import create_samples, sample_dedup_key

A = dict(auditor="rules", prompt_version="rules-v1")


def _sample(iid: str, text: str = "good", **kw) -> dict:
    return dict(actor="teacher:retrieval", tenant_id="acme", interaction_id=iid,
                proposed_response=text, source="retrieval", **kw)


def test_bulk_samples_match_the_orm_path_and_never_overwrite(store_url, monkeypatch):
    monkeypatch.setattr(bulk, "MAX_PARAMS", 60)  # a few rows per INSERT: chunking is exercised
    with session_scope(store_url) as s:  # a concurrent producer's item, made the ORM way
        repo.create_item(s, kind="sample", dedup_key=sample_dedup_key("acme", "i3"),
                         **_sample("i3", "theirs"))
    specs = [_sample(f"i{n}") for n in range(10)] + [_sample("i1", "second for i1")]
    with session_scope(store_url) as s:
        out = create_samples(s, specs)
    assert [new for _, new in out] == [True] * 3 + [False] + [True] * 6 + [False]
    with session_scope(store_url) as s:
        items = {i.interaction_id: i for i in s.scalars(select(ReviewItem))}
        assert len(items) == 10
        assert items["i3"].proposed_response == "theirs"  # the existing item is kept
        assert items["i1"].proposed_response == "good"  # the first spec of a key wins
        i5 = items["i5"]
        assert (i5.status, i5.version, i5.kind, i5.tags, i5.extra) == ("pending", 1, "sample",
                                                                       [], {})
        assert i5.messages is None and i5.created_at is not None
        events = list(s.scalars(select(ReviewEvent).order_by(ReviewEvent.id)))
    assert len(events) == 10 and {e.action for e in events} == {"created"}
    by_item = {e.item_id: e for e in events}
    assert by_item[i5.id].actor == "teacher:retrieval" and by_item[i5.id].tenant_id == "acme"
    assert by_item[i5.id].after == {"status": "pending", "version": 1, "final_response": None,
                                    "tags": [], "decided_by": None}
    with session_scope(store_url) as s:  # the same batch again: nothing new, no new event
        assert not any(new for _, new in create_samples(s, specs))
        assert s.scalar(select(func.count()).select_from(ReviewEvent)) == 10


def test_bulk_items_name_a_field_that_is_not_a_column(store_url):
    with session_scope(store_url) as s:
        with pytest.raises(TypeError, match=r"acme/i1:sample.*\['colour'\]"):
            create_samples(s, [{**_sample("i1"), "colour": "red"}])
        with pytest.raises(ValueError, match="kind must be"):
            bulk.insert_items(s, "note", [("k", "a", {"interaction_id": "i1"})])


def test_attempt_upserts_count_in_sql_and_merge_repeats(store_url):
    with session_scope(store_url) as s:
        record_attempt(s, interaction_id="i1", tenant_id="acme", status="failed", is_error=None,
                       reason="[request] 400", counted=True, **A)
    with session_scope(store_url) as s:
        counts = bulk.upsert_attempts(s, **A, rows=[
            {"tenant_id": "acme", "interaction_id": "i1", "status": "failed", "is_error": None,
             "reason": "[request] 400 again", "step": 1},
            {"tenant_id": "acme", "interaction_id": "i2", "status": "failed", "is_error": None,
             "reason": "[outage] 503", "step": 0},
            {"tenant_id": "acme", "interaction_id": "i2", "status": "failed", "is_error": None,
             "reason": "[request] 422", "step": 1},
        ])
    assert counts == {("acme", "i1"): 2, ("acme", "i2"): 1}
    with session_scope(store_url) as s:
        assert attempt_rows(s, **A) == [("acme", "i1", "failed", 2, "[request] 400 again"),
                                        ("acme", "i2", "failed", 1, "[request] 422")]
        with pytest.raises(ValueError, match="'ok' or 'failed'"):
            bulk.upsert_attempts(s, **A, rows=[{"tenant_id": "a", "interaction_id": "x",
                                                "status": "maybe", "is_error": None,
                                                "reason": None, "step": 1}])


def test_a_batch_reports_given_up_once_and_counts_new_items(store_url):
    failure = {"interaction_id": "i3", "tenant_id": "acme", "reason": "[request] 400",
               "counted": True}
    with session_scope(store_url) as s:
        saved = save_audit_batch(s, verdicts=[], items=[], failures=[failure, failure],
                                 max_attempts=2, **A)
    assert saved.given_up == ["i3"]  # reached 2 in this batch, named once


def test_attempt_lookups_are_bounded_by_keys_status_and_time(store_url, monkeypatch):
    monkeypatch.setattr(store_audit, "KEY_CHUNK", 3)
    with session_scope(store_url) as s:
        save_audit_batch(s, verdicts=[{"interaction_id": f"i{n}", "tenant_id": "acme",
                                       "is_error": False} for n in range(8)],
                         items=[], failures=[{"interaction_id": "f1", "tenant_id": "acme",
                                              "reason": "[outage] 503", "counted": False}],
                         max_attempts=5, **A)
    later = datetime.now(UTC) + timedelta(seconds=5)
    with session_scope(store_url) as s:
        assert [r[1] for r in attempt_rows(s, **A, statuses=("failed",))] == ["f1"]
        got = attempt_rows(s, **A, statuses=("ok",),
                           keys=[("acme", f"i{n}") for n in (7, 1, 2, 5, 0)] + [("acme", "f1"),
                                                                               ("other", "i1")])
        assert [r[1] for r in got] == ["i0", "i1", "i2", "i5", "i7"]
        assert attempt_rows(s, **A, keys=[("acme", "i1")], updated_since=later) == []
        assert len(attempt_rows(s, **A, updated_since=later - timedelta(minutes=5))) == 9
        assert ok_count(s, **A) == 8
        assert s.scalar(select(func.count()).select_from(AuditAttempt)) == 9
