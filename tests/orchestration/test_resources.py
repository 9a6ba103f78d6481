"""The Dagster resource: env vars bound with dg.EnvVar, run-time fallback to LEARNLOOP_*, and the
development hash-key warning."""

from __future__ import annotations

import logging

import dagster as dg
import pytest

from ml.config import Settings
from orchestration import resources
from orchestration.resources import LearnloopResource


@dg.asset
def where(learnloop: LearnloopResource) -> dg.MaterializeResult:
    s = learnloop.settings()
    return dg.MaterializeResult(metadata={"home": str(s.home), "store": s.store})


def _metadata(result: dg.ExecuteInProcessResult) -> dict:
    mat = result.get_asset_materialization_events()[0].materialization
    return {k: v.value for k, v in mat.metadata.items()}


def test_fields_bound_with_envvar_resolve_when_the_run_starts(tmp_path, monkeypatch):
    monkeypatch.setenv("DEPLOY_HOME", str(tmp_path / "deployed"))
    monkeypatch.setenv("DEPLOY_STORE", f"sqlite:///{tmp_path / 'other.db'}")
    res = LearnloopResource(home=dg.EnvVar("DEPLOY_HOME"), store_url=dg.EnvVar("DEPLOY_STORE"))
    result = dg.materialize([where], resources={"learnloop": res})
    assert _metadata(result) == {"home": str(tmp_path / "deployed"),
                                 "store": f"sqlite:///{tmp_path / 'other.db'}"}


def test_an_unset_envvar_fails_the_run_naming_the_variable(monkeypatch):
    monkeypatch.delenv("DEPLOY_HOME_UNSET", raising=False)
    res = LearnloopResource(home=dg.EnvVar("DEPLOY_HOME_UNSET"))
    with pytest.raises(Exception, match="DEPLOY_HOME_UNSET"):
        dg.materialize([where], resources={"learnloop": res})


def test_empty_fields_read_the_environment_at_run_time_not_import(tmp_path, monkeypatch):
    res = LearnloopResource()  # built before the variable is set, like the shipped definitions
    monkeypatch.setenv("LEARNLOOP_HOME", str(tmp_path / "late"))
    monkeypatch.delenv("LEARNLOOP_STORE_URL", raising=False)
    result = dg.materialize([where], resources={"learnloop": res})
    assert _metadata(result)["home"] == str(tmp_path / "late")


def test_dev_hash_key_warns_once_and_a_real_key_does_not(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(resources, "_warned_dev_key", False)
    monkeypatch.delenv("LEARNLOOP_HASH_KEY", raising=False)
    res = LearnloopResource(home=str(tmp_path))
    with caplog.at_level(logging.WARNING):
        res.settings()
        res.settings()
    warned = [r for r in caplog.records if "LEARNLOOP_HASH_KEY is not set" in r.getMessage()]
    assert len(warned) == 1

    caplog.clear()
    monkeypatch.setattr(resources, "_warned_dev_key", False)
    monkeypatch.setenv("LEARNLOOP_HASH_KEY", "a-real-secret-key-0123456789")
    with caplog.at_level(logging.WARNING):
        res.settings()
    assert not [r for r in caplog.records if "LEARNLOOP_HASH_KEY" in r.getMessage()]
    assert "a-real-secret-key" not in caplog.text


@pytest.mark.parametrize("url, bind", [
    ("http://127.0.0.1:8000", ("127.0.0.1", 8000)),
    ("http://0.0.0.0:9001/", ("0.0.0.0", 9001)),
    ("https://review.example.com", ("review.example.com", 443)),
])
def test_service_url_gives_the_serve_bind(monkeypatch, url, bind):
    monkeypatch.setenv("LEARNLOOP_SERVICE_URL", url)
    assert Settings().service_bind == bind


def test_service_url_without_scheme_is_refused_by_name(monkeypatch):
    monkeypatch.setenv("LEARNLOOP_SERVICE_URL", "localhost:8000")
    with pytest.raises(ValueError, match="LEARNLOOP_SERVICE_URL must be an http"):
        Settings()


def test_every_schedule_and_sensor_of_the_code_location_starts_running():
    """README: the landing sensor and the audit, teacher and analytics schedules run without a
    click in the UI."""
    from orchestration.definitions import defs

    schedules = {s.name: s.default_status for s in defs.schedules}
    sensors = {s.name: s.default_status for s in defs.sensors}
    assert set(schedules) == {"hourly_audit_schedule", "daily_teacher_schedule",
                              "analytics_schedule"}
    assert set(schedules.values()) == {dg.DefaultScheduleStatus.RUNNING}
    assert sensors == {"landing_file_sensor": dg.DefaultSensorStatus.RUNNING}
