"""Reviewer accounts of the review service.

Passwords are hashed with argon2id (``argon2-cffi``); API tokens are random 256-bit strings of
which only a SHA-256 digest is stored (a token has full entropy, so a slow hash adds nothing and
a fast digest lets the service look a token up by its hash). Roles: ``reviewer`` (decides items
of the tenants listed on the account) and ``admin`` (every tenant, manages reviewers and keys).
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import false, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from store.models import ConfigHistory, Reviewer, ReviewEvent, ReviewItem

ROLES = ("reviewer", "admin")
USERNAME_RE = re.compile(r"^[A-Za-z0-9_.@-]{1,128}$")
TENANT_RE = re.compile(r"^[A-Za-z0-9_.:@-]{1,128}$")
MIN_PASSWORD = 8
MAX_PASSWORD = 1024
TOKEN_PREFIX = "llr_"

_hasher = PasswordHasher()
# verified against when the username does not exist, so a miss costs as much as a wrong password
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


class ReviewerError(ValueError):
    """A reviewer account could not be created or changed; the message says why."""


class ReviewerNotFound(ReviewerError):
    pass


@dataclass(frozen=True)
class ReviewerInfo:
    """What the service needs to know about a signed-in reviewer (safe to keep after the session)."""

    id: int
    username: str
    role: str
    tenants: list[str] = field(default_factory=list)
    active: bool = True
    created_at: datetime | None = None
    api_token: str | None = None  # only set right after creation / rotation: shown once
    session_epoch: int = 0

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    @property
    def scope(self) -> list[str]:
        """The tenant list handed to ``store.repo`` functions (``["*"]`` = every tenant)."""
        return ["*"] if self.is_admin else list(self.tenants)


def _info(r: Reviewer, api_token: str | None = None) -> ReviewerInfo:
    return ReviewerInfo(id=r.id, username=r.username, role=r.role, tenants=list(r.tenants or []),
                        active=bool(r.active), created_at=r.created_at, api_token=api_token,
                        session_epoch=int(r.session_epoch or 0))


def audit(session: Session, key: str, old: dict | None, new: dict | None, actor: str) -> None:
    """One ``config_history`` row per admin change (who, what, old and new value; never a secret)."""
    session.add(ConfigHistory(key=key, old_value=old, new_value=new, changed_by=actor))


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def _check_tenants(tenants: Sequence[str]) -> list[str]:
    out: list[str] = []
    for t in tenants:
        t = t.strip()
        if not t:
            continue
        if t != "*" and not TENANT_RE.match(t):
            raise ReviewerError(f"tenant {t[:40]!r} must be 1-128 of [A-Za-z0-9_.:@-] (or '*')")
        if t not in out:
            out.append(t)
    return out


def create_reviewer(session: Session, *, username: str, password: str, role: str = "reviewer",
                    tenants: Sequence[str] = (), with_token: bool = True,
                    actor: str = "system") -> ReviewerInfo:
    """Create an account; returns its info with the plaintext API token (shown once)."""
    if not USERNAME_RE.match(username or ""):
        raise ReviewerError("username must be 1-128 of [A-Za-z0-9_.@-]")
    if role not in ROLES:
        raise ReviewerError(f"role must be one of {list(ROLES)}, got {role!r}")
    if not (MIN_PASSWORD <= len(password or "") <= MAX_PASSWORD):
        raise ReviewerError(f"password must be {MIN_PASSWORD}-{MAX_PASSWORD} characters long")
    tenant_list = _check_tenants(tenants)
    if role == "reviewer" and not tenant_list:
        raise ReviewerError("a reviewer needs at least one tenant (or '*' for every tenant)")
    if session.scalar(select(Reviewer.id).where(Reviewer.username == username)) is not None:
        raise ReviewerError(f"reviewer {username!r} already exists")
    token = new_token() if with_token else None
    r = Reviewer(username=username, password_hash=_hasher.hash(password), role=role,
                 tenants=tenant_list, api_token_hash=hash_token(token) if token else None,
                 active=True)
    try:
        with session.begin_nested():
            session.add(r)
            session.flush()
    except IntegrityError as exc:  # a concurrent create of the same username
        raise ReviewerError(f"reviewer {username!r} already exists") from exc
    audit(session, f"reviewer:{username}", None,
          {"created": True, "role": role, "tenants": tenant_list, "active": True}, actor)
    return _info(r, token)


def _verify(password_hash: str, password: str) -> bool:
    """True when ``password`` matches; a mismatch or an unreadable hash is a plain ``False``."""
    try:
        return _hasher.verify(password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def authenticate(session: Session, username: str, password: str) -> ReviewerInfo | None:
    """The reviewer if the password matches an active account, else ``None``."""
    r = session.scalar(select(Reviewer).where(Reviewer.username == username))
    if r is None or not r.active:
        _verify(_DUMMY_HASH, password)  # same cost as a real account: no user enumeration by timing
        return None
    if not _verify(r.password_hash, password):
        return None
    if _hasher.check_needs_rehash(r.password_hash):
        r.password_hash = _hasher.hash(password)
        session.flush()
    return _info(r)


def by_token(session: Session, token: str) -> ReviewerInfo | None:
    if not token:
        return None
    r = session.scalar(select(Reviewer).where(Reviewer.api_token_hash == hash_token(token)))
    return _info(r) if r is not None and r.active else None


def by_id(session: Session, reviewer_id: int) -> ReviewerInfo | None:
    r = session.get(Reviewer, reviewer_id)
    return _info(r) if r is not None and r.active else None


def _get(session: Session, username: str) -> Reviewer:
    r = session.scalar(select(Reviewer).where(Reviewer.username == username))
    if r is None:
        raise ReviewerNotFound(f"reviewer {username!r} not found")
    return r


def _lock_admins(session: Session) -> None:
    """Serialize the changes that could remove an admin (deactivating, demoting), so the
    last-admin check cannot be raced: otherwise two admins deactivating (or demoting) each other
    at once would each count the other as the remaining admin and leave none. Called before the
    account is read; the second change waits for the first to commit, then counts again.

    PostgreSQL: ``SELECT ... FOR UPDATE`` of the active admin rows, in id order (a concurrent
    change of one of them waits; READ COMMITTED re-reads them after the wait). SQLite has no row
    locks and the driver only opens a transaction at the first write, so reads are not enough:
    a write that changes nothing takes the database's single write lock up front (other writers
    wait on the busy timeout)."""
    if session.get_bind().dialect.name == "sqlite":
        session.execute(update(Reviewer).where(false()).values(id=Reviewer.id))
        return
    session.execute(select(Reviewer.id).where(Reviewer.role == "admin",
                                              Reviewer.active.is_(True))
                    .order_by(Reviewer.id).with_for_update())


def _other_active_admins(session: Session, r: Reviewer) -> int:
    return session.scalar(select(func.count()).select_from(Reviewer).where(
        Reviewer.role == "admin", Reviewer.active.is_(True), Reviewer.id != r.id)) or 0


def rotate_token(session: Session, reviewer_id: int, *, actor: str | None = None) -> str:
    """Replace a reviewer's API token; returns the new plaintext token (the old one stops working)."""
    r = session.get(Reviewer, reviewer_id)
    if r is None:
        raise ReviewerError(f"reviewer {reviewer_id} not found")
    token = new_token()
    r.api_token_hash = hash_token(token)
    audit(session, f"reviewer:{r.username}", None, {"api_token": "rotated"}, actor or r.username)
    session.flush()
    return token


def end_sessions(session: Session, reviewer_id: int) -> None:
    """Sign out: every web session of the reviewer stops working (their epoch moves on)."""
    r = session.get(Reviewer, reviewer_id)
    if r is not None:
        r.session_epoch = int(r.session_epoch or 0) + 1
        session.flush()


def set_active(session: Session, username: str, active: bool, *,
               actor: str = "system") -> ReviewerInfo:
    """Deactivate (sign-in, API token and open sessions stop working) or reactivate an account."""
    if not active:
        _lock_admins(session)  # before reading the account: it may be one of the locked rows
    r = _get(session, username)
    if not active and r.active and r.role == "admin" and not _other_active_admins(session, r):
        raise ReviewerError(f"{username!r} is the last active admin: make another admin first")
    if bool(r.active) != active:
        audit(session, f"reviewer:{username}", {"active": bool(r.active)}, {"active": active},
              actor)
        r.active = active
        if not active:
            r.session_epoch = int(r.session_epoch or 0) + 1
    session.flush()
    return _info(r)


def set_password(session: Session, username: str, password: str, *,
                 actor: str = "system", keep_token: bool = False) -> ReviewerInfo:
    """Set a new password. Every credential of the old one stops working: the reviewer's open web
    sessions end and their API token is replaced (a password reset is what follows a compromise,
    and a token taken with the account must not outlive it); the new token is in the returned
    info's ``api_token``, to be shown once. ``keep_token=True`` keeps the API token (a routine
    change, no compromise suspected); ``api_token`` is then ``None``. The audit row holds no
    secret."""
    r = _get(session, username)
    if not (MIN_PASSWORD <= len(password or "") <= MAX_PASSWORD):
        raise ReviewerError(f"password must be {MIN_PASSWORD}-{MAX_PASSWORD} characters long")
    r.password_hash = _hasher.hash(password)
    r.session_epoch = int(r.session_epoch or 0) + 1
    token = None if keep_token else new_token()
    change: dict = {"password": "changed"}
    if token is not None:
        r.api_token_hash = hash_token(token)
        change["api_token"] = "rotated"
    audit(session, f"reviewer:{username}", None, change, actor)
    session.flush()
    return _info(r, token)


def update_reviewer(session: Session, username: str, *, role: str | None = None,
                    tenants: Sequence[str] | None = None, actor: str = "system") -> ReviewerInfo:
    """Change the role and/or the tenant list (``None`` leaves a field as it is)."""
    if role is not None and role != "admin":
        _lock_admins(session)  # a demotion may remove an admin: see _lock_admins
    r = _get(session, username)
    new_role = r.role if role is None else role
    if new_role not in ROLES:
        raise ReviewerError(f"role must be one of {list(ROLES)}, got {new_role!r}")
    new_tenants = list(r.tenants or []) if tenants is None else _check_tenants(tenants)
    if new_role == "reviewer" and not new_tenants:
        raise ReviewerError("a reviewer needs at least one tenant (or '*' for every tenant)")
    if r.role == "admin" and new_role != "admin" and r.active \
            and not _other_active_admins(session, r):
        raise ReviewerError(f"{username!r} is the last active admin: make another admin first")
    old = {"role": r.role, "tenants": list(r.tenants or [])}
    new = {"role": new_role, "tenants": new_tenants}
    if old != new:
        audit(session, f"reviewer:{username}", old, new, actor)
        r.role, r.tenants = new_role, new_tenants
    session.flush()
    return _info(r)


def list_reviewers(session: Session) -> list[ReviewerInfo]:
    return [_info(r) for r in session.scalars(select(Reviewer).order_by(Reviewer.username))]


def progress(session: Session, actor: str, *, now: datetime | None = None) -> dict[str, int]:
    """Decisions of one reviewer: today (UTC) and in total, counted from the review events."""
    now = now or datetime.now(UTC)
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    base = select(func.count()).select_from(ReviewEvent).where(
        ReviewEvent.actor == actor, ReviewEvent.action == "decide")
    total = session.scalar(base) or 0
    today = session.scalar(base.where(ReviewEvent.at >= midnight,
                                      ReviewEvent.at < midnight + timedelta(days=1))) or 0
    return {"today": int(today), "total": int(total)}


def remaining(session: Session, tenants: Sequence[str] | None) -> dict[str, int]:
    """Pending review items per tenant, within ``tenants`` (``None`` or ``["*"]``: every tenant)."""
    q = (select(ReviewItem.tenant_id, func.count()).where(ReviewItem.status == "pending")
         .group_by(ReviewItem.tenant_id).order_by(ReviewItem.tenant_id))
    if tenants is not None and "*" not in tenants:
        q = q.where(ReviewItem.tenant_id.in_(list(tenants)))
    return {str(t): int(n) for t, n in session.execute(q).all()}


def progress_all(session: Session, *, now: datetime | None = None) -> list[dict]:
    """Every reviewer's decisions (today UTC and in total) and the items left in their tenants."""
    now = now or datetime.now(UTC)
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    decide = select(ReviewEvent.actor, func.count()).where(ReviewEvent.action == "decide") \
        .group_by(ReviewEvent.actor)
    total = dict(session.execute(decide).all())
    today = dict(session.execute(decide.where(ReviewEvent.at >= midnight,
                                              ReviewEvent.at < midnight + timedelta(days=1))).all())
    left = remaining(session, None)
    out = []
    for r in list_reviewers(session):
        mine = {t: n for t, n in left.items() if tenant_allowed_for(r, t)}
        out.append({"username": r.username, "role": r.role, "active": r.active,
                    "tenants": r.tenants, "today": int(today.get(r.username, 0)),
                    "total": int(total.get(r.username, 0)), "remaining": mine,
                    "remaining_total": sum(mine.values())})
    return out


def tenant_allowed_for(r: ReviewerInfo, tenant_id: str) -> bool:
    return "*" in r.scope or tenant_id in r.scope


def list_audit(session: Session, *, after_id: int = 0, limit: int = 500) -> list[ConfigHistory]:
    """Admin changes (``config_history``), oldest first, after the id cursor ``after_id``."""
    return list(session.scalars(select(ConfigHistory).where(ConfigHistory.id > after_id)
                                .order_by(ConfigHistory.id).limit(limit)))


def by_username(session: Session, username: str) -> ReviewerInfo:
    """An account by name, active or not; ``ReviewerError`` when there is none."""
    return _info(_get(session, username))
