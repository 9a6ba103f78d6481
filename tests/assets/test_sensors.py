import json

import dagster as dg

from ml.landing import write_landing_file
from orchestration.sensors import landing_file_sensor
from tests.stores import resources_for


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
        assert first.dynamic_partitions_requests[0].partition_keys == ["2026-11-01", "2026-11-02"]
        # nothing new: skip
        again = _evaluate(instance, learnloop_home, first.cursor)
        assert isinstance(again, dg.SkipReason)
        # a new file on one day: one run for that day only
        write_landing_file(landing, "2026-11-02", "t", [rec])
        third = _evaluate(instance, learnloop_home, first.cursor)
        assert [r.partition_key for r in third.run_requests] == ["2026-11-02"]
        assert json.loads(third.cursor).keys() == {"2026-11-01", "2026-11-02"}


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
