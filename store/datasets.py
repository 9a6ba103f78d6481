"""Dataset versions in the operational store: training datasets and evaluation suites, the examples
of each version with their split, and what is held out of training.

A version is immutable: recording the same (kind, name, version_hash) twice returns the first
record. ``version`` is the ordinal within (kind, name) (1, 2, ...); ``version_hash`` is the content
hash users name versions by (any unique prefix of at least 4 characters works, see
``get_dataset``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from store.models import DATASET_KINDS, DATASET_SPLITS, Dataset, DatasetItem, ReviewItem
from store.repo import NotFound

ITEM_FIELDS = ("item_key", "review_item_id", "split", "source", "category", "tenant_id",
               "session_key", "prompt_hash", "example_hash")
MIN_PREFIX = 4


class AmbiguousVersion(ValueError):
    pass


def _check_kind(kind: str) -> None:
    if kind not in DATASET_KINDS:
        raise ValueError(f"dataset kind must be one of {list(DATASET_KINDS)}, got {kind!r}")


def record_dataset(session: Session, *, kind: str, name: str, version_hash: str,
                   items: Sequence[Mapping[str, Any]], **fields: Any) -> tuple[Dataset, bool]:
    """Record a dataset version and its items unless (kind, name, version_hash) exists.

    Returns ``(dataset, created)``. ``fields`` are columns of ``Dataset`` (spec, counts, stats,
    exports, path, checksum, parent_version, n_train, n_validation, n_eval, n_retention,
    created_by, filters). Each item is a mapping with ``ITEM_FIELDS``; ``split`` must be one of
    ``DATASET_SPLITS``. Two writers recording the same version concurrently both get the one row.
    """
    _check_kind(kind)
    for n, it in enumerate(items):
        if it.get("split") not in DATASET_SPLITS:
            raise ValueError(f"dataset item {n} ({it.get('item_key')!r}): split must be one of "
                             f"{list(DATASET_SPLITS)}, got {it.get('split')!r}")
        if not it.get("item_key") or not it.get("prompt_hash") or not it.get("example_hash"):
            raise ValueError(f"dataset item {n}: item_key, prompt_hash and example_hash are "
                             f"required")
    existing = find_by_hash(session, kind, name, version_hash)
    if existing is not None:
        return existing, False
    for _attempt in range(5):
        ordinal = (session.scalar(select(func.max(Dataset.version)).where(
            Dataset.kind == kind, Dataset.name == name)) or 0) + 1
        ds = Dataset(kind=kind, name=name, version=ordinal, version_hash=version_hash, **fields)
        try:
            with session.begin_nested():
                session.add(ds)
                session.flush()
                session.add_all(DatasetItem(dataset_id=ds.id, **{f: it.get(f) for f in ITEM_FIELDS})
                                for it in items)
                session.flush()
        except IntegrityError:
            existing = find_by_hash(session, kind, name, version_hash)
            if existing is not None:  # a concurrent writer recorded the same version
                return existing, False
            continue  # a concurrent writer took the ordinal: take the next one
        return ds, True
    raise RuntimeError(f"could not record {kind} {name} {version_hash}: the ordinal kept being "
                       f"taken by concurrent writers")


def find_by_hash(session: Session, kind: str, name: str, version_hash: str) -> Dataset | None:
    return session.scalar(select(Dataset).where(Dataset.kind == kind, Dataset.name == name,
                                                Dataset.version_hash == version_hash))


def list_datasets(session: Session, *, kind: str | None = None,
                  name: str | None = None) -> list[Dataset]:
    """Dataset versions, newest first."""
    q = select(Dataset)
    if kind:
        _check_kind(kind)
        q = q.where(Dataset.kind == kind)
    if name:
        q = q.where(Dataset.name == name)
    return list(session.scalars(q.order_by(Dataset.created_at.desc(), Dataset.id.desc())))


def latest_dataset(session: Session, kind: str, name: str | None = None) -> Dataset | None:
    found = list_datasets(session, kind=kind, name=name)
    return found[0] if found else None


def get_dataset(session: Session, ref: str, *, kind: str | None = None) -> Dataset:
    """The version named by ``ref``: its content hash or a unique prefix of it (at least 4
    characters), or ``<name>@<ordinal>`` / ``@<ordinal>`` (name ``default``)."""
    ref = (ref or "").strip()
    q = select(Dataset)
    if kind:
        _check_kind(kind)
        q = q.where(Dataset.kind == kind)
    if "@" in ref:
        name, _, ordinal = ref.partition("@")
        if not ordinal.isdigit():
            raise NotFound(f"dataset version {ref!r}: after '@' comes the version number")
        found = list(session.scalars(q.where(Dataset.name == (name or "default"),
                                             Dataset.version == int(ordinal))))
    else:
        if len(ref) < MIN_PREFIX:
            raise NotFound(f"dataset version {ref!r}: give at least {MIN_PREFIX} characters of "
                           f"the version hash")
        found = list(session.scalars(q.where(Dataset.version_hash.like(f"{ref.lower()}%"))))
    if not found:
        raise NotFound(f"no dataset version {ref!r}" + (f" of kind {kind}" if kind else ""))
    if len(found) > 1:
        names = ", ".join(f"{d.kind}/{d.name}@{d.version} {d.version_hash}" for d in found)
        raise AmbiguousVersion(f"dataset version {ref!r} is ambiguous: {names}")
    return found[0]


def dataset_items(session: Session, dataset_id: int) -> list[DatasetItem]:
    return list(session.scalars(select(DatasetItem).where(DatasetItem.dataset_id == dataset_id)
                                .order_by(DatasetItem.id)))


@dataclass(frozen=True)
class HeldOut:
    """Examples of every evaluation suite ever recorded: never to enter training data."""

    keys: frozenset[str]
    prompt_hashes: frozenset[str]

    def __contains__(self, item: tuple[str, str]) -> bool:
        key, prompt_hash = item
        return key in self.keys or prompt_hash in self.prompt_hashes


def _items_of_kind(session: Session, kind: str, splits: Sequence[str] | None = None):
    q = (select(DatasetItem.item_key, DatasetItem.prompt_hash)
         .join(Dataset, Dataset.id == DatasetItem.dataset_id).where(Dataset.kind == kind))
    if splits:
        q = q.where(DatasetItem.split.in_(list(splits)))
    return session.execute(q).all()


def held_out(session: Session) -> HeldOut:
    """Every item of every evaluation suite (evaluation items and retention items), by key and
    prompt hash: training never sees them, so the evaluation measures generalisation and the
    retention set measures forgetting on data the model was not trained on."""
    rows = _items_of_kind(session, "eval_suite")
    return HeldOut(keys=frozenset(r[0] for r in rows), prompt_hashes=frozenset(r[1] for r in rows))


def trained(session: Session) -> HeldOut:
    """Every example of every training dataset (train and validation), by key and prompt hash:
    an evaluation suite does not pick what a model may already have been trained on."""
    rows = _items_of_kind(session, "training")
    return HeldOut(keys=frozenset(r[0] for r in rows), prompt_hashes=frozenset(r[1] for r in rows))


def approved_after(session: Session, since: datetime | None) -> int:
    """How many samples were approved or edited after ``since`` (all of them for None)."""
    q = select(func.count()).select_from(ReviewItem).where(
        ReviewItem.kind == "sample", ReviewItem.status.in_(("approved", "edited")))
    if since is not None:
        q = q.where(ReviewItem.decided_at > since)
    return int(session.scalar(q) or 0)


def latest_decision_at(session: Session) -> datetime | None:
    """When the newest approved or edited sample was decided (the dataset sensor's cursor)."""
    return session.scalar(select(func.max(ReviewItem.decided_at)).where(
        ReviewItem.kind == "sample", ReviewItem.status.in_(("approved", "edited"))))


def dataset_summary(ds: Dataset) -> dict[str, Any]:
    """A dataset version as plain JSON-able data (CLI, JSON API, web page)."""
    return {
        "id": ds.id, "kind": ds.kind, "name": ds.name, "version": ds.version,
        "version_hash": ds.version_hash, "parent_version": ds.parent_version,
        "status": ds.status, "n_train": ds.n_train, "n_validation": ds.n_validation,
        "n_eval": ds.n_eval, "n_retention": ds.n_retention, "spec": ds.spec or {},
        "counts": ds.counts or {}, "stats": ds.stats or {}, "exports": ds.exports or {},
        "path": ds.path, "checksum": ds.checksum, "created_by": ds.created_by,
        "created_at": ds.created_at.isoformat() if ds.created_at else None,
    }


def approved_sample_records(session: Session, *, ids: Sequence[int] | None = None,
                            conditions: Sequence[Any] = ()) -> list[dict[str, Any]]:
    """Approved and edited sample items (the reviewer's final text in ``final_response``) with
    everything a dataset build reads: conversation, session, category, intent, quality, time,
    tags. ``ids`` limits them to those items; ``conditions`` are extra SQL conditions on
    ``ReviewItem`` (e.g. a sample filter's). Oldest first."""
    if ids is not None:
        conditions = (*conditions, ReviewItem.id.in_(list(ids)))
    return _sample_records(session, ("approved", "edited"), conditions)


def pending_human_corrections(session: Session, human_source: str) -> list[dict[str, Any]]:
    """Sample items proposed by a human agent (``source == human_source``) that no reviewer has
    decided yet, in the shape of :func:`approved_sample_records` (the agent's reply in
    ``proposed_response``). Rejected ones are never returned."""
    return _sample_records(session, ("pending",), (ReviewItem.source == human_source,))


def _sample_records(session: Session, statuses: Sequence[str],
                    conditions: Sequence[Any]) -> list[dict[str, Any]]:
    q = select(ReviewItem).where(ReviewItem.kind == "sample",
                                 ReviewItem.status.in_(list(statuses)), *conditions)

    def naive(t: datetime | None) -> datetime | None:
        return t.replace(tzinfo=None) if t is not None and t.tzinfo else t

    return [{
        "id": it.id, "parent_id": it.parent_id, "tenant_id": it.tenant_id,
        "interaction_id": it.interaction_id, "session_id": it.session_id,
        "messages": it.messages or [], "original_response": it.original_response,
        "final_response": it.final_response, "proposed_response": it.proposed_response,
        "source": it.source, "status": it.status, "category": it.category,
        "intent": it.intent, "quality": it.quality, "tags": list(it.tags or []),
        "interaction_at": naive(it.interaction_at), "created_at": naive(it.created_at),
        "decided_by": it.decided_by, "decided_at": naive(it.decided_at),
    } for it in session.scalars(q.order_by(ReviewItem.id))]

