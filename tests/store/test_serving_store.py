"""store.serving: served turns waiting for feedback, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest

from store import serving as sv
from store.db import session_scope
from store.repo import NotFound


def record(iid: str, session_id: str = "s1", tenant: str = "acme", **extra) -> dict:
    return {"interaction_id": iid, "tenant_id": tenant, "session_id": session_id,
            "turn_index": None, "timestamp": "2026-01-05T10:00:00.000+00:00",
            "messages": [{"role": "user", "content": f"question {iid}"}], "response": "answer",
            "metadata": {"tags": ["served"]}, **extra}


def add(url: str, iid: str, session_id: str = "s1", tenant: str = "acme", **kw):
    with session_scope(url) as s:
        row = sv.add_turn(s, record=record(iid, session_id, tenant), subject="u1",
                          model_version="1", experiment_id=kw.get("experiment_id"),
                          arm=kw.get("arm"))
        return sv.turn_dict(row)


def turn(url: str, iid: str, tenant: str = "acme") -> dict:
    with session_scope(url) as s:
        return sv.turn_dict(sv.get_turn(s, iid, tenant))


def test_next_turn_marks_earlier_ones_continued_and_counts_turns(store_url):
    first = add(store_url, "t1")
    assert first["record"]["turn_index"] == 0 and "signals" not in first["record"]
    second = add(store_url, "t2", arm="treatment", experiment_id=None)
    other_tenant = add(store_url, "g1", tenant="globex")  # the same session id, another tenant
    assert second["record"]["turn_index"] == 1 and other_tenant["record"]["turn_index"] == 0
    assert turn(store_url, "t1")["record"]["signals"] == {"user_continued": True}
    assert "signals" not in turn(store_url, "t2")["record"]
    assert not turn(store_url, "t1")["written"]  # continued turns still take feedback
    # the record keeps its key order (the landing file's bytes must be the same on a re-flush)
    assert list(turn(store_url, "t1")["record"])[:5] == ["interaction_id", "tenant_id",
                                                         "session_id", "turn_index", "timestamp"]
    with session_scope(store_url) as s:
        assert sv.count_turns(s, "acme", "s1") == 2
        with pytest.raises(ValueError, match="already exists"):
            sv.add_turn(s, record=record("t1"), subject="u1", model_version="1",
                        experiment_id=None, arm=None)
        with pytest.raises(ValueError, match="arm"):
            sv.add_turn(s, record=record("t9"), subject="u1", model_version="1",
                        experiment_id=None, arm="left")


def test_feedback_merges_field_by_field_and_is_tenant_scoped(store_url):
    add(store_url, "t1")
    with session_scope(store_url) as s:
        sv.add_feedback(s, "t1", feedback={"thumbs": "down"}, tenant_id="acme")
    seen: list[dict] = []
    with session_scope(store_url) as s:
        row = sv.add_feedback(s, "t1", feedback={"rating": 2, "thumbs": None},
                              signals={"requested_human": True},
                              human_correction={"agent_id": "a7", "corrected_response": "Fixed"},
                              tenant_id="acme", validate=seen.append)
        assert row.record["feedback"] == {"thumbs": "down", "rating": 2}
    assert seen and seen[0]["signals"] == {"requested_human": True}
    rec = turn(store_url, "t1")["record"]
    assert rec["feedback"] == {"thumbs": "down", "rating": 2}
    assert rec["human_correction"] == {"agent_id": "a7", "corrected_response": "Fixed"}

    def refuse(_record):
        raise ValueError("feedback.rating: must be at most 5")

    with pytest.raises(ValueError, match="rating"), session_scope(store_url) as s:
        sv.add_feedback(s, "t1", feedback={"rating": 9}, tenant_id="acme", validate=refuse)
    assert turn(store_url, "t1")["record"]["feedback"]["rating"] == 2  # nothing kept
    for iid, tenant in (("nope", "acme"), ("t1", "globex")):
        with pytest.raises(NotFound), session_scope(store_url) as s:
            sv.add_feedback(s, iid, feedback={"thumbs": "up"}, tenant_id=tenant)


def test_written_turns_are_immutable(store_url):
    add(store_url, "t1")
    with session_scope(store_url) as s:
        rows = sv.pending_to_flush(s, older_than=None)
        assert [r.interaction_id for r in rows] == ["t1"]
        assert sv.mark_flushed(s, ["t1"], "date=2026-01-05/served-acme-1.jsonl") == 1
        assert rows[0].flushed_at is not None  # the loaded row sees it too
    with session_scope(store_url) as s:
        assert sv.mark_flushed(s, ["t1"], "date=2026-01-05/other.jsonl") == 0
    t = turn(store_url, "t1")
    assert t["written"] and t["landing_file"] == "date=2026-01-05/served-acme-1.jsonl"
    with pytest.raises(sv.AlreadyWritten, match="already written.*served-acme-1"), \
            session_scope(store_url) as s:
        sv.add_feedback(s, "t1", feedback={"thumbs": "up"}, tenant_id="acme")
    with session_scope(store_url) as s:
        assert sv.pending_to_flush(s, older_than=None) == []
        assert sv.end_session(s, "s1", "acme") == []  # nothing left to write: fine
        with pytest.raises(sv.AlreadyWritten):
            sv.end_session(s, "s1", "acme", signals={"completed_action": True})


def test_end_session_merges_into_the_last_turn(store_url):
    for iid in ("t1", "t2", "t3"):
        add(store_url, iid)
    add(store_url, "x1", session_id="s2")
    with session_scope(store_url) as s:
        pending = sv.end_session(s, "s1", "acme", signals={"completed_action": True},
                                 feedback={"conversation_rating": 4, "comment": "thanks"})
        assert [r.interaction_id for r in pending] == ["t1", "t2", "t3"]
    recs = {i: turn(store_url, i)["record"] for i in ("t1", "t2", "t3", "x1")}
    assert recs["t3"]["signals"] == {"completed_action": True}
    assert recs["t3"]["feedback"] == {"conversation_rating": 4, "comment": "thanks"}
    assert recs["t1"]["feedback"] == {"conversation_rating": 4}
    assert recs["t1"]["signals"] == {"user_continued": True}
    assert "feedback" not in recs["x1"]
    with pytest.raises(NotFound), session_scope(store_url) as s:
        sv.end_session(s, "s1", "globex")


def test_pending_to_flush_selects_by_age_session_and_limit(store_url):
    for iid in ("t1", "t2"):
        add(store_url, iid)
    add(store_url, "x1", session_id="s2")
    later = datetime.now(UTC) + timedelta(seconds=5)
    with session_scope(store_url) as s:
        assert sv.pending_to_flush(s, older_than=datetime.now(UTC) - timedelta(hours=1)) == []
        assert [r.interaction_id for r in sv.pending_to_flush(s, older_than=later)] == [
            "t1", "t2", "x1"]
        assert [r.interaction_id for r in sv.pending_to_flush(
            s, older_than=None, session_id="s2", tenant_id="acme")] == ["x1"]
        assert len(sv.pending_to_flush(s, older_than=None, limit=2)) == 2
        assert sv.pending_count(s) == 3 and sv.pending_count(s, "globex") == 0
        with pytest.raises(ValueError, match="tenant_id"):
            sv.pending_to_flush(s, older_than=None, session_id="s2")


def test_feedback_waits_for_a_flush_in_progress_and_then_gets_already_written(store_url):
    """A flush holds its turns from select to commit: feedback arriving meanwhile cannot change
    a record whose bytes are being written (a re-flush after a crash must write the same)."""
    add(store_url, "t1")
    locked, release = threading.Event(), threading.Event()
    outcome: dict[str, object] = {}

    def flush():
        with session_scope(store_url) as s:
            rows = sv.pending_to_flush(s, older_than=None)
            locked.set()
            release.wait(30)
            sv.mark_flushed(s, [r.interaction_id for r in rows], "date=2026-01-05/f.jsonl")

    def feedback():
        try:
            with session_scope(store_url) as s:
                sv.add_feedback(s, "t1", feedback={"thumbs": "up"}, tenant_id="acme")
            outcome["result"] = "merged"
        except sv.AlreadyWritten as exc:
            outcome["result"] = exc

    a = threading.Thread(target=flush)
    a.start()
    assert locked.wait(30)
    b = threading.Thread(target=feedback)
    b.start()
    b.join(timeout=1.0)  # it must be waiting for the flush: it cannot finish before it
    finished_early = not b.is_alive()
    release.set()
    a.join(timeout=30)
    b.join(timeout=30)
    assert not finished_early, f"feedback did not wait for the flush: {outcome}"
    assert isinstance(outcome["result"], sv.AlreadyWritten)
    assert "thumbs" not in str(turn(store_url, "t1")["record"])
