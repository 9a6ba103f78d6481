"""Functions the `learnloop` CLI calls (the CLI itself lives in orchestration/cli.py).

    learnloop serve [--host 127.0.0.1] [--port 8000]      -> serve(host, port)
    learnloop reviewers add NAME --role reviewer --tenant acme [--password ...]
                                                            -> add_reviewer(...)
    learnloop collector-keys add TENANT                    -> add_collector_key(tenant)
"""

from __future__ import annotations

from ml.config import Settings
from store import collector_keys, reviewers
from store.db import session_scope, upgrade
from store.reviewers import ReviewerInfo


def serve(host: str = "127.0.0.1", port: int = 8000, settings: Settings | None = None) -> None:
    """Run the review web app, JSON API and collector under uvicorn (blocks)."""
    import uvicorn

    from service.app import create_app

    app = create_app(settings)
    uvicorn.run(app, host=host, port=port, proxy_headers=False, log_level="info")


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
                                         tenants=list(tenants))


def add_collector_key(tenant: str, label: str | None = None,
                      settings: Settings | None = None) -> str:
    """Create a collector API key for ``tenant``; returns the plaintext key (shown once)."""
    settings = settings or Settings()
    upgrade(settings.store)
    with session_scope(settings.store) as s:
        info = collector_keys.create_key(s, tenant, label)
    assert info.key is not None
    return info.key


def list_reviewers(settings: Settings | None = None) -> list[ReviewerInfo]:
    settings = settings or Settings()
    upgrade(settings.store)
    with session_scope(settings.store) as s:
        return reviewers.list_reviewers(s)
