"""JSON API of samples (filters, bulk tags, statistics: ``store.samples``) and of dataset versions
(read-only: ``store.datasets``), under /api/v1 like the rest of the API.

Samples are tenant-scoped like every review item. Dataset versions mix every tenant's data, so
they are shown only to accounts that see every tenant (admins, and reviewers given tenant ``*``).
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi import Path as FPath

from service import schemas as S
from service.api import AUTH_ERRORS, BAD_BODY, CONFLICT, INVALID, _conflict
from service.deps import api_reviewer, get_ctx
from store import datasets, repo, samples
from store.db import session_scope
from store.reviewers import ReviewerInfo

router = APIRouter(prefix="/api/v1")

SampleSortParam = Literal["age", "-age", "quality", "-quality", "time", "-time"]
ValueList = Annotated[list[str] | None, Query(max_length=S.MAX_FILTER_VALUES,
                                              description="repeatable; each value up to 128 "
                                                          "characters")]
NO_DATASET = {404: {"model": S.ErrorOut, "description": "no such dataset version"}}
ALL_TENANTS = {403: {"model": S.ErrorOut,
                     "description": "not an admin or a reviewer of every tenant"}}


def filter_error(exc: samples.FilterError) -> HTTPException:
    """A filter value the store refused: 422 with a message that starts with the field's name."""
    return HTTPException(422, str(exc))


def sample_filter(ids: Annotated[list[int] | None, Query(max_length=S.MAX_TAG_IDS)] = None,
                  since: Annotated[str | None, Query(
                      max_length=40, description="YYYY-MM-DD (whole day, UTC) or ISO 8601 "
                                                 "datetime, inclusive; on the interaction's "
                                                 "time, else the item's creation")] = None,
                  until: Annotated[str | None, Query(max_length=40,
                                                     description="inclusive, like since")] = None,
                  quality_min: Annotated[float | None, Query(ge=0, le=1)] = None,
                  quality_max: Annotated[float | None, Query(ge=0, le=1)] = None,
                  category: ValueList = None, intent: ValueList = None, source: ValueList = None,
                  tenant: ValueList = None, tag: ValueList = None,
                  status: Annotated[list[S.SampleStatus] | None, Query(max_length=4)] = None,
                  ) -> samples.SampleFilter:
    """The sample filter of a query string: repeat a key (or separate values by commas) for
    several values of one field."""
    try:
        return samples.SampleFilter.from_dict(dict(
            ids=ids, since=since, until=until, quality_min=quality_min, quality_max=quality_max,
            category=category, intent=intent, source=source, tenant=tenant, tag=tag,
            status=status))
    except samples.FilterError as exc:
        raise filter_error(exc) from exc


def _sample(i) -> S.SampleSummary:
    return S.SampleSummary.model_validate(i, from_attributes=True)


@router.get("/samples", response_model=S.SamplePage, responses={**AUTH_ERRORS, **INVALID},
            tags=["samples"], summary="List and filter sample items (any status by default)")
def list_samples(request: Request, me: ReviewerInfo = Depends(api_reviewer),
                 flt: samples.SampleFilter = Depends(sample_filter),
                 sort: SampleSortParam = "age",
                 offset: int = Query(0, ge=0, le=10_000_000),
                 limit: int = Query(50, ge=1, le=500)) -> S.SamplePage:
    with session_scope(get_ctx(request).url) as s:
        items, total = samples.list_samples(s, flt, tenants=me.scope, sort=sort, offset=offset,
                                            limit=limit)
        return S.SamplePage(items=[_sample(i) for i in items], total=total, offset=offset,
                            limit=limit, filter=flt.to_dict())


@router.get("/samples/stats", response_model=S.SampleStatsOut,
            responses={**AUTH_ERRORS, **INVALID}, tags=["samples"],
            summary="Statistics of the samples matching the filter: counts by status, source, "
                    "category, intent, tenant, tag; quality histogram; approval rate")
def sample_stats(request: Request, me: ReviewerInfo = Depends(api_reviewer),
                 flt: samples.SampleFilter = Depends(sample_filter)) -> S.SampleStatsOut:
    with session_scope(get_ctx(request).url) as s:
        return S.SampleStatsOut(**samples.sample_stats(s, flt, tenants=me.scope))


def resolve_tag_request(body: S.SampleTagsIn) -> tuple[samples.SampleFilter, list[int] | None]:
    """The filter and ids of a bulk tag request; 422 (naming the field) for a bad filter, for no
    selection at all, and for an empty filter without ``all``."""
    if body.ids is None and body.filter is None and not body.all:
        raise HTTPException(422, "give ids, a filter, or all: true (every sample in your "
                                 "tenants)")
    try:
        flt = samples.SampleFilter.from_dict(
            body.filter.model_dump(exclude_none=True) if body.filter else {})
    except samples.FilterError as exc:
        raise HTTPException(422, f"filter.{exc}") from exc
    if body.ids is None and flt.is_empty() and not body.all:
        raise HTTPException(422, "filter: it is empty and would select every sample in your "
                                 "tenants; narrow it, or send all: true")
    return flt, body.ids


@router.post("/samples/tags", response_model=S.SampleTagsOut,
             responses={**AUTH_ERRORS, **INVALID, **CONFLICT, **BAD_BODY}, tags=["samples"],
             summary="Add or remove one tag on the samples given by ids or a filter (one review "
                     "event per changed sample)")
def tag_samples(request: Request, body: S.SampleTagsIn,
                me: ReviewerInfo = Depends(api_reviewer)):
    flt, ids = resolve_tag_request(body)
    try:
        with session_scope(get_ctx(request).url) as s:
            res = samples.tag_samples(s, body.tag, add=body.action == "add", actor=me.username,
                                      flt=flt, ids=ids, tenants=me.scope)
    except samples.TagError as exc:
        raise HTTPException(422, f"tag: {exc}") from exc
    except repo.Conflict as exc:
        return _conflict(exc)
    return S.SampleTagsOut(**res.as_dict())


# ---- datasets -------------------------------------------------------------------------------------
def sees_every_tenant(user: ReviewerInfo) -> bool:
    """Dataset versions mix every tenant's data: admins and reviewers of tenant ``*`` only."""
    return "*" in user.scope


def api_all_tenants(me: ReviewerInfo = Depends(api_reviewer)) -> ReviewerInfo:
    if not sees_every_tenant(me):
        raise HTTPException(403, "dataset versions hold every tenant's data: they are shown to "
                                 "admins and reviewers of every tenant only")
    return me


DatasetRef = Annotated[str, FPath(min_length=1, max_length=200,
                                  description="the version hash or a unique prefix of 4+ "
                                              "characters, or <name>@<ordinal>")]


def dataset_or_404(session, ref: str):
    try:
        return datasets.get_dataset(session, ref)
    except repo.NotFound as exc:
        raise HTTPException(404, str(exc)) from exc
    except datasets.AmbiguousVersion as exc:
        raise HTTPException(422, str(exc)) from exc


@router.get("/datasets", response_model=list[S.DatasetOut],
            responses={**AUTH_ERRORS, **ALL_TENANTS, **INVALID}, tags=["datasets"],
            summary="Dataset versions (training datasets and evaluation suites), newest first")
def list_datasets(request: Request, _: ReviewerInfo = Depends(api_all_tenants),
                  kind: Literal["training", "eval_suite"] | None = None,
                  name: str | None = Query(None, max_length=128)) -> list[S.DatasetOut]:
    with session_scope(get_ctx(request).url) as s:
        return [S.DatasetOut(**datasets.dataset_summary(d))
                for d in datasets.list_datasets(s, kind=kind, name=name)]


@router.get("/datasets/{ref}", response_model=S.DatasetOut,
            responses={**AUTH_ERRORS, **ALL_TENANTS, **NO_DATASET, **INVALID}, tags=["datasets"],
            summary="One dataset version: sizes, spec, counts, statistics, exports")
def get_dataset(request: Request, ref: DatasetRef,
                _: ReviewerInfo = Depends(api_all_tenants)) -> S.DatasetOut:
    with session_scope(get_ctx(request).url) as s:
        return S.DatasetOut(**datasets.dataset_summary(dataset_or_404(s, ref)))
