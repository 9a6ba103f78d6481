"""store.samples on SQLite and PostgreSQL: the sample filter in SQL, bulk tags (compare-and-set per
item, one event each, a concurrent edit never overwritten), statistics, the interaction's facts."""

from __future__ import annotations

import threading
from datetime import UTC, date, datetime

import pytest
from sqlalchemy import event, func, select

from store import repo
from store.db import engine_for, session_scope
from store.models import ReviewEvent, ReviewItem
from store.samples import (
    FilterError,
    SampleFilter,
    TagError,
    fill_sample_facts,
    list_samples,
    sample_facets,
    sample_stats,
    samples_missing_facts,
    tag_samples,
    with_facts,
)

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)

# name -> (tenant, quality, intent, category, source, interaction_at, tags, decision)
SAMPLES = {
    "a": ("acme", 0.05, "billing", "refusal", "retrieval", datetime(2025, 3, 1, 9, tzinfo=UTC),
          ["faq"], None),
    "b": ("acme", 0.35, "billing", "wrong_answer", "human_agent",
          datetime(2025, 3, 2, 23, 59, tzinfo=UTC), [], "approve"),
    "c": ("acme", 0.72, "login", "wrong_answer", "llm:openai",
          datetime(2025, 3, 3, 0, 0, tzinfo=UTC), ["faq", "hard"], "edit"),
    "d": ("acme", None, None, None, "retrieval", None, [], "reject"),
    "e": ("globex", 1.0, "login", "refusal", "retrieval", datetime(2025, 3, 2, 8, tzinfo=UTC),
          ["faq"], None),
}


def _seed(url: str) -> dict[str, int]:
    ids: dict[str, int] = {}
    with session_scope(url) as s:
        for name, (tenant, q, intent, cat, src, at, tags, _) in SAMPLES.items():
            item, _ = repo.create_item(
                s, kind="sample", dedup_key=f"s-{name}", tenant_id=tenant,
                interaction_id=f"i-{name}", original_response="old", proposed_response="new",
                source=src, category=cat, quality=q, intent=intent, interaction_at=at, tags=tags)
            ids[name] = item.id
        # an error item never counts as a sample, whatever it carries
        repo.create_item(s, kind="error", dedup_key="e-1", tenant_id="acme", interaction_id="i-a",
                         category="refusal", tags=["faq"], quality=0.05)
    with session_scope(url) as s:
        for name, (*_, decision) in SAMPLES.items():
            if decision:
                repo.decide(s, ids[name], decision=decision, expected_version=1, actor="ann",
                            final_response="edited text" if decision == "edit" else None)
    return ids


def _names(url, flt, ids, tenants=None):
    with session_scope(url) as s:
        items, total = list_samples(s, flt, tenants=tenants, limit=100)
    by_id = {v: k for k, v in ids.items()}
    names = sorted(by_id[i.id] for i in items)
    assert total == len(names)
    return names


def test_filters_select_in_sql_on_every_field(store_url):
    ids = _seed(store_url)
    f = SampleFilter.from_dict
    assert _names(store_url, SampleFilter(), ids) == ["a", "b", "c", "d", "e"]
    assert _names(store_url, f({"quality_min": 0.3, "quality_max": 0.75}), ids) == ["b", "c"]
    assert _names(store_url, f({"quality_max": "0.05"}), ids) == ["a"]  # inclusive bounds
    assert _names(store_url, f({"quality_min": 1}), ids) == ["e"]
    assert _names(store_url, f({"intent": "login"}), ids) == ["c", "e"]
    assert _names(store_url, f({"category": ["refusal", "wrong_answer"]}), ids) == \
        ["a", "b", "c", "e"]
    assert _names(store_url, f({"source": "retrieval,human_agent"}), ids) == ["a", "b", "d", "e"]
    assert _names(store_url, f({"tenant": "globex"}), ids) == ["e"]
    assert _names(store_url, f({"tag": "hard"}), ids) == ["c"]
    assert _names(store_url, f({"tag": ["hard", "faq"]}), ids) == ["a", "c", "e"]  # any of
    assert _names(store_url, f({"status": ["approved", "edited"]}), ids) == ["b", "c"]
    assert _names(store_url, f({"status": "pending", "tag": "faq"}), ids) == ["a", "e"]
    assert _names(store_url, f({"ids": [ids["a"], ids["d"]]}), ids) == ["a", "d"]
    # dates: inclusive days (UTC) on the interaction's time
    assert _names(store_url, f({"since": "2025-03-02", "until": "2025-03-02"}), ids) == ["b", "e"]
    assert _names(store_url, f({"since": "2025-03-03"}), ids) == ["c", "d"]  # d: created now
    assert _names(store_url, f({"until": "2025-03-01"}), ids) == ["a"]
    assert _names(store_url, f({"since": "2025-03-02T09:00:00+01:00",
                                "until": "2025-03-02T23:59:00Z"}), ids) == ["b", "e"]
    # tenant scope of the caller
    assert _names(store_url, SampleFilter(), ids, tenants=["acme"]) == ["a", "b", "c", "d"]
    assert _names(store_url, f({"tenant": "globex"}), ids, tenants=["acme"]) == []
    assert _names(store_url, SampleFilter(), ids, tenants=["*"]) == ["a", "b", "c", "d", "e"]
    with session_scope(store_url) as s:  # sorting: unknown quality last
        items, _ = list_samples(s, SampleFilter(), sort="-quality")
        assert [i.id for i in items] == [ids[k] for k in ("e", "c", "b", "a", "d")]
        items, _ = list_samples(s, SampleFilter(), sort="time", limit=2, offset=1)
        assert [i.id for i in items] == [ids["e"], ids["b"]]


def test_the_date_falls_back_to_when_the_item_was_created(store_url):
    ids = _seed(store_url)
    today = datetime.now(UTC).date()
    assert _names(store_url, SampleFilter(since=today), ids) == ["d"]
    assert _names(store_url, SampleFilter(until=date(2025, 3, 5)), ids) == ["a", "b", "c", "e"]


@pytest.mark.parametrize("data, field, words", [
    ({"quality_min": 0.8, "quality_max": 0.2}, "quality_min", "above quality_max"),
    ({"quality_min": "high"}, "quality_min", "number from 0 to 1"),
    ({"quality_max": 1.5}, "quality_max", "number from 0 to 1"),
    ({"quality_max": "nan"}, "quality_max", "number from 0 to 1"),
    ({"since": "2025-13-01"}, "since", "not a date"),
    ({"until": "yesterday"}, "until", "not a date"),
    ({"since": "2025-03-05", "until": "2025-03-01"}, "since", "after until"),
    ({"status": "confirmed"}, "status", "not a sample status"),
    ({"ids": ["1", "x"]}, "ids", "whole numbers"),
    ({"colour": "red"}, "colour", "unknown filter field"),
    ({"quality_min": ["0.1", "0.2"]}, "quality_min", "takes one value, got 2"),
    ({"tenant": "t" * 129}, "tenant", "longer than 128 characters"),
])
def test_bad_filter_values_name_the_field(data, field, words):
    with pytest.raises(FilterError, match=words) as err:
        SampleFilter.from_dict(data)
    assert err.value.field == field and str(err.value).startswith(f"{field}:")


def test_filter_round_trips_and_describes_itself():
    flt = SampleFilter.from_dict({"since": "2025-03-01", "quality_max": "0.4",
                                  "category": "refusal,wrong_answer", "ids": "3,4", "tag": ""})
    assert flt.to_dict() == {"ids": [3, 4], "since": "2025-03-01", "quality_max": 0.4,
                             "category": ["refusal", "wrong_answer"]}
    assert SampleFilter.from_dict(flt.to_dict()) == flt
    assert "quality<=0.4" in flt.describe() and "category=refusal,wrong_answer" in flt.describe()
    assert SampleFilter().is_empty() and SampleFilter.from_dict({"tag": [], "intent": None}) \
        .is_empty()
    assert SampleFilter(category="refusal").category == ("refusal",)
    # a parsed query string: every value a list
    assert SampleFilter.from_dict({"quality_min": ["0.5"], "since": ["2025-03-01"],
                                   "intent": ["a", "b"], "until": []}) == \
        SampleFilter(quality_min=0.5, since=date(2025, 3, 1), intent=("a", "b"))


def test_facets_list_the_values_of_the_callers_samples(store_url):
    _seed(store_url)
    with session_scope(store_url) as s:
        acme = sample_facets(s, tenants=["acme"])
        every = sample_facets(s)
    assert acme["intent"] == ["billing", "login"] and acme["tenant"] == ["acme"]
    assert acme["category"] == ["refusal", "wrong_answer"] and acme["tag"] == ["faq", "hard"]
    assert acme["source"] == ["human_agent", "llm:openai", "retrieval"]
    assert every["tenant"] == ["acme", "globex"]
    assert every["status"] == ["pending", "approved", "rejected", "edited"]


def _items(url) -> dict[int, ReviewItem]:
    with session_scope(url) as s:
        return {i.id: i for i in s.scalars(select(ReviewItem))}


def test_bulk_tag_changes_only_what_differs_one_event_each(store_url):
    ids = _seed(store_url)
    before = _items(store_url)
    with session_scope(store_url) as s:
        res = tag_samples(s, "  faq ", add=True, actor="ann",
                          flt=SampleFilter(tenant=("acme",)))
    # a and c had the tag already: untouched
    assert (res.tag, res.action, res.matched, res.changed, res.unchanged) == \
        ("faq", "tag", 4, 2, 2)
    assert sorted(res.changed_ids) == sorted([ids["b"], ids["d"]])
    after = _items(store_url)
    for name in ("b", "d"):
        i = after[ids[name]]
        assert i.tags == ["faq"] and i.version == before[i.id].version + 1
        assert i.status == before[i.id].status  # a tag changes nothing else
    for name in ("a", "c", "e"):
        assert after[ids[name]].version == before[ids[name]].version
        assert after[ids[name]].tags == before[ids[name]].tags
    with session_scope(store_url) as s:
        events = list(s.scalars(select(ReviewEvent).where(ReviewEvent.action == "tag")))
        assert sorted(e.item_id for e in events) == sorted([ids["b"], ids["d"]])
        ev = next(e for e in events if e.item_id == ids["b"])
        assert ev.actor == "ann" and ev.before["tags"] == [] and ev.after["tags"] == ["faq"]
        assert ev.after["version"] == ev.before["version"] + 1 and ev.after["status"] == "approved"
        # the event is what changes_since reports to a stale writer
        assert [e.action for e in repo.changes_since(s, ids["b"], 2)] == ["tag"]

    # remove by ids within a filter: only pending ones of the ids, tenant-scoped
    with session_scope(store_url) as s:
        res = tag_samples(s, "faq", add=False, actor="bob", ids=[ids["a"], ids["b"], ids["e"]],
                          flt=SampleFilter(status=("pending",)), tenants=["acme"])
    assert (res.action, res.matched, res.changed, res.unchanged) == ("untag", 1, 1, 0)
    after2 = _items(store_url)
    assert after2[ids["a"]].tags == [] and after2[ids["e"]].tags == ["faq"]  # globex untouched
    assert after2[ids["b"]].tags == ["faq"]
    with session_scope(store_url) as s:
        untag = s.scalars(select(ReviewEvent).where(ReviewEvent.action == "untag")).one()
        assert (untag.item_id, untag.actor, untag.after["tags"]) == (ids["a"], "bob", [])
    # a tag change keeps optimistic locking working: the old version now conflicts
    with session_scope(store_url) as s, pytest.raises(repo.Conflict):
        repo.decide(s, ids["a"], decision="approve", expected_version=1, actor="cy")


def test_filtering_and_tagging_never_delete_anything(store_url):
    ids = _seed(store_url)
    with session_scope(store_url) as s:
        n_items = s.scalar(select(func.count()).select_from(ReviewItem))
        n_events = s.scalar(select(func.count()).select_from(ReviewEvent))
    with session_scope(store_url) as s:
        list_samples(s, SampleFilter(quality_min=0.9))
        sample_stats(s, SampleFilter(tag=("faq",)))
        res = tag_samples(s, "faq", add=False, actor="ann", flt=SampleFilter())
        assert res.changed == 3
        assert tag_samples(s, "nothing-has-it", add=False, actor="ann").changed == 0
        assert tag_samples(s, "x", add=True, actor="ann", ids=[]).matched == 0
    with session_scope(store_url) as s:
        assert s.scalar(select(func.count()).select_from(ReviewItem)) == n_items
        assert s.scalar(select(func.count()).select_from(ReviewEvent)) == n_events + 3
        assert {i.id for i in s.scalars(select(ReviewItem).where(ReviewItem.kind == "sample"))} \
            == set(ids.values())


@pytest.mark.parametrize("tag, words", [("", "is empty"), ("   ", "is empty"),
                                        ("x" * 65, "65 characters long; the limit is 64")])
def test_bad_tags_are_refused_by_name(store_url, tag, words):
    _seed(store_url)
    with session_scope(store_url) as s, pytest.raises(TagError, match=words):
        tag_samples(s, tag, add=True, actor="ann")
    assert len("x" * 64) == 64
    with session_scope(store_url) as s:
        assert tag_samples(s, "x" * 64, add=True, actor="ann").changed == 5


def test_a_concurrent_edit_between_read_and_write_is_kept(store_url):
    """Another reviewer tags and decides an item after the bulk change read it and before its
    UPDATE: the compare-and-set misses, the item is read again, and the bulk tag is applied on
    top of the other reviewer's change (nothing of it lost, one event each)."""
    ids = _seed(store_url)
    target = ids["d"]
    engine = engine_for(store_url)
    fired = []

    def concurrent_edit(conn, cursor, statement, params, context, executemany):
        if fired or not statement.lstrip().upper().startswith("UPDATE REVIEW_ITEMS"):
            return
        fired.append(statement)
        with session_scope(store_url) as other:  # its own connection, committed at once
            item = other.get(ReviewItem, target)
            repo.set_tags(other, target, add=["urgent"], expected_version=item.version,
                          actor="zed")

    event.listen(engine, "before_cursor_execute", concurrent_edit)
    try:
        with session_scope(store_url) as s:
            res = tag_samples(s, "reviewed", add=True, actor="ann", ids=[target])
    finally:
        event.remove(engine, "before_cursor_execute", concurrent_edit)
    assert fired and (res.matched, res.changed) == (1, 1)
    with session_scope(store_url) as s:
        item = s.get(ReviewItem, target)
        assert item.tags == ["urgent", "reviewed"]
        assert item.version == 4  # created 1, rejected 2, zed's tag 3, the bulk tag 4
        events = list(s.scalars(select(ReviewEvent).where(ReviewEvent.item_id == target)
                                .order_by(ReviewEvent.id)))
        assert [(e.actor, e.action) for e in events][-2:] == [("zed", "tag"), ("ann", "tag")]
        assert events[-1].before["tags"] == ["urgent"] and events[-1].before["version"] == 3


def test_a_concurrent_change_that_unmatches_an_item_skips_it(store_url):
    ids = _seed(store_url)
    target = ids["a"]
    engine = engine_for(store_url)
    fired = []

    def concurrent_decision(conn, cursor, statement, params, context, executemany):
        if fired or not statement.lstrip().upper().startswith("UPDATE REVIEW_ITEMS"):
            return
        fired.append(1)
        with session_scope(store_url) as other:
            repo.decide(other, target, decision="reject", expected_version=1, actor="zed")

    event.listen(engine, "before_cursor_execute", concurrent_decision)
    try:
        with session_scope(store_url) as s:
            res = tag_samples(s, "later", add=True, actor="ann",
                              flt=SampleFilter(status=("pending",), tenant=("acme",)))
    finally:
        event.remove(engine, "before_cursor_execute", concurrent_decision)
    assert (res.matched, res.changed, res.unchanged, res.skipped) == (1, 0, 0, 1)
    with session_scope(store_url) as s:
        item = s.get(ReviewItem, target)
        assert (item.status, item.tags, item.version) == ("rejected", ["faq"], 2)


def test_bulk_and_single_item_edits_race_without_losing_a_change(store_url):
    """Threads: a bulk tag over every sample while reviewers tag single items with the version
    they read. Whatever the interleaving, every single edit either lands (its tag is there) or
    fails loudly with a conflict; the bulk tag is on every item; versions count the events."""
    ids = _seed(store_url)
    barrier = threading.Barrier(3)
    outcomes: dict[str, str] = {}

    def single(name: str) -> None:
        with session_scope(store_url) as s:
            version = s.get(ReviewItem, ids[name]).version
        barrier.wait()
        try:
            with session_scope(store_url) as s:
                repo.set_tags(s, ids[name], add=[f"mine-{name}"], expected_version=version,
                              actor=f"rev-{name}")
            outcomes[name] = "ok"
        except repo.Conflict:
            outcomes[name] = "conflict"

    def bulk() -> None:
        barrier.wait()
        with session_scope(store_url) as s:
            outcomes["bulk"] = str(tag_samples(s, "bulk", add=True, actor="ann").changed)

    threads = [threading.Thread(target=single, args=(n,)) for n in ("b", "d")]
    threads.append(threading.Thread(target=bulk))
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert outcomes["bulk"] == "5"
    items = _items(store_url)
    for name in ("b", "d"):
        item = items[ids[name]]
        assert "bulk" in item.tags
        assert (f"mine-{name}" in item.tags) == (outcomes[name] == "ok")
    with session_scope(store_url) as s:
        for item in items.values():
            n_events = s.scalar(select(func.count()).select_from(ReviewEvent)
                                .where(ReviewEvent.item_id == item.id))
            assert item.version == n_events  # created = version 1, then one per change


def test_stats_group_in_sql(store_url):
    _seed(store_url)
    with session_scope(store_url) as s:
        st = sample_stats(s, SampleFilter())
        acme = sample_stats(s, SampleFilter(), tenants=["acme"])
        billing = sample_stats(s, SampleFilter(intent=("billing",)))
        none = sample_stats(s, SampleFilter(tag=("no-such-tag",)))
    assert st["total"] == 5
    assert st["by_status"] == {"pending": 2, "approved": 1, "rejected": 1, "edited": 1}
    assert st["decided"] == 3 and st["approval_rate"] == pytest.approx(2 / 3)
    assert st["by_source"] == {"retrieval": 3, "human_agent": 1, "llm:openai": 1}
    assert st["by_category"] == {"refusal": 2, "wrong_answer": 2, "unknown": 1}
    assert st["by_intent"] == {"billing": 2, "login": 2, "unknown": 1}
    assert st["by_tenant"] == {"acme": 4, "globex": 1}
    assert st["by_tag"] == {"faq": 3, "hard": 1}
    q = st["quality"]
    assert [b["count"] for b in q["histogram"]] == [1, 0, 0, 1, 0, 0, 0, 1, 0, 1]
    assert q["histogram"][0]["bin"] == "0.0-0.1" and q["histogram"][9]["bin"] == "0.9-1.0"
    assert (q["unknown"], q["known"]) == (1, 4)
    assert q["mean"] == pytest.approx((0.05 + 0.35 + 0.72 + 1.0) / 4)
    assert (q["min"], q["max"]) == (0.05, 1.0)
    # numpy's linear quartiles of [0.05, 0.35, 0.72, 1.0]
    assert q["q1"] == pytest.approx(0.275) and q["median"] == pytest.approx(0.535)
    assert q["q3"] == pytest.approx(0.79)
    assert acme["total"] == 4 and "globex" not in acme["by_tenant"]
    assert billing["total"] == 2 and billing["approval_rate"] == 1.0
    assert billing["filter"] == {"intent": ["billing"]}
    assert none["total"] == 0 and none["approval_rate"] is None
    assert none["quality"]["mean"] is None and none["quality"]["median"] is None
    assert none["by_status"] == {"pending": 0, "approved": 0, "rejected": 0, "edited": 0}


def test_fill_sample_facts_sets_only_missing_values_without_a_version(store_url):
    with session_scope(store_url) as s:
        for n, kw in enumerate([{}, {"intent": "kept"}, {"quality": 0.9, "intent": "x",
                                                       "interaction_at": T0}]):
            repo.create_item(s, kind="sample", dedup_key=f"k{n}", tenant_id="acme",
                             interaction_id=f"i{n}", proposed_response="p", source="retrieval",
                             **kw)
        repo.create_item(s, kind="sample", dedup_key="other", tenant_id="globex",
                         interaction_id="i0", proposed_response="p", source="retrieval")
    with session_scope(store_url) as s:
        assert samples_missing_facts(s) == [("acme", "i0"), ("globex", "i0")]
        n_events = s.scalar(select(func.count()).select_from(ReviewEvent))
        facts = {("acme", "i0"): {"quality": 0.4, "intent": "billing",
                                  "interaction_at": datetime(2025, 3, 1, 8)},  # naive = UTC
                 ("acme", "i1"): {"quality": 0.6, "intent": "replaced?", "interaction_at": None},
                 ("acme", "i2"): {"quality": 0.1, "intent": "y", "interaction_at": T0},
                 ("acme", "missing"): {"quality": 0.5}}
        assert fill_sample_facts(s, facts) == 2  # i2 has every fact already
    with session_scope(store_url) as s:
        got = {(i.tenant_id, i.interaction_id): i for i in s.scalars(select(ReviewItem))}
        i0, i1, i2 = got[("acme", "i0")], got[("acme", "i1")], got[("acme", "i2")]
        assert (i0.quality, i0.intent) == (0.4, "billing")
        assert i0.interaction_at.replace(tzinfo=UTC) == datetime(2025, 3, 1, 8, tzinfo=UTC)
        assert (i1.quality, i1.intent, i1.interaction_at) == (0.6, "kept", None)
        assert (i2.quality, i2.intent) == (0.9, "x")
        assert got[("globex", "i0")].quality is None  # same id, other tenant
        assert {i.version for i in got.values()} == {1}
        assert s.scalar(select(func.count()).select_from(ReviewEvent)) == n_events
        assert samples_missing_facts(s) == [("globex", "i0")]


def test_with_facts_keeps_what_the_spec_says():
    spec = {"tenant_id": "acme", "interaction_id": "i1", "intent": "from-spec", "quality": None}
    facts = {("acme", "i1"): {"quality": 0.3, "intent": "warehouse",
                              "interaction_at": datetime(2025, 1, 1)}}
    out = with_facts(spec, facts)
    assert out["intent"] == "from-spec" and out["quality"] == 0.3
    assert out["interaction_at"] == datetime(2025, 1, 1, tzinfo=UTC)
    assert with_facts(spec, {}) == spec
