"""The overview of the review web app and the JSON API: who serves (champion, challenger), the
running A/B experiment with its figures, the last decided one, and the alerts.

``/overview`` (HTML) and ``/api/v1/overview`` (JSON) show the same :func:`overview_data`;
``/api/v1/alerts`` lists alerts and ``POST /api/v1/alerts/{id}/acknowledge`` (or the page's
Acknowledge button) records who acknowledged one. Every signed-in reviewer (and admin) sees them:
alerts, models and experiments belong to no tenant.

The model registry is read through ``ml.registry.Registry.summary()``, which never creates a
tracking store: before the first model is registered the page says "no model yet".
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Form, HTTPException, Query, Request
from fastapi import Path as FPath
from fastapi.responses import HTMLResponse, RedirectResponse
from pydantic import BaseModel, Field

from ml.registry import Registry
from service import schemas as S
from service.deps import ServiceContext, api_reviewer, get_ctx, require_csrf, session_reviewer
from service.web import _flash, _login_redirect, render
from store import alerts as alert_store
from store import deployments
from store.db import session_scope
from store.repo import InvalidTransition, NotFound
from store.reviewers import ReviewerInfo

AlertId = Annotated[int, FPath(ge=1, le=2**31 - 1, description="alert id")]
AlertStatus = Literal["open", "acknowledged", "resolved", "active", "any"]
STATUS_SETS = {"open": ("open",), "acknowledged": ("acknowledged",), "resolved": ("resolved",),
               "active": ("open", "acknowledged"), "any": alert_store.ALERT_STATUSES}
OVERVIEW_ALERTS = 50


# ---- response models ------------------------------------------------------------------------
class AlertOut(BaseModel):
    id: int
    kind: str = Field(description="quality_degradation | provider_error_rate | cost_over_budget "
                                  "| rollback | gate_failed | review_queue_stalled | "
                                  "experiment_decided")
    severity: str = Field(description="info | warning | critical")
    message: str
    details: dict[str, Any] = Field(description="figures of the finding; `delivery`: the last "
                                                "notification; `resolution`: who resolved it")
    dedupe_key: str
    source: str
    status: str = Field(description="open | acknowledged | resolved")
    occurrences: int = Field(description="times raised while unresolved")
    created_at: S.UtcDatetime | None
    last_seen_at: S.UtcDatetime | None
    notified: list[str] = Field(description="channels that delivered the last notification")
    notified_at: S.UtcDatetime | None
    acknowledged_by: str | None
    acknowledged_at: S.UtcDatetime | None


class ModelOut(BaseModel):
    name: str = Field(description="the registered model (LEARNLOOP_MODEL_NAME)")
    versions: int | None = Field(description="registered versions (None: registry unreadable)")
    champion: str | None = Field(description="version behind the champion alias")
    challenger: str | None = Field(description="version behind the challenger alias")
    latest: str | None
    error: str | None = Field(description="why the registry could not be read")
    deployments: list[dict[str, Any]] = Field(
        description="the active champion/challenger rows of the store: who moved the alias, "
                    "when and why")


class OverviewOut(BaseModel):
    model: ModelOut
    experiment: dict[str, Any] | None = Field(description="the running experiment "
                                                          "(store.deployments.experiment_dict)")
    last_decided: dict[str, Any] | None = Field(description="the latest experiment that ended")
    alerts: list[AlertOut] = Field(description="open alerts, most recently seen first")
    acknowledged: list[AlertOut] = Field(description="acknowledged, unresolved alerts")


# ---- data -------------------------------------------------------------------------------------
def model_summary(ctx: ServiceContext) -> dict[str, Any]:
    """The registry's summary (never creating a tracking store); a registry that cannot be read
    is reported with its error rather than failing the page."""
    from mlflow.exceptions import MlflowException

    name = ctx.settings.model_name
    try:
        out = Registry.from_settings(ctx.settings).summary()
        out["error"] = None
    except (MlflowException, OSError) as exc:
        out = {"name": name, "versions": None, "champion": None, "challenger": None,
               "latest": None, "error": f"{type(exc).__name__}: {str(exc)[:300]}"}
    with session_scope(ctx.url) as s:
        out["deployments"] = [deployments.deployment_dict(r)
                              for r in deployments.deployment_history(s, name, limit=50)
                              if r.status == "active" and r.alias in ("champion", "challenger")]
    return out


def overview_data(ctx: ServiceContext) -> dict[str, Any]:
    model = model_summary(ctx)
    with session_scope(ctx.url) as s:
        running = deployments.running_experiment(s, ctx.settings.model_name)
        last = deployments.last_decided_experiment(s, ctx.settings.model_name)
        return {"model": model,
                "experiment": deployments.experiment_dict(running) if running else None,
                "last_decided": deployments.experiment_dict(last) if last else None,
                "alerts": [alert_store.alert_dict(a)
                           for a in alert_store.open_alerts(s, OVERVIEW_ALERTS)],
                "acknowledged": [alert_store.alert_dict(a) for a in alert_store.list_alerts(
                    s, ("acknowledged",), OVERVIEW_ALERTS)]}


def _fmt(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return {True: "yes", False: "no", None: "-"}[v]
    if isinstance(v, float):
        if math.isnan(v) or math.isinf(v):
            return str(v)
        return f"{v:.4g}"
    if isinstance(v, int | str):
        return str(v)
    if isinstance(v, list | tuple) and len(v) <= 4 and all(isinstance(x, int | float | str)
                                                           for x in v):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return "…"  # nested: in the JSON API


def _scalars(d: Any) -> list[tuple[str, str]]:
    if not isinstance(d, dict):
        return []
    return [(str(k), _fmt(v)) for k, v in d.items() if not isinstance(v, dict)]


def figures_view(exp: dict[str, Any] | None) -> dict[str, Any] | None:
    """What the page shows of an experiment's ``result["figures"]``: per arm its scalar figures
    (``n`` first), per tested metric its scalar figures; keys that are missing are left out."""
    if not exp:
        return None
    result = exp.get("result") if isinstance(exp.get("result"), dict) else {}
    figures = result.get("figures") if isinstance(result.get("figures"), dict) else {}
    arms_in = figures.get("arms") if isinstance(figures.get("arms"), dict) else {}
    tests_in = figures.get("tests") if isinstance(figures.get("tests"), dict) else {}
    policy = exp.get("policy") if isinstance(exp.get("policy"), dict) else {}
    primary = policy.get("primary_metric") or figures.get("primary_metric")
    versions = {"control": exp.get("champion_version"), "treatment": exp.get("challenger_version")}
    arms = []
    for arm in ("control", "treatment"):
        d = arms_in.get(arm)
        items = sorted(_scalars(d), key=lambda kv: (kv[0] != "n", kv[0] != primary, kv[0]))
        arms.append({"arm": arm, "version": versions[arm], "items": items,
                     "n": _fmt(d.get("n")) if isinstance(d, dict) and "n" in d else "-",
                     "primary": _fmt(d.get(primary)) if isinstance(d, dict) and primary in d
                     else "-"})
    tests = [{"metric": str(m), "items": _scalars(d), "primary": m == primary}
             for m, d in tests_in.items()]
    return {"primary": primary, "arms": arms, "tests": tests,
            "has_figures": bool(arms_in or tests_in)}


# ---- web page ---------------------------------------------------------------------------------
web_router = APIRouter(include_in_schema=False)


@web_router.get("/overview", response_class=HTMLResponse)
def overview_page(request: Request):
    user = session_reviewer(request)
    if user is None:
        return _login_redirect(request)
    data = overview_data(get_ctx(request))
    return render(request, "overview.html", {
        **data, "running": figures_view(data["experiment"]),
        "decided": figures_view(data["last_decided"])}, user=user)


@web_router.post("/overview/alerts/{alert_id}/acknowledge")
def acknowledge_form(request: Request, alert_id: AlertId, csrf_token: str = Form("")):
    user = session_reviewer(request)
    if user is None:
        return _login_redirect(request)
    require_csrf(request, csrf_token)
    try:
        with session_scope(get_ctx(request).url) as s:
            a = alert_store.acknowledge(s, alert_id, user.username)
            by = a.acknowledged_by
    except NotFound as exc:
        raise HTTPException(404, str(exc)) from exc
    except InvalidTransition as exc:
        _flash(request, str(exc), "warn")
        return RedirectResponse("/overview", status_code=303)
    _flash(request, f"Alert #{alert_id} acknowledged" + ("" if by == user.username
                                                         else f" (already, by {by})") + ".")
    return RedirectResponse("/overview", status_code=303)


# ---- JSON API -----------------------------------------------------------------------------------
api_router = APIRouter(prefix="/api/v1", tags=["overview"])
AUTH_ERRORS = {401: {"model": S.ErrorOut, "description": "not authenticated"},
               403: {"model": S.ErrorOut, "description": "forbidden (CSRF with cookies)"}}
INVALID = {422: {"model": S.ErrorOut, "description": "invalid input"}}


@api_router.get("/overview", response_model=OverviewOut, responses={**AUTH_ERRORS},
                summary="Champion and challenger, the running and the last decided experiment, "
                        "the open and acknowledged alerts")
def overview_api(request: Request, _: ReviewerInfo = Depends(api_reviewer)) -> OverviewOut:
    return OverviewOut(**overview_data(get_ctx(request)))


@api_router.get("/alerts", response_model=list[AlertOut], responses={**AUTH_ERRORS, **INVALID},
                summary="Alerts, most recently seen first (status active = open + acknowledged)")
def list_alerts_api(request: Request, _: ReviewerInfo = Depends(api_reviewer),
                    status: AlertStatus = "open",
                    limit: int = Query(50, ge=1, le=500)) -> list[AlertOut]:
    with session_scope(get_ctx(request).url) as s:
        return [AlertOut(**alert_store.alert_dict(a))
                for a in alert_store.list_alerts(s, STATUS_SETS[status], limit)]


@api_router.post("/alerts/{alert_id}/acknowledge", response_model=AlertOut,
                 responses={**AUTH_ERRORS, **INVALID,
                            404: {"model": S.ErrorOut, "description": "no such alert"},
                            409: {"model": S.ErrorOut, "description": "the alert is resolved"}},
                 summary="Acknowledge an open alert (records who; the first acknowledgement "
                         "stands); repeats of it are then counted but not sent")
def acknowledge_api(request: Request, alert_id: AlertId,
                    me: ReviewerInfo = Depends(api_reviewer)) -> AlertOut:
    try:
        with session_scope(get_ctx(request).url) as s:
            return AlertOut(**alert_store.alert_dict(
                alert_store.acknowledge(s, alert_id, me.username)))
    except NotFound as exc:
        raise HTTPException(404, str(exc)) from exc
    except InvalidTransition as exc:
        raise HTTPException(409, str(exc)) from exc
