"""DuckLake warehouses for tests: a throwaway PostgreSQL database as the catalog.

``LEARNLOOP_TEST_WAREHOUSE=ducklake`` runs every test that uses the ``learnloop_home`` fixture on a
fresh DuckLake (catalog: a new database on the server of LEARNLOOP_TEST_POSTGRES_URL, dropped
afterwards; data files under the test's folder) instead of the DuckDB file; a test can also ask
for it alone with ``@pytest.mark.parametrize("learnloop_home", ["ducklake"], indirect=True)``.
"""

from __future__ import annotations

import os
from pathlib import Path

from ml.lake import Lake

WAREHOUSE_ENV = "LEARNLOOP_TEST_WAREHOUSE"
KINDS = ("duckdb", "ducklake")


def default_kind() -> str:
    kind = os.environ.get(WAREHOUSE_ENV, "duckdb") or "duckdb"
    if kind not in KINDS:
        raise ValueError(f"{WAREHOUSE_ENV}={kind!r}: expected one of {KINDS}")
    return kind


def lake_for_database(url: str, data_path: Path | str) -> Lake:
    """The DuckLake whose catalog is the PostgreSQL database ``url`` (a SQLAlchemy/libpq URL),
    its data files under ``data_path``."""
    from sqlalchemy.engine import make_url

    u = make_url(url)
    parts = {"dbname": u.database, "host": u.host, "port": u.port, "user": u.username,
             "password": u.password}
    conninfo = " ".join(f"{k}={v}" for k, v in parts.items() if v is not None)
    return Lake(f"ducklake:postgres:{conninfo}", str(data_path) + "/")
