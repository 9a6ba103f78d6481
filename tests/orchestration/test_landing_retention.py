"""Archiving is not deleting: a landing file that disappears stops its day's ingest (the
warehouse keeps its rows); `learnloop landing archive` moves files and re-ingesting the day
changes nothing; `learnloop landing delete` is the explicit, recorded removal of a day's files
and rows, keeping the operational store consistent."""

from __future__ import annotations

import json

import dagster as dg
import duckdb
import pytest
from click.testing import CliRunner

from assets.ingest import ingest_interactions, raw_interactions
from assets.quality import interaction_quality
from cli.main import main
from ml.landing import partition_dir, write_landing_file
from tests.stores import resources_for

D1, D2 = "2026-11-03", "2026-11-04"


def _record(i: int, day: str, **kw) -> dict:
    rec = {"interaction_id": f"it-{day}-{i}", "tenant_id": "acme", "session_id": f"s-{i}",
           "timestamp": f"{day}T10:{i:02d}:00Z",
           "messages": [{"role": "user", "content": f"where is order {i}?"}],
           "response": f"Order {i} ships tomorrow.", "feedback": {"thumbs": "down"}}
    rec.update(kw)
    return rec


def _ingest(home, instance, day, ok=True):
    result = dg.materialize([raw_interactions, ingest_interactions, interaction_quality],
                            partition_key=day, instance=instance, resources=resources_for(home),
                            raise_on_error=False)
    assert result.success is ok
    return result


def _rows(home, sql, params=()):
    con = duckdb.connect(str(home / "warehouse.duckdb"), read_only=True)
    try:
        return con.execute(sql, list(params)).fetchall()
    finally:
        con.close()


def _day_rows(home, day):
    return (_rows(home, "SELECT * EXCLUDE (partition_date) FROM interactions WHERE "
                        "partition_date = ?::DATE ORDER BY interaction_id", [day]),
            _rows(home, "SELECT * FROM quarantined_interactions WHERE partition_date = ?::DATE "
                        "ORDER BY quarantine_key", [day]),
            _rows(home, "SELECT * EXCLUDE (partition_date) FROM interaction_quality WHERE "
                        "partition_date = ?::DATE ORDER BY interaction_id", [day]))


@pytest.fixture()
def two_days(learnloop_home):
    landing = learnloop_home / "landing"
    files = {}
    for day in (D1, D2):
        files[day] = [
            write_landing_file(landing, day, "a", [_record(i, day) for i in range(3)]),
            write_landing_file(landing, day, "b", [_record(i, day) for i in range(3, 5)]
                               + ["{broken"]),
        ]
    with dg.instance_for_test() as instance:
        for day in (D1, D2):
            _ingest(learnloop_home, instance, day)
        yield learnloop_home, instance, files


def test_a_landing_file_gone_without_archive_stops_the_ingest_and_keeps_the_rows(two_days):
    home, instance, files = two_days
    before = _day_rows(home, D1)
    files[D1][1].unlink()  # removed by hand: neither archived nor deleted
    result = _ingest(home, instance, D1, ok=False)
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    message = str(failure.event_specific_data.error)
    assert files[D1][1].name in message
    assert "learnloop landing delete --day 2026-11-03" in message and "restore" in message
    assert _day_rows(home, D1) == before  # nothing deleted
    assert len(before[0]) == 5


def test_archive_moves_files_and_reingesting_the_day_changes_nothing(two_days):
    home, instance, files = two_days
    before = _day_rows(home, D1)
    res = CliRunner().invoke(main, ["landing", "archive", "--before", D2, "--actor", "ops"])
    assert res.exit_code == 0, res.output
    assert not partition_dir(home / "landing", D1).exists()
    archived = sorted(p.name for p in partition_dir(home / "archive", D1).iterdir())
    assert archived == sorted(f.name for f in files[D1])
    assert partition_dir(home / "landing", D2).exists()  # --before is exclusive
    _ingest(home, instance, D1)
    assert _day_rows(home, D1) == before
    # the rows still name their landing files
    assert {r[0] for r in _rows(home, "SELECT DISTINCT source_file FROM interactions WHERE "
                                      "partition_date = ?::DATE", [D1])} == \
        {str(f) for f in files[D1]}
    res = CliRunner().invoke(main, ["landing", "history", "--json"])
    (event,) = json.loads(res.output)
    assert (event["action"], event["day"], event["actor"], event["counts"]["files"]) == \
        ("archive", D1, "ops", 2)


def test_archive_refuses_days_never_ingested(learnloop_home):
    write_landing_file(learnloop_home / "landing", D1, "a", [_record(1, D1)])
    res = CliRunner().invoke(main, ["landing", "archive", "--day", D1])
    assert res.exit_code != 0 and "never ingested" in res.output
    assert partition_dir(learnloop_home / "landing", D1).exists()


def test_delete_removes_files_and_rows_closes_open_items_and_is_recorded(two_days):
    from store.audit import record_attempt
    from store.db import session_scope
    from store.models import ReviewEvent, ReviewItem
    from store.repo import create_item, decide

    home, instance, files = two_days
    url = resources_for(home)["store"].get_url()
    con = duckdb.connect(str(home / "warehouse.duckdb"))
    try:  # an audit verdict per interaction of both days
        con.execute("CREATE TABLE audited_errors AS SELECT interaction_id, tenant_id, "
                    "partition_date FROM interactions")
    finally:
        con.close()
    with session_scope(url) as s:
        pending, _ = create_item(s, kind="error", dedup_key="k1", tenant_id="acme",
                                 interaction_id=f"it-{D2}-1")
        decided, _ = create_item(s, kind="error", dedup_key="k2", tenant_id="acme",
                                 interaction_id=f"it-{D2}-2")
        other, _ = create_item(s, kind="error", dedup_key="k3", tenant_id="acme",
                               interaction_id=f"it-{D1}-1")
        s.flush()
        decide(s, decided.id, decision="confirm", expected_version=decided.version, actor="ann")
        for i in (1, 2):
            record_attempt(s, interaction_id=f"it-{D2}-{i}", tenant_id="acme", auditor="rules",
                           prompt_version="v1", status="ok", is_error=True, reason=None)
        ids = (pending.id, decided.id, other.id)
    res = CliRunner().invoke(main, ["landing", "delete", "--day", D2, "--reason", "GDPR request 7",
                                    "--actor", "dpo", "--yes"])
    assert res.exit_code == 0, res.output
    assert not partition_dir(home / "landing", D2).exists()
    assert _day_rows(home, D2) == ([], [], [])
    assert _rows(home, "SELECT count(*) FROM raw_files WHERE partition_date = ?::DATE",
                 [D2]) == [(0,)]
    assert _rows(home, "SELECT count(*) FROM audited_errors") == [(5,)]  # D1's stay
    assert len(_day_rows(home, D1)[0]) == 5
    with session_scope(url) as s:
        status = {i: s.get(ReviewItem, i).status for i in ids}
        assert status == {ids[0]: "dismissed", ids[1]: "confirmed", ids[2]: "pending"}
        assert "data-deleted" in s.get(ReviewItem, ids[0]).tags
        notes = [e.note for e in s.query(ReviewEvent).filter_by(item_id=ids[0])]
        assert "data deleted: GDPR request 7" in notes
    res = CliRunner().invoke(main, ["landing", "history", "--day", D2, "--json"])
    (event,) = json.loads(res.output)
    assert (event["action"], event["actor"], event["reason"]) == ("delete", "dpo",
                                                                  "GDPR request 7")
    assert event["counts"]["warehouse.interactions"] == 5
    assert event["counts"]["warehouse.audited_errors"] == 5
    assert event["counts"]["review_items_closed"] == 1
    assert event["counts"]["audit_attempts"] == 2
    assert sorted(event["files"]) == sorted(str(f) for f in files[D2])
    # the day ingests again, empty, without complaint
    _ingest(home, instance, D2)
    assert _day_rows(home, D2) == ([], [], [])
