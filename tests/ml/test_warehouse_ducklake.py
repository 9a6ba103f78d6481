"""The warehouse on DuckLake with a PostgreSQL catalog (ml.lake, ml.warehouse): extensions loaded
offline, the helpers unchanged on a lake, passwords redacted, and concurrent writers from several
processes, each row landing exactly once."""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from datetime import date, timedelta
from pathlib import Path

import duckdb
import polars as pl
import pytest

from ml import lake as ml_lake
from ml import warehouse as wh
from ml.config import Settings
from ml.lake import Lake, LakeError, redact
from tests.lakes import lake_for_database

COLS = {"partition_date": "DATE", "writer": "INTEGER", "item_id": "VARCHAR"}
DAY0 = date(2025, 3, 1)


@pytest.fixture()
def lake(pg_database: str, tmp_path: Path) -> Lake:
    """A fresh DuckLake: a throwaway PostgreSQL database as its catalog, files under tmp_path."""
    return lake_for_database(pg_database, tmp_path / "lake-data")


def _rows(day: date, writer: int, n: int) -> pl.DataFrame:
    return pl.DataFrame({"partition_date": [day] * n, "writer": [writer] * n,
                         "item_id": [f"{day}-{i}" for i in range(n)]},
                        schema={"partition_date": pl.Date, "writer": pl.Int32,
                                "item_id": pl.String})


def test_redact_hides_passwords_in_both_connection_string_forms():
    assert redact("ducklake:postgres:dbname=l host=h user=u password=s3cret port=5") == \
        "ducklake:postgres:dbname=l host=h user=u password=*** port=5"
    assert redact("dbname=l PASSWORD = 'two words'") == "dbname=l PASSWORD = ***"
    assert redact("ducklake:postgres:postgresql://u:s3cret@h:5432/l") == \
        "ducklake:postgres:postgresql://u:***@h:5432/l"
    lake = Lake("ducklake:postgres:dbname=l host=h password=s3cret", "/data/")
    assert "s3cret" not in str(lake) and "s3cret" not in repr(lake)
    settings = Settings(warehouse_url="ducklake:postgres:dbname=l password=s3cret",
                        warehouse_data_path="/data/")
    assert "s3cret" not in repr(settings) and "s3cret" not in str(settings.model_dump())
    assert settings.warehouse_target == Lake("ducklake:postgres:dbname=l password=s3cret",
                                             "/data/")


def test_a_failed_attach_names_the_lake_without_its_password(tmp_path: Path):
    # port 1 on the local host refuses at once: no network involved
    lake = Lake("ducklake:postgres:dbname=x host=127.0.0.1 port=1 user=u password=s3cret",
                str(tmp_path / "data"))
    with pytest.raises(LakeError) as err:
        wh.connect(lake)
    text = str(err.value)
    assert "cannot attach the DuckLake warehouse" in text and "port=1" in text
    assert "s3cret" not in text and "password=***" in text
    assert err.value.__cause__ is None and err.value.__suppress_context__


@pytest.mark.parametrize("url, data_path, message", [
    ("postgres:dbname=x", "/d", "starts with 'ducklake:'"),
    ("ducklake:", "/d", "names no catalog"),
    ("ducklake:sqlite:meta.sqlite", "/d", "is not supported"),
    ("ducklake:postgres:dbname=x", "", "LEARNLOOP_WAREHOUSE_DATA_PATH"),
    ("ducklake:postgres:dbname=x", "az://c/p", "azure extension"),
])
def test_bad_lake_settings_are_named(url, data_path, message):
    with pytest.raises(LakeError, match=message):
        Lake(url, data_path)


def test_settings_need_a_data_path_with_a_lake_url():
    with pytest.raises(LakeError, match="LEARNLOOP_WAREHOUSE_DATA_PATH"):
        _ = Settings(warehouse_url="ducklake:postgres:dbname=x").warehouse_target
    assert isinstance(Settings(warehouse_url=None).warehouse_target, Path)


def test_extensions_load_from_their_packages_with_network_loading_off(tmp_path: Path):
    for name in ("ducklake", "postgres_scanner", "httpfs"):
        path = ml_lake.extension_file(name)
        assert path.is_file() and duckdb.__version__ in str(path)
    con = duckdb.connect(config=dict(ml_lake.OFFLINE_CONFIG))
    try:
        s3 = Lake("ducklake:postgres:dbname=x", "s3://bucket/lake/")
        assert s3.extensions() == ["ducklake", "postgres_scanner", "httpfs"]
        env = {"AWS_ACCESS_KEY_ID": "AKIDEXAMPLE", "AWS_SECRET_ACCESS_KEY": "wJalr'secret",
               "AWS_REGION": "eu-west-1", "AWS_ENDPOINT_URL": "http://127.0.0.1:9000"}
        ml_lake.load_extensions(con, s3.extensions())
        con.execute(ml_lake.s3_secret_sql(env))
        loaded = {r[0] for r in con.execute(
            "SELECT extension_name FROM duckdb_extensions() WHERE loaded").fetchall()}
        assert {"ducklake", "postgres_scanner", "httpfs"} <= loaded
        (secret,) = con.execute("SELECT name, type, secret_string FROM duckdb_secrets()"
                                ).fetchall()
        assert secret[:2] == ("learnloop_s3", "s3")
        assert "127.0.0.1:9000" in secret[2] and "wJalr" not in secret[2]  # DuckDB redacts
        settings = dict(con.execute("SELECT name, value FROM duckdb_settings() WHERE name IN "
                                    "('autoinstall_known_extensions', "
                                    "'autoload_known_extensions')").fetchall())
        assert settings == {"autoinstall_known_extensions": "false",
                            "autoload_known_extensions": "false"}
    finally:
        con.close()
    assert ml_lake.s3_secret_sql({}) is None
    with pytest.raises(LakeError, match="AWS_SECRET_ACCESS_KEY"):
        ml_lake.s3_secret_sql({"AWS_ACCESS_KEY_ID": "x"})


@pytest.mark.postgres
def test_the_helpers_work_unchanged_on_a_lake(lake: Lake):
    assert not wh.exists(lake)  # no catalog before the first read-write connection
    assert wh.table_count(lake, "interactions") == 0
    con = wh.connect(lake)
    try:
        assert wh.is_lake(con)
        assert con.execute("SELECT current_database(), current_schema()").fetchone() == \
            ("lake", "main")
        assert wh.write_frame(con, "events", _rows(DAY0, 1, 3), columns=COLS,
                              delete_where="partition_date = ?::DATE", params=[DAY0]) == 3
        # rewriting a partition replaces it
        wh.write_frame(con, "events", _rows(DAY0, 2, 2), columns=COLS,
                       delete_where="partition_date = ?::DATE", params=[DAY0])
        assert con.execute("SELECT writer, count(*) FROM events GROUP BY ALL").fetchall() == \
            [(2, 2)]
        # upsert on a key, with the EXISTS over the registered _incoming
        wh.upsert_rows(con, "events", _rows(DAY0, 3, 3), keys=["item_id"], columns=COLS)
        assert sorted(con.execute("SELECT item_id, writer FROM events").fetchall()) == \
            [(f"{DAY0}-{i}", 3) for i in range(3)]
        # a layout that grew: ensure_table adds the column (ALTER TABLE on DuckLake)
        wh.ensure_table(con, "events", {**COLS, "note": "VARCHAR"})
        assert [r[0] for r in con.execute("DESCRIBE events").fetchall()][-1] == "note"
        # registered Arrow tables and ANTI JOIN
        con.register("_keys", pl.DataFrame({"item_id": [f"{DAY0}-0", "other"]}).to_arrow())
        assert con.execute("SELECT item_id FROM _keys ANTI JOIN events USING (item_id)"
                           ).fetchall() == [("other",)]
        assert wh.table_exists(con, "events") and not wh.table_exists(con, "nope")
    finally:
        con.close()
    assert wh.exists(lake) and wh.table_count(lake, "events") == 3
    ro = wh.connect(lake, read_only=True)
    try:
        assert ro.execute("SELECT count(*) FROM events").fetchone() == (3,)
        wh.ensure_table(ro, "events", {**COLS, "note": "VARCHAR"})  # nothing to add: no write
        with pytest.raises(duckdb.Error, match="read-only"):
            ro.execute("DELETE FROM events")
    finally:
        ro.close()


@pytest.mark.postgres
def test_the_table_stamp_makes_concurrent_writers_of_an_empty_partition_conflict(lake: Lake):
    """Why write_frame stamps the table: two writers of a partition that was empty delete
    nothing, so DuckLake sees no conflict and both inserts land (duplicates); with the stamp,
    the second commit conflicts and write_frame's retry replaces the winner's rows instead."""
    a, b = wh.connect(lake), wh.connect(lake)
    try:
        wh.ensure_table(a, "events", COLS)

        def begin_write(con, day, writer, stamp):
            con.execute("BEGIN TRANSACTION")
            if stamp:
                con.execute("COMMENT ON TABLE events IS 'learnloop write'")
            con.execute("DELETE FROM events WHERE partition_date = ?", [day])
            con.register("_incoming", _rows(day, writer, 2).to_arrow())
            con.execute("INSERT INTO events SELECT * FROM _incoming")

        day = DAY0 + timedelta(days=1)
        begin_write(a, day, 1, stamp=False)
        begin_write(b, day, 2, stamp=False)
        a.execute("COMMIT")
        b.execute("COMMIT")  # no conflict seen: both landed
        assert a.execute("SELECT count(*) FROM events WHERE partition_date = ?", [day]
                         ).fetchone() == (4,)

        day = DAY0 + timedelta(days=2)
        begin_write(a, day, 1, stamp=True)
        wh.write_frame(b, "events", _rows(day, 2, 2), columns=COLS,
                       delete_where="partition_date = ?::DATE", params=[day])
        with pytest.raises(duckdb.TransactionException, match="conflict"):
            a.execute("COMMIT")
        wh.rollback(a)  # the failed COMMIT ended the transaction: nothing to roll back
        wh.write_frame(a, "events", _rows(day, 1, 2), columns=COLS,  # the retry
                       delete_where="partition_date = ?::DATE", params=[day])
        assert a.execute("SELECT writer, count(*) FROM events WHERE partition_date = ? "
                         "GROUP BY ALL", [day]).fetchall() == [(1, 2)]
    finally:
        a.close()
        b.close()


def test_a_writer_that_keeps_losing_fails_loudly():
    calls = []

    def always_conflicts():
        calls.append(1)
        raise duckdb.TransactionException("Transaction conflict - attempting to insert")

    with pytest.raises(wh.WriteConflict, match="lost 3 commit races"):
        wh.retry_conflicts(always_conflicts, "writing to 'events'", attempts=3)
    assert len(calls) == 3

    def other_error():
        raise duckdb.TransactionException("cannot start a transaction within a transaction")

    with pytest.raises(duckdb.TransactionException, match="within a transaction"):
        wh.retry_conflicts(other_error, "x")  # not a conflict: not retried


WRITERS = 3
DAYS_PER_WRITER = 2
ROWS = 40
SHARED_DAY = date(2025, 6, 30)  # every writer writes this partition too


def _writer(url: str, data_path: str, writer: int, barrier) -> int:
    """One process: its own partitions of two tables, then the shared partition of both;
    returns the attempts that lost a commit race."""
    lost = 0
    original = wh.retry_conflicts

    def counting(action, what, attempts=None):
        def counted():
            nonlocal lost
            try:
                return action()
            except duckdb.TransactionException:
                lost += 1
                raise
        return original(counted, what, attempts)

    wh.retry_conflicts = counting  # this process only (spawned)
    con = wh.connect(Lake(url, data_path))
    try:
        barrier.wait(timeout=300)  # spawned processes start slowly on a loaded machine
        days = [DAY0 + timedelta(days=writer * DAYS_PER_WRITER + k)
                for k in range(DAYS_PER_WRITER)] + [SHARED_DAY]
        for day in days:
            for table in ("events_a", "events_b"):
                wh.write_frame(con, table, _rows(day, writer, ROWS), columns=COLS,
                               delete_where="partition_date = ?::DATE", params=[day])
    finally:
        con.close()
    return lost


@pytest.mark.postgres
def test_concurrent_writer_processes_land_every_row_exactly_once(lake: Lake):
    ctx = multiprocessing.get_context("spawn")
    with ctx.Manager() as manager:
        barrier = manager.Barrier(WRITERS)
        # an executor, not a Pool: a writer process that dies fails the test (BrokenProcessPool)
        # instead of leaving it waiting for a result forever
        with ProcessPoolExecutor(WRITERS, mp_context=ctx) as pool:
            futures = [pool.submit(_writer, lake.url, lake.data_path, w, barrier)
                       for w in range(WRITERS)]
            lost = [f.result(timeout=600) for f in futures]
    con = wh.connect(lake, read_only=True)
    try:
        for table in ("events_a", "events_b"):
            per_day = con.execute(f"SELECT partition_date, writer, count(*), "
                                  f"count(DISTINCT item_id) FROM {table} GROUP BY ALL "
                                  f"ORDER BY ALL").fetchall()
            own = [r for r in per_day if r[0] != SHARED_DAY]
            assert own == [(DAY0 + timedelta(days=w * DAYS_PER_WRITER + k), w, ROWS, ROWS)
                           for w in range(WRITERS) for k in range(DAYS_PER_WRITER)]
            shared = [r for r in per_day if r[0] == SHARED_DAY]
            # the shared partition: one writer's rows (the last to commit), never a mix
            assert len(shared) == 1 and shared[0][2:] == (ROWS, ROWS), shared
    finally:
        con.close()
    print(f"commit races lost (and retried) per writer: {lost}")


def test_the_warehouse_resource_resolves_a_lake(monkeypatch, tmp_path: Path):
    from assets.resources import WarehouseResource, store_resources

    url = "ducklake:postgres:dbname=l host=127.0.0.1 user=u password=s3cret"
    res = WarehouseResource(url=url, data_path=str(tmp_path / "d"))
    assert res.target() == Lake(url, str(tmp_path / "d")) and res.is_lake()
    assert "s3cret" not in res.describe()
    assert res.dbt_env() == {"LEARNLOOP_WAREHOUSE_URL": url,
                             "LEARNLOOP_WAREHOUSE_DATA_PATH": str(tmp_path / "d")}
    with pytest.raises(TypeError, match="not a DuckDB file"):
        res.path()
    # the environment: the URL wins over LEARNLOOP_WAREHOUSE_PATH, an explicit file over both
    monkeypatch.setenv("LEARNLOOP_WAREHOUSE_URL", url)
    monkeypatch.setenv("LEARNLOOP_WAREHOUSE_DATA_PATH", "/lake/")
    monkeypatch.setenv("LEARNLOOP_WAREHOUSE_PATH", str(tmp_path / "env.duckdb"))
    assert WarehouseResource().target() == Lake(url, "/lake/")
    assert WarehouseResource(database=str(tmp_path / "w.duckdb")).target() == \
        tmp_path / "w.duckdb"
    assert store_resources(tmp_path)["warehouse"].target() == Lake(url, "/lake/")
    monkeypatch.delenv("LEARNLOOP_WAREHOUSE_URL")
    assert WarehouseResource().target() == tmp_path / "env.duckdb"
    assert WarehouseResource().dbt_env() == {"LEARNLOOP_WAREHOUSE_URL": "",
                                             "LEARNLOOP_WAREHOUSE_DATA_PATH": ""}
    assert store_resources(tmp_path)["warehouse"].target() == tmp_path / "warehouse.duckdb"
