"""Tags, filters and statistics of sample items (the proposed training examples).

``SampleFilter`` selects sample items by id, date (the interaction's time, else when the item was
created), quality range, category, intent, source, tenant, tag and status, always in SQL (SQLite
and PostgreSQL alike). Several values of one field match any of them; the fields combine with AND.
Filtering never deletes or changes anything: data is kept, tags are how a subset is set apart.

``tag_samples`` adds or removes one tag on every matching sample: one compare-and-set UPDATE on
``version`` per changed item and one review event each (``tag`` / ``untag``), so a reviewer's
concurrent change of an item is never overwritten (the item is read again and the tag applied to
what it is now). ``sample_stats`` counts the matching samples by status, source, category,
intent, tenant and tag, and sums up their quality, with GROUP BY queries.

``fill_sample_facts`` copies the interaction's facts (quality, intent, time) onto sample items
that lack them; see its docstring for why that is not a reviewer-visible change.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import Text, bindparam, case, cast, exists, func, or_, select, true, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session, defer

from store.models import SAMPLE_STATUSES, ReviewEvent, ReviewItem, utcnow
from store.repo import Conflict

MAX_TAG = 64
MAX_VALUE = 128  # a filter value (the longest column filtered on, tenant_id, is 128)
UNKNOWN = "unknown"  # how statistics name a missing category, intent or source
QUALITY_BINS = tuple((round(k / 10, 1), round((k + 1) / 10, 1)) for k in range(10))
SAMPLE_SORTS = ("age", "-age", "quality", "-quality", "time", "-time")
CAS_ATTEMPTS = 5  # tries of one item's compare-and-set when others keep changing it


class FilterError(ValueError):
    """A filter value that cannot be used; ``field`` names the filter field."""

    def __init__(self, field_name: str, message: str):
        super().__init__(f"{field_name}: {message}")
        self.field = field_name


class TagError(ValueError):
    """A tag that cannot be stored (empty or longer than 64 characters)."""


# ---- the filter -------------------------------------------------------------------------------------
_LIST_FIELDS = ("category", "intent", "source", "tenant", "tag", "status")


@dataclass(frozen=True)
class SampleFilter:
    """Which sample items. Every field is optional; an unset field does not filter.

    ``since`` / ``until``: a ``date`` (the whole day, UTC) or a ``datetime`` (naive = UTC), both
    inclusive, on the interaction's time (``interaction_at``), or when the item was created for an
    item whose interaction time is unknown. ``quality_min`` / ``quality_max``: inclusive bounds in
    0-1; an item with no quality score does not match a quality bound. The tuple fields match any
    of their values. Build one from plain values with :meth:`from_dict`.
    """

    ids: tuple[int, ...] = ()
    since: date | datetime | None = None
    until: date | datetime | None = None
    quality_min: float | None = None
    quality_max: float | None = None
    category: tuple[str, ...] = ()
    intent: tuple[str, ...] = ()
    source: tuple[str, ...] = ()
    tenant: tuple[str, ...] = ()
    tag: tuple[str, ...] = ()
    status: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("ids", *_LIST_FIELDS):  # a lone string is one value, not its characters
            value = getattr(self, name)
            if isinstance(value, str | int):
                object.__setattr__(self, name, (value,))
            else:
                object.__setattr__(self, name, tuple(value))
        for name in ("quality_min", "quality_max"):
            v = getattr(self, name)
            if v is not None and (not math.isfinite(v) or not 0.0 <= v <= 1.0):
                raise FilterError(name, f"must be a number from 0 to 1, got {v!r}")
        if (self.quality_min is not None and self.quality_max is not None
                and self.quality_min > self.quality_max):
            raise FilterError("quality_min", f"{self.quality_min} is above quality_max "
                                             f"{self.quality_max}")
        for s in self.status:
            if s not in SAMPLE_STATUSES:
                raise FilterError("status", f"{s!r} is not a sample status (one of "
                                            f"{', '.join(SAMPLE_STATUSES)})")
        lo, hi = self.since_at(), self.until_before()
        if lo is not None and hi is not None and lo >= hi:
            raise FilterError("since", f"{self.since} is after until {self.until}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SampleFilter:
        """A filter from plain values: the JSON API's body, a query string parsed into lists, the
        command line's options. Keys are the field names; ``ids`` and the list fields take one
        value or a list (a string may hold several, comma-separated); dates are ``YYYY-MM-DD`` or
        ISO 8601 datetimes; empty values (``None``, ``""``, ``[]``) are ignored. Raises
        :class:`FilterError` naming the field for an unknown key or a bad value."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise FilterError(unknown[0], f"unknown filter field (known: {', '.join(sorted(known))})")
        kw: dict[str, Any] = {}
        for name in _LIST_FIELDS:
            values = _strings(data.get(name))
            if values:
                if any(len(v) > MAX_VALUE for v in values):
                    raise FilterError(name, f"a value is longer than {MAX_VALUE} characters")
                kw[name] = tuple(values)
        ids = _strings(data.get("ids"))
        if ids:
            try:
                kw["ids"] = tuple(int(v) for v in ids)
            except ValueError:
                raise FilterError("ids", f"item ids are whole numbers, got {ids!r}") from None
            if not all(1 <= i <= 2**31 - 1 for i in kw["ids"]):
                raise FilterError("ids", "item ids are 1 to 2147483647")
        for name in ("since", "until"):
            value = _scalar(name, data.get(name))
            if value not in (None, ""):
                kw[name] = _parse_when(name, value)
        for name in ("quality_min", "quality_max"):
            value = _scalar(name, data.get(name))
            if value not in (None, ""):
                try:
                    kw[name] = float(value)
                except (TypeError, ValueError):
                    raise FilterError(name, f"must be a number from 0 to 1, got "
                                            f"{str(value)[:40]!r}") from None
        return cls(**kw)

    def to_dict(self) -> dict[str, Any]:
        """The set fields as plain JSON-able values (``from_dict`` reads them back)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if v in (None, ()):
                continue
            out[f.name] = v.isoformat() if isinstance(v, date) else list(v) \
                if isinstance(v, tuple) else v
        return out

    def is_empty(self) -> bool:
        """True when the filter selects every sample (no field set)."""
        return not self.to_dict()

    def describe(self) -> str:
        """A short human reading, e.g. ``category=refusal, quality<=0.4``."""
        d = self.to_dict()
        if not d:
            return "every sample"
        parts = []
        for k, v in d.items():
            if k == "quality_min":
                parts.append(f"quality>={v}")
            elif k == "quality_max":
                parts.append(f"quality<={v}")
            else:
                parts.append(f"{k}={','.join(map(str, v)) if isinstance(v, list) else v}")
        return ", ".join(parts)

    def since_at(self) -> datetime | None:
        """The first instant matched (UTC), or None."""
        return _instant(self.since)

    def until_before(self) -> datetime | None:
        """The first instant no longer matched (UTC), or None: the day after an ``until`` date,
        a microsecond after an ``until`` datetime."""
        if self.until is None:
            return None
        if isinstance(self.until, datetime):
            return _instant(self.until) + timedelta(microseconds=1)
        return _instant(self.until + timedelta(days=1))


def _strings(value: Any) -> list[str]:
    if value is None:
        return []
    items = [value] if isinstance(value, str | int | float) else list(value)
    out: list[str] = []
    for v in items:
        if v is None:
            continue
        out += [p.strip() for p in str(v).split(",") if p.strip()]
    return out


def _scalar(name: str, value: Any) -> Any:
    """One value of a single-valued field; a list of one (a parsed query string) is that value."""
    if isinstance(value, list | tuple):
        values = [v for v in value if v not in (None, "")]
        if len(values) > 1:
            raise FilterError(name, f"takes one value, got {len(values)}")
        return values[0] if values else None
    return value


def _parse_when(name: str, value: Any) -> date | datetime:
    if isinstance(value, datetime | date):
        return value
    text = str(value).strip()
    try:
        if len(text) == 10:
            return date.fromisoformat(text)
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise FilterError(name, f"{text[:40]!r} is not a date (YYYY-MM-DD) or an ISO 8601 "
                                f"datetime") from None


def _instant(value: date | datetime | None) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return datetime.combine(value, time(0), tzinfo=UTC)


def _dialect(session: Session) -> str:
    return session.get_bind().dialect.name


def has_any_tag(session: Session, tags: Sequence[str]):
    """SQL: the item carries at least one of ``tags`` (tags are a JSON array column)."""
    dialect = _dialect(session)
    if dialect == "sqlite":
        each = func.json_each(ReviewItem.tags).table_valued("value")
        return exists(select(1).select_from(each).where(each.c.value.in_(list(tags))))
    if dialect == "postgresql":
        return cast(ReviewItem.tags, postgresql.JSONB).has_any(
            postgresql.array(list(tags), type_=Text))
    raise NotImplementedError(f"tag filter on {dialect!r}: only SQLite and PostgreSQL")


def sample_conditions(session: Session, flt: SampleFilter,
                      tenants: Sequence[str] | None = None) -> list:
    """The WHERE conditions of ``flt`` on ``review_items`` (sample items only), within
    ``tenants`` (None: unscoped; ``["*"]``: every tenant)."""
    conds: list = [ReviewItem.kind == "sample"]
    if flt.ids:
        conds.append(ReviewItem.id.in_(list(flt.ids)))
    when = func.coalesce(ReviewItem.interaction_at, ReviewItem.created_at)
    if (lo := flt.since_at()) is not None:
        conds.append(when >= lo)
    if (hi := flt.until_before()) is not None:
        conds.append(when < hi)
    if flt.quality_min is not None:
        conds.append(ReviewItem.quality >= flt.quality_min)
    if flt.quality_max is not None:
        conds.append(ReviewItem.quality <= flt.quality_max)
    for name, col in (("category", ReviewItem.category), ("intent", ReviewItem.intent),
                      ("source", ReviewItem.source), ("tenant", ReviewItem.tenant_id),
                      ("status", ReviewItem.status)):
        values = getattr(flt, name)
        if values:
            conds.append(col.in_(list(values)))
    if flt.tag:
        conds.append(has_any_tag(session, flt.tag))
    if tenants is not None and "*" not in tenants:
        conds.append(ReviewItem.tenant_id.in_(list(tenants)))
    return conds


# ---- listing -----------------------------------------------------------------------------------------
def _order(sort: str) -> list:
    when = func.coalesce(ReviewItem.interaction_at, ReviewItem.created_at)
    orders = {"age": [ReviewItem.created_at.asc(), ReviewItem.id.asc()],
              "-age": [ReviewItem.created_at.desc(), ReviewItem.id.desc()],
              "quality": [ReviewItem.quality.asc().nulls_last(), ReviewItem.id.asc()],
              "-quality": [ReviewItem.quality.desc().nulls_last(), ReviewItem.id.asc()],
              "time": [when.asc(), ReviewItem.id.asc()],
              "-time": [when.desc(), ReviewItem.id.desc()]}
    if sort not in orders:
        raise ValueError(f"sort must be one of {list(SAMPLE_SORTS)}, got {sort!r}")
    return orders[sort]


def count_samples(session: Session, flt: SampleFilter,
                  tenants: Sequence[str] | None = None) -> int:
    return int(session.scalar(select(func.count(ReviewItem.id))
                              .where(*sample_conditions(session, flt, tenants))) or 0)


def list_samples(session: Session, flt: SampleFilter, *, tenants: Sequence[str] | None = None,
                 sort: str = "age", offset: int = 0,
                 limit: int = 50) -> tuple[list[ReviewItem], int]:
    """One page of the sample items matching ``flt`` and their total, filtered, counted, sorted
    (``SAMPLE_SORTS``; quality: unknown last) and paged in SQL; ``messages`` is not loaded."""
    order = _order(sort)
    conds = sample_conditions(session, flt, tenants)
    total = session.scalar(select(func.count(ReviewItem.id)).where(*conds)) or 0
    q = (select(ReviewItem).where(*conds).order_by(*order).offset(offset).limit(limit)
         .options(defer(ReviewItem.messages)))
    return list(session.scalars(q)), int(total)


def sample_facets(session: Session, *,
                  tenants: Sequence[str] | None = None) -> dict[str, list[str]]:
    """The values the filter menus offer: distinct category, intent, source and tenant of the
    sample items in ``tenants``, their tags, and the sample statuses."""
    scope = sample_conditions(session, SampleFilter(), tenants)

    def distinct(col) -> list[str]:
        return sorted(str(v) for v in session.scalars(
            select(col).distinct().where(*scope, col.is_not(None))))

    return {"category": distinct(ReviewItem.category), "intent": distinct(ReviewItem.intent),
            "source": distinct(ReviewItem.source), "tenant": distinct(ReviewItem.tenant_id),
            "tag": sorted(_tag_counts(session, scope)), "status": list(SAMPLE_STATUSES)}


# ---- bulk tags ---------------------------------------------------------------------------------------
def check_tag(tag: str) -> str:
    """``tag`` stripped; :class:`TagError` naming it when it is empty or over 64 characters."""
    t = (tag or "").strip() if isinstance(tag, str) else ""
    if not t:
        raise TagError(f"tag {tag!r} is empty: give a tag of 1 to {MAX_TAG} characters")
    if len(t) > MAX_TAG:
        raise TagError(f"tag {t[:20]!r}... is {len(t)} characters long; the limit is {MAX_TAG}")
    return t


@dataclass(frozen=True)
class TagResult:
    """What a bulk tag change did. ``matched``: samples the filter selected; ``changed``: those
    that got the change (a version and a review event each); ``unchanged``: already in the wanted
    state; ``skipped``: changed by someone else meanwhile so that they no longer match (left as
    they are now)."""

    tag: str
    action: str  # tag | untag
    matched: int
    changed: int
    unchanged: int
    skipped: int = 0
    changed_ids: list[int] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"tag": self.tag, "action": self.action, "matched": self.matched,
                "changed": self.changed, "unchanged": self.unchanged, "skipped": self.skipped}


def tag_samples(session: Session, tag: str, *, add: bool, actor: str,
                flt: SampleFilter | None = None, ids: Iterable[int] | None = None,
                tenants: Sequence[str] | None = None, note: str | None = None) -> TagResult:
    """Add (``add=True``) or remove one ``tag`` on every sample item matching ``flt`` and ``ids``
    (both given: the items of ``ids`` that match ``flt``) within ``tenants``.

    Each item that changes gets one compare-and-set UPDATE (``WHERE version = <read>``), its
    version bumped and its own review event (action ``tag`` or ``untag``, ``before``/``after``
    snapshots, like ``repo.set_tags``). An item already in the wanted state is not touched. When
    someone else changed an item between the read and the write, the item is read again and, if
    it still matches, the tag applied to its current tags; it is never overwritten with what was
    read before. Refuses nothing by itself: a caller that wants "no filter, no tagging" checks
    ``flt.is_empty()`` first. Does not commit (the caller's transaction)."""
    tag = check_tag(tag)
    flt = flt or SampleFilter()
    if ids is not None:
        wanted = tuple(int(i) for i in ids)
        if not wanted:
            return TagResult(tag, "tag" if add else "untag", 0, 0, 0)
        flt = SampleFilter(**{**{f.name: getattr(flt, f.name) for f in fields(flt)},
                              "ids": tuple(sorted(set(wanted) & set(flt.ids))) if flt.ids
                              else wanted})
        if not flt.ids:
            return TagResult(tag, "tag" if add else "untag", 0, 0, 0)
    conds = sample_conditions(session, flt, tenants)
    matched = int(session.scalar(select(func.count(ReviewItem.id)).where(*conds)) or 0)
    present = has_any_tag(session, [tag])
    todo = session.execute(select(*_TAG_COLS).where(
        *conds, ~present if add else present).order_by(ReviewItem.id)).all()
    action = "tag" if add else "untag"
    changed_ids: list[int] = []
    skipped = 0
    for row in todo:
        outcome = _tag_one(session, row, tag, add=add, conds=conds, actor=actor,
                           action=action, note=note)
        if outcome == "changed":
            changed_ids.append(row.id)
        elif outcome == "skipped":
            skipped += 1
    session.flush()
    changed = len(changed_ids)
    return TagResult(tag, action, matched, changed, matched - changed - skipped, skipped,
                     changed_ids)


_TAG_COLS = (ReviewItem.id, ReviewItem.tenant_id, ReviewItem.version, ReviewItem.status,
             ReviewItem.final_response, ReviewItem.tags, ReviewItem.decided_by)


def _tag_one(session: Session, row: Any, tag: str, *, add: bool, conds: list, actor: str,
             action: str, note: str | None) -> str:
    """Compare-and-set one item's tags, starting from ``row`` as read: ``changed``, ``unchanged``
    (already as wanted, perhaps by someone else meanwhile) or ``skipped`` (no longer matches the
    filter). A missed compare-and-set reads the item again (with the filter) and retries."""
    item_id = row.id
    for attempt in range(CAS_ATTEMPTS):
        if attempt:
            row = session.execute(select(*_TAG_COLS).where(ReviewItem.id == item_id, *conds)
                                  ).first()
            if row is None:
                return "skipped"
        tags = list(row.tags or [])
        if (tag in tags) == add:
            return "unchanged"
        new_tags = tags + [tag] if add else [t for t in tags if t != tag]
        version = int(row.version)
        result = session.execute(
            update(ReviewItem)
            .where(ReviewItem.id == item_id, ReviewItem.version == version)
            .values(tags=new_tags, version=version + 1, updated_at=utcnow())
            .execution_options(synchronize_session=False))
        if result.rowcount != 1:
            continue  # someone else changed it since the read: read it again
        before = {"status": row.status, "version": version, "final_response": row.final_response,
                  "tags": tags, "decided_by": row.decided_by}
        session.add(ReviewEvent(item_id=item_id, tenant_id=row.tenant_id, actor=actor,
                                action=action, before=before,
                                after={**before, "version": version + 1, "tags": new_tags},
                                note=note))
        return "changed"
    actual = session.scalar(select(ReviewItem.version).where(ReviewItem.id == item_id))
    raise Conflict(item_id, version, actual)


# ---- statistics ---------------------------------------------------------------------------------------
def _bin_expr():
    q = ReviewItem.quality
    whens = [(q.is_(None), -1)] + [(q < hi, k) for k, (_lo, hi) in enumerate(QUALITY_BINS[:-1])]
    return case(*whens, else_=len(QUALITY_BINS) - 1)


def _tag_counts(session: Session, conds: list) -> dict[str, int]:
    dialect = _dialect(session)
    if dialect == "sqlite":
        each = func.json_each(ReviewItem.tags).table_valued("value")
    elif dialect == "postgresql":
        each = func.jsonb_array_elements_text(
            cast(ReviewItem.tags, postgresql.JSONB)).table_valued("value").lateral()
    else:
        raise NotImplementedError(f"tag statistics on {dialect!r}: only SQLite and PostgreSQL")
    n = func.count()
    rows = session.execute(select(each.c.value, n).select_from(ReviewItem).join(each, true())
                           .where(*conds).group_by(each.c.value)
                           .order_by(n.desc(), each.c.value)).all()
    return {str(v): int(c) for v, c in rows}


def _quartiles(session: Session, conds: list, n: int) -> dict[str, float] | None:
    """The quartiles (linear interpolation, like numpy's default) of the ``n`` known quality
    scores: two ordered values fetched per quartile, no scores loaded into Python."""
    if n == 0:
        return None
    out = {}
    base = (select(ReviewItem.quality).where(*conds, ReviewItem.quality.is_not(None))
            .order_by(ReviewItem.quality))
    for name, p in (("q1", 0.25), ("median", 0.5), ("q3", 0.75)):
        pos = p * (n - 1)
        lo = int(math.floor(pos))
        vals = [float(v) for v in session.scalars(base.offset(lo).limit(2))]
        frac = pos - lo
        out[name] = vals[0] if frac == 0 or len(vals) < 2 else vals[0] + frac * (vals[1] - vals[0])
    return out


def sample_stats(session: Session, flt: SampleFilter | None = None,
                 tenants: Sequence[str] | None = None) -> dict[str, Any]:
    """Statistics of the samples matching ``flt`` in ``tenants``, as JSON-able data.

    ``total``; counts ``by_status`` (every sample status, zeros included), ``by_source``,
    ``by_category``, ``by_intent``, ``by_tenant`` (a missing value counted as ``"unknown"``) and
    ``by_tag`` (items per tag); ``approval_rate`` = (approved + edited) / decided (approved,
    edited, rejected), None before any decision; ``quality``: ``histogram`` (ten fixed bins
    0-0.1 ... 0.9-1.0, the upper bound belongs to the next bin, 1.0 to the last), ``unknown``
    (no score), ``known``, ``mean``, ``min``, ``max`` and the quartiles ``q1``, ``median``,
    ``q3`` (None without scores). Every count is a GROUP BY in the database."""
    flt = flt or SampleFilter()
    conds = sample_conditions(session, flt, tenants)
    n = func.count()

    def grouped(col) -> dict[str, int]:
        rows = session.execute(select(col, n).where(*conds).group_by(col)
                               .order_by(n.desc(), col)).all()
        out: dict[str, int] = {}
        for value, count in rows:
            key = UNKNOWN if value is None or value == "" else str(value)
            out[key] = out.get(key, 0) + int(count)
        return dict(sorted(out.items(), key=lambda kv: (-kv[1], kv[0])))

    by_status = {s: 0 for s in SAMPLE_STATUSES}
    for status, count in session.execute(select(ReviewItem.status, n).where(*conds)
                                         .group_by(ReviewItem.status)).all():
        by_status[status] = by_status.get(status, 0) + int(count)
    total = sum(by_status.values())
    decided = by_status["approved"] + by_status["edited"] + by_status["rejected"]
    approval = (by_status["approved"] + by_status["edited"]) / decided if decided else None

    bins = _bin_expr()
    hist_rows = dict(session.execute(select(bins, n).where(*conds).group_by(bins)).all())
    agg = session.execute(select(func.count(ReviewItem.quality), func.avg(ReviewItem.quality),
                                 func.min(ReviewItem.quality), func.max(ReviewItem.quality))
                          .where(*conds)).one()
    known = int(agg[0] or 0)
    quality = {
        "histogram": [{"bin": f"{lo:.1f}-{hi:.1f}", "low": lo, "high": hi,
                       "count": int(hist_rows.get(k, 0))}
                      for k, (lo, hi) in enumerate(QUALITY_BINS)],
        "unknown": int(hist_rows.get(-1, 0)), "known": known,
        "mean": float(agg[1]) if known else None,
        "min": float(agg[2]) if known else None, "max": float(agg[3]) if known else None,
        **(_quartiles(session, conds, known) or {"q1": None, "median": None, "q3": None}),
    }
    return {
        "filter": flt.to_dict(), "total": total, "by_status": by_status,
        "decided": decided, "approval_rate": approval,
        "by_source": grouped(ReviewItem.source), "by_category": grouped(ReviewItem.category),
        "by_intent": grouped(ReviewItem.intent), "by_tenant": grouped(ReviewItem.tenant_id),
        "by_tag": _tag_counts(session, conds), "quality": quality,
    }


# ---- the interaction's facts ---------------------------------------------------------------------
FACT_FIELDS = ("quality", "intent", "interaction_at")


def samples_missing_facts(session: Session, *, limit: int | None = None) -> list[tuple[str, str]]:
    """(tenant_id, interaction_id) of the sample items whose three facts (quality, intent,
    interaction_at) are all unknown: the items to backfill from the warehouse."""
    q = (select(ReviewItem.tenant_id, ReviewItem.interaction_id)
         .where(ReviewItem.kind == "sample", ReviewItem.quality.is_(None),
                ReviewItem.intent.is_(None), ReviewItem.interaction_at.is_(None))
         .order_by(ReviewItem.id))
    if limit is not None:
        q = q.limit(limit)
    return [(t, i) for t, i in session.execute(q).all()]


def _fact_values(facts: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    q = facts.get("quality")
    if q is not None and not (isinstance(q, float) and math.isnan(q)):
        out["quality"] = float(q)
    intent = facts.get("intent")
    if intent is not None and str(intent).strip():
        out["intent"] = str(intent)[:64]
    ts = facts.get("interaction_at")
    if ts is not None:
        out["interaction_at"] = _instant(ts)
    return out


def with_facts(spec: Mapping[str, Any],
               facts: Mapping[tuple[str, str], Mapping[str, Any]]) -> dict[str, Any]:
    """A sample item spec (``store.teaching.create_samples``) with its interaction's facts from
    ``facts`` keyed by (tenant_id, interaction_id); a value the spec has already is kept."""
    found = _fact_values(facts.get((spec["tenant_id"], spec["interaction_id"])) or {})
    return {**spec, **{k: v for k, v in found.items() if spec.get(k) is None}}


def fill_sample_facts(session: Session,
                      facts: Mapping[tuple[str, str], Mapping[str, Any]]) -> int:
    """Copy the interaction's facts onto its sample items: ``facts`` maps (tenant_id,
    interaction_id) to ``{"quality", "intent", "interaction_at"}`` (a missing or None value is
    skipped). Only columns that are NULL are set; returns how many items changed.

    This is not a reviewer-visible change: the facts describe the interaction (its warehouse
    record), not the review, so the item's ``version`` is not bumped (a reviewer's open page stays
    valid) and no review event is written. Each UPDATE sets a column only ``WHERE`` it is still
    NULL, so a concurrent writer is never overwritten. One UPDATE per set of known facts (at
    most seven), executed for all its items at once (executemany, 1,000 per call)."""
    session.flush()  # pending ORM changes first: a statement on the connection does not autoflush
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for (tenant, iid), f in facts.items():
        values = _fact_values(f)
        if values:  # one statement per set of known facts (at most 7), run for all its rows
            groups.setdefault(tuple(sorted(values)), []).append(
                {"_tenant": tenant, "_iid": iid, **{f"_{k}": v for k, v in values.items()}})
    table = ReviewItem.__table__
    changed = 0
    for names, params in groups.items():
        cols = [table.c[name] for name in names]
        stmt = (update(table)
                .where(table.c.kind == "sample", table.c.tenant_id == bindparam("_tenant"),
                       table.c.interaction_id == bindparam("_iid"),
                       or_(*(c.is_(None) for c in cols)))
                .values({c.name: func.coalesce(c, bindparam(f"_{c.name}", type_=c.type))
                         for c in cols}))
        for start in range(0, len(params), 1000):
            res = session.connection().execute(stmt, params[start:start + 1000])
            changed += int(res.rowcount or 0)
    return changed


__all__ = ["FACT_FIELDS", "QUALITY_BINS", "SAMPLE_SORTS", "UNKNOWN", "FilterError",
           "SampleFilter", "TagError", "TagResult", "check_tag", "count_samples",
           "fill_sample_facts", "has_any_tag", "list_samples", "sample_conditions", "sample_facets",
           "sample_stats", "samples_missing_facts", "tag_samples", "with_facts"]
