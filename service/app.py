"""The HTTP service: review web app, JSON API (/api/v1), log collector (/v1/interactions) and
the serving API (/v1/chat/completions, /v1/route, /v1/feedback, /v1/sessions/{id}/end).

``create_app()`` builds the FastAPI application; ``uvicorn --factory service.app:create_app`` or
``learnloop serve`` runs it. Settings are read when the app is created, never at import.
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.sessions import SessionMiddleware

from ml.config import Settings
from ml.landing import STALE_TEMP_AGE_S
from service import api, api_samples, collector, overview, serving, web, web_samples
from service.config import ServiceSettings
from service.deps import ServiceContext
from service.jsonbody import encodable
from service.security import LoginLimiter
from service.workers import ProcessPool
from store.db import upgrade

log = logging.getLogger("learnloop.service")
HERE = Path(__file__).parent
API_PREFIXES = ("/api/", "/v1/")
MAX_BODY = 8 * 1024 * 1024  # web forms and the JSON API

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")


class BodyTooLarge(HTTPException):  # FastAPI's: its body reader passes it through unchanged
    def __init__(self, limit: int, size: int | None = None):
        what = f"request body of {size:,} bytes" if size is not None else "request body"
        super().__init__(413, f"{what} exceeds the limit of {limit:,} bytes")


class BodyLimitMiddleware:
    """Refuse request bodies over ``max_bytes`` with 413, counting bytes as they arrive.

    A declared ``Content-Length`` over the limit is answered before anything is read; a chunked
    (or understated) body is counted chunk by chunk and the read fails with 413 as soon as the
    count passes the limit, so an oversized body is never buffered or parsed. Paths under
    ``exempt`` (the collector, which has its own limit) pass through.
    """

    def __init__(self, app, max_bytes: int, exempt: tuple[str, ...] = ()):
        self.app, self.max_bytes, self.exempt = app, max_bytes, exempt

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"].startswith(self.exempt):
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and (len(declared) > 18 or int(declared) > self.max_bytes):
            size = int(declared) if len(declared) <= 18 else None  # no int() of 5,000 digits
            body = json.dumps({"detail": BodyTooLarge(self.max_bytes, size).detail})
            await send({"type": "http.response.start", "status": 413,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"connection", b"close")]})
            await send({"type": "http.response.body", "body": body.encode()})
            return
        seen = 0

        async def counting_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    # raised inside the endpoint's body read: FastAPI passes HTTPExceptions
                    # through, and the app's error handler answers 413 (JSON or HTML)
                    raise BodyTooLarge(self.max_bytes)
            return message

        await self.app(scope, counting_receive, send)


class SecurityHeadersMiddleware:
    """nosniff and Referrer-Policy on every answer; CSP and X-Frame-Options on HTML pages.

    Plain ASGI (no ``BaseHTTPMiddleware``), so the body limit's 413 raised while a handler reads
    the request reaches FastAPI's error handling unwrapped."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.setdefault("X-Content-Type-Options", "nosniff")
                headers.setdefault("Referrer-Policy", "same-origin")
                if headers.get("content-type", "").startswith("text/html"):
                    headers.setdefault("Content-Security-Policy", CSP)
                    headers.setdefault("X-Frame-Options", "DENY")
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _storable(value) -> bool:
    """True when ``value`` can go into a JSON answer as it is (UTF-8, finite numbers)."""
    try:
        json.dumps(jsonable_encoder(value), allow_nan=False, ensure_ascii=False).encode("utf-8")
    except (TypeError, ValueError, RecursionError):  # UnicodeEncodeError is a ValueError
        return False
    return True


def _clean_text(v):
    return v if not isinstance(v, str) or encodable(v) else v.encode("utf-8", "replace").decode()


def safe_validation_errors(errors) -> list[dict]:
    """FastAPI's field errors, made safe to answer: an ``input`` (or ``ctx``) that cannot be
    encoded (a lone surrogate, NaN, a huge structure) is left out, and text in ``loc``/``msg``
    that cannot be encoded has those characters replaced by ``?``: bad input is never echoed."""
    out = []
    for err in errors:
        e = {"type": err.get("type"), "loc": [_clean_text(x) for x in err.get("loc", ())],
             "msg": _clean_text(str(err.get("msg", "")))}
        for extra in ("input", "ctx"):
            if extra in err and _storable(err[extra]):
                e[extra] = err[extra]
        out.append(e)
    return out


def _document_body_limit(app: FastAPI) -> None:
    """Every operation that takes a body documents the body limit's 413 (the middleware answers it
    before any route runs, so no route declares it itself)."""
    build = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            doc = build()
            for ops in doc.get("paths", {}).values():
                for op in ops.values():
                    if "requestBody" in op and "413" not in op.get("responses", {}):
                        op.setdefault("responses", {})["413"] = {
                            "description": f"the request body is over {MAX_BODY:,} bytes",
                            "content": {"application/json": {
                                "schema": {"$ref": "#/components/schemas/ErrorOut"}}}}
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def create_app(settings: Settings | None = None, service: ServiceSettings | None = None,
               *, migrate: bool = True, host: str | None = None) -> FastAPI:
    """Build the service. ``host``: the address it will listen on (``learnloop serve`` passes it);
    on a non-loopback host the session cookie is ``Secure`` unless LEARNLOOP_COOKIE_SECURE says
    otherwise."""
    settings = settings or Settings()
    service = service or ServiceSettings()
    if migrate:
        upgrade(settings.store)
    # temporary files of writes that a crash interrupted (never those of a live writer: only
    # files untouched for STALE_TEMP_AGE_S go)
    landing = settings.landing_store  # a folder or a bucket prefix (LEARNLOOP_LANDING_URL)
    for stale in landing.remove_stale_temp_files(STALE_TEMP_AGE_S):
        log.warning("removed a temporary landing file left by an interrupted write: %s", stale)
    if service.secret_key is None or not service.secret_key.get_secret_value():
        log.warning("LEARNLOOP_SECRET_KEY is not set: using a random key for this process; "
                    "sessions end when it restarts and are not shared between processes")
        secret = secrets.token_urlsafe(48)
    else:
        secret = service.secret_key.get_secret_value()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        if app.state.ctx.collector_pool is not None:  # its workers also exit with this process
            app.state.ctx.collector_pool.shutdown()

    app = FastAPI(
        lifespan=lifespan,
        title="learnloop review service",
        version="1.0.0",
        description="Human review of flagged errors and proposed training samples, the log "
                    "collector, and the serving API (OpenAI-compatible chat completions routed "
                    "to the champion or an A/B experiment's arm, with feedback). See "
                    "docs/api.md and docs/serving.md.",
        redoc_url=None,
        docs_url=None,  # Swagger UI needs a CDN: /docs is an offline page (service/web.py)
    )
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.globals["shortcuts"] = web.SHORTCUTS
    app.state.ctx = ServiceContext(
        settings=settings, service=service, url=settings.store, landing=landing,
        limiter=LoginLimiter(service.login_max_failures, service.login_window_s,
                             max_per_ip=service.login_max_failures_per_ip),
        templates=templates,
        collector_pool=ProcessPool(service.collector_workers) if service.collector_workers else None,
    )
    app.state.serving = serving.ServingState()  # the model cache: models load on first use
    secure_cookie = service.secure_cookie(host)
    if secure_cookie and service.cookie_secure is None:
        log.warning("serving on %s (not loopback): the session cookie is Secure (HTTPS only); set "
                 "LEARNLOOP_COOKIE_SECURE=false to sign in over plain HTTP", host)
    app.add_middleware(SessionMiddleware, secret_key=secret, session_cookie="learnloop_session",
                       max_age=service.session_max_age_s, same_site="lax",
                       https_only=secure_cookie)

    app.add_middleware(SecurityHeadersMiddleware)
    # outermost: counts body bytes before any other layer reads them; the collector streams
    # and limits its own body (LEARNLOOP_COLLECTOR_MAX_BYTES)
    app.add_middleware(BodyLimitMiddleware, max_bytes=MAX_BODY, exempt=("/v1/interactions",))

    @app.exception_handler(StarletteHTTPException)
    async def html_or_json_errors(request: Request, exc: StarletteHTTPException):
        if request.url.path.startswith(serving.OPENAI_PATHS):  # OpenAI clients read `error`
            return JSONResponse(serving.openai_error(exc.status_code, exc.detail),
                                status_code=exc.status_code, headers=getattr(exc, "headers", None))
        if request.url.path.startswith(API_PREFIXES) or request.url.path.startswith("/openapi"):
            return await http_exception_handler(request, exc)
        return HTMLResponse(
            templates.get_template("error.html").render(
                request=request, status=exc.status_code, message=str(exc.detail), user=None),
            status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_errors(request: Request, exc: RequestValidationError):
        errors = safe_validation_errors(exc.errors())
        if request.url.path.startswith(serving.OPENAI_PATHS):
            return JSONResponse(serving.openai_error(422, jsonable_encoder(errors)),
                                status_code=422)
        if request.url.path.startswith(API_PREFIXES) or request.url.path.startswith("/openapi"):
            return JSONResponse({"detail": jsonable_encoder(errors)}, status_code=422)
        message = "; ".join(f"{'.'.join(map(str, e['loc'][1:])) or 'request'}: {e['msg']}"
                            for e in errors)
        return HTMLResponse(
            templates.get_template("error.html").render(
                request=request, status=422, message=f"Invalid input: {message}", user=None),
            status_code=422)

    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    app.include_router(api.router)
    app.include_router(api_samples.router)
    app.include_router(overview.api_router)
    app.include_router(collector.router)
    app.include_router(serving.router)
    app.include_router(web.router)
    app.include_router(web_samples.router)
    app.include_router(overview.web_router)

    _document_body_limit(app)

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
