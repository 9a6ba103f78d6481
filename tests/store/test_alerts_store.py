"""Alerts in the operational store (store/alerts.py) on SQLite and PostgreSQL: de-duplication,
throttling with an explicit clock, acknowledgement, resolution, concurrent writers; and the
figures of the health checks."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from ml.alerts import ALERT_KINDS as ML_KINDS
from ml.alerts import SEVERITIES
from store.alerts import (
    ALERT_SEVERITIES,
    acknowledge,
    alert_dict,
    get_alert,
    list_alerts,
    mark_notified,
    month_cost,
    open_alerts,
    provider_error_rate,
    record_alert,
    resolve,
    resolve_key,
    review_queue_age,
)
from store.db import session_scope
from store.models import ALERT_KINDS, Alert, AuditAttempt, ReviewEvent, ReviewItem, TrainingRun
from store.repo import InvalidTransition, NotFound

T0 = datetime(2026, 5, 10, 12, 0, tzinfo=UTC)


def _raise(s, key="quality_degradation:sensor", *, now=T0, severity="warning", throttle_s=3600,
           message="quality dropped", details=None, kind="quality_degradation"):
    return record_alert(s, kind=kind, severity=severity, message=message,
                        details=details if details is not None else {"score": 0.5},
                        dedupe_key=key, source="sensor", throttle_s=throttle_s, now=now)


def test_kinds_and_severities_match_the_ml_layer():
    assert ALERT_KINDS == ML_KINDS
    assert ALERT_SEVERITIES == SEVERITIES


def test_a_repeat_counts_and_is_throttled_until_the_window_passes(store_url):
    with session_scope(store_url) as s:
        a, notify = _raise(s)
        aid = a.id
        assert notify and a.occurrences == 1 and a.status == "open"
    with session_scope(store_url) as s:  # 10 minutes later: counted, not sent
        a, notify = _raise(s, now=T0 + timedelta(minutes=10), message="quality dropped more",
                           details={"score": 0.4})
        assert (a.id, notify, a.occurrences) == (aid, False, 2)
        assert a.message == "quality dropped more" and a.details == {"score": 0.4}
    with session_scope(store_url) as s:  # 59 min 59 s after the notification: still quiet
        _, notify = _raise(s, now=T0 + timedelta(seconds=3599))
        assert not notify
    with session_scope(store_url) as s:  # one hour after it: sent again
        a, notify = _raise(s, now=T0 + timedelta(hours=1))
        assert notify and a.occurrences == 4
    with session_scope(store_url) as s:  # the window restarts at the new notification
        _, notify = _raise(s, now=T0 + timedelta(hours=1, minutes=30))
        assert not notify
        d = alert_dict(get_alert(s, aid))
        assert d["last_seen_at"] == (T0 + timedelta(hours=1, minutes=30)).isoformat()
        assert d["notified_at"] == (T0 + timedelta(hours=1)).isoformat()
        assert d["created_at"] == T0.isoformat()
        assert s.scalar(select(func.count()).select_from(Alert)) == 1


def test_throttle_zero_notifies_every_time_and_other_keys_are_separate(store_url):
    with session_scope(store_url) as s:
        assert _raise(s, throttle_s=0)[1]
        assert _raise(s, throttle_s=0)[1]
        b, notify = _raise(s, key="other", kind="rollback")
        assert notify and b.occurrences == 1
        assert [a.dedupe_key for a in open_alerts(s)] == ["other", "quality_degradation:sensor"]


def test_an_acknowledged_alert_only_counts_until_it_escalates(store_url):
    with session_scope(store_url) as s:
        aid = _raise(s)[0].id
    with session_scope(store_url) as s:
        a = acknowledge(s, aid, "ann", at=T0 + timedelta(minutes=1))
        assert (a.status, a.acknowledged, a.acknowledged_by) == ("acknowledged", True, "ann")
        assert acknowledge(s, aid, "bob").acknowledged_by == "ann"  # the first one stands
    with session_scope(store_url) as s:  # a day later: still acknowledged, so not sent
        a, notify = _raise(s, now=T0 + timedelta(days=1))
        assert not notify and a.occurrences == 2 and a.status == "acknowledged"
        assert open_alerts(s) == []
        assert [x.id for x in list_alerts(s, ("open", "acknowledged"))] == [aid]
    with session_scope(store_url) as s:  # warning -> critical: sent now, whatever the state
        a, notify = _raise(s, now=T0 + timedelta(days=1, minutes=1), severity="critical")
        assert notify and a.severity == "critical" and a.id == aid
    with session_scope(store_url) as s:  # a lower severity later does not lower it
        a, notify = _raise(s, now=T0 + timedelta(days=1, minutes=2), severity="info")
        assert not notify and a.severity == "critical"


def test_a_resolved_alert_lets_the_next_occurrence_start_a_new_one(store_url):
    with session_scope(store_url) as s:
        first = _raise(s)[0].id
    with session_scope(store_url) as s:
        r = resolve(s, first, "ops", reason="fixed the prompt", at=T0 + timedelta(hours=2))
        assert r.status == "resolved"
        assert r.details["resolution"] == {"by": "ops", "at": (T0 + timedelta(hours=2)).isoformat(),
                                           "reason": "fixed the prompt"}
        assert resolve(s, first, "someone-else").details["resolution"]["by"] == "ops"
        with pytest.raises(InvalidTransition, match="is resolved"):
            acknowledge(s, first, "ann")
    with session_scope(store_url) as s:
        a, notify = _raise(s, now=T0 + timedelta(hours=2, minutes=1))
        assert notify and a.id != first and a.occurrences == 1
    with session_scope(store_url) as s:
        assert [x.id for x in resolve_key(s, "quality_degradation:sensor", "health")] == [a.id]
        assert resolve_key(s, "quality_degradation:sensor", "health") == []


def test_notification_is_recorded_and_survives_later_repeats(store_url):
    with session_scope(store_url) as s:
        aid = _raise(s)[0].id
    at = T0 + timedelta(seconds=2)
    with session_scope(store_url) as s:
        a = mark_notified(s, aid, ["log", "smtp"], at, failed={"webhook": "HTTP 500"})
        assert a.notified == ["log", "smtp"]
    with session_scope(store_url) as s:
        a, _ = _raise(s, now=T0 + timedelta(minutes=5), details={"score": 0.1})
        d = alert_dict(a)
        assert d["details"]["score"] == 0.1
        assert d["details"]["delivery"] == {"at": at.isoformat(), "delivered": ["log", "smtp"],
                                            "failed": {"webhook": "HTTP 500"}}
        assert d["notified"] == ["log", "smtp"] and d["notified_at"] == at.isoformat()


def test_bad_input_is_refused_by_name(store_url):
    with session_scope(store_url) as s:
        with pytest.raises(ValueError, match="kind 'nope' is not one of"):
            _raise(s, kind="nope")
        with pytest.raises(ValueError, match="severity 'high' is not one of"):
            _raise(s, severity="high")
        with pytest.raises(ValueError, match="store's keys \\['delivery'\\]"):
            _raise(s, details={"delivery": 1})
        with pytest.raises(ValueError, match="dedupe_key must be 1 to 300"):
            _raise(s, key="")
        with pytest.raises(NotFound, match="alert #999"):
            acknowledge(s, 999, "ann")
        with pytest.raises(NotFound, match="alert #999"):
            mark_notified(s, 999, [], T0)
        with pytest.raises(ValueError, match="statuses"):
            list_alerts(s, ("closed",))


def test_a_second_writer_waits_for_the_first_and_counts_a_repeat(store_url):
    """Writer A records the alert and holds its transaction open; writer B raises the same key
    meanwhile. Without the per-key lock B would not see A's uncommitted row and would add a
    second open alert; with it B waits, then counts a repeat and stays quiet (A claimed the
    notification)."""
    a_recorded, b_started = threading.Event(), threading.Event()
    results: dict[str, tuple[int, bool, int]] = {}
    errors: list[BaseException] = []

    def writer_a():
        try:
            with session_scope(store_url) as s:
                a, notify = _raise(s)
                results["a"] = (a.id, notify, a.occurrences)
                a_recorded.set()
                assert b_started.wait(10)
                time.sleep(0.5)  # B is now inside record_alert (blocked, or racing without lock)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)
            a_recorded.set()

    def writer_b():
        try:
            assert a_recorded.wait(10)
            b_started.set()
            with session_scope(store_url) as s:
                b, notify = _raise(s, now=T0 + timedelta(seconds=1))
                results["b"] = (b.id, notify, b.occurrences)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=writer_a), threading.Thread(target=writer_b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert results["a"][1:] == (True, 1)
    assert results["b"] == (results["a"][0], False, 2)
    with session_scope(store_url) as s:
        assert s.scalar(select(func.count()).select_from(Alert)) == 1


def test_many_writers_at_once_make_one_alert_and_one_notification(store_url):
    n = 4
    barrier = threading.Barrier(n)
    notes: list[bool] = []
    errors: list[BaseException] = []

    def writer(i: int):
        try:
            barrier.wait(10)
            with session_scope(store_url) as s:
                notes.append(_raise(s, now=T0 + timedelta(seconds=i))[1])
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert sorted(notes) == [False] * (n - 1) + [True]
    with session_scope(store_url) as s:
        rows = s.scalars(select(Alert)).all()
        assert [(r.status, r.occurrences) for r in rows] == [("open", n)]


# ---- figures of the health checks ------------------------------------------------------------
def _attempt(s, i, auditor, status, at):
    s.add(AuditAttempt(interaction_id=f"i{i}", tenant_id="t", auditor=auditor,
                       prompt_version="v1", status=status, is_error=None, reason=None,
                       attempts=1, updated_at=at))


def test_provider_error_rate_counts_llm_auditors_in_the_window(store_url):
    now = T0
    with session_scope(store_url) as s:
        for i in range(6):
            _attempt(s, i, "llm:openai/gpt", "failed" if i < 2 else "ok", now - timedelta(hours=1))
        _attempt(s, 10, "llm:gemini/flash", "failed", now - timedelta(hours=23))
        _attempt(s, 11, "llm:openai/gpt", "failed", now - timedelta(hours=25))  # too old
        _attempt(s, 12, "rules", "failed", now - timedelta(hours=1))  # no provider
        _attempt(s, 13, "llm_like", "failed", now - timedelta(hours=1))  # not "llm:"
    with session_scope(store_url) as s:
        got = provider_error_rate(s, now - timedelta(hours=24))
    assert (got["attempts"], got["failed"]) == (7, 3)
    assert got["rate"] == pytest.approx(3 / 7)
    assert got["by_auditor"] == {"llm:openai/gpt": {"attempts": 6, "failed": 2},
                                 "llm:gemini/flash": {"attempts": 1, "failed": 1}}
    with session_scope(store_url) as s:
        empty = provider_error_rate(s, now + timedelta(hours=1))
    assert empty["attempts"] == 0 and empty["rate"] is None


def test_month_cost_sums_the_runs_started_this_calendar_month(store_url):
    with session_scope(store_url) as s:
        for started, cost in ((datetime(2026, 5, 1, 0, 0, tzinfo=UTC), 10.0),
                              (datetime(2026, 5, 31, 23, 59, tzinfo=UTC), 2.5),
                              (datetime(2026, 5, 15, tzinfo=UTC), None),
                              (datetime(2026, 4, 30, 23, 59, tzinfo=UTC), 100.0),
                              (datetime(2026, 6, 1, tzinfo=UTC), 100.0)):
            s.add(TrainingRun(method="openai", base_model="b", status="succeeded",
                              started_at=started, cost_usd=cost))
    with session_scope(store_url) as s:
        got = month_cost(s, T0)
        assert got == {"month": "2026-05", "cost_usd": 12.5, "runs": 3, "priced_runs": 2}
        assert month_cost(s, datetime(2026, 12, 24, tzinfo=UTC))["cost_usd"] == 0.0


def test_review_queue_age_reads_the_oldest_pending_item_and_the_last_decision(store_url):
    with session_scope(store_url) as s:
        assert review_queue_age(s, T0) == {"pending": 0, "oldest_created_at": None,
                                           "oldest_age_h": None, "last_decision_at": None,
                                           "decision_age_h": None}
        for n, (status, age_h) in enumerate((("pending", 80), ("pending", 5),
                                             ("approved", 200))):
            item = ReviewItem(kind="sample", status=status, dedup_key=f"k{n}", tenant_id="t",
                              interaction_id=f"i{n}", created_at=T0 - timedelta(hours=age_h))
            s.add(item)
            s.flush()
        s.add(ReviewEvent(item_id=item.id, tenant_id="t", actor="ann", action="decide",
                          at=T0 - timedelta(hours=100)))
        s.add(ReviewEvent(item_id=item.id, tenant_id="t", actor="ann", action="tag",
                          at=T0 - timedelta(hours=1)))  # a tag change is not a decision
    with session_scope(store_url) as s:
        got = review_queue_age(s, T0)
    assert got["pending"] == 2
    assert got["oldest_age_h"] == pytest.approx(80)
    assert got["decision_age_h"] == pytest.approx(100)
    assert got["last_decision_at"] == (T0 - timedelta(hours=100)).isoformat()
