"""Serving and routing: the chatbot's replies come from the registered model, and every reply
comes back as an interaction record, so the loop closes with no other system.

* ``GET /v1/route?subject=...``: which version serves this subject (the running A/B experiment's
  arm, else the ``champion`` alias).
* ``POST /v1/chat/completions``: OpenAI-compatible, non-streaming. ``model`` is ``learnloop`` /
  ``auto`` (routed), ``champion`` / ``challenger`` (that alias) or a version (``learnloop:3`` or
  ``3``: only the champion, the challenger, the running experiment's arms and the last three
  champions). Decoding is greedy: ``temperature``, ``top_p``, ``seed`` etc. are accepted and
  ignored. learnloop's own fields come as a top-level ``learnloop`` object (the OpenAI clients'
  ``extra_body``): ``session_id``, ``tenant_id``, ``channel``, ``metadata``; or the headers
  ``X-Learnloop-Session`` / ``X-Learnloop-Tenant``.
* ``POST /v1/feedback``: thumbs/rating/comment, signals, a human correction for a served turn.
* ``POST /v1/sessions/{session_id}/end``: last signals/feedback; the session's turns are written.

Every reply is kept in the operational store as a pending turn (``store.serving``) and written
to the landing zone (the collector's writer: ``service.collector.check_records`` and
``ml.landing.write_parts``, one file per tenant and UTC day, source ``served-<tenant>``)
when its session ends, when its feedback window (LEARNLOOP_SERVE_FEEDBACK_WINDOW_S) has passed
(looked for at most every LEARNLOOP_SERVE_FLUSH_INTERVAL_S by serving requests, after they are
answered, and by ``learnloop serving flush``), so ``learnloop run`` ingests them like any log.

Authentication: a collector key (one tenant) as ``Authorization: Bearer <key>`` (what OpenAI
clients send) or ``X-API-Key``. Models are loaded once per version and cached
(``ml.deploy.serving.ModelCache``, LEARNLOOP_SERVE_MAX_MODELS); generation runs in a worker
thread, never on the event loop. See docs/serving.md.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Annotated, Any, Literal

import anyio
from fastapi import APIRouter, BackgroundTasks, Depends, Header, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy.exc import SQLAlchemyError

from ml.config import Settings
from ml.deploy.routing import assign_arm, experiment_key
from ml.landing import write_parts
from ml.landing_store import LandingStore
from ml.schema import MAX_TEXT, Feedback, HumanCorrection, RecordError, Signals, validate_record
from service import schemas as S
from service.collector import _source_name, check_records, encode_days
from service.config import ServiceSettings
from service.deps import ServiceContext, collector_key_scheme, get_ctx
from service.jsonbody import first_problem
from store import collector_keys
from store import deployments as store_dep
from store import serving as store_sv
from store.db import session_scope
from store.repo import NotFound

log = logging.getLogger("learnloop.service.serving")
router = APIRouter(tags=["serving"])

PROVIDER = "learnloop"
ROUTED = ("learnloop", "auto", "learnloop:auto")
ALIAS_MODELS = {"champion": "champion", "challenger": "challenger",
                "learnloop:champion": "champion", "learnloop:challenger": "challenger"}
LINEAGE_ALLOWED = 3  # the last champions a client may still ask for by version
SERVED_TAG = "served"
DEFAULT_CHANNEL = "api"

# answers of these paths carry OpenAI's error object too: {"detail": ..., "error": {"message", ...}}
OPENAI_PATHS = ("/v1/chat/",)
_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error",
                403: "permission_error", 404: "not_found_error", 409: "conflict_error",
                413: "invalid_request_error", 422: "invalid_request_error",
                503: "service_unavailable"}


def openai_error(status: int, detail: Any) -> dict[str, Any]:
    """An error answer that the rest of the service's clients (``detail``) and OpenAI clients
    (``error.message``) both read; a list of field errors becomes one message naming each
    field."""
    if isinstance(detail, list):
        message = "; ".join(f"{'.'.join(map(str, e.get('loc', [])[1:])) or 'request'}: "
                            f"{e.get('msg')}" for e in detail if isinstance(e, dict))
    else:
        message = str(detail)
    return {"detail": detail, "error": {"message": message,
                                        "type": _ERROR_TYPES.get(status, "api_error"),
                                        "param": None, "code": status}}


serving_bearer = HTTPBearer(auto_error=False, scheme_name="CollectorBearer",
                            description="A per-tenant collector key as a Bearer token (what "
                                        "OpenAI clients send as their api_key).")

ERRORS = {400: {"model": S.ErrorOut, "description": "a request the service cannot serve (a "
                                                    "body that is not JSON, a model that is "
                                                    "not allowed, streaming)"},
          401: {"model": S.ErrorOut, "description": "missing, unknown or revoked collector key"},
          403: {"model": S.ErrorOut, "description": "tenant_id is not the key's tenant"},
          502: {"model": S.ErrorOut, "description": "a provider-served version's provider "
                                                    "failed"},
          503: {"model": S.ErrorOut, "description": "no champion to serve, or its model cannot "
                                                    "be loaded"}}


# ---- state of the app: the model cache and the flush clock ------------------------------------
class ServingState:
    """What the app keeps for serving: one :class:`ml.deploy.serving.ModelCache` (made on first
    use from the service's settings) and when pending turns were last looked at."""

    def __init__(self) -> None:
        self._cache = None
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._last_flush = float("-inf")
        self._limiter: anyio.CapacityLimiter | None = None

    def cache(self, ctx: ServiceContext):
        if self._cache is None:
            with self._lock:
                if self._cache is None:
                    from ml.deploy.serving import ModelCache
                    from ml.registry import Registry

                    self._cache = ModelCache(Registry.from_settings(ctx.settings),
                                             max_models=ctx.service.serve_max_models,
                                             max_new_tokens=ctx.service.serve_max_new_tokens,
                                             batch_size=ctx.service.serve_batch_size)
        return self._cache

    def generation_limiter(self, ctx: ServiceContext) -> anyio.CapacityLimiter:
        """Worker threads generation may take at once (made on the event loop, on first use):
        requests waiting for a busy model do not take every thread of the service's pool."""
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(
                max(4, 2 * ctx.service.serve_batch_size * ctx.service.serve_max_models))
        return self._limiter

    def registry(self, ctx: ServiceContext):
        return self.cache(ctx).registry

    def flush_due(self, interval_s: float) -> bool:
        """True at most once per ``interval_s`` (and never while a flush of this app runs)."""
        now = time.monotonic()
        with self._lock:
            if now - self._last_flush < interval_s or self._flush_lock.locked():
                return False
            self._last_flush = now
            return True

    def flush_expired(self, ctx: ServiceContext) -> None:
        """Write the turns whose feedback window passed (a background task of serving
        requests). A failure is logged with its reason; the turns stay pending for the next
        try."""
        if not self._flush_lock.acquire(blocking=False):
            return
        try:
            out = flush_turns(ctx.url, ctx.landing, older_than=datetime.now(UTC) - timedelta(
                seconds=ctx.service.serve_feedback_window_s))
            if out["written"]:
                log.info("wrote %d served turns whose feedback window passed to %s",
                         out["written"], ", ".join(out["files"]))
        except (OSError, RuntimeError, SQLAlchemyError) as exc:
            log.error("served turns could not be written to the landing zone (they stay "
                      "pending and are retried): %s: %s", type(exc).__name__, exc)
        finally:
            self._flush_lock.release()


def serving_state(request: Request) -> ServingState:
    return request.app.state.serving


def _schedule_flush(request: Request, background: BackgroundTasks) -> None:
    ctx, state = get_ctx(request), serving_state(request)
    if state.flush_due(ctx.service.serve_flush_interval_s):
        background.add_task(state.flush_expired, ctx)


# ---- authentication ----------------------------------------------------------------------------
async def serving_tenant(request: Request,
                         creds: HTTPAuthorizationCredentials | None = Depends(serving_bearer),
                         api_key: str | None = Depends(collector_key_scheme)) -> str:
    """The tenant of the request's collector key (``X-API-Key`` or ``Authorization: Bearer``)."""
    ctx = get_ctx(request)
    candidates = [k for k in (api_key, creds.credentials if creds else None) if k]

    def lookup() -> str | None:
        with session_scope(ctx.url) as s:
            for key in candidates:
                tenant = collector_keys.tenant_for_key(s, key)
                if tenant is not None:
                    return tenant
        return None

    tenant = await run_in_threadpool(lookup) if candidates else None
    if tenant is None:
        raise HTTPException(401, "missing, unknown or revoked collector key: send "
                                 "`Authorization: Bearer <key>` or `X-API-Key: <key>`",
                            headers={"WWW-Authenticate": "Bearer"})
    return tenant


def _check_tenant(key_tenant: str, *given: str | None) -> None:
    for t in given:
        if t is not None and t != key_tenant:
            raise HTTPException(403, f"tenant_id {t[:128]!r} is not the tenant of this key")


def _invalid(loc: tuple, msg: str) -> RequestValidationError:
    """A 422 in FastAPI's own format (the app's handler answers it), naming the field."""
    return RequestValidationError([{"type": "value_error", "loc": ("body", *loc), "msg": msg}])


# ---- routing -----------------------------------------------------------------------------------
class NoChampion(LookupError):
    pass


class ModelNotAllowed(ValueError):
    pass


@dataclass(frozen=True)
class Route:
    model_name: str
    version: str
    alias: str | None  # champion | challenger | None (an older champion asked for by version)
    experiment_id: int | None = None
    arm: str | None = None
    traffic_split: float | None = None
    subject: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"model": f"{PROVIDER}:{self.version}", "model_name": self.model_name,
                "version": self.version, "alias": self.alias,
                "experiment_id": self.experiment_id, "arm": self.arm,
                "traffic_split": self.traffic_split}


def pick_subject(subject_key: str | None, user: str | None, session_id: str | None) -> str:
    """The routing subject: the user, else the session (an experiment with ``subject_key``
    ``session`` routes by session first)."""
    order = (session_id, user) if subject_key == "session" else (user, session_id)
    subject = next((x for x in order if x), None)
    if subject is None:
        raise ValueError("routing needs a user or a session id")
    return subject


def route_for(session, registry, *, user: str | None, session_id: str | None) -> Route:
    """The version that serves this user/session: the running experiment's arm of the subject
    (treatment: its challenger, control: its champion), else the ``champion`` alias.
    :class:`NoChampion` when neither exists."""
    exp = store_dep.running_experiment(session, registry.model_name)
    if exp is not None:
        subject = pick_subject(exp.subject_key, user, session_id)
        arm = assign_arm(subject, experiment_key(exp.id), float(exp.traffic_split))
        version = exp.challenger_version if arm == "treatment" else exp.champion_version
        return Route(registry.model_name, str(version),
                     "challenger" if arm == "treatment" else "champion", exp.id, arm,
                     float(exp.traffic_split), subject)
    subject = pick_subject(None, user, session_id)
    champion = registry.alias_version("champion")
    if champion is None:
        raise NoChampion(f"registered model {registry.model_name!r} has no champion to serve: "
                         f"register a version and set the champion alias (learnloop run / the "
                         f"base_model asset)")
    return Route(registry.model_name, champion, "champion", subject=subject)


def allowed_versions(session, registry) -> dict[str, str | None]:
    """version -> alias of the versions a client may name: the champion, the challenger, the
    running experiment's arms and the last three champions."""
    aliases = registry.aliases()
    out: dict[str, str | None] = {}
    for alias in ("champion", "challenger"):
        if aliases.get(alias):
            out[aliases[alias]] = alias
    exp = store_dep.running_experiment(session, registry.model_name)
    if exp is not None:
        out.setdefault(str(exp.champion_version), "champion")
        out.setdefault(str(exp.challenger_version), "challenger")
    for v in store_dep.champion_lineage(session, registry.model_name)[:LINEAGE_ALLOWED]:
        out.setdefault(v, None)
    return out


def resolve_model(session, registry, model: str, *, user: str | None,
                  session_id: str | None) -> Route:
    """The version a chat request's ``model`` names (see the module docstring). A named version
    or alias that is what the running experiment assigns this subject (a chatbot that asked
    ``GET /v1/route`` first and calls the version it got) counts for the experiment's arm, as a
    routed request does; one that is not is served without experiment tags, so it cannot bias the
    arms."""
    if model in ROUTED:
        return route_for(session, registry, user=user, session_id=session_id)
    chosen = _named_route(session, registry, model, user=user, session_id=session_id)
    if (user or session_id) and store_dep.running_experiment(session, registry.model_name):
        routed = route_for(session, registry, user=user, session_id=session_id)
        if routed.version == chosen.version:
            return routed
    return chosen


def _named_route(session, registry, model: str, *, user: str | None,
                 session_id: str | None) -> Route:
    subject = user or session_id
    if model in ALIAS_MODELS:
        alias = ALIAS_MODELS[model]
        version = registry.alias_version(alias)
        if version is None:
            if alias == "champion":
                raise NoChampion(f"registered model {registry.model_name!r} has no champion")
            raise ModelNotAllowed(f"registered model {registry.model_name!r} has no challenger")
        return Route(registry.model_name, version, alias, subject=subject)
    version = model[len(PROVIDER) + 1:] if model.startswith(f"{PROVIDER}:") else model
    if not version.isdigit():
        raise ModelNotAllowed(f"model {model[:100]!r}: use 'learnloop' (routed), 'champion', "
                              f"'challenger' or a version ('learnloop:<version>')")
    version = str(int(version))
    allowed = allowed_versions(session, registry)
    if version not in allowed:
        listed = ", ".join(f"learnloop:{v}" + (f" ({a})" if a else "")
                           for v, a in allowed.items()) or "none"
        raise ModelNotAllowed(f"version {version} of {registry.model_name!r} may not be served; "
                              f"allowed: {listed}")
    return Route(registry.model_name, version, allowed[version], subject=subject)


class RouteOut(BaseModel):
    model: str = Field(description="learnloop:<version>: what to send as `model`")
    model_name: str
    version: str
    alias: Literal["champion", "challenger"]
    experiment_id: int | None
    arm: Literal["control", "treatment"] | None
    traffic_split: float | None = Field(description="the treatment's share of the running "
                                                    "experiment")


@router.get("/v1/route", response_model=RouteOut, responses={k: ERRORS[k] for k in (401, 503)},
            summary="Which model version serves this subject")
async def get_route(request: Request, background: BackgroundTasks,
                    subject: str = Query(min_length=1, max_length=256,
                                         description="a user id (or a session id)"),
                    tenant: str = Depends(serving_tenant)) -> dict:
    ctx, state = get_ctx(request), serving_state(request)
    _check_storable(("subject",), subject, where="query")

    def work() -> Route:
        with session_scope(ctx.url) as s:
            return route_for(s, state.registry(ctx), user=subject, session_id=subject)

    try:
        route = await run_in_threadpool(work)
    except NoChampion as exc:
        raise HTTPException(503, str(exc)) from None
    _schedule_flush(request, background)
    return route.to_dict()


# ---- chat completions --------------------------------------------------------------------------
class TextPart(BaseModel):
    type: Literal["text"]
    text: str = Field(max_length=MAX_TEXT)


class ChatMessageIn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"] = Field(
        description="system (or developer, kept as system), user or assistant; tool messages "
                    "are not supported")
    content: Annotated[str, Field(max_length=MAX_TEXT)] | list[TextPart] = Field(
        description="text, or a list of text parts")
    name: str | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class LearnloopIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    session_id: str | None = Field(default=None, min_length=1, max_length=256)
    tenant_id: str | None = Field(default=None, min_length=1, max_length=128,
                                  description="must be the key's tenant")
    channel: str | None = Field(default=None, min_length=1, max_length=128)
    metadata: dict[str, Any] | None = Field(
        default=None, description="the record's metadata: intent, language, tags, ...")


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # temperature, top_p, seed, ...: ignored

    model: str = Field(min_length=1, max_length=300)
    messages: list[ChatMessageIn] = Field(min_length=1, max_length=1000)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    user: str | None = Field(default=None, min_length=1, max_length=256,
                             description="the routing subject")
    stream: bool | None = None
    n: int | None = None
    learnloop: LearnloopIn | None = None

    @model_validator(mode="after")
    def _not_ending_with_reply(self) -> ChatRequest:
        if self.messages and self.messages[-1].role == "assistant":
            raise ValueError("messages: the last message is an assistant reply; end with the "
                             "user's (or a system) message")
        return self


class ChoiceMessage(BaseModel):
    role: Literal["assistant"]
    content: str


class Choice(BaseModel):
    index: int
    message: ChoiceMessage
    finish_reason: Literal["stop", "length"]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class LearnloopOut(BaseModel):
    interaction_id: str
    session_id: str
    turn_index: int
    model_version: str
    alias: str | None
    experiment_id: int | None
    arm: str | None


class ChatCompletionOut(BaseModel):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    learnloop: LearnloopOut


def _check_storable(loc: tuple, value: Any, where: str = "body") -> None:
    problem = first_problem(value)
    if problem is not None:
        path, msg = problem
        sub = () if path == "record" else tuple(path.split("."))
        raise RequestValidationError([{"type": "value_error", "loc": (where, *loc, *sub),
                                       "msg": msg}])


def _validate(record: dict) -> None:
    """The interaction record contract (``ml.schema.validate_record``), and storable text and
    numbers; a 422 naming the field otherwise."""
    _check_storable(("record",), record)
    try:
        validate_record(record)
    except RecordError as exc:
        raise _invalid(("record",), exc.reason) from None


def _record(*, iid: str, tenant: str, session_id: str, channel: str | None, route: Route,
            messages: list[dict], metadata: dict | None, now: datetime) -> dict:
    tags = []
    meta = dict(metadata or {})
    given = meta.pop("tags", None)
    if given is not None:
        if not isinstance(given, list) or not all(isinstance(t, str) for t in given):
            raise _invalid(("learnloop", "metadata", "tags"), "must be a list of strings")
        tags.extend(given)
    if route.experiment_id is not None:
        tags += [f"experiment:{route.experiment_id}", f"arm:{route.arm}"]
    tags.append(SERVED_TAG)
    return {"interaction_id": iid, "tenant_id": tenant, "session_id": session_id,
            "turn_index": None, "timestamp": now.isoformat(timespec="milliseconds"),
            "channel": channel or DEFAULT_CHANNEL,
            "model": {"provider": PROVIDER, "name": route.model_name, "version": route.version},
            "messages": messages, "response": "", "latency_ms": None, "tokens": None,
            "metadata": {**meta, "tags": list(dict.fromkeys(tags))}}


@router.post("/v1/chat/completions", response_model=ChatCompletionOut,
             responses={k: ERRORS[k] for k in (400, 401, 403, 502, 503)},
             summary="OpenAI-compatible chat completion (non-streaming, greedy)")
async def chat_completions(
        body: ChatRequest, request: Request, background: BackgroundTasks,
        tenant: str = Depends(serving_tenant),
        x_learnloop_session: str | None = Header(default=None, min_length=1, max_length=256),
        x_learnloop_tenant: str | None = Header(default=None, min_length=1, max_length=128),
) -> dict:
    ctx, state = get_ctx(request), serving_state(request)
    if body.stream:
        raise HTTPException(400, "streaming is not supported: send stream=false (or leave it "
                                 "out)")
    if body.n not in (None, 1):
        raise HTTPException(400, f"n={body.n}: one choice per request is supported")
    ll = body.learnloop or LearnloopIn()
    _check_tenant(tenant, ll.tenant_id, x_learnloop_tenant)
    _check_storable(("learnloop",), ll.model_dump(exclude_none=True))
    _check_storable(("user",), body.user)
    _check_storable(("model",), body.model)
    session_id = ll.session_id or x_learnloop_session or f"sess-{uuid.uuid4().hex}"
    _check_storable(("learnloop", "session_id"), session_id)
    messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                for m in body.messages]
    _check_storable(("messages",), messages)
    now = datetime.now(UTC)
    iid = str(uuid.uuid4())

    def pick() -> Route:
        with session_scope(ctx.url) as s:
            return resolve_model(s, state.registry(ctx), body.model, user=body.user,
                                 session_id=session_id)

    try:
        route = await run_in_threadpool(pick)
    except NoChampion as exc:
        raise HTTPException(503, str(exc)) from None
    except ModelNotAllowed as exc:
        raise HTTPException(400, str(exc)) from None
    record = _record(iid=iid, tenant=tenant, session_id=session_id, channel=ll.channel,
                     route=route, messages=messages, metadata=ll.metadata, now=now)
    _validate(record)  # before generating: a bad record costs no generation
    wanted = body.max_completion_tokens or body.max_tokens
    generation, wall_s = await anyio.to_thread.run_sync(
        partial(_generate, state, ctx, route.version, messages, wanted),
        limiter=state.generation_limiter(ctx))
    record.update(response=generation.text, latency_ms=round(wall_s * 1000, 3),
                  tokens={"prompt": generation.prompt_tokens,
                          "completion": generation.new_tokens})
    _validate(record)

    def store_turn() -> int:
        with session_scope(ctx.url) as s:
            row = store_sv.add_turn(s, record=record, subject=route.subject or session_id,
                                    model_version=route.version,
                                    experiment_id=route.experiment_id, arm=route.arm)
            return int(row.record["turn_index"])

    turn_index = await run_in_threadpool(store_turn)
    _schedule_flush(request, background)
    completion = generation.new_tokens
    return {"id": f"chatcmpl-{iid}", "object": "chat.completion", "created": int(now.timestamp()),
            "model": f"{PROVIDER}:{route.version}",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": generation.text},
                         "finish_reason": "stop" if generation.stopped else "length"}],
            "usage": {"prompt_tokens": generation.prompt_tokens,
                      "completion_tokens": completion,
                      "total_tokens": generation.prompt_tokens + completion},
            "learnloop": {"interaction_id": iid, "session_id": session_id,
                          "turn_index": turn_index, "model_version": route.version,
                          "alias": route.alias, "experiment_id": route.experiment_id,
                          "arm": route.arm}}


def _generate(state: ServingState, ctx: ServiceContext, version: str, messages: list[dict],
              max_new_tokens: int | None):
    """(reply, wall seconds) of ``version``; 503 naming the version and source when its model
    cannot be loaded, or when the reply fails."""
    from ml.deploy.serving import ModelLoadError, timed_reply
    from ml.llm.errors import LLMError
    from ml.registry import VersionNotFound

    try:
        return timed_reply(state.cache(ctx), version, messages, max_new_tokens)
    except VersionNotFound as exc:
        raise HTTPException(400, str(exc)) from None
    except ModelLoadError as exc:
        log.error("serving %s: %s", version, exc)
        raise HTTPException(503, str(exc)) from None
    except LLMError as exc:  # a provider-served version whose provider failed
        log.error("serving v%s through its provider failed: %s", version, exc)
        raise HTTPException(502, f"v{version}: the provider call failed: {exc}") from None


# ---- feedback and the end of a session ---------------------------------------------------------
class FeedbackIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    interaction_id: str = Field(min_length=1, max_length=256)
    feedback: Feedback | None = None
    signals: Signals | None = None
    human_correction: HumanCorrection | None = None


class TurnOut(BaseModel):
    interaction_id: str
    tenant_id: str
    session_id: str
    model_version: str
    experiment_id: int | None
    arm: str | None
    created_at: str | None
    written: bool = Field(description="already written to the landing zone (then immutable)")
    flushed_at: str | None
    landing_file: str | None
    record: dict[str, Any]


def _parts(model: BaseModel | None) -> dict | None:
    return None if model is None else model.model_dump(exclude_none=True)


@router.post("/v1/feedback", response_model=TurnOut,
             responses={**{k: ERRORS[k] for k in (400, 401)},
                        404: {"model": S.ErrorOut, "description": "no such served turn for "
                                                                  "this key's tenant"},
                        409: {"model": S.ErrorOut, "description": "the turn was already "
                                                                  "written to the landing zone"}},
             summary="Feedback, signals or a human correction for a served reply")
async def post_feedback(body: FeedbackIn, request: Request, background: BackgroundTasks,
                        tenant: str = Depends(serving_tenant)) -> dict:
    ctx = get_ctx(request)
    _check_storable((), body.model_dump(exclude_none=True))

    def work() -> dict:
        with session_scope(ctx.url) as s:
            row = store_sv.add_feedback(s, body.interaction_id, feedback=_parts(body.feedback),
                                        signals=_parts(body.signals),
                                        human_correction=_parts(body.human_correction),
                                        tenant_id=tenant, validate=_validate)
            return store_sv.turn_dict(row)

    try:
        out = await run_in_threadpool(work)
    except NotFound as exc:
        raise HTTPException(404, str(exc)) from None
    except store_sv.AlreadyWritten as exc:
        raise HTTPException(409, str(exc)) from None
    _schedule_flush(request, background)
    return out


class SessionEndIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    signals: Signals | None = None
    feedback: Feedback | None = None


class SessionEndOut(BaseModel):
    session_id: str
    written: int = Field(description="turns written to the landing zone now")
    interaction_ids: list[str]
    files: list[str] = Field(description="landing files, relative to the landing zone")


@router.post("/v1/sessions/{session_id}/end", response_model=SessionEndOut,
             responses={**{k: ERRORS[k] for k in (400, 401)},
                        404: {"model": S.ErrorOut, "description": "no served turns in this "
                                                                  "session for this key's "
                                                                  "tenant"},
                        409: {"model": S.ErrorOut, "description": "signals/feedback for a "
                                                                  "turn already written"},
                        503: {"model": S.ErrorOut, "description": "the landing zone could not "
                                                                  "be written (the turns stay "
                                                                  "pending)"}},
             summary="End a session: its pending turns are written to the landing zone")
async def end_session(session_id: str, request: Request, background: BackgroundTasks,
                      body: SessionEndIn | None = None,
                      tenant: str = Depends(serving_tenant)) -> dict:
    ctx = get_ctx(request)
    body = body or SessionEndIn()
    _check_storable((), body.model_dump(exclude_none=True))
    _check_storable(("session_id",), session_id, where="path")
    if len(session_id) > 256:
        raise _invalid(("session_id",), "at most 256 characters")

    def work() -> dict:
        with session_scope(ctx.url) as s:  # the last signals first, committed ...
            store_sv.end_session(s, session_id, tenant, signals=_parts(body.signals),
                                 feedback=_parts(body.feedback), validate=_validate)
        # ... then the writing (a crash in between loses nothing: the turns stay pending)
        return flush_turns(ctx.url, ctx.landing, older_than=None, session_id=session_id,
                           tenant_id=tenant)

    try:
        out = await run_in_threadpool(work)
    except NotFound as exc:
        raise HTTPException(404, str(exc)) from None
    except store_sv.AlreadyWritten as exc:
        raise HTTPException(409, str(exc)) from None
    except OSError as exc:
        log.error("session %r of tenant %r: the landing zone could not be written: %s",
                  session_id, tenant, exc)
        raise HTTPException(503, "the landing zone could not be written; the session's turns "
                                 "stay pending and are written later") from None
    _schedule_flush(request, background)
    return {"session_id": session_id, "written": out["written"],
            "interaction_ids": out["interaction_ids"], "files": out["files"]}


# ---- writing turns to the landing zone ---------------------------------------------------------
def write_turns(landing: LandingStore | Path, tenant_id: str,
                records: list[dict]) -> dict[str, str]:
    """Write one tenant's records with the collector's writer (its checks, its encoding, one
    fsynced file per UTC day, all days or none); returns interaction_id -> landing file
    (relative to ``landing``). A record the collector would refuse raises RuntimeError naming
    it (the serving API validated it when it was stored: this is a bug, not bad input)."""
    results, by_day = check_records(records, tenant_id)
    refused = [r for r in results if not r["accepted"]]
    if refused:
        raise RuntimeError(f"served turn {refused[0]['interaction_id']!r} of tenant "
                           f"{tenant_id!r} cannot be written: {refused[0]['reason']}")
    parts = encode_days(by_day)  # sorted by day, as write_parts returns the files
    files = write_parts(landing, _source_name(tenant_id, "served"), parts)
    out: dict[str, str] = {}
    for day, file in zip(parts, files, strict=True):
        for rec in by_day[day]:
            out[rec["interaction_id"]] = file
    return out


def flush_turns(url: str, landing: LandingStore | Path, *, older_than: datetime | None,
                session_id: str | None = None, tenant_id: str | None = None,
                batch: int = store_sv.DEFAULT_FLUSH_LIMIT) -> dict[str, Any]:
    """Write pending turns (created before ``older_than``; None: all; of one session with
    ``session_id`` + ``tenant_id``) to the landing zone, ``batch`` per transaction: select and
    lock, write the files, mark them written, commit. A crash after a write and before the
    commit leaves the turns pending; the next flush writes the same bytes again, which ingest
    drops as exact duplicates."""
    written: list[str] = []
    files: set[str] = set()
    while True:
        with session_scope(url) as s:
            rows = store_sv.pending_to_flush(s, older_than=older_than, session_id=session_id,
                                             tenant_id=tenant_id, limit=batch)
            by_tenant: dict[str, list] = defaultdict(list)
            for row in rows:
                by_tenant[row.tenant_id].append(row)
            at = datetime.now(UTC)
            for tenant, group in sorted(by_tenant.items()):
                where = write_turns(landing, tenant, [r.record for r in group])
                by_file: dict[str, list[str]] = defaultdict(list)
                for iid, f in where.items():
                    by_file[f].append(iid)
                for f, ids in by_file.items():
                    store_sv.mark_flushed(s, ids, f, at)
                files.update(by_file)
            written.extend(r.interaction_id for r in rows)
        if len(rows) < batch:
            break
    return {"written": len(written), "interaction_ids": written, "files": sorted(files)}


def flush_pending(settings: Settings | None = None, *, all_pending: bool,
                  service: ServiceSettings | None = None) -> dict[str, Any]:
    """Write the pending served turns: those whose feedback window passed, or every one with
    ``all_pending`` (``learnloop serving flush [--all]``; the demo calls it in-process).
    Returns ``written`` (count), ``interaction_ids``, ``files`` and ``older_than`` (None with
    ``all_pending``)."""
    settings = settings or Settings()
    service = service or ServiceSettings()
    older_than = None if all_pending else datetime.now(UTC) - timedelta(
        seconds=service.serve_feedback_window_s)
    out = flush_turns(settings.store, settings.landing_store, older_than=older_than)
    out["older_than"] = older_than.isoformat(timespec="seconds") if older_than else None
    return out
