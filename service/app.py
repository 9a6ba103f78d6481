"""The HTTP service: review web app, JSON API (/api/v1) and log collector (/v1/interactions).

``create_app()`` builds the FastAPI application; ``uvicorn --factory service.app:create_app`` or
``learnloop serve`` runs it. Settings are read when the app is created, never at import.
"""

from __future__ import annotations

import logging
import secrets
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.sessions import SessionMiddleware

from ml.config import Settings
from service import api, collector, web
from service.config import ServiceSettings
from service.deps import ServiceContext
from service.security import LoginLimiter
from store.db import upgrade

log = logging.getLogger("learnloop.service")
HERE = Path(__file__).parent
API_PREFIXES = ("/api/", "/v1/")
MAX_BODY = 8 * 1024 * 1024  # web forms and the JSON API

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")


def create_app(settings: Settings | None = None, service: ServiceSettings | None = None,
               *, migrate: bool = True) -> FastAPI:
    settings = settings or Settings()
    service = service or ServiceSettings()
    if migrate:
        upgrade(settings.store)
    if service.secret_key is None or not service.secret_key.get_secret_value():
        log.warning("LEARNLOOP_SECRET_KEY is not set: using a random key for this process; "
                    "sessions end when it restarts and are not shared between processes")
        secret = secrets.token_urlsafe(48)
    else:
        secret = service.secret_key.get_secret_value()

    app = FastAPI(
        title="learnloop review service",
        version="1.0.0",
        description="Human review of flagged errors and proposed training samples, and the log "
                    "collector. See docs/api.md.",
        redoc_url=None,
    )
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.globals["shortcuts"] = web.SHORTCUTS
    app.state.ctx = ServiceContext(
        settings=settings, service=service, url=settings.store, landing=settings.landing,
        limiter=LoginLimiter(service.login_max_failures, service.login_window_s),
        templates=templates,
    )
    app.add_middleware(SessionMiddleware, secret_key=secret, session_cookie="learnloop_session",
                       max_age=service.session_max_age_s, same_site="lax",
                       https_only=service.cookie_secure)

    @app.middleware("http")
    async def security_headers(request: Request, call_next):
        declared = request.headers.get("content-length", "")
        if (declared.isdigit() and int(declared) > MAX_BODY
                and not request.url.path.startswith("/v1/interactions")):
            # the collector streams and limits its own body (LEARNLOOP_COLLECTOR_MAX_BYTES)
            return JSONResponse({"detail": f"request body of {int(declared):,} bytes exceeds the "
                                           f"limit of {MAX_BODY:,} bytes"}, status_code=413)
        response: Response = await call_next(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        if response.headers.get("content-type", "").startswith("text/html") \
                and request.url.path != "/docs":
            response.headers.setdefault("Content-Security-Policy", CSP)
            response.headers.setdefault("X-Frame-Options", "DENY")
        return response

    @app.exception_handler(StarletteHTTPException)
    async def html_or_json_errors(request: Request, exc: StarletteHTTPException):
        if request.url.path.startswith(API_PREFIXES) or request.url.path.startswith("/openapi"):
            return await http_exception_handler(request, exc)
        return HTMLResponse(
            templates.get_template("error.html").render(
                request=request, status=exc.status_code, message=str(exc.detail), user=None),
            status_code=exc.status_code, headers=getattr(exc, "headers", None))

    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    app.include_router(api.router)
    app.include_router(collector.router)
    app.include_router(web.router)

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
