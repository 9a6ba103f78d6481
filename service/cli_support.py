"""Functions the service commands of the `learnloop` CLI call (the commands: service/cli.py).

    learnloop serve [--host 127.0.0.1] [--port 8000]      -> serve(host, port)
    learnloop reviewers add NAME --role reviewer --tenant acme [--password ...]
                                                            -> add_reviewer(...)
    learnloop collector-keys add TENANT                    -> add_collector_key(tenant)
    learnloop reviewers deactivate|activate|set-password|update|rotate-token NAME
    learnloop collector-keys list|revoke ID

Every change is recorded in the store's ``config_history`` with ``changed_by`` = ``cli:<user>``.
"""

from __future__ import annotations

from ml.config import Settings
from service.config import ServiceSettings
from store import collector_keys, reviewers
from store.collector_keys import CollectorKeyInfo
from store.db import session_scope, upgrade
from store.reviewers import ReviewerInfo


def cli_actor() -> str:
    """``changed_by`` of admin changes made from the command line."""
    import getpass

    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no user name in this environment
        return "cli"


def uvicorn_options(host: str, port: int, service: ServiceSettings) -> dict:
    """uvicorn settings of ``learnloop serve``: proxy headers (client address and scheme from
    X-Forwarded-For/-Proto) only when LEARNLOOP_PROXY_HEADERS is true, and then only from the
    proxies in LEARNLOOP_FORWARDED_ALLOW_IPS."""
    return {"host": host, "port": port, "proxy_headers": service.proxy_headers,
            "forwarded_allow_ips": service.forwarded_allow_ips, "log_level": "info"}


def serve(host: str = "127.0.0.1", port: int = 8000, settings: Settings | None = None) -> None:
    """Run the review web app, JSON API and collector under uvicorn (blocks)."""
    import uvicorn

    from service.app import create_app

    service = ServiceSettings()
    app = create_app(settings, service, host=host)
    uvicorn.run(app, **uvicorn_options(host, port, service))


def add_reviewer(username: str, password: str, role: str = "reviewer",
                 tenants: list[str] | tuple[str, ...] = (),
                 settings: Settings | None = None) -> ReviewerInfo:
    """Create a reviewer account; ``.api_token`` of the result is the plaintext token (shown once).

    Raises ``store.reviewers.ReviewerError`` with a clear message on bad input or a taken name.
    """
    settings = settings or Settings()
    upgrade(settings.store)
    with session_scope(settings.store) as s:
        return reviewers.create_reviewer(s, username=username, password=password, role=role,
                                         tenants=list(tenants), actor=cli_actor())


def add_collector_key(tenant: str, label: str | None = None,
                      settings: Settings | None = None) -> str:
    """Create a collector API key for ``tenant``; returns the plaintext key (shown once)."""
    settings = settings or Settings()
    upgrade(settings.store)
    with session_scope(settings.store) as s:
        info = collector_keys.create_key(s, tenant, label, actor=cli_actor())
    assert info.key is not None
    return info.key


def list_reviewers(settings: Settings | None = None) -> list[ReviewerInfo]:
    settings = settings or Settings()
    upgrade(settings.store)
    with session_scope(settings.store) as s:
        return reviewers.list_reviewers(s)


def _store(settings: Settings | None) -> str:
    settings = settings or Settings()
    upgrade(settings.store)
    return settings.store


def set_reviewer_active(username: str, active: bool,
                        settings: Settings | None = None) -> ReviewerInfo:
    """Deactivate (sign-in, token and open sessions stop working) or reactivate an account."""
    with session_scope(_store(settings)) as s:
        return reviewers.set_active(s, username, active, actor=cli_actor())


def set_reviewer_password(username: str, password: str, settings: Settings | None = None, *,
                          keep_token: bool = False) -> ReviewerInfo:
    """New password; open sessions end and, unless ``keep_token``, the API token is replaced (the
    new one is in ``api_token``, to print once)."""
    with session_scope(_store(settings)) as s:
        return reviewers.set_password(s, username, password, actor=cli_actor(),
                                      keep_token=keep_token)


def update_reviewer(username: str, role: str | None = None,
                    tenants: list[str] | tuple[str, ...] | None = None,
                    settings: Settings | None = None) -> ReviewerInfo:
    with session_scope(_store(settings)) as s:
        return reviewers.update_reviewer(s, username, role=role,
                                         tenants=None if tenants is None else list(tenants),
                                         actor=cli_actor())


def rotate_reviewer_token(username: str, settings: Settings | None = None) -> str:
    with session_scope(_store(settings)) as s:
        r = reviewers.by_username(s, username)
        return reviewers.rotate_token(s, r.id, actor=cli_actor())


def list_collector_keys(settings: Settings | None = None) -> list[CollectorKeyInfo]:
    with session_scope(_store(settings)) as s:
        return collector_keys.list_keys(s)


def revoke_collector_key(key_id: int, settings: Settings | None = None) -> CollectorKeyInfo:
    with session_scope(_store(settings)) as s:
        return collector_keys.revoke_key(s, key_id, actor=cli_actor())
