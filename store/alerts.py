"""Alerts in the operational store: recorded once per de-duplication key, throttled, acknowledged
and resolved; and the store figures the health checks read.

De-duplication (:func:`record_alert`): an alert that is not ``resolved`` (``open`` or
``acknowledged``) absorbs every repeat of its ``dedupe_key``: ``occurrences`` + 1,
``last_seen_at``, the new message and details. Only a resolved alert lets a repeat start a new
row. Notification (the bool :func:`record_alert` returns):

* a new alert: notify now;
* a repeat of an ``open`` alert: notify again only when its last notification (``notified_at``)
  is ``throttle_s`` or more ago;
* a repeat of an ``acknowledged`` alert: never (someone is on it; repeats only count), unless
* the repeat is more severe than the alert was (warning -> critical): the alert takes the new
  severity and is notified now, throttle and acknowledgement notwithstanding.

Deciding to notify claims the slot: ``notified_at`` is set in the same transaction, so a second
writer that raises the same key a moment later counts a repeat and stays quiet.
:func:`mark_notified` then records which channels delivered and which failed.

Concurrency: two writers raising the same key at once never create two unresolved alerts.
PostgreSQL: a transaction-scoped advisory lock on the key (``pg_advisory_xact_lock``) serializes
them; the second reads the first's row after the first commits (READ COMMITTED). SQLite: a write
that changes nothing takes the database's single write lock before the read (the driver opens a
transaction only at the first write; other writers wait on the busy timeout). No unique index
is needed.

``details`` keys ``delivery`` (the last notification: when, which channels delivered, which
failed and why) and ``resolution`` (who resolved it, when, why) are kept by the store; a caller's
details may not use them.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import false, func, select, text, update
from sqlalchemy.orm import Session

from store.models import ALERT_KINDS, Alert, AuditAttempt, ReviewEvent, ReviewItem, TrainingRun
from store.repo import InvalidTransition, NotFound

ALERT_SEVERITIES = ("info", "warning", "critical")  # == ml.alerts.SEVERITIES
ALERT_STATUSES = ("open", "acknowledged", "resolved")
RESERVED_DETAILS = ("delivery", "resolution")
_RANK = {s: i for i, s in enumerate(ALERT_SEVERITIES)}


def _now() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; every stored time is UTC."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _iso(value: datetime | None) -> str | None:
    value = as_utc(value)
    return value.isoformat() if value is not None else None


def _lock_key(session: Session, dedupe_key: str) -> None:
    """Serialize the writers of one ``dedupe_key`` until the end of the transaction."""
    if session.get_bind().dialect.name == "sqlite":
        session.execute(update(Alert).where(false()).values(id=Alert.id))
        return
    digest = hashlib.sha256(f"learnloop.alerts:{dedupe_key}".encode()).digest()
    session.execute(text("SELECT pg_advisory_xact_lock(:k)"),
                    {"k": int.from_bytes(digest[:8], "big", signed=True)})


def _unresolved(session: Session, dedupe_key: str) -> Alert | None:
    return session.scalar(select(Alert).where(Alert.dedupe_key == dedupe_key,
                                              Alert.status != "resolved")
                          .order_by(Alert.id.desc()).limit(1).with_for_update())


def record_alert(session: Session, *, kind: str, severity: str, message: str,
                 details: dict[str, Any] | None, dedupe_key: str, source: str,
                 throttle_s: float, now: datetime | None = None) -> tuple[Alert, bool]:
    """Record one occurrence (see the module doc); returns the alert and whether its channels
    should be notified now. ValueError on an unknown kind or severity, an empty key, a negative
    throttle or a reserved details key."""
    if kind not in ALERT_KINDS:
        raise ValueError(f"alert kind {kind!r} is not one of {list(ALERT_KINDS)}")
    if severity not in ALERT_SEVERITIES:
        raise ValueError(f"alert severity {severity!r} is not one of {list(ALERT_SEVERITIES)}")
    if not dedupe_key or len(dedupe_key) > 300:
        raise ValueError(f"alert dedupe_key must be 1 to 300 characters, got {len(dedupe_key)}")
    if len(source) > 128:
        raise ValueError(f"alert source must be at most 128 characters, got {len(source)}")
    if throttle_s < 0:
        raise ValueError(f"throttle_s must be >= 0, got {throttle_s}")
    details = dict(details or {})
    clash = sorted(set(details) & set(RESERVED_DETAILS))
    if clash:
        raise ValueError(f"alert details may not use the store's keys {clash}")
    now = as_utc(now) or _now()
    _lock_key(session, dedupe_key)
    alert = _unresolved(session, dedupe_key)
    if alert is None:
        alert = Alert(kind=kind, severity=severity, message=message, details=details,
                      dedupe_key=dedupe_key, source=source, status="open", occurrences=1,
                      created_at=now, last_seen_at=now, notified=[], notified_at=now,
                      acknowledged=False)
        session.add(alert)
        session.flush()
        return alert, True
    escalated = _RANK[severity] > _RANK.get(alert.severity, 0)
    kept = {k: v for k, v in (alert.details or {}).items() if k in RESERVED_DETAILS}
    alert.occurrences = (alert.occurrences or 1) + 1
    alert.last_seen_at = now
    alert.message = message
    alert.details = {**details, **kept}
    if escalated:
        alert.severity = severity
    last = as_utc(alert.notified_at)
    due = last is None or (now - last).total_seconds() >= throttle_s
    notify = escalated or (alert.status == "open" and due)
    if notify:
        alert.notified_at = now
    session.flush()
    return alert, notify


def get_alert(session: Session, alert_id: int) -> Alert:
    alert = session.get(Alert, alert_id)
    if alert is None:
        raise NotFound(f"alert #{alert_id} does not exist")
    return alert


def mark_notified(session: Session, alert_id: int, channels: list[str], at: datetime,
                  failed: dict[str, str] | None = None) -> Alert:
    """Record a notification: ``notified`` = the channels that delivered it, ``notified_at`` =
    ``at``, and ``details.delivery`` = {at, delivered, failed: channel -> error}."""
    alert = get_alert(session, alert_id)
    at = as_utc(at)
    alert.notified = list(channels)
    alert.notified_at = at
    alert.details = {**(alert.details or {}),
                     "delivery": {"at": _iso(at), "delivered": list(channels),
                                  "failed": dict(failed or {})}}
    session.flush()
    return alert


def acknowledge(session: Session, alert_id: int, who: str, at: datetime | None = None) -> Alert:
    """``open`` -> ``acknowledged`` by ``who`` (an acknowledged alert is left as it is: the first
    acknowledgement stands). InvalidTransition for a resolved alert."""
    if not who:
        raise ValueError("acknowledge: who is required")
    alert = session.scalar(select(Alert).where(Alert.id == alert_id).with_for_update())
    if alert is None:
        raise NotFound(f"alert #{alert_id} does not exist")
    if alert.status == "resolved":
        raise InvalidTransition(f"alert #{alert_id} is resolved; nothing to acknowledge")
    if alert.status == "open":
        alert.status = "acknowledged"
        alert.acknowledged = True
        alert.acknowledged_by = who[:128]
        alert.acknowledged_at = as_utc(at) or _now()
        session.flush()
    return alert


def resolve(session: Session, alert_id: int, who: str, reason: str | None = None,
            at: datetime | None = None) -> Alert:
    """``open``/``acknowledged`` -> ``resolved`` (who, when and why go to
    ``details.resolution``); the next occurrence of its key starts a new alert. Resolving a
    resolved alert changes nothing."""
    if not who:
        raise ValueError("resolve: who is required")
    alert = session.scalar(select(Alert).where(Alert.id == alert_id).with_for_update())
    if alert is None:
        raise NotFound(f"alert #{alert_id} does not exist")
    if alert.status != "resolved":
        alert.status = "resolved"
        alert.details = {**(alert.details or {}),
                         "resolution": {"by": who, "at": _iso(as_utc(at) or _now()),
                                        "reason": reason}}
        session.flush()
    return alert


def resolve_key(session: Session, dedupe_key: str, who: str, reason: str | None = None,
                at: datetime | None = None) -> list[Alert]:
    """Resolve every unresolved alert of ``dedupe_key`` (a health check that passes again)."""
    _lock_key(session, dedupe_key)
    rows = list(session.scalars(select(Alert).where(Alert.dedupe_key == dedupe_key,
                                                    Alert.status != "resolved")))
    return [resolve(session, a.id, who, reason, at) for a in rows]


def list_alerts(session: Session, statuses: tuple[str, ...] = ("open",),
                limit: int = 50) -> list[Alert]:
    """Alerts in ``statuses``, the most recently seen first."""
    bad = [s for s in statuses if s not in ALERT_STATUSES]
    if bad:
        raise ValueError(f"alert statuses {bad} are not among {list(ALERT_STATUSES)}")
    seen = func.coalesce(Alert.last_seen_at, Alert.created_at)
    return list(session.scalars(select(Alert).where(Alert.status.in_(statuses))
                                .order_by(seen.desc(), Alert.id.desc()).limit(limit)))


def open_alerts(session: Session, limit: int = 50) -> list[Alert]:
    """The ``open`` alerts (not acknowledged, not resolved), the most recently seen first."""
    return list_alerts(session, ("open",), limit)


def alert_dict(alert: Alert) -> dict[str, Any]:
    return {"id": alert.id, "kind": alert.kind, "severity": alert.severity,
            "message": alert.message, "details": dict(alert.details or {}),
            "dedupe_key": alert.dedupe_key, "source": alert.source, "status": alert.status,
            "occurrences": alert.occurrences, "created_at": _iso(alert.created_at),
            "last_seen_at": _iso(alert.last_seen_at), "notified": list(alert.notified or []),
            "notified_at": _iso(alert.notified_at), "acknowledged_by": alert.acknowledged_by,
            "acknowledged_at": _iso(alert.acknowledged_at)}


# ---- figures of the health checks ---------------------------------------------------------------
def provider_error_rate(session: Session, since: datetime,
                        auditor_prefix: str = "llm:") -> dict[str, Any]:
    """The LLM auditors' attempts touched since ``since``: ``attempts``, ``failed``, ``rate``
    (None when there is none) and ``by_auditor`` {auditor: {attempts, failed}}.

    ``audit_attempts`` keeps one row per (tenant, interaction, auditor, prompt version) with its
    latest outcome, so an interaction that failed and then succeeded counts as one ``ok``
    attempt: the rate is the share of interactions whose latest attempt in the window failed.
    LLM auditors are named ``llm:<provider>/<model>,...`` (``ml.audit.llm.LLMAuditor.name``);
    the rules auditor (``rules``) makes no provider calls and is left out."""
    rows = session.execute(
        select(AuditAttempt.auditor, AuditAttempt.status, func.count())
        .where(AuditAttempt.updated_at >= as_utc(since),
               AuditAttempt.auditor.startswith(auditor_prefix, autoescape=True))
        .group_by(AuditAttempt.auditor, AuditAttempt.status)).all()
    by: dict[str, dict[str, int]] = {}
    for auditor, status, n in rows:
        b = by.setdefault(auditor, {"attempts": 0, "failed": 0})
        b["attempts"] += int(n)
        if status == "failed":
            b["failed"] += int(n)
    attempts = sum(b["attempts"] for b in by.values())
    failed = sum(b["failed"] for b in by.values())
    return {"since": _iso(since), "attempts": attempts, "failed": failed,
            "rate": failed / attempts if attempts else None, "by_auditor": by}


def month_bounds(now: datetime) -> tuple[datetime, datetime]:
    """[first instant of ``now``'s calendar month, first instant of the next) in UTC."""
    now = as_utc(now)
    start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = (start + timedelta(days=32)).replace(day=1)
    return start, end


def month_cost(session: Session, now: datetime) -> dict[str, Any]:
    """Training cost of ``now``'s calendar month (UTC): the sum of ``training_runs.cost_usd`` of
    the runs started in it (runs without a cost count 0), with the number of runs."""
    start, end = month_bounds(now)
    total, runs, priced = session.execute(
        select(func.coalesce(func.sum(TrainingRun.cost_usd), 0.0), func.count(),
               func.count(TrainingRun.cost_usd))
        .where(TrainingRun.started_at >= start, TrainingRun.started_at < end)).one()
    return {"month": start.strftime("%Y-%m"), "cost_usd": float(total or 0.0),
            "runs": int(runs), "priced_runs": int(priced)}


def review_queue_age(session: Session, now: datetime) -> dict[str, Any]:
    """The review queue at ``now``: ``pending`` items, the ``oldest_created_at`` pending item and
    its age in hours (``oldest_age_h``), and the ``last_decision_at`` (latest review decision of
    any item) with its age in hours (``decision_age_h``); ages are None when there is nothing."""
    now = as_utc(now)
    pending, oldest = session.execute(
        select(func.count(), func.min(ReviewItem.created_at))
        .where(ReviewItem.status == "pending")).one()
    last = session.scalar(select(func.max(ReviewEvent.at)).where(ReviewEvent.action == "decide"))
    oldest, last = as_utc(oldest), as_utc(last)

    def hours(t: datetime | None) -> float | None:
        return None if t is None else max(0.0, (now - t).total_seconds() / 3600)

    return {"pending": int(pending), "oldest_created_at": _iso(oldest),
            "oldest_age_h": hours(oldest) if pending else None,
            "last_decision_at": _iso(last), "decision_age_h": hours(last)}


__all__ = ["ALERT_SEVERITIES", "ALERT_STATUSES", "acknowledge", "alert_dict", "as_utc",
           "get_alert", "list_alerts", "mark_notified", "month_bounds", "month_cost",
           "open_alerts", "provider_error_rate", "record_alert", "resolve", "resolve_key",
           "review_queue_age"]
