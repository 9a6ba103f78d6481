from sqlalchemy import inspect

from store.db import downgrade, make_engine, upgrade
from store.models import Base


def _tables(url: str) -> set[str]:
    eng = make_engine(url)
    try:
        return set(inspect(eng).get_table_names()) - {"alembic_version"}
    finally:
        eng.dispose()


def test_upgrade_creates_every_model_table_and_downgrade_removes_them(store_url):
    expected = set(Base.metadata.tables)
    assert _tables(store_url) == expected
    downgrade(store_url, "base")
    assert _tables(store_url) == set()
    upgrade(store_url)
    assert _tables(store_url) == expected


def test_upgrade_is_idempotent(store_url):
    upgrade(store_url)
    upgrade(store_url)
    assert "review_items" in _tables(store_url)


def test_migrations_match_models(store_url):
    """Autogenerate against a migrated store finds nothing to do: models and migrations agree."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    eng = make_engine(store_url)
    try:
        with eng.connect() as con:
            diff = compare_metadata(MigrationContext.configure(con), Base.metadata)
    finally:
        eng.dispose()
    assert diff == []


def test_0002_adds_the_session_epoch_and_keeps_reviewers(store_url):
    from sqlalchemy import text

    downgrade(store_url, "0001")
    eng = make_engine(store_url)
    try:
        assert "session_epoch" not in {c["name"] for c in inspect(eng).get_columns("reviewers")}
        with eng.begin() as con:
            con.execute(text("INSERT INTO reviewers (username, password_hash, role, tenants, "
                             "active, created_at) VALUES ('ann', 'h', 'reviewer', '[\"acme\"]', "
                             ":t, CURRENT_TIMESTAMP)"), {"t": True})
    finally:
        eng.dispose()
    upgrade(store_url)
    eng = make_engine(store_url)
    try:
        with eng.connect() as con:
            assert con.execute(text("SELECT username, session_epoch FROM reviewers")).all() == [
                ("ann", 0)]
    finally:
        eng.dispose()
    downgrade(store_url, "0001")
    eng = make_engine(store_url)
    try:
        assert "session_epoch" not in {c["name"] for c in inspect(eng).get_columns("reviewers")}
        with eng.connect() as con:
            assert con.execute(text("SELECT username FROM reviewers")).all() == [("ann",)]
    finally:
        eng.dispose()
    upgrade(store_url)
