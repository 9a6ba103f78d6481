"""JSON API under /api/v1: the same ``store`` functions as the web app, tenant-scoped."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi import Path as FPath
from fastapi.responses import JSONResponse

from service import schemas as S
from service.deps import api_admin, api_reviewer, get_ctx
from store import collector_keys, repo, reviewers
from store.db import session_scope
from store.models import ReviewItem
from store.reviewers import ReviewerInfo

router = APIRouter(prefix="/api/v1", tags=["review"])

AUTH_ERRORS = {401: {"model": S.ErrorOut, "description": "not authenticated"},
               403: {"model": S.ErrorOut, "description": "forbidden (role, or CSRF with cookies)"}}
NOT_FOUND = {404: {"model": S.ErrorOut, "description": "no such item in your tenants"}}
INVALID = {422: {"model": S.ErrorOut, "description": "invalid input or decision"}}
BAD_BODY = {400: {"model": S.ErrorOut, "description": "the body is not parseable JSON"}}
ItemId = Annotated[int, FPath(ge=1, le=2**31 - 1, description="review item id")]
CONFLICT = {409: {"model": S.ConflictOut,
                  "description": "stale version: someone else changed the item"}}

StatusParam = Literal["pending", "confirmed", "dismissed", "approved", "rejected", "edited", "any"]
SortParam = Literal["age", "-age", "severity", "confidence"]


def _summary(i: ReviewItem) -> S.ItemSummary:
    return S.ItemSummary.model_validate(i, from_attributes=True)


def _full(i: ReviewItem) -> S.ItemOut:
    return S.ItemOut.model_validate(i, from_attributes=True)


def _conflict(exc: repo.Conflict) -> JSONResponse:
    body = S.ConflictOut(detail=str(exc), item_id=exc.item_id, your_version=exc.expected,
                         current_version=exc.actual)
    return JSONResponse(body.model_dump(), status_code=409)


def _change_item(request: Request, change) -> S.ItemOut | JSONResponse:
    """Run one item change (``change(session) -> ReviewItem``) in a transaction; map the store's
    refusals to HTTP: unknown or out-of-scope item 404, stale version 409, bad transition 422."""
    try:
        with session_scope(get_ctx(request).url) as s:
            return _full(change(s))
    except repo.NotFound as exc:
        raise HTTPException(404, str(exc)) from exc
    except repo.Conflict as exc:
        return _conflict(exc)
    except repo.InvalidTransition as exc:
        raise HTTPException(422, str(exc)) from exc


def _reviewer_out(r: ReviewerInfo) -> dict:
    return dict(id=r.id, username=r.username, role=r.role, tenants=r.tenants, active=r.active,
                created_at=r.created_at)


@router.get("/items", response_model=S.ItemPage, responses={**AUTH_ERRORS, **INVALID},
            summary="List and filter review items")
def list_items(request: Request, me: ReviewerInfo = Depends(api_reviewer),
               kind: Literal["error", "sample"] | None = None,
               status: StatusParam = "pending",
               category: str | None = Query(None, max_length=64),
               tenant: str | None = Query(None, max_length=128),
               source: str | None = Query(None, max_length=64),
               tag: str | None = Query(None, max_length=64),
               sort: SortParam = "age",
               offset: int = Query(0, ge=0, le=10_000_000),
               limit: int = Query(50, ge=1, le=500)) -> S.ItemPage:
    flt = repo.ItemFilter(kind=kind, status=None if status == "any" else status,
                          category=category, tenant_id=tenant, source=source, tag=tag)
    with session_scope(get_ctx(request).url) as s:
        items, total = repo.list_items(s, flt, tenants=me.scope, sort=sort, offset=offset,
                                       limit=limit)
        return S.ItemPage(items=[_summary(i) for i in items], total=total, offset=offset,
                          limit=limit)


@router.get("/items/{item_id}", response_model=S.ItemOut, responses={**AUTH_ERRORS, **NOT_FOUND},
            summary="One review item with its conversation")
def get_item(request: Request, item_id: ItemId, me: ReviewerInfo = Depends(api_reviewer)) -> S.ItemOut:
    with session_scope(get_ctx(request).url) as s:
        try:
            return _full(repo.get_item(s, item_id, me.scope))
        except repo.NotFound as exc:
            raise HTTPException(404, str(exc)) from exc


@router.post("/items/{item_id}/decision", response_model=S.ItemOut,
             responses={**AUTH_ERRORS, **NOT_FOUND, **CONFLICT, **INVALID, **BAD_BODY},
             summary="Decide one item (optimistic locking on version)")
def decide(request: Request, item_id: ItemId, body: S.DecisionIn,
           me: ReviewerInfo = Depends(api_reviewer)):
    return _change_item(request, lambda s: repo.decide(
        s, item_id, decision=body.decision, expected_version=body.version, actor=me.username,
        final_response=body.final_response, note=body.note, tenants=me.scope))


@router.post("/decisions", response_model=S.BatchOut, responses={**AUTH_ERRORS, **INVALID, **BAD_BODY},
             summary="Decide many items; one result per item (conflicts do not undo the others)")
def decide_many(request: Request, body: S.BatchIn,
                me: ReviewerInfo = Depends(api_reviewer)) -> S.BatchOut:
    results = repo.decide_many(get_ctx(request).url,
                               [d.model_dump() for d in body.decisions],
                               actor=me.username, tenants=me.scope)
    return S.BatchOut(results=[S.BatchResult(**r) for r in results],
                      decided=sum(r["ok"] for r in results),
                      conflicts=sum(r["code"] == "conflict" for r in results))


@router.post("/items/{item_id}/tags", response_model=S.ItemOut,
             responses={**AUTH_ERRORS, **NOT_FOUND, **CONFLICT, **INVALID, **BAD_BODY},
             summary="Add and remove tags (tag / untag)")
def tag_item(request: Request, item_id: ItemId, body: S.TagsIn,
             me: ReviewerInfo = Depends(api_reviewer)):
    for t in body.add + body.remove:
        if len(t) > 64:
            raise HTTPException(422, f"tag {t[:20]!r}... is longer than 64 characters")
    return _change_item(request, lambda s: repo.set_tags(
        s, item_id, add=body.add, remove=body.remove, expected_version=body.version,
        actor=me.username, tenants=me.scope))


@router.get("/events", response_model=S.EventPage, responses={**AUTH_ERRORS, **INVALID},
            summary="Review events (append-only audit trail), oldest first, by id cursor")
def list_events(request: Request, me: ReviewerInfo = Depends(api_reviewer),
                after_id: int = Query(0, ge=0, le=2**62),
                limit: int = Query(500, ge=1, le=5000)) -> S.EventPage:
    with session_scope(get_ctx(request).url) as s:
        events = repo.list_events(s, after_id=after_id, limit=limit, tenants=me.scope)
        out = [S.EventOut.model_validate(e, from_attributes=True) for e in events]
    return S.EventPage(events=out, next_after_id=out[-1].id if out else after_id)


@router.get("/me", response_model=S.MeOut, responses=AUTH_ERRORS,
            summary="The authenticated reviewer and their progress")
def me(request: Request, me: ReviewerInfo = Depends(api_reviewer)) -> S.MeOut:
    with session_scope(get_ctx(request).url) as s:
        progress = reviewers.progress(s, me.username)
        progress["remaining"] = sum(reviewers.remaining(s, me.scope).values())
    return S.MeOut(**_reviewer_out(me), progress=S.Progress(**progress))


@router.post("/me/token", response_model=S.TokenOut, responses=AUTH_ERRORS,
             summary="Issue a new API token (the old one stops working)")
def rotate_token(request: Request, me: ReviewerInfo = Depends(api_reviewer)) -> S.TokenOut:
    with session_scope(get_ctx(request).url) as s:
        return S.TokenOut(api_token=reviewers.rotate_token(s, me.id))


# ---- admin --------------------------------------------------------------------------------------
@router.get("/admin/reviewers", response_model=list[S.ReviewerOut], responses=AUTH_ERRORS,
            tags=["admin"], summary="List reviewer accounts")
def list_reviewers(request: Request, _: ReviewerInfo = Depends(api_admin)) -> list[S.ReviewerOut]:
    with session_scope(get_ctx(request).url) as s:
        return [S.ReviewerOut(**_reviewer_out(r)) for r in reviewers.list_reviewers(s)]


@router.post("/admin/reviewers", response_model=S.ReviewerCreated, status_code=201,
             responses={**AUTH_ERRORS, **INVALID, **BAD_BODY}, tags=["admin"],
             summary="Create a reviewer account (returns its API token once)")
def create_reviewer(request: Request, body: S.ReviewerIn,
                    admin: ReviewerInfo = Depends(api_admin)) -> S.ReviewerCreated:
    try:
        with session_scope(get_ctx(request).url) as s:
            r = reviewers.create_reviewer(s, username=body.username, password=body.password,
                                          role=body.role, tenants=body.tenants,
                                          actor=admin.username)
    except reviewers.ReviewerError as exc:
        raise HTTPException(422, str(exc)) from exc
    return S.ReviewerCreated(**_reviewer_out(r), api_token=r.api_token or "")


@router.get("/admin/collector-keys", response_model=list[S.CollectorKeyOut], responses=AUTH_ERRORS,
            tags=["admin"], summary="List collector keys (hashes are never returned)")
def list_collector_keys(request: Request,
                        _: ReviewerInfo = Depends(api_admin)) -> list[S.CollectorKeyOut]:
    with session_scope(get_ctx(request).url) as s:
        return [S.CollectorKeyOut(id=k.id, tenant_id=k.tenant_id, label=k.label, active=k.active,
                                  created_at=k.created_at) for k in collector_keys.list_keys(s)]


@router.post("/admin/collector-keys", response_model=S.CollectorKeyCreated, status_code=201,
             responses={**AUTH_ERRORS, **INVALID, **BAD_BODY}, tags=["admin"],
             summary="Create a collector key for a tenant (returns the key once)")
def create_collector_key(request: Request, body: S.CollectorKeyIn,
                         admin: ReviewerInfo = Depends(api_admin)) -> S.CollectorKeyCreated:
    try:
        with session_scope(get_ctx(request).url) as s:
            k = collector_keys.create_key(s, body.tenant_id, body.label, actor=admin.username)
    except collector_keys.CollectorKeyError as exc:
        raise HTTPException(422, str(exc)) from exc
    return S.CollectorKeyCreated(id=k.id, tenant_id=k.tenant_id, label=k.label, active=k.active,
                                 created_at=k.created_at, key=k.key or "")


Username = Annotated[str, FPath(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.@-]+$",
                                description="the reviewer's username")]
NO_REVIEWER = {404: {"model": S.ErrorOut, "description": "no such reviewer"}}


def _account_change(request: Request, change):
    """Run one admin change of an account (``change(session)``) in a transaction; an unknown
    reviewer is 404, a refused change (bad role/tenant/password, last admin) 422."""
    try:
        with session_scope(get_ctx(request).url) as s:
            return change(s)
    except reviewers.ReviewerNotFound as exc:
        raise HTTPException(404, str(exc)) from exc
    except reviewers.ReviewerError as exc:
        raise HTTPException(422, str(exc)) from exc


@router.patch("/admin/reviewers/{username}", response_model=S.ReviewerOut,
              responses={**AUTH_ERRORS, **NO_REVIEWER, **INVALID, **BAD_BODY}, tags=["admin"],
              summary="Deactivate or reactivate a reviewer, change their role or tenants")
def update_reviewer(request: Request, username: Username, body: S.ReviewerPatch,
                    admin: ReviewerInfo = Depends(api_admin)) -> S.ReviewerOut:
    def change(s) -> S.ReviewerOut:
        r = reviewers.by_username(s, username)
        if body.role is not None or body.tenants is not None:
            r = reviewers.update_reviewer(s, username, role=body.role, tenants=body.tenants,
                                          actor=admin.username)
        if body.active is not None:
            r = reviewers.set_active(s, username, body.active, actor=admin.username)
        return S.ReviewerOut(**_reviewer_out(r))

    return _account_change(request, change)


@router.post("/admin/reviewers/{username}/password", response_model=S.PasswordSet,
             responses={**AUTH_ERRORS, **NO_REVIEWER, **INVALID, **BAD_BODY}, tags=["admin"],
             summary="Set a reviewer's password (their open web sessions end and their API token "
                     "is replaced, unless keep_token)")
def set_password(request: Request, username: Username, body: S.PasswordIn,
                 admin: ReviewerInfo = Depends(api_admin)) -> S.PasswordSet:
    def change(s) -> S.PasswordSet:
        r = reviewers.set_password(s, username, body.password, actor=admin.username,
                                   keep_token=body.keep_token)
        return S.PasswordSet(**_reviewer_out(r), api_token=r.api_token)

    return _account_change(request, change)


@router.post("/admin/reviewers/{username}/token", response_model=S.TokenOut,
             responses={**AUTH_ERRORS, **NO_REVIEWER, **INVALID}, tags=["admin"],
             summary="Issue a new API token for a reviewer (the old one stops working)")
def rotate_reviewer_token(request: Request, username: Username,
                          admin: ReviewerInfo = Depends(api_admin)) -> S.TokenOut:
    return _account_change(request, lambda s: S.TokenOut(api_token=reviewers.rotate_token(
        s, reviewers.by_username(s, username).id, actor=admin.username)))


@router.post("/admin/collector-keys/{key_id}/revoke", response_model=S.CollectorKeyOut,
             responses={**AUTH_ERRORS, 404: {"model": S.ErrorOut, "description": "no such key"},
                        **INVALID}, tags=["admin"],
             summary="Revoke a collector key (kept, inactive: requests with it get 401)")
def revoke_collector_key(request: Request,
                         key_id: Annotated[int, FPath(ge=1, le=2**31 - 1)],
                         admin: ReviewerInfo = Depends(api_admin)) -> S.CollectorKeyOut:
    try:
        with session_scope(get_ctx(request).url) as s:
            k = collector_keys.revoke_key(s, key_id, actor=admin.username)
    except collector_keys.KeyNotFound as exc:
        raise HTTPException(404, str(exc)) from exc
    return S.CollectorKeyOut(id=k.id, tenant_id=k.tenant_id, label=k.label, active=k.active,
                             created_at=k.created_at)


@router.get("/admin/progress", response_model=list[S.ReviewerProgressOut],
            responses=AUTH_ERRORS, tags=["admin"],
            summary="Each reviewer's decisions today and in total, and items left per tenant")
def progress_all(request: Request,
                 _: ReviewerInfo = Depends(api_admin)) -> list[S.ReviewerProgressOut]:
    with session_scope(get_ctx(request).url) as s:
        return [S.ReviewerProgressOut(**row) for row in reviewers.progress_all(s)]


@router.get("/admin/audit", response_model=S.AuditPage, responses={**AUTH_ERRORS, **INVALID},
            tags=["admin"], summary="Admin changes (accounts, keys), oldest first, by id cursor")
def audit_log(request: Request, _: ReviewerInfo = Depends(api_admin),
              after_id: int = Query(0, ge=0, le=2**62),
              limit: int = Query(500, ge=1, le=5000)) -> S.AuditPage:
    with session_scope(get_ctx(request).url) as s:
        out = [S.AuditOut.model_validate(e, from_attributes=True)
               for e in reviewers.list_audit(s, after_id=after_id, limit=limit)]
    return S.AuditPage(entries=out, next_after_id=out[-1].id if out else after_id)
