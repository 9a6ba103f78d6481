"""The operational-store side of auditing: attempt rows and the review items of a batch.

``audit_attempts`` holds one row per (tenant, interaction, auditor, prompt version): ``ok`` (never audited
again) or ``failed`` with the reason (retried by the next run). ``attempts`` counts the attempts that
got somewhere: an ``ok`` one and each request-specific failure; a failure during an outage is
recorded without counting, so it never brings the interaction closer to being given up (the
classification is ``ml.audit.failures``; this module only stores its result).

:func:`save_audit_batch` writes one batch's attempt rows and its ``error`` review items in the
caller's transaction, so a crash loses at most the batch being saved.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, tuple_
from sqlalchemy.orm import Session

from store.bulk import insert_items, upsert_attempts
from store.models import AuditAttempt, utcnow
from store.repo import bounded_key

KEY_CHUNK = 500  # (tenant_id, interaction_id) pairs per lookup: 1,000 bound parameters


def attempt_rows(session: Session, auditor: str, prompt_version: str, *,
                 statuses: Sequence[str] | None = None,
                 keys: Sequence[tuple[str, str]] | None = None,
                 updated_since: datetime | None = None,
                 ) -> list[tuple[str, str, str, int, str | None]]:
    """(tenant_id, interaction_id, status, attempts, reason) of this auditor's and prompt
    version's attempts, ordered by tenant and id. ``statuses``: only those (e.g. ``("failed",)``:
    the retries, bounded by the failures, not by the history); ``keys``: only these
    (tenant_id, interaction_id), looked up ``KEY_CHUNK`` at a time; ``updated_since``: only rows
    written at or after it."""
    conds = [AuditAttempt.auditor == auditor, AuditAttempt.prompt_version == prompt_version]
    if statuses is not None:
        conds.append(AuditAttempt.status.in_(list(statuses)))
    if updated_since is not None:
        conds.append(AuditAttempt.updated_at >= updated_since)
    cols = (AuditAttempt.tenant_id, AuditAttempt.interaction_id, AuditAttempt.status,
            AuditAttempt.attempts, AuditAttempt.reason)
    if keys is None:
        rows = session.execute(select(*cols).where(*conds)).all()
    else:
        wanted = sorted(set(keys))
        rows = []
        for start in range(0, len(wanted), KEY_CHUNK):
            part = wanted[start:start + KEY_CHUNK]
            rows += session.execute(select(*cols).where(
                *conds, tuple_(AuditAttempt.tenant_id, AuditAttempt.interaction_id).in_(part))
            ).all()
    return sorted(tuple(r) for r in rows)


def ok_count(session: Session, auditor: str, prompt_version: str) -> int:
    """How many interactions this auditor and prompt version audited successfully."""
    return int(session.scalar(select(func.count()).select_from(AuditAttempt).where(
        AuditAttempt.auditor == auditor, AuditAttempt.prompt_version == prompt_version,
        AuditAttempt.status == "ok")) or 0)


def record_attempt(session: Session, *, interaction_id: str, tenant_id: str, auditor: str,
                   prompt_version: str, status: str, is_error: bool | None,
                   reason: str | None, counted: bool = True) -> AuditAttempt:
    """Insert or update the (tenant, interaction, auditor, prompt version) attempt row.

    ``counted``: a failed attempt that counts toward the retry cap (request-specific); an ``ok``
    attempt always counts."""
    if status not in ("ok", "failed"):
        raise ValueError(f"attempt status must be 'ok' or 'failed', got {status!r}")
    step = 1 if status == "ok" or counted else 0
    row = session.scalar(select(AuditAttempt).where(
        AuditAttempt.tenant_id == tenant_id, AuditAttempt.interaction_id == interaction_id,
        AuditAttempt.auditor == auditor, AuditAttempt.prompt_version == prompt_version))
    if row is None:
        row = AuditAttempt(interaction_id=interaction_id, tenant_id=tenant_id, auditor=auditor,
                           prompt_version=prompt_version, status=status, is_error=is_error,
                           reason=reason, attempts=step, updated_at=utcnow())
        session.add(row)
    else:
        row.status, row.is_error, row.reason = status, is_error, reason
        row.attempts = (row.attempts or 0) + step
        row.updated_at = utcnow()
    return row


def error_dedup_key(tenant_id: str, interaction_id: str, auditor: str,
                    prompt_version: str) -> str:
    """One error item per interaction (ids are per tenant), auditor and prompt version."""
    return bounded_key(f"{tenant_id}/{interaction_id}:{auditor}:{prompt_version}")


@dataclass
class SavedAudit:
    created: int = 0  # new error items (flags)
    clean_created: int = 0  # new "no error found" calibration items
    given_up: list[str] = field(default_factory=list)  # ids that reached max_attempts now


def save_audit_batch(session: Session, *, auditor: str, prompt_version: str,
                     verdicts: Iterable[Mapping[str, Any]], items: Sequence[Mapping[str, Any]],
                     failures: Iterable[Mapping[str, Any]], max_attempts: int) -> SavedAudit:
    """One batch: an ``ok`` attempt per verdict (``interaction_id``, ``tenant_id``,
    ``is_error``), the ``error`` review items ``items`` (keyword arguments of
    :func:`store.repo.create_item` but ``kind`` and ``dedup_key``: idempotent on
    :func:`error_dedup_key`; an item whose ``extra`` says ``is_error: False`` is a "no error
    found" calibration item) and a ``failed`` attempt per
    failure (``interaction_id``, ``tenant_id``, ``reason`` as stored, ``counted``: request-
    specific). Returns what was created and which interactions reached ``max_attempts``.

    Bulk (``store.bulk``): one upsert of the ok attempts, one INSERT of the items (``ON CONFLICT
    DO NOTHING``: an item that exists, made earlier or by a concurrent run, is kept as it is) and
    their events, one upsert of the failed attempts; the attempt counters are incremented in SQL.
    """
    saved = SavedAudit()
    upsert_attempts(session, auditor=auditor, prompt_version=prompt_version, rows=[
        {"tenant_id": v["tenant_id"], "interaction_id": v["interaction_id"], "status": "ok",
         "is_error": v["is_error"], "reason": None, "step": 1} for v in verdicts])
    specs = [(error_dedup_key(spec["tenant_id"], spec["interaction_id"], auditor,
                              prompt_version), spec) for spec in items]
    created = insert_items(session, "error", [
        (key, spec.get("actor", "system"), {k: v for k, v in spec.items() if k != "actor"})
        for key, spec in specs])
    for key, spec in dict(specs).items():
        if key not in created:
            continue
        if (spec.get("extra") or {}).get("is_error") is False:
            saved.clean_created += 1
        else:
            saved.created += 1
    failures = list(failures)
    counts = upsert_attempts(session, auditor=auditor, prompt_version=prompt_version, rows=[
        {"tenant_id": f["tenant_id"], "interaction_id": f["interaction_id"], "status": "failed",
         "is_error": None, "reason": f["reason"][:4000], "step": int(bool(f["counted"]))}
        for f in failures])
    reported: set[tuple[str, str]] = set()
    for f in failures:
        key = (f["tenant_id"], f["interaction_id"])
        if f["counted"] and counts[key] >= max_attempts and key not in reported:
            reported.add(key)
            saved.given_up.append(f["interaction_id"])
    return saved


def attempt_counts(session: Session, max_attempts: int) -> dict[str, Any]:
    """Audit attempts of every auditor and prompt version, for ``learnloop status``: ``ok``,
    ``pending`` (failed, retried by the next run), ``given_up`` (failed ``max_attempts`` times
    request-specifically: no longer retried) and the reason of the latest failure."""
    rows = session.execute(select(AuditAttempt.status, AuditAttempt.attempts, func.count())
                           .group_by(AuditAttempt.status, AuditAttempt.attempts)).all()
    out: dict[str, Any] = {"ok": 0, "pending": 0, "given_up": 0}
    for status, attempts, n in rows:
        key = ("ok" if status == "ok" else "given_up" if (attempts or 0) >= max_attempts
               else "pending")
        out[key] += int(n)
    latest = session.scalar(select(AuditAttempt.reason).where(AuditAttempt.status == "failed")
                            .order_by(AuditAttempt.updated_at.desc(), AuditAttempt.id.desc())
                            .limit(1))
    out["last_failure"] = (latest or "").strip().splitlines()[0][:300] if latest else None
    return out
