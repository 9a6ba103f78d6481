"""The review web app: server-rendered pages and plain forms (+ a little JS for shortcuts)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any
from urllib.parse import parse_qs, urlencode, urlsplit

from fastapi import APIRouter, Form, HTTPException, Query, Request
from fastapi import Path as FPath
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import select

from service.deps import csrf_token, get_ctx, require_csrf, session_reviewer
from service.diffs import diff_html
from service.security import (
    MAX_BATCH_DECISIONS,
    MAX_FINAL_RESPONSE,
    MAX_NOTE,
    MAX_PASSWORD,
    MAX_TAG,
    MAX_USERNAME,
    InputTooLong,
    check_length,
)
from store import repo, reviewers
from store.db import session_scope
from store.models import ReviewItem
from store.reviewers import ReviewerInfo

router = APIRouter(include_in_schema=False)

SHORTCUTS = [
    ("a", "approve the sample / confirm the error (\"no error found\" item: the reply is wrong)"),
    ("r", "reject the sample / dismiss the error (\"no error found\" item: the reply is fine)"),
    ("e", "edit the proposed correction (then Ctrl+Enter saves edit & approve)"),
    ("n", "write a note"),
    ("j / k", "next / previous item (on the queue: move the cursor)"),
    ("x", "queue: select the item under the cursor"),
    ("o or Enter", "queue: open the item under the cursor"),
    ("Esc", "leave the text field"),
    ("?", "show or hide this help"),
]
SORT_LABELS = {"age": "oldest first", "-age": "newest first", "severity": "severity",
               "confidence": "auditor confidence"}
FILTERS = ("kind", "category", "tenant", "source", "tag")
WEB_DECISIONS = ("approve", "reject", "edit", "confirm", "dismiss")
DONE_WORDS = {"approved": "approved", "rejected": "rejected", "edited": "edited and approved",
              "confirmed": "confirmed as an error", "dismissed": "dismissed"}
# a "no error found" calibration item inverts the auditor's verdict: confirm = the reply IS wrong
NO_ERROR_DONE_WORDS = {"confirmed": "confirmed: the reply is wrong (an error the auditor missed)",
                       "dismissed": "dismissed: the reply is fine (the auditor was right)"}
def _flash(request: Request, message: str, level: str = "ok") -> None:
    request.session.setdefault("flash", [])
    request.session["flash"] = request.session["flash"] + [[level, message]]


def render(request: Request, name: str, ctx: dict[str, Any], status_code: int = 200,
           user: ReviewerInfo | None = None) -> HTMLResponse:
    c = get_ctx(request)
    progress = None
    if user is not None:
        with session_scope(c.url) as s:
            progress = reviewers.progress(s, user.username)
            progress["remaining"] = sum(reviewers.remaining(s, user.scope).values())
    flashes = request.session.pop("flash", [])
    return c.templates.TemplateResponse(
        request, name,
        {"user": user, "progress": progress, "csrf": csrf_token(request), "flashes": flashes,
         **ctx},
        status_code=status_code)


def _login_redirect(request: Request) -> RedirectResponse:
    nxt = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse("/login?" + urlencode({"next": nxt}), status_code=303)


MAX_ID = 2**31 - 1  # ids and versions are 32-bit in the store; the API has the same bounds
ItemId = Annotated[int, FPath(ge=1, le=MAX_ID, description="review item id")]
SELECTION_RE = re.compile(r"([0-9]{1,10}):([0-9]{1,10})")  # ASCII digits only (not str.isdigit)


def _safe_next(nxt: str | None) -> str:
    r"""``nxt`` when it is a same-site relative path, else ``/``: never an open redirect.

    A browser parsing a URL (WHATWG) drops tab, CR and LF anywhere in it, strips leading and
    trailing spaces and control characters, and reads ``\`` as ``/``: ``/\t/evil.example`` is
    ``//evil.example``, another site. So any control character, any whitespace and any backslash
    makes the link refused, as does a leading ``//``."""
    if (nxt and nxt.startswith("/") and not nxt.startswith("//") and nxt.isprintable()
            and not any(ch.isspace() for ch in nxt) and "\\" not in nxt):
        return nxt
    return "/"


def _age(dt: datetime | None) -> str:
    if dt is None:
        return ""
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    secs = max(0, int((datetime.now(UTC) - dt).total_seconds()))
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= n:
            return f"{secs // n}{unit}"
    return f"{secs}s"


# ---- sign in / out --------------------------------------------------------------------------------
@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request, next: str = "/"):
    if session_reviewer(request) is not None:
        return RedirectResponse(_safe_next(next), status_code=303)
    return render(request, "login.html", {"next": _safe_next(next), "error": None, "username": ""})


@router.post("/login", response_class=HTMLResponse)
def login(request: Request, username: str = Form(""), password: str = Form(""),
          csrf_token: str = Form(""), next: str = Form("/")):
    require_csrf(request, csrf_token)
    c = get_ctx(request)
    ip = request.client.host if request.client else "unknown"
    page = {"next": _safe_next(next), "username": username[:MAX_USERNAME]}
    if len(username) > MAX_USERNAME or len(password) > MAX_PASSWORD:
        return render(request, "login.html", {**page, "error": "Username or password too long."},
                      status_code=422)
    # counted before the password is checked (atomically): concurrent guesses cannot overshoot
    wait, stamp = c.limiter.attempt(username, ip)
    if wait is not None:
        resp = render(request, "login.html",
                      {**page, "error": f"Too many failed sign-ins. Try again in "
                                        f"{max(1, round(wait / 60))} minute(s)."},
                      status_code=429)
        resp.headers["Retry-After"] = str(wait)
        return resp
    with session_scope(c.url) as s:
        who = reviewers.authenticate(s, username, password)
    if who is None:
        return render(request, "login.html", {**page, "error": "Wrong username or password."},
                      status_code=401)
    c.limiter.succeeded(username, ip, stamp)
    request.session.clear()  # a fresh session (and CSRF token) at every sign-in
    request.session["uid"] = who.id
    request.session["epoch"] = who.session_epoch
    return RedirectResponse(page["next"], status_code=303)


@router.post("/logout")
def logout(request: Request, csrf_token: str = Form("")):
    require_csrf(request, csrf_token)
    user = session_reviewer(request)
    if user is not None:
        # server-side: every cookie of this reviewer (copies included) stops working
        with session_scope(get_ctx(request).url) as s:
            reviewers.end_sessions(s, user.id)
    request.session.clear()
    return RedirectResponse("/login", status_code=303)


# ---- queue ---------------------------------------------------------------------------------------
@router.get("/", response_class=HTMLResponse)
def queue(request: Request, kind: str | None = Query(None, max_length=16),
          category: str | None = Query(None, max_length=64),
          tenant: str | None = Query(None, max_length=128),
          source: str | None = Query(None, max_length=64),
          tag: str | None = Query(None, max_length=64),
          sort: str = Query("age", max_length=16), page: int = Query(1, ge=1, le=100_000)):
    user = session_reviewer(request)
    if user is None:
        return _login_redirect(request)
    c = get_ctx(request)
    if sort not in SORT_LABELS:
        sort = "age"
    if kind not in (None, "", "error", "sample"):
        raise HTTPException(422, "kind must be error or sample")
    flt = repo.ItemFilter(kind=kind or None, status="pending", category=category or None,
                          tenant_id=tenant or None, source=source or None, tag=tag or None)
    per = c.service.page_size
    with session_scope(c.url) as s:
        items, total = repo.list_items(s, flt, tenants=user.scope, sort=sort,
                                       offset=(page - 1) * per, limit=per)
        facets = repo.facet_values(s, tenants=user.scope)
    pages = max(1, (total + per - 1) // per)
    params = {k: v for k, v in (("kind", kind), ("category", category), ("tenant", tenant),
                                ("source", source), ("tag", tag), ("sort", sort)) if v}

    def page_url(n: int) -> str:
        return "/?" + urlencode({**params, "page": n})

    rows = [{"item": i, "age": _age(i.created_at), "no_error_found": repo.is_no_error_found(i),
             "text": (i.proposed_response if i.kind == "sample" else i.original_response) or ""}
            for i in items]
    return render(request, "queue.html", {
        "rows": rows, "total": total, "page": page, "pages": pages, "page_url": page_url,
        "facets": facets, "params": params, "filters": FILTERS, "sort": sort,
        "sort_labels": SORT_LABELS, "back": "/?" + urlencode({**params, "page": page}),
    }, user=user)


@router.post("/batch")
def batch(request: Request, action: str = Form(...), selected: list[str] = Form(default=[]),
          note: str = Form(""), csrf_token: str = Form(""), back: str = Form("/")):
    user = session_reviewer(request)
    if user is None:
        return _login_redirect(request)
    require_csrf(request, csrf_token)
    if action not in ("approve", "reject"):
        raise HTTPException(422, "batch action must be approve or reject")
    try:
        check_length("note", note, MAX_NOTE)
    except InputTooLong as exc:
        raise HTTPException(422, str(exc)) from exc
    if len(selected) > MAX_BATCH_DECISIONS:
        raise HTTPException(422, f"{len(selected):,} items selected; a batch decision takes at "
                                 f"most {MAX_BATCH_DECISIONS} (the same limit as the API): "
                                 "select fewer and repeat")
    decisions = []
    for sel in selected:
        m = SELECTION_RE.fullmatch(sel)
        if not m or not all(1 <= int(x) <= MAX_ID for x in m.groups()):
            raise HTTPException(422, f"bad selection {sel[:40]!r} (expected id:version, each "
                                     f"1 to {MAX_ID:,})")
        decisions.append({"item_id": int(m[1]), "version": int(m[2]), "decision": action,
                          "note": note or None})
    if not decisions:
        _flash(request, "Select at least one item first.", "warn")
        return RedirectResponse(_safe_next(back), status_code=303)
    # "no error found" items are never decided in a batch: there confirm means "the reply IS
    # wrong", so batch-confirming them to agree with the auditor would record its misses
    with session_scope(get_ctx(request).url) as s:
        q = select(ReviewItem).where(ReviewItem.id.in_([d["item_id"] for d in decisions]),
                                     ReviewItem.kind == "error")
        if "*" not in user.scope:
            q = q.where(ReviewItem.tenant_id.in_(user.scope))
        held = sorted(i.id for i in s.scalars(q) if repo.is_no_error_found(i))
    decisions = [d for d in decisions if d["item_id"] not in held]
    if held:
        which = (f"item {held[0]} is a" if len(held) == 1
                 else f"items {', '.join(map(str, held))} are")
        _flash(request, f"Not decided: {which} \"no error found\" calibration item"
                        f"{'s' if len(held) > 1 else ''}: the auditor found no error there, and "
                        "confirming means the reply IS wrong. Open and decide each one by "
                        "itself.", "warn")
    if not decisions:
        return RedirectResponse(_safe_next(back), status_code=303)
    results = repo.decide_many(get_ctx(request).url, decisions, actor=user.username,
                               tenants=user.scope)
    ok = sum(r["ok"] for r in results)
    verb = "approved/confirmed" if action == "approve" else "rejected/dismissed"
    _flash(request, f"{ok} of {len(results)} item(s) {verb}.")
    for r in results:
        if r["code"] == "conflict":
            _flash(request, f"Item {r['item_id']}: it changed since the queue was loaded "
                            "(someone decided or re-tagged it); your decision was not saved.",
                   "warn")
        elif not r["ok"]:
            _flash(request, f"Item {r['item_id']}: {r['error']}", "warn")
    return RedirectResponse(_safe_next(back), status_code=303)


# ---- item page ---------------------------------------------------------------------------------------
def queue_state(back: str) -> tuple[repo.ItemFilter, str]:
    """The queue's filter and sort, read from the ``back`` link (the queue URL the reviewer came
    from, carried by every item link and form), so prev/next and the item opened after a
    decision follow the same query as the queue."""
    parts = urlsplit(_safe_next(back))
    q = {k: v[0] for k, v in parse_qs(parts.query).items() if v and v[0]} \
        if parts.path == "/" else {}
    kind = q.get("kind") if q.get("kind") in ("error", "sample") else None
    sort = q.get("sort") if q.get("sort") in SORT_LABELS else "age"
    flt = repo.ItemFilter(kind=kind, status="pending",
                          **{attr: (q.get(name) or None) and q[name][:128]
                             for name, attr in (("category", "category"), ("tenant", "tenant_id"),
                                                ("source", "source"), ("tag", "tag"))})
    return flt, sort


def _item_context(request: Request, user: ReviewerInfo, item_id: int, back: str) -> dict[str, Any]:
    flt, sort = queue_state(back)
    with session_scope(get_ctx(request).url) as s:
        try:
            item = repo.get_item(s, item_id, user.scope)
        except repo.NotFound as exc:
            raise HTTPException(404, str(exc)) from exc
        related = repo.related_items(s, item, tenants=user.scope)
        prev_id, next_id = repo.queue_neighbours(s, item.id, tenants=user.scope, flt=flt,
                                                 sort=sort)
        verdict_of = item
        if item.kind == "sample" and not item.explanation:
            verdict_of = next((r for r in related if r.id == item.parent_id and r.kind == "error"),
                              item)
    proposed = item.final_response if item.status in ("approved", "edited") else item.proposed_response
    return {"item": item, "related": related, "prev_id": prev_id, "next_id": next_id,
            "changes": [],
            "verdict": verdict_of, "diff": diff_html(item.original_response, proposed),
            "editable": proposed or "", "back": _safe_next(back), "age": _age(item.created_at),
            "conflict": None, "error": None, "no_error_found": repo.is_no_error_found(item)}


def _conflict_page(request: Request, user: ReviewerInfo, item_id: int, back: str,
                   exc: repo.Conflict) -> HTMLResponse:
    """409: the item as it is now, and what changed it since the reviewer's version (worded from
    the newer review events: a decision, or only a tag change)."""
    ctx = _item_context(request, user, item_id, back)
    with session_scope(get_ctx(request).url) as s:
        changes = [{"actor": e.actor, "action": e.action, "at": e.at,
                    "status": (e.after or {}).get("status"),
                    "added": [t for t in (e.after or {}).get("tags") or []
                              if t not in ((e.before or {}).get("tags") or [])],
                    "removed": [t for t in (e.before or {}).get("tags") or []
                                if t not in ((e.after or {}).get("tags") or [])]}
                   for e in repo.changes_since(s, item_id, exc.expected)]
    return render(request, "item.html", {**ctx, "conflict": exc, "changes": changes},
                  status_code=409, user=user)


@router.get("/items/{item_id}", response_class=HTMLResponse)
def item_page(request: Request, item_id: ItemId, back: str = Query("/", max_length=2000)):
    user = session_reviewer(request)
    if user is None:
        return _login_redirect(request)
    return render(request, "item.html", _item_context(request, user, item_id, back), user=user)


@router.post("/items/{item_id}/decide", response_class=HTMLResponse)
def decide(request: Request, item_id: ItemId, decision: str = Form(...),
           version: int = Form(..., ge=1, le=MAX_ID),
           final_response: str | None = Form(None), note: str = Form(""),
           csrf_token: str = Form(""), back: str = Form("/")):
    user = session_reviewer(request)
    if user is None:
        return _login_redirect(request)
    require_csrf(request, csrf_token)
    if decision not in WEB_DECISIONS:
        raise HTTPException(422, f"unknown decision {decision[:20]!r}")
    text = final_response.replace("\r\n", "\n") if final_response is not None else None
    try:
        check_length("note", note, MAX_NOTE)
        check_length("edited reply", text, MAX_FINAL_RESPONSE)
    except InputTooLong as exc:
        ctx = _item_context(request, user, item_id, back)
        return render(request, "item.html", {**ctx, "error": str(exc), "editable": text or ""},
                      status_code=422, user=user)
    c = get_ctx(request)
    flt, sort = queue_state(back)
    try:
        with session_scope(c.url) as s:
            # approving a changed text is edit-and-approve: repo.decide applies that rule (the
            # API shares it); the textarea is only sent for samples
            item = repo.decide(s, item_id, decision=decision, expected_version=version,
                               actor=user.username,
                               final_response=text if decision in ("approve", "edit") else None,
                               note=note or None, tenants=user.scope)
            status = item.status
            done = (NO_ERROR_DONE_WORDS if repo.is_no_error_found(item) else DONE_WORDS).get(status,
                                                                                         status)
            next_id = repo.queue_neighbours(s, item_id, tenants=user.scope, flt=flt, sort=sort)[1]
    except repo.NotFound as exc:
        raise HTTPException(404, str(exc)) from exc
    except repo.Conflict as exc:
        return _conflict_page(request, user, item_id, back, exc)
    except repo.InvalidTransition as exc:
        ctx = _item_context(request, user, item_id, back)
        return render(request, "item.html", {**ctx, "error": str(exc), "editable": text or ""},
                      status_code=422, user=user)
    _flash(request, f"Item {item_id} {done}.")
    target = f"/items/{next_id}?" + urlencode({"back": _safe_next(back)}) if next_id \
        else _safe_next(back)
    return RedirectResponse(target, status_code=303)


@router.post("/items/{item_id}/tags", response_class=HTMLResponse)
def tags(request: Request, item_id: ItemId, version: int = Form(..., ge=1, le=MAX_ID),
         add: str = Form(""),
         remove: str = Form(""), csrf_token: str = Form(""), back: str = Form("/")):
    user = session_reviewer(request)
    if user is None:
        return _login_redirect(request)
    require_csrf(request, csrf_token)
    add_list = [t.strip() for t in add.split(",") if t.strip()]
    for t in add_list:
        if len(t) > MAX_TAG:
            raise HTTPException(422, f"tag {t[:20]!r}... is {len(t)} characters; the limit is "
                                     f"{MAX_TAG}")
    if len(add_list) > 20:
        raise HTTPException(422, "at most 20 tags at once")
    try:
        with session_scope(get_ctx(request).url) as s:
            repo.set_tags(s, item_id, add=add_list, remove=[remove] if remove else [],
                          expected_version=version, actor=user.username, tenants=user.scope)
    except repo.NotFound as exc:
        raise HTTPException(404, str(exc)) from exc
    except repo.Conflict as exc:
        return _conflict_page(request, user, item_id, back, exc)
    except repo.InvalidTransition as exc:
        raise HTTPException(422, str(exc)) from exc
    return RedirectResponse(f"/items/{item_id}?" + urlencode({"back": _safe_next(back)}),
                            status_code=303)


# ---- admin: reviewer progress -------------------------------------------------------------------
@router.get("/admin/progress", response_class=HTMLResponse)
def progress_page(request: Request):
    user = session_reviewer(request)
    if user is None:
        return _login_redirect(request)
    if not user.is_admin:
        raise HTTPException(403, "this page is for admins")
    with session_scope(get_ctx(request).url) as s:
        rows = reviewers.progress_all(s)
    return render(request, "progress.html", {"rows": rows}, user=user)


# ---- API reference that works offline (Swagger UI would need a CDN) --------------------------------
@router.get("/docs", response_class=HTMLResponse)
def api_docs(request: Request):
    doc = request.app.openapi()
    ops = []
    for path, methods in doc.get("paths", {}).items():
        for method, op in methods.items():
            body = (op.get("requestBody", {}).get("content", {}).get("application/json", {})
                    .get("schema", {}).get("$ref", "").rsplit("/", 1)[-1])
            ops.append({"method": method.upper(), "path": path, "summary": op.get("summary", ""),
                        "tags": op.get("tags", []),
                        "params": [f"{p['name']} ({p['in']})" for p in op.get("parameters", [])],
                        "body": body or ("JSON" if op.get("requestBody") else ""),
                        "codes": sorted(op.get("responses", {}))})
    return get_ctx(request).templates.TemplateResponse(
        request, "docs.html", {"title": doc["info"]["title"], "version": doc["info"]["version"],
                               "operations": ops})


@router.get("/favicon.ico", include_in_schema=False)
def favicon() -> Response:
    return Response(status_code=204)
