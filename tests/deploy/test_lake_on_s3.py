"""The DuckLake warehouse with its data files on S3-compatible object storage (a local moto
server) and its catalog on PostgreSQL: written and read through ml.warehouse, configured by the
standard AWS variables alone."""

from __future__ import annotations

from datetime import date

import polars as pl
import pytest

from ml import warehouse as wh
from tests.deploy.test_object_storage import BUCKET, _keys, s3  # noqa: F401 (fixture)
from tests.lakes import lake_for_database

COLS = {"partition_date": "DATE", "writer": "INTEGER", "item_id": "VARCHAR"}


def test_lake_writes_its_data_files_to_the_bucket_and_reads_them_back(s3, pg_database):  # noqa: F811
    lake = lake_for_database(pg_database, f"s3://{BUCKET}/lake")
    assert lake.remote_data and "httpfs" in lake.extensions()
    n = 5_000  # past DuckLake's inlining of small writes into the catalog: real data files
    frame = pl.DataFrame({"partition_date": [date(2026, 11, 1)] * n, "writer": [1] * n,
                          "item_id": [f"i{k:05d}" for k in range(n)]},
                         schema={"partition_date": pl.Date, "writer": pl.Int32,
                                 "item_id": pl.String})
    con = wh.connect(lake)
    try:
        wh.write_frame(con, "lake_s3_rows", frame, delete_where="true", columns=COLS)
    finally:
        con.close()
    parquet = [k for k in _keys("lake/") if k.endswith(".parquet")]
    assert parquet, f"no data file in s3://{BUCKET}/lake/: {_keys('')}"
    con = wh.connect(lake, read_only=True)
    try:
        back = wh.query(con, "SELECT item_id FROM lake_s3_rows ORDER BY item_id")
        files = con.execute("SELECT count(*) FROM ducklake_list_files('lake', 'lake_s3_rows')"
                            ).fetchone()[0]
    finally:
        con.close()
    assert back["item_id"].to_list() == frame["item_id"].to_list()
    assert files >= 1


def test_without_keys_the_bucket_is_refused_with_a_named_error(pg_database, monkeypatch):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "only-the-id")
    lake = lake_for_database(pg_database, f"s3://{BUCKET}/lake")
    with pytest.raises(Exception, match="AWS_SECRET_ACCESS_KEY"):
        wh.connect(lake)
