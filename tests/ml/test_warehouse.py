"""ml.warehouse.ensure_table: a table from an older layout gets the columns it lacks, so an older
warehouse keeps working after a layout grows (audited_errors.in_calibration / label_weight)."""

from __future__ import annotations

from datetime import date, datetime
from pathlib import Path

import polars as pl
import pydantic
import pytest

from assets.resources import WarehouseResource
from ml import warehouse
from ml.tables import AUDITED_COLUMNS

OLD_COLUMNS = {c: t for c, t in AUDITED_COLUMNS.items()
               if c not in ("in_calibration", "label_weight")}


def _columns(con, table: str) -> dict[str, str]:
    return {r[0]: r[1] for r in con.execute(
        "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = ? "
        "ORDER BY ordinal_position", [table]).fetchall()}


def _verdict(iid: str, **extra) -> dict:
    return {"interaction_id": iid, "tenant_id": "acme", "partition_date": date(2025, 1, 1),
            "auditor": "rules", "prompt_version": "rules-v1", "is_error": False,
            "category": None, "severity": None, "confidence": 0.9, "explanation": "ok",
            "signals": [], "answered_by": "rules", "audited_at": datetime(2025, 1, 2), **extra}


def test_ensure_table_adds_missing_columns_to_an_older_table(tmp_path: Path):
    con = warehouse.connect(tmp_path / "w.duckdb")
    try:
        warehouse.ensure_table(con, "audited_errors", OLD_COLUMNS)
        con.execute("INSERT INTO audited_errors BY NAME SELECT 'old' AS interaction_id, "
                    "'rules' AS auditor, 'rules-v1' AS prompt_version, false AS is_error")
        warehouse.ensure_table(con, "audited_errors")
        cols = _columns(con, "audited_errors")
        assert list(cols) == list(AUDITED_COLUMNS)  # appended last, in layout order
        assert (cols["in_calibration"], cols["label_weight"]) == ("BOOLEAN", "DOUBLE")
        assert con.execute("SELECT in_calibration, label_weight FROM audited_errors"
                           ).fetchall() == [(None, None)]  # old rows: NULL
        warehouse.ensure_table(con, "audited_errors")  # idempotent
        assert list(_columns(con, "audited_errors")) == list(AUDITED_COLUMNS)

        # the new layout writes into the upgraded table (inserts match columns by position)
        frame = pl.DataFrame([_verdict("new", in_calibration=True, label_weight=5.0)],
                             schema_overrides={"signals": pl.List(pl.String)})
        assert warehouse.upsert_rows(con, "audited_errors", frame,
                                     ["interaction_id", "auditor", "prompt_version"]) == 1
        got = con.execute("SELECT interaction_id, in_calibration, label_weight FROM "
                          "audited_errors ORDER BY interaction_id").fetchall()
        assert got == [("new", True, 5.0), ("old", None, None)]
    finally:
        con.close()


def test_ensure_table_on_a_complete_table_reads_read_only(tmp_path: Path):
    path = tmp_path / "w.duckdb"
    con = warehouse.connect(path)
    warehouse.ensure_table(con, "interactions")
    con.close()
    ro = warehouse.connect(path, read_only=True)
    try:
        warehouse.ensure_table(ro, "interactions")  # nothing to add: no write attempted
        assert warehouse.read_partition(ro, "interactions", "2025-01-01").height == 0
    finally:
        ro.close()


def test_ensure_table_creates_a_new_table_with_the_whole_layout(tmp_path: Path):
    con = warehouse.connect(tmp_path / "w.duckdb")
    try:
        warehouse.ensure_table(con, "audited_errors")
        assert list(_columns(con, "audited_errors")) == list(AUDITED_COLUMNS)
    finally:
        con.close()


def test_read_intents_by_tenant_and_id(tmp_path):
    from ml import warehouse as wh
    con = wh.connect(tmp_path / "w.duckdb")
    try:
        wh.ensure_table(con, "interactions")
        con.execute("INSERT INTO interactions (interaction_id, tenant_id, intent) VALUES "
                    "('a', 't', 'billing'), ('a', 'u', 'shipping'), ('b', 't', NULL)")
        assert wh.read_intents(con, [("t", "a"), ("u", "a"), ("t", "b"), ("t", "zz")]) == {
            ("t", "a"): "billing", ("u", "a"): "shipping"}
    finally:
        con.close()


def test_memory_limit_from_the_environment_on_every_warehouse_connection(tmp_path, monkeypatch):
    def limit(con) -> str:
        return con.execute("SELECT current_setting('memory_limit')").fetchone()[0]

    db = tmp_path / "w.duckdb"
    con = warehouse.connect(db)
    default = limit(con)
    con.close()
    monkeypatch.setenv("LEARNLOOP_WAREHOUSE_MEMORY_LIMIT", "512MiB")
    con = warehouse.connect(db)
    try:
        assert limit(con) == "512.0 MiB" != default
    finally:
        con.close()
    with WarehouseResource(database=str(db)).get_connection() as con:
        assert limit(con) == "512.0 MiB"
    with WarehouseResource(database=str(db)).get_read_connection() as con:
        assert limit(con) == "512.0 MiB"
    own = WarehouseResource(database=str(db), connection_config={"memory_limit": "256MiB"})
    with own.get_connection() as con:  # the resource's own setting wins
        assert limit(con) == "256.0 MiB"
    monkeypatch.setenv("LEARNLOOP_WAREHOUSE_MEMORY_LIMIT", "80%")
    with pytest.raises(pydantic.ValidationError, match="LEARNLOOP_WAREHOUSE_MEMORY_LIMIT='80%'"):
        warehouse.connect(db)
