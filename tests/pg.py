"""PostgreSQL for tests: the server from LEARNLOOP_TEST_POSTGRES_URL, a throwaway database each.

Unset: PostgreSQL tests skip, unless LEARNLOOP_REQUIRE_POSTGRES=1 (CI), which makes the skip a
failure.
"""

from __future__ import annotations

import os
import uuid

import pytest


def require_or_skip_postgres() -> str:
    url = os.environ.get("LEARNLOOP_TEST_POSTGRES_URL")
    if not url:
        if os.environ.get("LEARNLOOP_REQUIRE_POSTGRES") == "1":
            pytest.fail("LEARNLOOP_REQUIRE_POSTGRES=1 but LEARNLOOP_TEST_POSTGRES_URL is not set")
        pytest.skip("PostgreSQL tests need LEARNLOOP_TEST_POSTGRES_URL")
    return url


def create_database(admin_url: str, prefix: str) -> tuple[str, str]:
    """Create an empty database named ``<prefix>_<random>``; return (name, its URL)."""
    import psycopg
    from sqlalchemy.engine import make_url

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    try:
        with psycopg.connect(admin_url, autocommit=True) as con:
            con.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        if os.environ.get("LEARNLOOP_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"PostgreSQL at LEARNLOOP_TEST_POSTGRES_URL is unreachable: {exc}")
        pytest.skip(f"PostgreSQL unreachable: {exc}")
    return name, make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def drop_database(admin_url: str, name: str, url: str) -> None:
    """Close pooled connections to ``url``, then drop the database."""
    import psycopg

    from store.db import engine_for

    engine_for(url).dispose()
    with psycopg.connect(admin_url, autocommit=True) as con:
        con.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
