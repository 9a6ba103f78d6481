"""Repository functions of the operational store.

Every change of a review item goes through here: optimistic locking on ``version`` (a stale write
raises ``Conflict``, never overwrites silently), one append-only ``ReviewEvent`` per change, tenant
scoping. The service (web app and JSON API) and the Dagster assets share these functions.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, case, func, or_, select, text, true, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased, defer

from store.models import (
    ERROR_STATUSES,
    Dataset,
    ModelDeployment,
    ReviewEvent,
    ReviewItem,
    utcnow,
)


class StoreError(Exception):
    """Base class of the store's errors."""


class NotFound(StoreError):
    pass


class Conflict(StoreError):
    """The item changed since the caller read it (stale ``version``)."""

    def __init__(self, item_id: int, expected: int, actual: int | None):
        super().__init__(
            f"review item {item_id} was changed by someone else "
            f"(you had version {expected}, it is now version {actual})"
        )
        self.item_id, self.expected, self.actual = item_id, expected, actual


class InvalidTransition(StoreError):
    pass


class Forbidden(StoreError):
    pass


# decision -> new status, per item kind
DECISIONS: dict[str, dict[str, str]] = {
    "error": {"confirm": "confirmed", "dismiss": "dismissed"},
    "sample": {"approve": "approved", "reject": "rejected", "edit": "edited"},
}
# the web app and API accept approve/reject for both kinds: map them onto the error vocabulary
_ALIASES = {"error": {"approve": "confirm", "reject": "dismiss"}}

_SNAPSHOT_FIELDS = ("status", "version", "final_response", "tags", "decided_by")


def _snapshot(item: ReviewItem) -> dict[str, Any]:
    return {f: getattr(item, f) for f in _SNAPSHOT_FIELDS}


def tenant_allowed(tenants: Sequence[str] | None, tenant_id: str) -> bool:
    """``tenants=None`` means unscoped (internal callers); ``["*"]`` means every tenant."""
    return tenants is None or "*" in tenants or tenant_id in tenants


# ---- creating items -------------------------------------------------------------------------------
MAX_DEDUP_KEY = 300  # review_items.dedup_key is VARCHAR(300)


def bounded_key(key: str) -> str:
    """A dedup key that fits the column: kept as it is up to 300 characters, else its first 235
    and the SHA-256 of the whole (a tenant id of 128 and an interaction id of 256 fit either way,
    and distinct keys stay distinct)."""
    if len(key) <= MAX_DEDUP_KEY:
        return key
    return f"{key[:MAX_DEDUP_KEY - 65]}#{hashlib.sha256(key.encode('utf-8')).hexdigest()}"


def create_item(session: Session, *, kind: str, dedup_key: str, actor: str = "system",
                **fields: Any) -> tuple[ReviewItem, bool]:
    """Create a review item unless one with the same (kind, dedup_key) exists.

    Returns ``(item, created)``. Producers (auditor, teacher) are idempotent through ``dedup_key``.
    """
    if kind not in DECISIONS:
        raise ValueError(f"kind must be one of {sorted(DECISIONS)}, got {kind!r}")
    existing = session.scalar(
        select(ReviewItem).where(ReviewItem.kind == kind, ReviewItem.dedup_key == dedup_key)
    )
    if existing is not None:
        return existing, False
    item = ReviewItem(kind=kind, dedup_key=dedup_key, status="pending", version=1, **fields)
    item.tags = list(fields.get("tags") or [])
    item.extra = dict(fields.get("extra") or {})
    try:
        with session.begin_nested():
            session.add(item)
            session.flush()
    except IntegrityError:  # a concurrent producer created it first
        existing = session.scalar(
            select(ReviewItem).where(ReviewItem.kind == kind, ReviewItem.dedup_key == dedup_key)
        )
        if existing is None:
            raise
        return existing, False
    session.add(ReviewEvent(item_id=item.id, tenant_id=item.tenant_id, actor=actor,
                            action="created", before=None, after=_snapshot(item)))
    return item, True


def get_item(session: Session, item_id: int, tenants: Sequence[str] | None = None) -> ReviewItem:
    item = session.get(ReviewItem, item_id)
    if item is None or not tenant_allowed(tenants, item.tenant_id):
        # an item of another tenant is reported as missing: its existence is not disclosed
        raise NotFound(f"review item {item_id} not found")
    return item


# ---- deciding --------------------------------------------------------------------------------------
def _guarded_update(session: Session, item: ReviewItem, expected_version: int,
                    values: dict[str, Any]) -> None:
    """Compare-and-set on ``version``: the UPDATE only matches the version the caller saw."""
    values = {**values, "version": expected_version + 1, "updated_at": utcnow()}
    result = session.execute(
        update(ReviewItem)
        .where(ReviewItem.id == item.id, ReviewItem.version == expected_version)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        session.rollback()
        actual = session.scalar(select(ReviewItem.version).where(ReviewItem.id == item.id))
        raise Conflict(item.id, expected_version, actual)
    session.refresh(item)


def decide(session: Session, item_id: int, *, decision: str, expected_version: int, actor: str,
           final_response: str | None = None, note: str | None = None,
           tenants: Sequence[str] | None = None) -> ReviewItem:
    """Record a reviewer's decision on one pending item.

    ``decision``: error items confirm|dismiss (approve|reject accepted as aliases); sample items
    approve|reject|edit (edit requires ``final_response``).

    ``final_response`` with ``approve`` on a sample: a non-blank text that differs from the
    proposed reply makes it edit-and-approve (status ``edited``, the text stored); the same or a
    blank text is a plain approve of the proposed reply. With ``reject`` it is ignored. On an
    error item a non-blank ``final_response`` is refused (``InvalidTransition``).
    """
    item = get_item(session, item_id, tenants)
    decision = _ALIASES.get(item.kind, {}).get(decision, decision)
    allowed = DECISIONS[item.kind]
    if decision not in allowed:
        raise InvalidTransition(
            f"decision {decision!r} is not valid for a {item.kind} item (use one of {sorted(allowed)})"
        )
    has_text = final_response is not None and bool(final_response.strip())
    if item.kind == "error" and has_text:
        raise InvalidTransition("final_response applies to sample items only; error items are "
                                "confirmed or dismissed")
    if item.kind == "sample" and decision == "approve" and has_text \
            and final_response != (item.proposed_response or ""):
        decision = "edit"  # approving a changed text is edit-and-approve
    if item.version != expected_version:
        raise Conflict(item.id, expected_version, item.version)
    if item.status != "pending":
        raise InvalidTransition(f"review item {item.id} is already {item.status}")
    values: dict[str, Any] = {"status": allowed[decision], "decided_by": actor,
                              "decided_at": utcnow()}
    if item.kind == "sample":
        if decision == "edit":
            if not final_response or not final_response.strip():
                raise InvalidTransition("edit needs the edited reply text (final_response)")
            values["final_response"] = final_response
        elif decision == "approve":
            values["final_response"] = item.proposed_response
    before = _snapshot(item)
    _guarded_update(session, item, expected_version, values)
    session.add(ReviewEvent(item_id=item.id, tenant_id=item.tenant_id, actor=actor,
                            action="decide", before=before, after=_snapshot(item), note=note))
    session.flush()
    return item


def set_tags(session: Session, item_id: int, *, add: Iterable[str] = (), remove: Iterable[str] = (),
             expected_version: int, actor: str, tenants: Sequence[str] | None = None) -> ReviewItem:
    """Add and remove tags (data is never deleted to filter it; tags do that)."""
    item = get_item(session, item_id, tenants)
    add, remove = [t.strip() for t in add if t.strip()], [t.strip() for t in remove if t.strip()]
    for t in add:
        if len(t) > 64:
            raise InvalidTransition(f"tag {t[:20]!r}... is longer than 64 characters")
    tags = [t for t in item.tags if t not in remove]
    tags += [t for t in add if t not in tags]
    before = _snapshot(item)
    _guarded_update(session, item, expected_version, {"tags": tags})
    session.add(ReviewEvent(item_id=item.id, tenant_id=item.tenant_id, actor=actor, action="tag",
                            before=before, after=_snapshot(item)))
    session.flush()
    return item


def changes_since(session: Session, item_id: int, version: int) -> list[ReviewEvent]:
    """The review events that moved ``item_id`` past ``version`` (what a stale writer missed)."""
    events = session.scalars(select(ReviewEvent).where(ReviewEvent.item_id == item_id)
                             .order_by(ReviewEvent.id))
    return [e for e in events if int((e.after or {}).get("version") or 0) > version]


# ---- reading ---------------------------------------------------------------------------------------
@dataclass
class ItemFilter:
    kind: str | None = None
    status: str | None = "pending"
    category: str | None = None
    tenant_id: str | None = None
    source: str | None = None
    tag: str | None = None


SORTS = ("age", "-age", "severity", "confidence")
SEVERITY_ORDER = {"critical": 0, "high": 1, "medium": 2, "low": 3}


def _tag_condition(session: Session, tag: str):
    """``tag`` is one of the item's tags, evaluated in SQL (tags are a JSON array column)."""
    dialect = session.get_bind().dialect.name
    if dialect == "sqlite":
        return text("EXISTS (SELECT 1 FROM json_each(review_items.tags) AS t "
                    "WHERE t.value = :tag_filter)").bindparams(tag_filter=tag)
    if dialect == "postgresql":
        return text("(CAST(review_items.tags AS jsonb) @> jsonb_build_array("
                    "CAST(:tag_filter AS text)))").bindparams(tag_filter=tag)
    raise NotImplementedError(f"tag filter on {dialect!r}: only SQLite and PostgreSQL")


def _conditions(session: Session, flt: ItemFilter, tenants: Sequence[str] | None) -> list:
    conds: list = []
    if flt.kind:
        conds.append(ReviewItem.kind == flt.kind)
    if flt.status:
        conds.append(ReviewItem.status == flt.status)
    if flt.category:
        conds.append(ReviewItem.category == flt.category)
    if flt.tenant_id:
        conds.append(ReviewItem.tenant_id == flt.tenant_id)
    if flt.source:
        conds.append(ReviewItem.source == flt.source)
    if flt.tag:
        conds.append(_tag_condition(session, flt.tag))
    if tenants is not None and "*" not in tenants:
        conds.append(ReviewItem.tenant_id.in_(list(tenants)))
    return conds


_PARENT = aliased(ReviewItem, name="parent_item")


def _order(sort: str) -> list:
    """ORDER BY of a queue sort. Severity and confidence: an item without its own (a sample) sorts
    by its parent error's; items with neither come last. Ties: oldest (lowest id) first."""
    if sort == "age":
        return [ReviewItem.created_at.asc(), ReviewItem.id.asc()]
    if sort == "-age":
        return [ReviewItem.created_at.desc(), ReviewItem.id.desc()]
    if sort == "severity":
        sev = func.coalesce(ReviewItem.severity, _PARENT.severity)
        return [case(SEVERITY_ORDER, value=sev, else_=9), ReviewItem.id.asc()]
    if sort == "confidence":
        conf = func.coalesce(ReviewItem.confidence, _PARENT.confidence)
        return [conf.desc().nulls_last(), ReviewItem.id.asc()]
    raise ValueError(f"sort must be one of {list(SORTS)}, got {sort!r}")


def list_items(session: Session, flt: ItemFilter, *, tenants: Sequence[str] | None = None,
               sort: str = "age", offset: int = 0, limit: int = 50) -> tuple[list[ReviewItem], int]:
    """One page of items matching ``flt`` in the caller's tenants, and the total count.

    Filtering (tags included), counting, ordering and paging all happen in SQL; the
    conversation (``messages``) is not loaded (use ``get_item`` for one item in full).
    """
    order = _order(sort)
    conds = _conditions(session, flt, tenants)
    total = session.scalar(select(func.count(ReviewItem.id)).where(*conds)) or 0
    q = (select(ReviewItem).outerjoin(_PARENT, _PARENT.id == ReviewItem.parent_id)
         .where(*conds).order_by(*order).offset(offset).limit(limit)
         .options(defer(ReviewItem.messages)))
    return list(session.scalars(q)), int(total)


def list_events(session: Session, *, after_id: int = 0, limit: int = 10_000,
                tenants: Sequence[str] | None = None) -> list[ReviewEvent]:
    q = select(ReviewEvent).where(ReviewEvent.id > after_id).order_by(ReviewEvent.id).limit(limit)
    if tenants is not None and "*" not in tenants:
        q = q.where(ReviewEvent.tenant_id.in_(list(tenants)))
    return list(session.scalars(q))


NO_ERROR_VERDICT = "no error found"


def is_no_error_found(item: Any) -> bool:
    """An ``error`` item that asks a reviewer to check a clean auditor verdict (the audit stage's
    calibration sample: ``extra.verdict == "no error found"``, tag ``no_error_found``; such items
    have no category). Confirming it says the reply IS wrong (a miss of the auditor), dismissing
    it that the reply is fine, the opposite of what agreeing with the auditor means on a flagged
    error. (``status_counts`` counts the same items in SQL as error items without a category.)"""
    if getattr(item, "kind", None) != "error":
        return False
    extra = getattr(item, "extra", None) or {}
    return (extra.get("verdict") == NO_ERROR_VERDICT or extra.get("is_error") is False
            or "no_error_found" in (getattr(item, "tags", None) or []))


def status_counts(session: Session) -> dict[str, Any]:
    """Counts per review state, datasets and deployments, for ``learnloop status``."""
    # an `error` item without a category is a clean calibration verdict ("no error found") put
    # before a reviewer to label; it is counted apart from the flagged errors
    flagged = ReviewItem.category.is_not(None)
    rows = session.execute(
        select(ReviewItem.kind, ReviewItem.status, flagged, func.count())
        .group_by(ReviewItem.kind, ReviewItem.status, flagged)
    ).all()
    errors = {s: 0 for s in ERROR_STATUSES}
    calibration = {s: 0 for s in ERROR_STATUSES}
    samples = {s: 0 for s in ("pending", "approved", "rejected")}
    for kind, status, is_flagged, n in rows:
        if kind == "error":
            target = errors if is_flagged else calibration
            target[status] = target.get(status, 0) + n
        else:
            # an edited sample is an approved one with the reviewer's text
            key = "approved" if status == "edited" else status
            samples[key] = samples.get(key, 0) + n
    n_datasets = session.scalar(select(func.count()).select_from(Dataset)
                                .where(Dataset.kind == "training")) or 0
    suite = session.scalars(select(Dataset).where(Dataset.kind == "eval_suite")
                            .order_by(Dataset.id.desc()).limit(1)).first()
    eval_suite = None if suite is None else {
        "version": suite.version_hash, "size": suite.n_eval, "retention": suite.n_retention}
    champion = session.scalar(
        select(ModelDeployment.model_version).where(ModelDeployment.alias == "champion",
                                                    ModelDeployment.status == "active")
        .order_by(ModelDeployment.id.desc()).limit(1)
    )
    challenger = session.scalar(
        select(ModelDeployment.model_version).where(ModelDeployment.alias == "challenger",
                                                    ModelDeployment.status == "active")
        .order_by(ModelDeployment.id.desc()).limit(1)
    )
    return {"errors": errors, "calibration": calibration, "samples": samples,
            "datasets": n_datasets, "eval_suite": eval_suite, "champion": champion, "challenger": challenger}


def approved_samples(session: Session, *, since: datetime | None = None) -> list[ReviewItem]:
    q = select(ReviewItem).where(ReviewItem.kind == "sample",
                                 ReviewItem.status.in_(("approved", "edited")))
    if since is not None:
        q = q.where(ReviewItem.decided_at > since)
    return list(session.scalars(q.order_by(ReviewItem.id)))



# ---- service helpers (review web app and JSON API; self-contained block) ---------------------------
def decide_many(url: str, decisions: Sequence[dict[str, Any]], *, actor: str,
                tenants: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Decide several items, each in its own transaction; one result per requested decision.

    Each entry: ``item_id``, ``decision``, ``version`` and optionally ``final_response``, ``note``.
    A conflict or an invalid decision on one item does not undo the others. A result is
    ``{"item_id", "ok", "code", "status", "version", "error"}`` with ``code`` one of
    ``ok | conflict | not_found | invalid``.
    """
    from store.db import session_scope

    results: list[dict[str, Any]] = []
    for d in decisions:
        item_id = int(d["item_id"])
        res: dict[str, Any] = {"item_id": item_id, "ok": False, "code": "ok", "status": None,
                               "version": None, "error": None}
        try:
            with session_scope(url) as s:
                item = decide(s, item_id, decision=d["decision"], expected_version=int(d["version"]),
                              actor=actor, final_response=d.get("final_response"),
                              note=d.get("note"), tenants=tenants)
                res.update(ok=True, status=item.status, version=item.version)
        except Conflict as exc:
            res.update(code="conflict", error=str(exc), version=exc.actual)
        except NotFound as exc:
            res.update(code="not_found", error=str(exc))
        except InvalidTransition as exc:
            res.update(code="invalid", error=str(exc))
        results.append(res)
    return results


def queue_neighbours(session: Session, item_id: int, *, tenants: Sequence[str] | None = None,
                     flt: ItemFilter | None = None,
                     sort: str = "age") -> tuple[int | None, int | None]:
    """Ids of the items before and after ``item_id`` in the queue ``flt`` (default: pending) sorted
    by ``sort``, in the caller's tenants: the same query as ``list_items``. The item itself is
    placed by its sort key even when it no longer matches (e.g. just decided), so "next" after a
    decision is the item that followed it in the queue the reviewer was working through."""
    flt = flt if flt is not None else ItemFilter()
    order = _order(sort)
    in_queue = and_(true(), *_conditions(session, flt, tenants))
    itself = and_(ReviewItem.id == item_id,
                  *_conditions(session, ItemFilter(status=None), tenants))  # tenant scope only
    ranked = (select(ReviewItem.id.label("id"),
                     func.lag(ReviewItem.id).over(order_by=order).label("prev_id"),
                     func.lead(ReviewItem.id).over(order_by=order).label("next_id"))
              .select_from(ReviewItem)
              .outerjoin(_PARENT, _PARENT.id == ReviewItem.parent_id)
              .where(or_(in_queue, itself))
              .subquery())
    row = session.execute(select(ranked.c.prev_id, ranked.c.next_id)
                          .where(ranked.c.id == item_id)).first()
    return (row[0], row[1]) if row is not None else (None, None)


def related_items(session: Session, item: ReviewItem, *,
                  tenants: Sequence[str] | None = None) -> list[ReviewItem]:
    """The item's parent (e.g. the error a sample corrects) and children, within the tenants."""
    q = select(ReviewItem).where(ReviewItem.parent_id == item.id)
    if item.parent_id is not None:
        q = select(ReviewItem).where((ReviewItem.parent_id == item.id)
                                     | (ReviewItem.id == item.parent_id))
    return [r for r in session.scalars(q.order_by(ReviewItem.id))
            if tenant_allowed(tenants, r.tenant_id)]


def facet_values(session: Session, *, tenants: Sequence[str] | None = None) -> dict[str, list[str]]:
    """Distinct values for the queue's filter menus (kind, category, tenant, source, tag)."""
    def distinct(col) -> list[str]:
        q = select(col).distinct().where(col.is_not(None))
        if tenants is not None and "*" not in tenants:
            q = q.where(ReviewItem.tenant_id.in_(list(tenants)))
        return sorted(str(v) for v in session.scalars(q))

    tag_q = select(ReviewItem.tags).where(ReviewItem.status == "pending")
    if tenants is not None and "*" not in tenants:
        tag_q = tag_q.where(ReviewItem.tenant_id.in_(list(tenants)))
    tags = sorted({t for row in session.scalars(tag_q) for t in (row or [])})
    return {"kind": list(DECISIONS), "category": distinct(ReviewItem.category),
            "tenant": distinct(ReviewItem.tenant_id), "source": distinct(ReviewItem.source),
            "tag": tags}


# ---- warehouse export ------------------------------------------------------------------------------
REVIEW_DECISION_FIELDS = ("event_id", "item_id", "kind", "tenant_id", "interaction_id", "actor",
                          "action", "status_before", "status_after", "note", "event_at", "auditor",
                          "prompt_version", "category", "severity", "source")


def review_event_rows(session: Session, *, after_id: int = 0,
                      limit: int = 50_000) -> list[dict[str, Any]]:
    """Review events newer than ``after_id`` joined to their item, as flat rows for the warehouse."""
    q = (select(ReviewEvent, ReviewItem).join(ReviewItem, ReviewItem.id == ReviewEvent.item_id)
         .where(ReviewEvent.id > after_id).order_by(ReviewEvent.id).limit(limit))
    rows = []
    for ev, item in session.execute(q).all():
        rows.append({
            "event_id": ev.id, "item_id": item.id, "kind": item.kind, "tenant_id": ev.tenant_id,
            "interaction_id": item.interaction_id, "actor": ev.actor, "action": ev.action,
            "status_before": (ev.before or {}).get("status"),
            "status_after": (ev.after or {}).get("status"), "note": ev.note,
            "event_at": ev.at.replace(tzinfo=None) if ev.at and ev.at.tzinfo else ev.at,
            "auditor": item.auditor, "prompt_version": item.prompt_version,
            "category": item.category, "severity": item.severity, "source": item.source,
        })
    return rows
