"""ml.tables: the one registry of warehouse tables, and what is generated from it."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from ml import warehouse
from ml.tables import (
    TABLE_LIST,
    TABLES,
    Column,
    Table,
    dbt_sources_yaml,
    primary_table,
    table,
)

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ROOT / "dbt_project" / "models" / "staging" / "_sources.yml"


def test_dbt_sources_file_is_the_one_generated_from_the_registry():
    assert SOURCES.read_text(encoding="utf-8") == dbt_sources_yaml(), (
        "dbt_project/models/staging/_sources.yml differs from ml/tables.py: run "
        "`learnloop tables --write-dbt-sources`")


def test_every_dbt_source_the_models_read_is_registered():
    used = set()
    for sql in (ROOT / "dbt_project" / "models").rglob("*.sql"):
        text = sql.read_text(encoding="utf-8")
        used |= {t for t in TABLES if f"source('warehouse', '{t}')" in text}
    assert used == {t.name for t in TABLE_LIST if t.dbt_source}


def test_tables_are_created_from_the_registry_and_old_tables_get_new_columns(tmp_path):
    con = duckdb.connect(str(tmp_path / "w.duckdb"))
    try:
        for t in TABLE_LIST:
            warehouse.ensure_table(con, t.name)
            got = con.execute("SELECT column_name, data_type FROM information_schema.columns "
                              "WHERE table_name = ? ORDER BY ordinal_position", [t.name]).fetchall()
            assert got == [(c.name, c.type) for c in t.columns], t.name
        con.execute("CREATE TABLE audit_candidates_old AS SELECT * FROM audit_candidates")
        con.execute("DROP TABLE audit_candidates")
        con.execute('CREATE TABLE audit_candidates ("interaction_id" VARCHAR)')
        warehouse.ensure_table(con, "audit_candidates")
        cols = [r[0] for r in con.execute("DESCRIBE audit_candidates").fetchall()]
        assert cols == list(TABLES["audit_candidates"].types)
    finally:
        con.close()


def test_registry_rejects_a_bad_layout_and_names_unknown_tables():
    with pytest.raises(ValueError, match="duplicate column"):
        Table("t", "d", (Column("a", "VARCHAR", ""), Column("a", "BIGINT", "")), "t")
    with pytest.raises(ValueError, match="unknown column types"):
        Table("t", "d", (Column("a", "TEXT", ""),), "t")
    with pytest.raises(ValueError, match="key columns"):
        Table("t", "d", (Column("a", "VARCHAR", ""),), "t", key=("b",))
    with pytest.raises(KeyError, match="no warehouse table 'nope'.*known"):
        table("nope")


def test_every_column_is_described_and_every_asset_has_one_primary_table():
    for t in TABLE_LIST:
        assert t.description and all(c.description for c in t.columns), t.name
    assert primary_table("teacher_samples") is None  # writes review items; attempts are a side table
    assert primary_table("raw_interactions").name == "raw_files"
    assert primary_table("audited_errors").key == ("tenant_id", "interaction_id", "auditor",
                                                   "prompt_version")


def test_free_text_columns_are_text_and_leave_ids_out():
    for name in ("interactions", "quarantined_interactions"):
        t = TABLES[name]
        assert t.free_text, name
        assert all(t.types[c] in ("VARCHAR", "VARCHAR[]") for c in t.free_text), name
        assert not {"interaction_id", "tenant_id", "session_id", "source_file"} & \
            set(t.free_text), name
    assert {"messages", "response", "corrected_response", "feedback_comment", "retrieval",
            "extra", "tags"} <= set(TABLES["interactions"].free_text)
    assert set(TABLES["quarantined_interactions"].free_text) == {"reason", "raw"}


def test_residual_pii_refuses_columns_that_are_not_text():
    from ml.pii import residual_pii_in_table

    con = duckdb.connect()
    con.execute("CREATE TABLE t (id VARCHAR, body VARCHAR, n BIGINT)")
    con.execute("INSERT INTO t VALUES ('4111-1111-1111-1111', 'fine', 1)")
    assert residual_pii_in_table(con, "t", columns=("body",)) == []
    assert [r["column"] for r in residual_pii_in_table(con, "t")] == ["id"]
    with pytest.raises(ValueError, match="no text columns"):
        residual_pii_in_table(con, "t", columns=("body", "n"))
