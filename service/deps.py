"""Shared state and authentication of the service (web app, JSON API, collector)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fastapi import Depends, HTTPException, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from fastapi.templating import Jinja2Templates

from ml.config import Settings
from ml.landing_store import LandingStore
from service.config import ServiceSettings
from service.security import LoginLimiter, csrf_matches, new_csrf_token
from service.workers import ProcessPool
from store import reviewers
from store.db import session_scope
from store.reviewers import ReviewerInfo

SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


@dataclass
class ServiceContext:
    settings: Settings
    service: ServiceSettings
    url: str  # operational store
    landing: LandingStore | Path  # ml.landing_store (a folder or a bucket prefix)
    limiter: LoginLimiter
    templates: Jinja2Templates
    collector_pool: ProcessPool | None = None  # None: the collector uses worker threads only


def get_ctx(request: Request) -> ServiceContext:
    return request.app.state.ctx


bearer_scheme = HTTPBearer(auto_error=False, scheme_name="ReviewerToken",
                           description="A reviewer's API token: `Authorization: Bearer <token>`. "
                                       "The web app's session cookie works too (unsafe methods "
                                       "then need the `X-CSRF-Token` header).")
collector_key_scheme = APIKeyHeader(name="X-API-Key", auto_error=False, scheme_name="CollectorKey",
                                    description="A per-tenant collector key.")


def session_reviewer(request: Request) -> ReviewerInfo | None:
    """The reviewer signed in through the session cookie (re-read: role/tenants/active are fresh).

    The cookie carries the reviewer's session epoch from sign-in; sign-out, deactivation and a
    password change move the epoch on in the store, so an old cookie (even a replayed copy) stops
    working at once.
    """
    uid, epoch = request.session.get("uid"), request.session.get("epoch")
    if not isinstance(uid, int) or not isinstance(epoch, int):
        if uid is not None:
            request.session.clear()
        return None
    with session_scope(get_ctx(request).url) as s:
        r = reviewers.by_id(s, uid)
    if r is None or r.session_epoch != epoch:
        request.session.clear()
        return None
    return r


def csrf_token(request: Request) -> str:
    """The session's CSRF token (created on first use); forms echo it in ``csrf_token``."""
    tok = request.session.get("csrf")
    if not tok:
        tok = request.session["csrf"] = new_csrf_token()
    return tok


def require_csrf(request: Request, given: str | None) -> None:
    if not csrf_matches(request.session.get("csrf"), given):
        raise HTTPException(403, "CSRF token missing or wrong: reload the page and try again")


def api_reviewer(request: Request,
                 creds: HTTPAuthorizationCredentials | None = Depends(bearer_scheme)) -> ReviewerInfo:
    if creds is not None:
        with session_scope(get_ctx(request).url) as s:
            r = reviewers.by_token(s, creds.credentials)
        if r is None:
            raise HTTPException(401, "invalid or revoked API token",
                                headers={"WWW-Authenticate": "Bearer"})
        return r
    r = session_reviewer(request)
    if r is None:
        raise HTTPException(401, "not authenticated: send `Authorization: Bearer <token>` or sign in",
                            headers={"WWW-Authenticate": "Bearer"})
    if request.method not in SAFE_METHODS:
        require_csrf(request, request.headers.get("X-CSRF-Token"))
    return r


def api_admin(r: ReviewerInfo = Depends(api_reviewer)) -> ReviewerInfo:
    if not r.is_admin:
        raise HTTPException(403, "this endpoint is for admins")
    return r
