"""Per-tenant API keys of the log collector (``POST /v1/interactions``).

A key is a random 256-bit string shown once at creation; only its SHA-256 digest is stored, and a
request's key is looked up by that digest. A key belongs to exactly one tenant: the collector
forces or checks every record's ``tenant_id`` against it.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from store.models import CollectorKey, ConfigHistory

KEY_PREFIX = "llc_"
TENANT_RE = re.compile(r"^[A-Za-z0-9_.:@-]{1,128}$")


class CollectorKeyError(ValueError):
    pass


@dataclass(frozen=True)
class CollectorKeyInfo:
    id: int
    tenant_id: str
    label: str | None
    active: bool
    created_at: datetime | None
    key: str | None = None  # plaintext, only right after creation


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def create_key(session: Session, tenant_id: str, label: str | None = None, *,
               actor: str = "system") -> CollectorKeyInfo:
    """Create a key for ``tenant_id``; the returned info carries the plaintext key (shown once)."""
    if not TENANT_RE.match(tenant_id or ""):
        raise CollectorKeyError("tenant_id must be 1-128 of [A-Za-z0-9_.:@-]")
    if label is not None and len(label) > 128:
        raise CollectorKeyError("label must be at most 128 characters")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    row = CollectorKey(tenant_id=tenant_id, key_hash=hash_key(key), label=label, active=True)
    session.add(row)
    session.flush()
    session.add(ConfigHistory(key=f"collector_key:{row.id}", old_value=None,
                              new_value={"created": True, "tenant_id": tenant_id, "label": label,
                                         "active": True}, changed_by=actor))
    return CollectorKeyInfo(row.id, row.tenant_id, row.label, True, row.created_at, key)


def tenant_for_key(session: Session, key: str | None) -> str | None:
    """The tenant of an active key, or ``None`` for a missing, unknown or revoked key."""
    if not key:
        return None
    row = session.scalar(select(CollectorKey).where(CollectorKey.key_hash == hash_key(key)))
    return row.tenant_id if row is not None and row.active else None


class KeyNotFound(CollectorKeyError):
    pass


def revoke_key(session: Session, key_id: int, *, actor: str = "system") -> CollectorKeyInfo:
    """Revoke a key (kept, marked inactive: requests with it get 401). Revoking twice is a no-op."""
    row = session.get(CollectorKey, key_id)
    if row is None:
        raise KeyNotFound(f"collector key {key_id} not found")
    if row.active:
        session.add(ConfigHistory(key=f"collector_key:{row.id}", old_value={"active": True},
                                  new_value={"active": False}, changed_by=actor))
        row.active = False
    session.flush()
    return CollectorKeyInfo(row.id, row.tenant_id, row.label, False, row.created_at)


def list_keys(session: Session, tenant_id: str | None = None) -> list[CollectorKeyInfo]:
    q = select(CollectorKey).order_by(CollectorKey.id)
    if tenant_id:
        q = q.where(CollectorKey.tenant_id == tenant_id)
    return [CollectorKeyInfo(r.id, r.tenant_id, r.label, bool(r.active), r.created_at)
            for r in session.scalars(q)]
