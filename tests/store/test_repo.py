import threading

import pytest
from sqlalchemy import func, select

from store import repo
from store.db import session_scope
from store.models import ReviewEvent, ReviewItem


def _sample(session, key="s1", tenant="acme", **kw):
    fields = dict(tenant_id=tenant, interaction_id=f"i-{key}", original_response="old",
                  proposed_response="new", source="teacher")
    fields.update(kw)
    return repo.create_item(session, kind="sample", dedup_key=key, **fields)


def test_create_item_is_idempotent_on_dedup_key(store_url):
    with session_scope(store_url) as s:
        a, created_a = _sample(s)
        b, created_b = _sample(s)
    assert created_a and not created_b and a.id == b.id
    with session_scope(store_url) as s:
        assert s.scalar(select(func.count()).select_from(ReviewItem)) == 1
        events = repo.list_events(s)
        assert [e.action for e in events] == ["created"]


def test_decide_approve_sets_final_response_and_appends_event(store_url):
    with session_scope(store_url) as s:
        item, _ = _sample(s)
        item_id = item.id
    with session_scope(store_url) as s:
        out = repo.decide(s, item_id, decision="approve", expected_version=1, actor="ann",
                          note="looks right")
        assert (out.status, out.version, out.final_response) == ("approved", 2, "new")
    with session_scope(store_url) as s:
        ev = repo.list_events(s)[-1]
        assert (ev.action, ev.actor, ev.note) == ("decide", "ann", "looks right")
        assert ev.before["status"] == "pending" and ev.after["status"] == "approved"


def test_edit_requires_text_and_stores_it(store_url):
    with session_scope(store_url) as s:
        item, _ = _sample(s)
        with pytest.raises(repo.InvalidTransition, match="edited reply"):
            repo.decide(s, item.id, decision="edit", expected_version=1, actor="ann")
        out = repo.decide(s, item.id, decision="edit", expected_version=1, actor="ann",
                          final_response="better")
        assert (out.status, out.final_response) == ("edited", "better")


def test_stale_version_conflicts_and_changes_nothing(store_url):
    with session_scope(store_url) as s:
        item, _ = _sample(s)
        repo.decide(s, item.id, decision="reject", expected_version=1, actor="ann")
    with session_scope(store_url) as s:
        with pytest.raises(repo.Conflict, match="changed by someone else"):
            repo.decide(s, item.id, decision="approve", expected_version=1, actor="bob")
    with session_scope(store_url) as s:
        got = s.get(ReviewItem, item.id)
        assert (got.status, got.decided_by, got.version) == ("rejected", "ann", 2)
        assert s.scalar(select(func.count()).select_from(ReviewEvent)
                        .where(ReviewEvent.action == "decide")) == 1


def test_concurrent_decisions_one_wins(store_url):
    with session_scope(store_url) as s:
        item, _ = _sample(s)
    results: list[str] = []
    barrier = threading.Barrier(2)

    def worker(who: str) -> None:
        barrier.wait()
        try:
            with session_scope(store_url) as s:
                repo.decide(s, item.id, decision="approve", expected_version=1, actor=who)
            results.append("ok")
        except (repo.Conflict, repo.InvalidTransition):
            results.append("conflict")

    threads = [threading.Thread(target=worker, args=(w,)) for w in ("ann", "bob")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["conflict", "ok"]
    with session_scope(store_url) as s:
        assert s.scalar(select(func.count()).select_from(ReviewEvent)
                        .where(ReviewEvent.action == "decide")) == 1


def test_error_items_accept_approve_reject_aliases(store_url):
    with session_scope(store_url) as s:
        err, _ = repo.create_item(s, kind="error", dedup_key="e1", tenant_id="acme",
                                  interaction_id="i1", category="factual_error", severity="high")
        out = repo.decide(s, err.id, decision="approve", expected_version=1, actor="ann")
        assert out.status == "confirmed"
        with pytest.raises(repo.InvalidTransition, match="not valid for a error"):
            err2, _ = repo.create_item(s, kind="error", dedup_key="e2", tenant_id="acme",
                                       interaction_id="i2")
            repo.decide(s, err2.id, decision="edit", expected_version=1, actor="ann")


def test_tenant_scoping_hides_other_tenants(store_url):
    with session_scope(store_url) as s:
        mine, _ = _sample(s, key="a", tenant="acme")
        other, _ = _sample(s, key="b", tenant="globex")
    with session_scope(store_url) as s:
        items, total = repo.list_items(s, repo.ItemFilter(kind="sample"), tenants=["acme"])
        assert [i.id for i in items] == [mine.id] and total == 1
        with pytest.raises(repo.NotFound):
            repo.get_item(s, other.id, tenants=["acme"])
        with pytest.raises(repo.NotFound):
            repo.decide(s, other.id, decision="approve", expected_version=1, actor="ann",
                        tenants=["acme"])
        items, total = repo.list_items(s, repo.ItemFilter(kind="sample"), tenants=["*"])
        assert total == 2


def test_tags_add_remove_and_filter(store_url):
    with session_scope(store_url) as s:
        item, _ = _sample(s)
        repo.set_tags(s, item.id, add=["pricing", "urgent"], expected_version=1, actor="ann")
        out = repo.set_tags(s, item.id, remove=["urgent"], expected_version=2, actor="ann")
        assert out.tags == ["pricing"]
        items, _ = repo.list_items(s, repo.ItemFilter(tag="pricing"))
        assert [i.id for i in items] == [item.id]
        items, _ = repo.list_items(s, repo.ItemFilter(tag="urgent"))
        assert items == []


def test_sort_by_severity_and_status_counts(store_url):
    with session_scope(store_url) as s:
        for key, sev in [("l", "low"), ("c", "critical"), ("m", "medium")]:
            repo.create_item(s, kind="error", dedup_key=key, tenant_id="acme",
                             interaction_id=key, severity=sev)
        items, _ = repo.list_items(s, repo.ItemFilter(kind="error"), sort="severity")
        assert [i.severity for i in items] == ["critical", "medium", "low"]
        s1, _ = _sample(s, key="x")
        s2, _ = _sample(s, key="y")
        repo.decide(s, s1.id, decision="edit", expected_version=1, actor="a", final_response="z")
        repo.decide(s, s2.id, decision="reject", expected_version=1, actor="a")
        counts = repo.status_counts(s)
    assert counts["errors"] == {"pending": 3, "confirmed": 0, "dismissed": 0}
    assert counts["samples"] == {"pending": 0, "approved": 1, "rejected": 1}
