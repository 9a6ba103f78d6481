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
