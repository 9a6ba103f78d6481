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


# The append-only guards every head revision must have, written out here (not read from 0003):
# a later migration that rebuilds one of these tables (SQLite's batch_alter_table copies the table
# and drops it, and its triggers with it) or drops a trigger must fail this test.
APPEND_ONLY_GUARDS = {("review_events", "UPDATE"), ("review_events", "DELETE"),
                      ("config_history", "UPDATE"), ("config_history", "DELETE"),
                      ("review_items", "DELETE")}


def _refusing_triggers(eng) -> set[tuple[str, str]]:
    """(table, operation) of every enabled row trigger that refuses the operation before it runs."""
    import re

    from sqlalchemy import text

    found: set[tuple[str, str]] = set()
    with eng.connect() as con:
        if eng.dialect.name == "sqlite":
            rows = con.execute(text("SELECT tbl_name, sql FROM sqlite_master "
                                    "WHERE type = 'trigger'")).all()
            for table, sql in rows:
                # no "UPDATE OF <columns>" (that would guard some columns only) and no WHEN
                m = re.search(r"\bBEFORE\s+(UPDATE|DELETE|INSERT)\s+ON\s+\"?(\w+)\"?\s+BEGIN\b",
                              sql or "", re.I)
                if m and "RAISE(ABORT" in (sql or "").upper().replace(" ", ""):
                    found.add((m.group(2), m.group(1).upper()))
                    assert m.group(2) == table
        else:
            rows = con.execute(text(
                "SELECT t.event_object_table, t.event_manipulation, t.action_timing, "
                "t.action_orientation, t.action_statement, g.tgenabled "
                "FROM information_schema.triggers t "
                "JOIN pg_trigger g ON g.tgname = t.trigger_name "
                "JOIN pg_class c ON c.oid = g.tgrelid AND c.relname = t.event_object_table "
                "WHERE t.trigger_schema = current_schema()")).all()
            for table, operation, timing, orientation, statement, enabled in rows:
                if (timing == "BEFORE" and orientation == "ROW" and enabled != "D"
                        and "learnloop_refuse_change" in statement):
                    found.add((table, operation))
    return found


def test_head_has_every_append_only_trigger(store_url):
    from alembic.script import ScriptDirectory
    from sqlalchemy import text

    from store.db import alembic_config

    head = ScriptDirectory.from_config(alembic_config(store_url)).get_current_head()
    eng = make_engine(store_url)
    try:
        with eng.connect() as con:
            assert con.execute(text("SELECT version_num FROM alembic_version")).scalar() == head
        missing = APPEND_ONLY_GUARDS - _refusing_triggers(eng)
        assert not missing, f"append-only triggers missing at head {head}: {sorted(missing)}"
        # the check sees a lost trigger (as after a table rebuild)
        with eng.begin() as con:
            con.execute(text("DROP TRIGGER review_items_no_delete"
                             + (" ON review_items" if eng.dialect.name == "postgresql" else "")))
        assert APPEND_ONLY_GUARDS - _refusing_triggers(eng) == {("review_items", "DELETE")}
    finally:
        eng.dispose()
    downgrade(store_url, "0002")
    upgrade(store_url)
    eng = make_engine(store_url)
    try:
        assert APPEND_ONLY_GUARDS <= _refusing_triggers(eng)
    finally:
        eng.dispose()


def test_0004_prefixes_the_tenant_to_existing_dedup_keys(store_url):
    """Items written before 0004 keep their identity: their producers' keys gain the tenant, so a
    re-run after the upgrade finds them instead of creating a second item."""
    from sqlalchemy import text as sql

    from store import repo
    from store.audit import error_dedup_key
    from store.db import session_scope

    downgrade(store_url, "0003")  # the fixture migrated to head
    eng = make_engine(store_url)
    try:
        with eng.begin() as con:
            for kind, key in (("error", "i1:rules:rules-v1"), ("sample", "i1:sample"),
                              ("error", "x" * 299)):
                con.execute(sql("INSERT INTO review_items (kind, status, version, dedup_key, "
                                "tenant_id, interaction_id, tags, extra, created_at, updated_at) "
                                "VALUES (:k, 'pending', 1, :d, 'acme', 'i1', '[]', '{}', "
                                "CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"), {"k": kind, "d": key})
    finally:
        eng.dispose()
    upgrade(store_url)
    with session_scope(store_url) as s:
        keys = sorted(s.execute(sql("SELECT dedup_key FROM review_items")).scalars())
        assert keys[:2] == ["acme/i1:rules:rules-v1", "acme/i1:sample"]
        assert len(keys[2]) == 300 and keys[2] == repo.bounded_key("acme/" + "x" * 299)
        _, created = repo.create_item(
            s, kind="error", dedup_key=error_dedup_key("acme", "i1", "rules", "rules-v1"),
            actor="auditor:rules", tenant_id="acme", interaction_id="i1")
        assert not created
