"""Health checks (orchestration/health.py): the pure checks, and health_sensor evaluated with
dg.build_sensor_context against a real store (SQLite and PostgreSQL): it raises, throttles and
resolves alerts and never requests a run."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import dagster as dg
import pytest
from sqlalchemy import select, update

from assets.resources import OperationalStoreResource
from ml.alerts import AlertSettings
from orchestration.health import (
    check_cost,
    check_provider_errors,
    check_review_queue,
    health_sensor,
)
from store.db import session_scope
from store.models import Alert, AuditAttempt, ReviewItem, TrainingRun


def _provider(attempts, failed, by=None):
    return {"attempts": attempts, "failed": failed, "rate": failed / attempts if attempts else None,
            "by_auditor": by or {"llm:openai/gpt": {"attempts": attempts, "failed": failed}}}


def test_provider_check_needs_enough_attempts_and_grades_severity():
    assert check_provider_errors(_provider(19, 19), 0.2, 20) == ("skipped", None)
    assert check_provider_errors(_provider(20, 4), 0.2, 20) == ("ok", None)  # 20% is not above
    outcome, f = check_provider_errors(_provider(20, 5, {"llm:a/x": {"attempts": 10, "failed": 1},
                                                         "llm:b/y": {"attempts": 10,
                                                                     "failed": 4}}), 0.2, 20)
    assert outcome == "failed" and f["kind"] == "provider_error_rate"
    assert f["severity"] == "warning" and "5 of 20 attempts (25%)" in f["message"]
    assert "worst: llm:b/y" in f["message"] and f["details"]["threshold"] == 0.2
    assert check_provider_errors(_provider(20, 10), 0.2, 20)[1]["severity"] == "critical"


def test_cost_check_is_skipped_without_a_budget():
    fig = {"month": "2026-05", "cost_usd": 120.0, "runs": 3, "priced_runs": 3}
    assert check_cost(fig, None) == ("skipped", None)
    assert check_cost(fig, 120.0) == ("ok", None)
    outcome, f = check_cost(fig, 100.0)
    assert outcome == "failed" and f["severity"] == "critical"
    assert f["message"] == ("Training cost of 2026-05 is $120.00, over the monthly budget of "
                            "$100.00 (3 training runs)")


def test_review_queue_is_stalled_only_when_old_and_undecided():
    base = {"pending": 3, "oldest_created_at": "x", "oldest_age_h": 80.0,
            "last_decision_at": None, "decision_age_h": None}
    outcome, f = check_review_queue(base, 72)
    assert outcome == "failed" and "no review decision yet" in f["message"]
    assert check_review_queue({**base, "decision_age_h": 5.0}, 72) == ("ok", None)
    assert check_review_queue({**base, "decision_age_h": 73.0}, 72)[0] == "failed"
    assert check_review_queue({**base, "oldest_age_h": 70.0}, 72) == ("ok", None)
    assert check_review_queue({**base, "pending": 0, "oldest_age_h": None}, 72) == ("ok", None)


@pytest.fixture()
def health_env(store_url, learnloop_home, monkeypatch):
    import os

    for var in list(os.environ):
        if var.startswith("LEARNLOOP_ALERT_"):
            monkeypatch.delenv(var)
    monkeypatch.setenv("LEARNLOOP_MONTHLY_BUDGET_USD", "50")
    monkeypatch.setenv("LEARNLOOP_ALERT_THROTTLE_S", "3600")
    return store_url


def _tick(url):
    ctx = dg.build_sensor_context(resources={"store": OperationalStoreResource(url=url)})
    return health_sensor(ctx)


def _alerts(url):
    with session_scope(url) as s:
        return [(a.kind, a.status, a.occurrences, a.severity)
                for a in s.scalars(select(Alert).order_by(Alert.id))]


def test_health_sensor_raises_throttles_and_resolves(health_env):
    url = health_env
    now = datetime.now(UTC)
    with session_scope(url) as s:
        for i in range(25):
            s.add(AuditAttempt(interaction_id=f"i{i}", tenant_id="t", auditor="llm:openai/gpt",
                               prompt_version="v1", status="failed" if i < 8 else "ok",
                               attempts=1, updated_at=now - timedelta(hours=2)))
        s.add(TrainingRun(method="openai", base_model="gpt", status="succeeded",
                          started_at=now, cost_usd=80.0))
        s.add(ReviewItem(kind="sample", status="pending", dedup_key="k1", tenant_id="t",
                         interaction_id="i1", created_at=now - timedelta(hours=100)))

    first = _tick(url)
    assert isinstance(first, dg.SkipReason)
    text = first.skip_message
    assert "provider errors 8/25 in 24 h (failed)" in text and "(failed)" in text
    assert "raised #1 provider_error_rate, #2 cost_over_budget, #3 review_queue_stalled" in text
    assert _alerts(url) == [("provider_error_rate", "open", 1, "warning"),
                            ("cost_over_budget", "open", 1, "critical"),
                            ("review_queue_stalled", "open", 1, "warning")]

    second = _tick(url)  # the same findings ten minutes later: counted, not sent again
    assert "#1 provider_error_rate (suppressed)" in second.skip_message
    assert [a[2] for a in _alerts(url)] == [2, 2, 2]

    with session_scope(url) as s:  # the provider recovers, a reviewer decides the item
        s.execute(update(AuditAttempt).values(status="ok"))
        s.execute(update(ReviewItem).values(status="approved"))
    third = _tick(url)
    assert "resolved #1, #3" in third.skip_message
    assert [a[:2] for a in _alerts(url)] == [("provider_error_rate", "resolved"),
                                             ("cost_over_budget", "open"),
                                             ("review_queue_stalled", "resolved")]


def test_health_sensor_with_nothing_to_report(health_env, monkeypatch):
    monkeypatch.delenv("LEARNLOOP_MONTHLY_BUDGET_USD")
    result = _tick(health_env)
    assert isinstance(result, dg.SkipReason)
    assert "(skipped)" in result.skip_message and "nothing raised" in result.skip_message
    assert _alerts(health_env) == []
    assert AlertSettings().monthly_budget_usd is None


def test_health_sensor_loads_in_definitions_without_a_job(tmp_path):
    defs = dg.Definitions(sensors=[health_sensor], resources={
        "store": OperationalStoreResource(url=f"sqlite:///{tmp_path / 's.db'}")})
    dg.Definitions.validate_loadable(defs)
    sensor = defs.resolve_sensor_def("health_sensor")
    assert sensor.minimum_interval_seconds == 600
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert not sensor.targets
