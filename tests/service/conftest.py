"""Fixtures of the service tests: the store on SQLite and PostgreSQL, an app, a live server.

PostgreSQL: one temporary database ``learnloop_test_<random>`` per test session (created with
psycopg in autocommit mode, migrated once, dropped at the end); every test starts from empty
tables (TRUNCATE ... RESTART IDENTITY). Unset ``LEARNLOOP_TEST_POSTGRES_URL`` skips those tests,
unless ``LEARNLOOP_REQUIRE_POSTGRES=1``, which turns the skip into a failure.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from servicekit import World, make_settings, seed, service_settings

from store.models import Base
from tests.pg import create_database, drop_database, require_or_skip_postgres

TABLES = tuple(t.name for t in Base.metadata.sorted_tables)


@pytest.fixture(scope="session")
def service_pg_url():
    from store.db import upgrade

    admin = require_or_skip_postgres()
    name, url = create_database(admin, "learnloop_test")
    try:
        upgrade(url)
        yield url
    finally:
        drop_database(admin, name, url)


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory) -> Path:
    """A migrated SQLite store, copied for every test (migrating once is faster)."""
    from store.db import engine_for, upgrade

    path = tmp_path_factory.mktemp("template") / "store.db"
    url = f"sqlite:///{path}"
    upgrade(url)
    engine_for(url).dispose()
    return path


def _fresh_sqlite(template: Path, tmp_path: Path) -> str:
    target = tmp_path / "store.db"
    shutil.copy(template, target)
    return f"sqlite:///{target}"


def _fresh_postgres(url: str) -> str:
    from sqlalchemy import text

    from store.db import engine_for

    with engine_for(url).begin() as con:
        con.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
    return url


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def svc_store(request, sqlite_template, tmp_path) -> str:
    """An empty, migrated operational store on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        return _fresh_sqlite(sqlite_template, tmp_path)
    return _fresh_postgres(request.getfixturevalue("service_pg_url"))


@pytest.fixture()
def sqlite_store(sqlite_template, tmp_path) -> str:
    return _fresh_sqlite(sqlite_template, tmp_path)


# ---- world: reviewers, items ------------------------------------------------------------------
@pytest.fixture()
def world(svc_store, tmp_path) -> World:
    tokens, items = seed(svc_store)
    return World(svc_store, make_settings(svc_store, tmp_path / "home"), tokens, items)


@pytest.fixture()
def sqlite_world(sqlite_store, tmp_path) -> World:
    tokens, items = seed(sqlite_store)
    return World(sqlite_store, make_settings(sqlite_store, tmp_path / "home"), tokens, items)


@pytest.fixture()
def app_factory():
    from service.app import create_app

    def make(w: World, **service_kw):
        return create_app(w.settings, service_settings(**service_kw), migrate=False)

    return make


@pytest.fixture()
def client(world, app_factory):
    from fastapi.testclient import TestClient

    with TestClient(app_factory(world)) as c:
        yield c





@pytest.fixture(autouse=True)
def fast_password_hashing(monkeypatch):
    """argon2id with small costs in tests (the production costs take ~0.25 s per hash here)."""
    from argon2 import PasswordHasher

    from store import reviewers

    monkeypatch.setattr(reviewers, "_hasher",
                        PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))
