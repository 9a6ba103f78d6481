import json

import dagster as dg
import pytest

from ml.landing import write_landing_file
from orchestration import sensors
from orchestration.sensors import landing_file_sensor
from tests.stores import resources_for

REC = {"interaction_id": "a", "session_id": "s", "timestamp": "2026-11-01T00:00:00Z",
       "response": "hi"}


def _evaluate(instance, home, cursor=None):
    ctx = dg.build_sensor_context(instance=instance, cursor=cursor,
                                  resources=resources_for(home))
    return landing_file_sensor(ctx)


def test_landing_sensor_requests_runs_for_new_and_changed_days(learnloop_home):
    landing = learnloop_home / "landing"
    rec = {"interaction_id": "a", "session_id": "s", "timestamp": "2026-11-01T00:00:00Z",
           "response": "hi"}
    write_landing_file(landing, "2026-11-01", "t", [rec])
    write_landing_file(landing, "2026-11-02", "t", [rec])
    with dg.instance_for_test() as instance:
        first = _evaluate(instance, learnloop_home)
        assert sorted(r.partition_key for r in first.run_requests) == ["2026-11-01", "2026-11-02"]
        # daily partitions: nothing to register (no dynamic partitions)
        assert not first.dynamic_partitions_requests
        # nothing new (the runs requested are not over): skip, nothing requested twice
        again = _evaluate(instance, learnloop_home, first.cursor)
        assert not again.run_requests
        assert "waiting on 2 day(s)" in again.skip_reason.skip_message
        # a new file on one day: one run for that day only
        write_landing_file(landing, "2026-11-02", "t", [rec])
        third = _evaluate(instance, learnloop_home, again.cursor)
        assert [r.partition_key for r in third.run_requests] == ["2026-11-02"]
        assert json.loads(third.cursor)["requested"].keys() == {"2026-11-01", "2026-11-02"}


def test_days_ingested_by_the_cli_are_not_ingested_again_by_the_sensor(learnloop_home):
    """`learnloop run`/`demo` ingest in-process; the sensor (and the next `learnloop run`) must
    recognise those days by the landing fingerprint the `interactions` materialization records,
    not launch them again (issue 8, item 14)."""
    from orchestration import runner
    from orchestration.definitions import defs
    from orchestration.sensors import days_to_ingest
    from store.db import upgrade

    landing = learnloop_home / "landing"
    rec = {"interaction_id": "a", "session_id": "s", "timestamp": "2026-11-01T00:00:00Z",
           "response": "hi"}
    write_landing_file(landing, "2026-11-01", "t", [rec])
    write_landing_file(landing, "2026-11-02", "t", [rec])
    resources = resources_for(learnloop_home)
    upgrade(resources["store"].get_url())
    with dg.instance_for_test() as instance:
        assert runner.run_ingest(defs, instance, ["2026-11-01", "2026-11-02"]) == []
        assert days_to_ingest(instance, landing)[0] == []
        first = _evaluate(instance, learnloop_home)  # no cursor: a fresh daemon
        assert not first.run_requests
        assert "already ingested" in first.skip_reason.skip_message
        # a new file on one day: that day only, for the sensor and for `learnloop run`
        write_landing_file(landing, "2026-11-02", "t2", [{**rec, "interaction_id": "b"}])
        assert days_to_ingest(instance, landing)[0] == ["2026-11-02"]
        second = _evaluate(instance, learnloop_home, first.cursor)
        assert [r.partition_key for r in second.run_requests] == ["2026-11-02"]


def _fail(instance, run_key: str, *, finished: bool = True, will_retry: bool = False):
    """A real run of ingest_job in the instance with the sensor's run key, ended as failed (or
    still going)."""
    from orchestration.definitions import defs

    tags = {sensors.RUN_KEY_TAG: run_key}
    run = instance.create_run_for_job(job_def=defs.resolve_job_def("ingest_job"), tags=tags,
                                      status=dg.DagsterRunStatus.NOT_STARTED)
    if finished:  # else it stays queued (NOT_STARTED): not over
        instance.report_run_failed(run)
        if will_retry:
            instance.add_run_tags(run.run_id, {sensors.WILL_RETRY_TAG: "true"})
    return run


def test_a_failed_ingest_is_requested_again_after_a_back_off_then_given_up(
        learnloop_home, monkeypatch):
    """Issue 9 item 3: the cursor used to move before the run succeeded, so a failed ingest was
    never retried. Now a day stays requested until its `interactions` materialization records
    these landing files; a failed run is requested again (new run key) after a back-off, up to
    MAX_SENSOR_ATTEMPTS, then given up with a warning until the files change."""
    landing = learnloop_home / "landing"
    write_landing_file(landing, "2026-11-01", "t", [REC])
    with dg.instance_for_test() as instance:
        first = _evaluate(instance, learnloop_home)
        (req,) = first.run_requests
        assert req.tags["dagster/max_retries"] == str(sensors.INGEST_RUN_RETRIES)
        # a run still going: wait
        _fail(instance, req.run_key, finished=False)
        going = _evaluate(instance, learnloop_home, first.cursor)
        assert not going.run_requests and "waiting on 1 day(s)" in going.skip_reason.skip_message
    with dg.instance_for_test() as instance:
        first = _evaluate(instance, learnloop_home)
        (req,) = first.run_requests
        # failed, but Dagster's run retries will launch it again: wait for them
        _fail(instance, req.run_key, will_retry=True)
        retrying = _evaluate(instance, learnloop_home, first.cursor)
        assert not retrying.run_requests
    with dg.instance_for_test() as instance:
        first = _evaluate(instance, learnloop_home)
        (req,) = first.run_requests
        _fail(instance, req.run_key)
        # failed for good: requested again, but not before the back-off
        backing_off = _evaluate(instance, learnloop_home, first.cursor)
        assert not backing_off.run_requests
        assert "attempt 1 failed, next in" in backing_off.skip_reason.skip_message
        monkeypatch.setattr(sensors, "RETRY_BACKOFF_S", 0)
        cursor, keys = backing_off.cursor, [req.run_key]
        for attempt in range(2, sensors.MAX_SENSOR_ATTEMPTS + 1):
            retry = _evaluate(instance, learnloop_home, cursor)
            (again,) = retry.run_requests
            assert again.partition_key == "2026-11-01"
            assert again.tags["learnloop/attempt"] == str(attempt)
            assert again.run_key not in keys  # a new run key: Dagster launches it
            keys.append(again.run_key)
            _fail(instance, again.run_key)
            cursor = retry.cursor
        given_up = _evaluate(instance, learnloop_home, cursor)
        assert not given_up.run_requests
        assert "2026-11-01 given up" in given_up.skip_reason.skip_message
        assert not _evaluate(instance, learnloop_home, given_up.cursor).run_requests
        # new files on that day: a fresh start
        write_landing_file(landing, "2026-11-01", "t2", [{**REC, "interaction_id": "b"}])
        fresh = _evaluate(instance, learnloop_home, given_up.cursor)
        assert [r.partition_key for r in fresh.run_requests] == ["2026-11-01"]


def test_an_old_cursor_does_not_hide_days_never_ingested(learnloop_home):
    """The cursor of the earlier sensor (day -> fingerprint, written before the runs succeeded)
    is not trusted: a day it names but no materialization records is requested."""
    landing = learnloop_home / "landing"
    write_landing_file(landing, "2026-11-01", "t", [REC])
    from ml.landing import day_fingerprints

    old = json.dumps(day_fingerprints(landing))
    with dg.instance_for_test() as instance:
        res = _evaluate(instance, learnloop_home, old)
        assert [r.partition_key for r in res.run_requests] == ["2026-11-01"]


@pytest.mark.parametrize("folder", ["date=2026-02-30", "date=1999-12-31", "date=2031-01-01",
                                    "date=2026-1-05", "exports"])
def test_a_malformed_landing_folder_does_not_stop_the_valid_new_day(learnloop_home, folder,
                                                                    capfd):
    """Issue 9 items 3 and 10: a folder that is not a valid day (no such date, before the first
    day, years ahead, not a day at all) beside a valid new day: the sensor, evaluated for real
    against a real instance, requests the valid day, warns once per bad folder and goes on."""
    landing = learnloop_home / "landing"
    bad = landing / folder
    bad.mkdir(parents=True)
    (bad / "x.jsonl").write_text(json.dumps(REC) + "\n")
    write_landing_file(landing, "2026-11-02", "t", [REC])
    with dg.instance_for_test() as instance:
        capfd.readouterr()
        first = _evaluate(instance, learnloop_home)
        assert [r.partition_key for r in first.run_requests] == ["2026-11-02"]
        said = [ln for ln in capfd.readouterr().err.splitlines() if f"/{folder} skipped" in ln]
        assert len(said) == 1 and "WARNING" in said[0], said
        assert json.loads(first.cursor)["bad"] == [folder]
        again = _evaluate(instance, learnloop_home, first.cursor)
        assert not again.run_requests
        assert "1 invalid folder(s) skipped" in again.skip_reason.skip_message
        assert f"/{folder} skipped" not in capfd.readouterr().err  # said once, not every tick


def test_daily_partitions_put_a_range_in_calendar_order():
    """Issue 9 item 4: landing days are daily partitions, so a range means the dates in it."""
    from assets.partitions import landing_date_partitions

    keys = landing_date_partitions.get_partition_keys_in_range(
        dg.PartitionKeyRange("2026-02-27", "2026-03-02"))
    assert keys == ["2026-02-27", "2026-02-28", "2026-03-01", "2026-03-02"]
    assert landing_date_partitions.get_first_partition_key() == "2000-01-01"


def test_the_shipped_instance_retries_only_runs_that_ask(tmp_path, monkeypatch):
    """The dagster.yaml `learnloop` writes enables run retries (the daemon re-executes the
    sensor's ingest runs, tagged dagster/max_retries) with no retry for other runs."""
    from orchestration import runner
    from orchestration.jobs import INGEST_RUN_RETRIES

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dh"))
    home = runner.prepare_dagster_home(None)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert instance.run_retries_enabled
        assert instance.run_retries_max_retries == 0
    assert INGEST_RUN_RETRIES >= 1
