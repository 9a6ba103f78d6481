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
                             interaction_id=key, severity=sev, category="factual_error")
        items, _ = repo.list_items(s, repo.ItemFilter(kind="error"), sort="severity")
        assert [i.severity for i in items] == ["critical", "medium", "low"]
        s1, _ = _sample(s, key="x")
        s2, _ = _sample(s, key="y")
        repo.decide(s, s1.id, decision="edit", expected_version=1, actor="a", final_response="z")
        repo.decide(s, s2.id, decision="reject", expected_version=1, actor="a")
        for key in ("clean1", "clean2"):  # "no error found" calibration items: no category
            repo.create_item(s, kind="error", dedup_key=key, tenant_id="acme", interaction_id=key)
        counts = repo.status_counts(s)
    assert counts["errors"] == {"pending": 3, "confirmed": 0, "dismissed": 0}
    assert counts["calibration"] == {"pending": 2, "confirmed": 0, "dismissed": 0}
    assert counts["samples"] == {"pending": 0, "approved": 1, "rejected": 1}


# ---- queue queries in SQL: tags, paging, sorts, neighbours ------------------------------------
def _queue(s):
    """errors e1 (conf 0.9, high), e2 (no confidence, low), e3 (conf 0.2, medium); sample s1 of
    e1 (no confidence/severity of its own), sample s2 (neither itself nor a parent); tags vary."""
    ids = {}
    for key, conf, sev, tags in [("e1", 0.9, "high", ["a", "b"]), ("e2", None, "low", ["b"]),
                                 ("e3", 0.2, "medium", ["ab"])]:
        item, _ = repo.create_item(s, kind="error", dedup_key=key, tenant_id="acme",
                                   interaction_id=key, confidence=conf, severity=sev, tags=tags,
                                   messages=[{"role": "user", "content": "x" * 10}])
        ids[key] = item.id
    ids["s1"] = _sample(s, key="s1", parent_id=ids["e1"], tags=["b"])[0].id
    ids["s2"] = _sample(s, key="s2")[0].id
    ids["g"] = _sample(s, key="g", tenant="globex", tags=["b"])[0].id
    return ids


def test_tag_filter_is_exact_and_paged_in_sql(store_url):
    with session_scope(store_url) as s:
        ids = _queue(s)
    with session_scope(store_url) as s:
        items, total = repo.list_items(s, repo.ItemFilter(tag="b"), tenants=["acme"],
                                       offset=1, limit=1)
        # "b" matches e1, e2, s1 in acme (not "ab", not globex's item); page 2 of size 1
        assert total == 3 and [i.id for i in items] == [ids["e2"]]
        items, total = repo.list_items(s, repo.ItemFilter(tag="a"), tenants=["*"])
        assert total == 1 and [i.id for i in items] == [ids["e1"]]
        items, total = repo.list_items(s, repo.ItemFilter(tag='"b"'), tenants=["*"])
        assert (items, total) == ([], 0)
        items, total = repo.list_items(s, repo.ItemFilter(), tenants=["acme"], offset=4,
                                       limit=10)
        assert total == 5 and [i.id for i in items] == [ids["s2"]]


def test_list_items_pages_with_limit_and_offset_in_sql(store_url):
    from sqlalchemy import event

    from store.db import engine_for

    with session_scope(store_url) as s:
        _queue(s)
    statements = []

    def spy(conn, cursor, statement, params, context, executemany):
        statements.append(statement.upper())

    event.listen(engine_for(store_url), "before_cursor_execute", spy)
    try:
        with session_scope(store_url) as s:
            repo.list_items(s, repo.ItemFilter(tag="b"), tenants=["acme"], offset=1, limit=2)
    finally:
        event.remove(engine_for(store_url), "before_cursor_execute", spy)
    page = [st for st in statements if "LIMIT" in st]
    assert len(page) == 1 and "OFFSET" in page[0] and "MESSAGES" not in page[0]
    assert any("COUNT(" in st for st in statements)


def test_confidence_sort_puts_items_without_confidence_last(store_url):
    with session_scope(store_url) as s:
        ids = _queue(s)
    with session_scope(store_url) as s:
        items, _ = repo.list_items(s, repo.ItemFilter(), tenants=["acme"], sort="confidence")
        # s1 has no confidence of its own: it sorts with its parent e1 (0.9), after it by id
        assert [i.id for i in items] == [ids["e1"], ids["s1"], ids["e3"], ids["e2"], ids["s2"]]
        items, _ = repo.list_items(s, repo.ItemFilter(), tenants=["acme"], sort="severity")
        assert [i.id for i in items] == [ids["e1"], ids["s1"], ids["e3"], ids["e2"], ids["s2"]]


def test_neighbours_follow_the_queue_filter_and_sort(store_url):
    with session_scope(store_url) as s:
        ids = _queue(s)
    with session_scope(store_url) as s:
        by_conf = dict(tenants=["acme"], sort="confidence")
        assert repo.queue_neighbours(s, ids["e1"], **by_conf) == (None, ids["s1"])
        assert repo.queue_neighbours(s, ids["e3"], **by_conf) == (ids["s1"], ids["e2"])
        errors = repo.ItemFilter(kind="error")
        assert repo.queue_neighbours(s, ids["e3"], flt=errors, **by_conf) == (ids["e1"], ids["e2"])
        assert repo.queue_neighbours(s, ids["e1"], tenants=["acme"], sort="age") == (
            None, ids["e2"])
        # another tenant's item has no neighbours for this reviewer
        assert repo.queue_neighbours(s, ids["g"], **by_conf) == (None, None)
        repo.decide(s, ids["e3"], decision="confirm", expected_version=1, actor="ann")
    with session_scope(store_url) as s:
        # a decided item keeps its place: "next" is what followed it in the pending queue
        assert repo.queue_neighbours(s, ids["e3"], flt=errors, **by_conf) == (ids["e1"], ids["e2"])
        assert repo.queue_neighbours(s, ids["e1"], flt=errors, **by_conf) == (None, ids["e2"])


def test_approve_with_changed_text_is_edit_and_approve(store_url):
    with session_scope(store_url) as s:
        a, _ = _sample(s, key="a")
        b, _ = _sample(s, key="b")
        c, _ = _sample(s, key="c")
        err, _ = repo.create_item(s, kind="error", dedup_key="e", tenant_id="acme",
                                  interaction_id="e")
        out = repo.decide(s, a.id, decision="approve", expected_version=1, actor="ann",
                          final_response="newer")
        assert (out.status, out.final_response) == ("edited", "newer")
        out = repo.decide(s, b.id, decision="approve", expected_version=1, actor="ann",
                          final_response="new")  # the proposed text unchanged
        assert (out.status, out.final_response) == ("approved", "new")
        out = repo.decide(s, c.id, decision="approve", expected_version=1, actor="ann",
                          final_response="  ")  # blank: plain approve
        assert (out.status, out.final_response) == ("approved", "new")
        with pytest.raises(repo.InvalidTransition, match="sample items only"):
            repo.decide(s, err.id, decision="confirm", expected_version=1, actor="ann",
                        final_response="text")


def test_changes_since_names_what_a_stale_writer_missed(store_url):
    with session_scope(store_url) as s:
        item, _ = _sample(s)
        repo.set_tags(s, item.id, add=["x"], expected_version=1, actor="bob")
        repo.decide(s, item.id, decision="reject", expected_version=2, actor="cy")
    with session_scope(store_url) as s:
        assert [(e.actor, e.action) for e in repo.changes_since(s, item.id, 1)] == [
            ("bob", "tag"), ("cy", "decide")]
        assert [e.actor for e in repo.changes_since(s, item.id, 2)] == ["cy"]
