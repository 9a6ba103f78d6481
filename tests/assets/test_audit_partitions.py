"""The audit partitioned by landing day: a day's run selects and audits that day only, the days
add up to what one run over every day does, ``audit_days_sensor`` requests one run per day with
new work, and two days audited at once by two processes on a DuckLake lose and repeat nothing."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from assets.audit import audit_candidates, audited_errors
from assets.embeddings import interaction_embeddings
from ml.audit import tables
from ml.audit.candidates import CandidateConfig, selection_fingerprint
from orchestration.definitions import defs
from orchestration.sensors import audit_days_sensor
from tests.assets.conftest import land_and_ingest_days, warehouse_rows
from tests.lakes import default_kind
from tests.stores import materialize, resources_for, warehouse_connect

ROOT = Path(__file__).resolve().parents[2]
AUDIT = [audit_candidates, audited_errors]


@pytest.fixture()
def three_days(learnloop_home, monkeypatch):
    for var in ("LEARNLOOP_AUDITOR", "LEARNLOOP_TEACHER"):
        monkeypatch.delenv(var, raising=False)
    days = land_and_ingest_days(learnloop_home, n=300, days=3, seed=5)
    assert len(days) == 3
    return learnloop_home, days


def _audited(home: Path) -> dict[str, str]:
    """interaction_id -> landing day of every verdict in the warehouse."""
    return {i: str(d) for i, d in warehouse_rows(
        home, "SELECT a.interaction_id, i.partition_date FROM audited_errors a "
              "JOIN interactions i USING (tenant_id, interaction_id)")}


def _rules_version() -> str:
    from ml.audit import RulesAuditor

    return RulesAuditor().prompt_version


def test_a_days_run_audits_that_day_only_and_the_days_add_up_to_one_run_of_all(
        three_days, tmp_path):
    home, days = three_days
    if default_kind() == "ducklake":
        pytest.skip("a copy of the home would share the lake: compared on the DuckDB file")
    whole = tmp_path / "whole"
    shutil.copytree(home, whole)  # the same warehouse and store, audited in one run
    with dg.instance_for_test() as instance:
        for day in days:
            result = materialize(AUDIT, home, partition_key=day, instance=instance,
                                 resources=resources_for(home))
            assert result.success
            meta = {m.materialization.asset_key.to_user_string(): m.materialization.metadata
                    for m in result.get_asset_materialization_events()}
            assert meta["audit_candidates"]["landing_days"].value == day
            assert meta["audited_errors"]["landing_days"].value == day
            # this day's interactions got verdicts, a later day's none
            assert set(_audited(home).values()) == {d for d in days if d <= day}
    with dg.instance_for_test() as instance:
        result = materialize(AUDIT, whole, instance=instance, resources=resources_for(whole))
        assert result.success
        keys = {m.partition for m in result.get_asset_materialization_events()}
        assert keys == set(days)  # one range run: every landing day's partition
    by_day, at_once = _audited(home), _audited(whole)
    assert by_day and by_day == at_once
    verdicts = ("SELECT interaction_id, is_error, category, severity FROM audited_errors "
                "ORDER BY interaction_id")
    assert warehouse_rows(home, verdicts) == warehouse_rows(whole, verdicts)


def test_new_work_by_day_follows_the_audit(three_days):
    home, days = three_days
    version = _rules_version()
    con = warehouse_connect(home, read_only=True)
    try:
        before = tables.new_work_by_day(
            con, auditor="rules", prompt_version=version,
            selection=selection_fingerprint("rules", version, CandidateConfig()))
        per_day = dict(con.execute(
            "SELECT strftime(partition_date, '%Y-%m-%d'), count(*) FROM interactions "
            "GROUP BY 1").fetchall())
    finally:
        con.close()
    assert before == per_day  # nothing audited yet: every interaction is new work
    with dg.instance_for_test() as instance:
        assert materialize(AUDIT, home, partition_key=days[1], instance=instance,
                           resources=resources_for(home)).success
    con = warehouse_connect(home, read_only=True)
    try:
        after = tables.new_work_by_day(
            con, auditor="rules", prompt_version=version,
            selection=selection_fingerprint("rules", version, CandidateConfig()))
    finally:
        con.close()
    assert after == {d: n for d, n in per_day.items() if d != days[1]}


def _tick(instance, home, cursor=None):
    context = dg.build_sensor_context(instance=instance, cursor=cursor,
                                      resources=resources_for(home), definitions=defs)
    return audit_days_sensor(context)


def test_audit_days_sensor_requests_one_run_per_day_with_work(three_days):
    home, days = three_days
    with dg.instance_for_test() as instance:
        first = _tick(instance, home)
        assert isinstance(first, dg.SkipReason) and "never materialized" in first.skip_message
        assert materialize([interaction_embeddings], home, instance=instance,
                           resources=resources_for(home)).success
        result = _tick(instance, home)
        requests = result.run_requests
        assert [r.partition_key for r in requests] == days
        assert all(r.tags["learnloop/workload"] == "audit" for r in requests)
        assert len({r.run_key for r in requests}) == 3
        cursor = result.cursor
        # the same embeddings materialization never triggers twice
        again = _tick(instance, home, cursor)
        assert isinstance(again, dg.SkipReason)
        # a day with an audit run going is left out; a day audited since has no work
        job = defs.resolve_job_def("audit_day_job")
        instance.create_run_for_job(job, status=dg.DagsterRunStatus.STARTED,
                                    tags={"dagster/partition": days[0]})
        assert materialize(AUDIT, home, partition_key=days[1], instance=instance,
                           resources=resources_for(home)).success
        assert materialize([interaction_embeddings], home, instance=instance,
                           resources=resources_for(home)).success
        result = _tick(instance, home, cursor)
        assert [r.partition_key for r in result.run_requests] == [days[2]]
        assert result.cursor != cursor


def test_audit_days_sensor_skips_while_the_warehouse_file_is_written(three_days):
    home, _ = three_days
    with dg.instance_for_test() as instance:
        assert materialize([interaction_embeddings], home, instance=instance,
                           resources=resources_for(home)).success
        if os.environ.get("LEARNLOOP_TEST_WAREHOUSE") == "ducklake":
            pytest.skip("a DuckLake has no file lock")
        holder = subprocess.Popen(
            [sys.executable, "-c", "import duckdb, sys, time; "
             f"c = duckdb.connect({str(home / 'warehouse.duckdb')!r}); "
             "print('held', flush=True); time.sleep(60)"],
            stdout=subprocess.PIPE, text=True)
        try:
            assert holder.stdout.readline().strip() == "held"
            result = _tick(instance, home)
        finally:
            holder.kill()
            holder.wait()
        assert isinstance(result, dg.SkipReason) and "being written" in result.skip_message
        # the cursor did not move: the next tick requests the days
        assert [r.partition_key for r in _tick(instance, home).run_requests]


_AUDIT_A_DAY = """
import json, sys
import dagster as dg
from assets.audit import audit_candidates, audited_errors
from tests.stores import resources_for
home, day = sys.argv[1], sys.argv[2]
with dg.instance_for_test() as instance:
    r = dg.materialize([audit_candidates, audited_errors], partition_key=day, instance=instance,
                       resources=resources_for(home))
meta = {m.materialization.asset_key.to_user_string(): m.materialization.metadata
        for m in r.get_asset_materialization_events()}
print(json.dumps({"ok": r.success,
                  "audited": meta["audited_errors"]["audited"].value if r.success else None}))
"""


@pytest.mark.parametrize("learnloop_home", ["ducklake"], indirect=True)
def test_two_days_audited_side_by_side_on_a_lake_lose_and_repeat_nothing(learnloop_home,
                                                                        monkeypatch):
    """Two processes, one day each, at the same time on one DuckLake warehouse (the
    deployment where the warehouse pool admits several writers)."""
    monkeypatch.delenv("LEARNLOOP_AUDITOR", raising=False)
    home = learnloop_home
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    days = land_and_ingest_days(home, n=400, days=2, seed=11)
    procs = [subprocess.Popen([sys.executable, "-c", _AUDIT_A_DAY, str(home), day], env=env,
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for day in days]
    outs = [p.communicate(timeout=900) for p in procs]
    for p, (_out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
    results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    assert all(r["ok"] for r in results), outs
    rows = warehouse_rows(home, "SELECT a.interaction_id, i.partition_date FROM audited_errors a "
                                "JOIN interactions i USING (tenant_id, interaction_id)")
    ids = [r[0] for r in rows]
    assert len(ids) == len(set(ids)) == sum(r["audited"] for r in results) > 0
    assert {str(r[1]) for r in rows} == set(days)
