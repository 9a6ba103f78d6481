"""approved_samples_sensor: a new dataset version when enough samples were approved since the
last one; its cursor keeps the same approvals from triggering twice."""

from __future__ import annotations

import dagster as dg

from orchestration.sensors import approved_samples_sensor
from store.datasets import record_dataset
from store.db import session_scope
from store.repo import create_item, decide
from tests.stores import resources_for


def _approve(url: str, start: int, n: int) -> None:
    with session_scope(url) as s:
        for i in range(start, start + n):
            item, _ = create_item(s, kind="sample", dedup_key=f"k{i}", tenant_id="t",
                                  interaction_id=f"i{i}", proposed_response=f"fixed {i}")
            decide(s, item.id, decision="approve", expected_version=1, actor="reviewer")


def _tick(resources, cursor=None):
    ctx = dg.build_sensor_context(cursor=cursor, resources=resources)
    result = approved_samples_sensor(ctx)
    return result, ctx.cursor


def test_the_sensor_fires_once_per_threshold_of_new_approvals(learnloop_home, monkeypatch):
    monkeypatch.setenv("LEARNLOOP_DATASET_MIN_NEW_APPROVED", "3")
    resources = resources_for(learnloop_home)
    url = resources["store"].get_url()
    _approve(url, 0, 2)
    result, cursor = _tick(resources)
    assert isinstance(result, dg.SkipReason) and "2 sample(s) approved" in result.skip_message
    assert cursor is None
    _approve(url, 2, 1)
    request, cursor = _tick(resources)
    assert isinstance(request, dg.RunRequest) and request.tags["learnloop/new_approved"] == "3"
    assert cursor is not None
    # the same approvals never trigger twice, even before the requested run recorded a version
    again, cursor2 = _tick(resources, cursor)
    assert isinstance(again, dg.SkipReason) and "0 sample(s)" in again.skip_message
    assert cursor2 == cursor
    _approve(url, 3, 3)
    third, cursor3 = _tick(resources, cursor)
    assert isinstance(third, dg.RunRequest) and third.run_key != request.run_key
    assert cursor3 > cursor


def test_a_version_built_elsewhere_resets_the_count(learnloop_home, monkeypatch):
    """Approvals already in a dataset version (built by the CLI or the demo) do not count, even
    for a sensor with no cursor yet."""
    monkeypatch.setenv("LEARNLOOP_DATASET_MIN_NEW_APPROVED", "2")
    resources = resources_for(learnloop_home)
    url = resources["store"].get_url()
    _approve(url, 0, 4)
    with session_scope(url) as s:
        record_dataset(s, kind="training", name="default", version_hash="a" * 64, items=[])
    result, _ = _tick(resources)
    assert isinstance(result, dg.SkipReason) and "0 sample(s)" in result.skip_message
    _approve(url, 4, 2)
    result, _ = _tick(resources)
    assert isinstance(result, dg.RunRequest)
