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


def _refused(eng, sql: str) -> str:
    from sqlalchemy import text
    from sqlalchemy.exc import DBAPIError

    try:
        with eng.begin() as con:
            con.execute(text(sql))
    except DBAPIError as exc:
        return str(exc.orig)
    raise AssertionError(f"the store accepted: {sql}")


def test_0003_the_audit_trail_cannot_be_rewritten_or_items_deleted(store_url):
    """review_events and config_history are append-only and review items are never deleted,
    enforced by the database (any client, hand-written SQL included); 0003 down lifts it."""
    from sqlalchemy import func, select, text

    from store import repo
    from store.db import session_scope
    from store.models import ConfigHistory, ReviewEvent

    with session_scope(store_url) as s:
        s.add(ConfigHistory(key="reviewer:ann", old_value=None, new_value={"active": True},
                            changed_by="admin"))
        item, _ = repo.create_item(s, kind="error", dedup_key="k1", tenant_id="acme",
                                   interaction_id="i1", category="factual_error")
        repo.decide(s, item.id, decision="confirm", expected_version=item.version, actor="ann")
        n_events = s.scalar(select(func.count()).select_from(ReviewEvent))
    assert n_events >= 1
    eng = make_engine(store_url)
    try:
        assert "append-only: UPDATE refused" in _refused(eng, "UPDATE review_events SET actor = 'x'")
        assert "append-only: DELETE refused" in _refused(eng, "DELETE FROM review_events")
        assert "review_items is append-only: DELETE refused" in _refused(
            eng, "DELETE FROM review_items")
        assert "config_history is append-only: UPDATE refused" in _refused(
            eng, "UPDATE config_history SET changed_by = 'x'")
        with eng.begin() as con:  # an item's status still changes (decisions are updates)
            con.execute(text("UPDATE review_items SET tags = '[]'"))
            assert con.execute(text("SELECT count(*) FROM review_events")).scalar() == n_events
    finally:
        eng.dispose()
    downgrade(store_url, "0002")
    eng = make_engine(store_url)
    try:
        with eng.begin() as con:
            con.execute(text("DELETE FROM review_events"))
    finally:
        eng.dispose()
    upgrade(store_url)
