"""Review web app pages of samples and datasets.

``/samples``: every sample item (any status) with the filters of ``store.samples`` (date range,
quality range, category, intent, source, tenant, tag, status), statistics of what the filter
matches, and a bulk form that adds or removes one tag on the selected samples or on every
matching one. Tenant-scoped like the queue.

``/datasets``: the dataset versions, read-only, with a page per version and downloads of its
exports (a folder is sent as a zip built on the fly). Dataset versions mix every tenant's data:
only admins and reviewers of every tenant (``*``) see these pages; others get 403.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse
from starlette.background import BackgroundTask

from service.api_samples import dataset_or_404, sees_every_tenant
from service.deps import get_ctx, require_csrf, session_reviewer
from service.schemas import MAX_TAG_IDS
from service.web import _age, _flash, _login_redirect, _safe_next, render
from store import datasets, repo, samples
from store.db import session_scope
from store.reviewers import ReviewerInfo

router = APIRouter(include_in_schema=False)

FILTER_FIELDS = ("since", "until", "quality_min", "quality_max", "category", "intent", "source",
                 "tenant", "tag", "status", "ids")
SELECT_FILTERS = ("status", "category", "intent", "source", "tenant", "tag")
SORT_LABELS = {"age": "oldest first", "-age": "newest first", "quality": "quality, lowest first",
               "-quality": "quality, highest first", "time": "interaction time",
               "-time": "interaction time, newest first"}


def filter_query(flt: samples.SampleFilter) -> str:
    """The query string of ``flt`` (repeated keys for several values)."""
    return urlencode(flt.to_dict(), doseq=True)


def _filter_values(multi: dict[str, list[str]]) -> dict[str, Any]:
    return {k: v for k, v in multi.items() if k in FILTER_FIELDS and any(x.strip() for x in v)}


# ---- samples ---------------------------------------------------------------------------------------
@router.get("/samples", response_class=HTMLResponse)
def samples_page(request: Request):
    user = session_reviewer(request)
    if user is None:
        return _login_redirect(request)
    multi: dict[str, list[str]] = {}
    for k, v in request.query_params.multi_items():
        multi.setdefault(k, []).append(v[:200])
    sort = (multi.get("sort") or ["age"])[0]
    sort = sort if sort in SORT_LABELS else "age"
    try:
        page = max(1, min(100_000, int((multi.get("page") or ["1"])[0])))
    except ValueError:
        page = 1
    values = _filter_values(multi)
    c = get_ctx(request)
    per = c.service.page_size
    error = None
    try:
        flt = samples.SampleFilter.from_dict(values)
    except samples.FilterError as exc:
        error, flt = str(exc), None
    with session_scope(c.url) as s:
        facets = samples.sample_facets(s, tenants=user.scope)
        if flt is not None:
            items, total = samples.list_samples(s, flt, tenants=user.scope, sort=sort,
                                                offset=(page - 1) * per, limit=per)
            stats = samples.sample_stats(s, flt, tenants=user.scope)
        else:
            items, total, stats = [], 0, None
    query = filter_query(flt) if flt is not None else urlencode(values, doseq=True)
    here = "/samples?" + "&".join(x for x in (query, urlencode({"sort": sort})) if x)
    pages = max(1, (total + per - 1) // per)

    def page_url(n: int) -> str:
        return here + "&" + urlencode({"page": n})

    def narrowed(field: str, value: str) -> str:
        """This filter with ``field`` set to ``value`` (a link of the statistics panel)."""
        d = {**(flt.to_dict() if flt else {}), field: value}
        return "/samples?" + urlencode(d, doseq=True)

    rows = [{"item": i, "age": _age(i.created_at),
             "text": (i.final_response or i.proposed_response or "")} for i in items]
    return render(request, "samples.html", {
        "rows": rows, "total": total, "page": page, "pages": pages, "page_url": page_url,
        "facets": facets, "values": values, "selects": SELECT_FILTERS, "sort": sort,
        "sort_labels": SORT_LABELS, "stats": stats, "error": error, "filter_qs": query,
        "described": flt.describe() if flt is not None else "", "back": here,
        "narrowed": narrowed, "has_filter": flt is not None and not flt.is_empty(),
    }, status_code=422 if error else 200, user=user)


@router.post("/samples/tags")
def samples_tag(request: Request, tag: str = Form(""), action: str = Form("add"),
                scope: str = Form("selected"), selected: list[str] = Form(default=[]),
                filter: str = Form(""), csrf_token: str = Form(""),
                back: str = Form("/samples")):
    user = session_reviewer(request)
    if user is None:
        return _login_redirect(request)
    require_csrf(request, csrf_token)
    back = _safe_next(back)
    if action not in ("add", "remove"):
        raise HTTPException(422, "action must be add or remove")
    if scope not in ("selected", "matching"):
        raise HTTPException(422, "scope must be selected or matching")
    try:
        tag = samples.check_tag(tag)
    except samples.TagError as exc:
        _flash(request, f"Not tagged: {exc}.", "warn")
        return RedirectResponse(back, status_code=303)
    ids: list[int] | None = None
    flt = samples.SampleFilter()
    if scope == "selected":
        if len(selected) > MAX_TAG_IDS:
            raise HTTPException(422, f"{len(selected):,} samples selected; at most "
                                     f"{MAX_TAG_IDS:,} at once")
        if not all(x.isascii() and x.isdigit() and 1 <= int(x) <= 2**31 - 1 for x in selected):
            raise HTTPException(422, "bad selection: sample ids are whole numbers")
        ids = [int(x) for x in selected]
        if not ids:
            _flash(request, "Select at least one sample first (or tag all the matching ones).",
                   "warn")
            return RedirectResponse(back, status_code=303)
    else:
        try:
            flt = samples.SampleFilter.from_dict(_filter_values(parse_qs(filter[:20_000])))
        except samples.FilterError as exc:
            _flash(request, f"Not tagged: the filter is not valid ({exc}).", "warn")
            return RedirectResponse(back, status_code=303)
        if flt.is_empty():
            _flash(request, "Not tagged: no filter is set, so this would tag every sample. Set a "
                            "filter first (or use `learnloop tag add TAG --all`).", "warn")
            return RedirectResponse(back, status_code=303)
    try:
        with session_scope(get_ctx(request).url) as s:
            res = samples.tag_samples(s, tag, add=action == "add", actor=user.username, flt=flt,
                                      ids=ids, tenants=user.scope)
    except repo.Conflict as exc:
        _flash(request, f"Not tagged: {exc}; try again.", "warn")
        return RedirectResponse(back, status_code=303)
    _flash(request, tag_message(res), "ok" if res.matched else "warn")
    return RedirectResponse(back, status_code=303)


def tag_message(res: samples.TagResult) -> str:
    if not res.matched:
        return "No sample matches: nothing was tagged."
    verb = "added to" if res.action == "tag" else "removed from"
    state = "had it already" if res.action == "tag" else "did not have it"
    msg = (f"Tag '{res.tag}' {verb} {res.changed} of {res.matched} sample(s); "
           f"{res.unchanged} {state}.")
    if res.skipped:
        msg += f" {res.skipped} changed meanwhile and no longer match: left as they are."
    return msg


# ---- datasets --------------------------------------------------------------------------------------
def _dataset_user(request: Request) -> ReviewerInfo | RedirectResponse:
    user = session_reviewer(request)
    if user is None:
        return _login_redirect(request)
    if not sees_every_tenant(user):
        raise HTTPException(403, "Dataset versions hold every tenant's data: they are shown to "
                                 "admins and reviewers of every tenant only.")
    return user


def category_mix(summary: dict[str, Any]) -> dict[str, int]:
    """Examples per category of a version: ``stats.category_counts`` (training datasets: train
    and validation; evaluation suites: the evaluation items), largest first."""
    counts = (summary.get("stats") or {}).get("category_counts") or {}
    return dict(sorted(((str(k), int(v)) for k, v in counts.items()),
                       key=lambda kv: (-kv[1], kv[0])))


@router.get("/datasets", response_class=HTMLResponse)
def datasets_page(request: Request):
    user = _dataset_user(request)
    if isinstance(user, RedirectResponse):
        return user
    with session_scope(get_ctx(request).url) as s:
        rows = [datasets.dataset_summary(d) for d in datasets.list_datasets(s)]
    for r in rows:
        r["mix"] = category_mix(r)
        r["ref"] = r["version_hash"] or f"{r['name']}@{r['version']}"
    return render(request, "datasets.html", {"rows": rows}, user=user)


@router.get("/datasets/{ref}", response_class=HTMLResponse)
def dataset_page(request: Request, ref: str):
    user = _dataset_user(request)
    if isinstance(user, RedirectResponse):
        return user
    if len(ref) > 200:
        raise HTTPException(422, "dataset reference too long")
    with session_scope(get_ctx(request).url) as s:
        ds = datasets.dataset_summary(dataset_or_404(s, ref))
    ds["mix"] = category_mix(ds)
    ds["ref"] = ds["version_hash"] or f"{ds['name']}@{ds['version']}"
    exports = []
    for fmt, rel in sorted((ds["exports"] or {}).items()):
        try:
            target = export_path(ds, fmt)
            kind = "folder (zip)" if target.is_dir() else "file" if target.is_file() else "missing"
        except HTTPException:
            kind = "refused"
        exports.append({"format": fmt, "path": rel, "kind": kind})
    return render(request, "dataset.html", {"ds": ds, "exports": exports}, user=user)


def export_path(ds: dict[str, Any], fmt: str) -> Path:
    """The file or folder of export ``fmt`` of the version ``ds`` (a ``dataset_summary``):
    404 when there is no such export or it is gone, 403 when its path leaves the version's
    folder (``..``, an absolute path, a link pointing outside)."""
    exports = ds.get("exports") or {}
    if fmt not in exports:
        have = ", ".join(sorted(exports)) or "none"
        raise HTTPException(404, f"dataset {ds['name']}@{ds['version']} has no export {fmt!r} "
                                 f"(exports: {have})")
    if not ds.get("path"):
        raise HTTPException(404, f"dataset {ds['name']}@{ds['version']} has no folder")
    base = Path(ds["path"]).resolve()
    rel = str(exports[fmt])
    target = (base / rel).resolve()
    if Path(rel).is_absolute() or not target.is_relative_to(base):
        raise HTTPException(403, f"export {fmt!r} of dataset {ds['name']}@{ds['version']} "
                                 f"points outside the dataset's folder: refused")
    if not target.exists():
        raise HTTPException(404, f"export {fmt!r} of dataset {ds['name']}@{ds['version']} is "
                                 f"missing on the server ({rel})")
    return target


def zip_folder(folder: Path, base: Path) -> Path:
    """A zip (a temporary file) of every file under ``folder``, named relative to its parent;
    403 when a file there is a link that leads outside ``base``."""
    fd, name = tempfile.mkstemp(prefix="learnloop-export-", suffix=".zip")
    os.close(fd)
    try:
        with zipfile.ZipFile(name, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for path in sorted(folder.rglob("*")):
                real = path.resolve()
                if not real.is_relative_to(base):
                    raise HTTPException(403, f"{path.relative_to(folder)} links outside the "
                                             f"dataset's folder: refused")
                if real.is_file():
                    zf.write(real, arcname=str(path.relative_to(folder.parent)))
    except BaseException:
        os.unlink(name)
        raise
    return Path(name)


@router.get("/datasets/{ref}/files/{fmt}")
def dataset_file(request: Request, ref: str, fmt: str):
    user = _dataset_user(request)
    if isinstance(user, RedirectResponse):
        return user
    if len(ref) > 200 or len(fmt) > 64:
        raise HTTPException(422, "dataset reference or format too long")
    with session_scope(get_ctx(request).url) as s:
        ds = datasets.dataset_summary(dataset_or_404(s, ref))
    target = export_path(ds, fmt)
    stem = f"{ds['name']}-v{ds['version']}-{fmt}"
    if target.is_dir():
        archive = zip_folder(target, Path(ds["path"]).resolve())
        return FileResponse(archive, media_type="application/zip", filename=f"{stem}.zip",
                            background=BackgroundTask(os.unlink, archive))
    return FileResponse(target, media_type="application/octet-stream",
                        filename=f"{stem}-{target.name}")
