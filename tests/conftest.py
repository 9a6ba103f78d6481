"""Shared fixtures: a real PostgreSQL database per test session, a fresh LEARNLOOP_HOME."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.pg import create_database, drop_database, require_or_skip_postgres

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def pg_admin_url() -> str:
    return require_or_skip_postgres()


@pytest.fixture()
def pg_database(pg_admin_url: str):
    """A fresh, empty PostgreSQL database for one test; dropped afterwards."""
    name, url = create_database(pg_admin_url, "ll_test")
    try:
        yield url
    finally:
        drop_database(pg_admin_url, name, url)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    """The operational store, migrated to head, on SQLite and on PostgreSQL."""
    from store.db import upgrade

    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'store.db'}"
        upgrade(url)
        yield url
    else:
        request.getfixturevalue("pg_admin_url")
        url = request.getfixturevalue("pg_database")
        upgrade(url)
        yield url


@pytest.fixture()
def learnloop_home(request, tmp_path, monkeypatch):
    """A fresh LEARNLOOP_HOME (and DAGSTER_HOME under it) for one test. Its warehouse is the
    DuckDB file under it, or a fresh DuckLake (``tests/lakes.py``) when LEARNLOOP_TEST_WAREHOUSE
    is ``ducklake`` or the test parametrizes this fixture with ``"ducklake"`` (indirect)."""
    from tests.lakes import default_kind, lake_for_database

    kind = getattr(request, "param", None) or default_kind()
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("LEARNLOOP_HOME", str(home))
    for var in ("LEARNLOOP_STORE_URL", "LEARNLOOP_WAREHOUSE_PATH", "LEARNLOOP_LANDING_DIR",
                "LEARNLOOP_LANCEDB_URI", "LEARNLOOP_MLFLOW_TRACKING_URI", "DAGSTER_HOME",
                "LEARNLOOP_WAREHOUSE_URL", "LEARNLOOP_WAREHOUSE_DATA_PATH"):
        monkeypatch.delenv(var, raising=False)
    if kind != "ducklake":
        yield home
        return
    admin = request.getfixturevalue("pg_admin_url")
    name, url = create_database(admin, "ll_lake")
    lake = lake_for_database(url, tmp_path / "lake-data")
    monkeypatch.setenv("LEARNLOOP_WAREHOUSE_URL", lake.url)
    monkeypatch.setenv("LEARNLOOP_WAREHOUSE_DATA_PATH", lake.data_path)
    try:
        yield home
    finally:
        drop_database(admin, name, url)
