"""The store resources (assets/resources.py): one per store, env vars bound with dg.EnvVar,
run-time fallback to LEARNLOOP_*, the migration check, and the development hash-key warning."""

from __future__ import annotations

import logging

import dagster as dg
import pytest

from assets import resources
from assets.resources import (
    LandingZoneResource,
    OperationalStoreResource,
    VectorStoreResource,
    WarehouseResource,
    store_resources,
)
from ml.config import Settings
from store.db import StoreNotMigrated, upgrade


@dg.asset
def where(warehouse: WarehouseResource, store: OperationalStoreResource,
          vectors: VectorStoreResource, landing_zone: LandingZoneResource) -> dg.MaterializeResult:
    with warehouse.get_connection() as con:
        answer = con.execute("SELECT 41 + 1").fetchone()[0]
    return dg.MaterializeResult(metadata={
        "warehouse": str(warehouse.path()), "store": store.get_url(), "vectors": vectors.get_uri(),
        "landing": str(landing_zone.root()), "answer": answer})


def _metadata(result: dg.ExecuteInProcessResult) -> dict:
    mat = result.get_asset_materialization_events()[0].materialization
    return {k: v.value for k, v in mat.metadata.items()}


def test_each_store_is_configured_on_its_own_with_envvar_resolved_when_the_run_starts(
        tmp_path, monkeypatch):
    monkeypatch.setenv("DEPLOY_WAREHOUSE", str(tmp_path / "wh" / "w.duckdb"))
    monkeypatch.setenv("DEPLOY_STORE", f"sqlite:///{tmp_path / 'other.db'}")
    upgrade(f"sqlite:///{tmp_path / 'other.db'}")
    res = {"warehouse": WarehouseResource(database=dg.EnvVar("DEPLOY_WAREHOUSE")),
           "store": OperationalStoreResource(url=dg.EnvVar("DEPLOY_STORE")),
           "vectors": VectorStoreResource(uri=str(tmp_path / "vec")),
           "landing_zone": LandingZoneResource(path=str(tmp_path / "in"))}
    result = dg.materialize([where], resources=res)
    assert _metadata(result) == {
        "warehouse": str(tmp_path / "wh" / "w.duckdb"), "store": f"sqlite:///{tmp_path / 'other.db'}",
        "vectors": str(tmp_path / "vec"), "landing": str(tmp_path / "in"), "answer": 42}
    assert (tmp_path / "wh" / "w.duckdb").exists() and (tmp_path / "in").is_dir()


def test_an_unset_envvar_fails_the_run_naming_the_variable(tmp_path, monkeypatch):
    monkeypatch.delenv("DEPLOY_WAREHOUSE_UNSET", raising=False)
    res = {**store_resources(tmp_path),
           "warehouse": WarehouseResource(database=dg.EnvVar("DEPLOY_WAREHOUSE_UNSET"))}
    upgrade(res["store"].get_url())
    with pytest.raises(Exception, match="DEPLOY_WAREHOUSE_UNSET"):
        dg.materialize([where], resources=res)


def test_empty_fields_read_the_environment_at_run_time_not_import(tmp_path, monkeypatch):
    res = store_resources()  # built before the variables are set, like the shipped definitions
    home = tmp_path / "late"
    monkeypatch.setenv("LEARNLOOP_HOME", str(home))
    for var in ("LEARNLOOP_STORE_URL", "LEARNLOOP_WAREHOUSE_PATH", "LEARNLOOP_LANDING_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("LEARNLOOP_LANCEDB_URI", str(tmp_path / "vectors-elsewhere"))
    upgrade(f"sqlite:///{home / 'store.db'}")
    meta = _metadata(dg.materialize([where], resources=res))
    assert meta["warehouse"] == str(home / "warehouse.duckdb")
    assert meta["store"] == f"sqlite:///{home / 'store.db'}"
    assert meta["landing"] == str(home / "landing")
    assert meta["vectors"] == str(tmp_path / "vectors-elsewhere")


def test_store_resources_under_a_home_ignore_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("LEARNLOOP_STORE_URL", "postgresql://nobody@127.0.0.1:1/none")
    monkeypatch.setenv("LEARNLOOP_WAREHOUSE_PATH", str(tmp_path / "elsewhere.duckdb"))
    res = store_resources(tmp_path / "home")
    assert res["store"].get_url() == f"sqlite:///{tmp_path / 'home' / 'store.db'}"
    assert res["warehouse"].path() == tmp_path / "home" / "warehouse.duckdb"


def test_a_run_on_an_unmigrated_store_fails_at_start_naming_the_fix(tmp_path):
    res = store_resources(tmp_path)  # store.db never migrated
    with pytest.raises(dg.DagsterResourceFunctionError) as info:
        dg.materialize([where], resources=res)
    assert isinstance(info.value.__cause__, StoreNotMigrated)
    assert "never been migrated" in str(info.value.__cause__)
    assert "learnloop migrate" in str(info.value.__cause__)
    upgrade(res["store"].get_url())
    assert dg.materialize([where], resources=res).success


def test_the_store_resource_checks_but_never_migrates(tmp_path):
    url = f"sqlite:///{tmp_path / 'store.db'}"
    store = OperationalStoreResource(url=url)
    with pytest.raises(StoreNotMigrated):
        with store.session():
            pass
    from store.db import current_revision

    assert current_revision(url) is None  # the check wrote nothing


def test_dev_hash_key_warns_once_and_a_real_key_does_not(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(resources, "_warned_dev_key", False)
    monkeypatch.delenv("LEARNLOOP_HASH_KEY", raising=False)
    with caplog.at_level(logging.WARNING):
        resources.session_hash_key()
        resources.session_hash_key()
    warned = [r for r in caplog.records if "LEARNLOOP_HASH_KEY is not set" in r.getMessage()]
    assert len(warned) == 1

    caplog.clear()
    monkeypatch.setattr(resources, "_warned_dev_key", False)
    monkeypatch.setenv("LEARNLOOP_HASH_KEY", "a-real-secret-key-0123456789")
    with caplog.at_level(logging.WARNING):
        assert resources.session_hash_key() == b"a-real-secret-key-0123456789"
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
    """README: the landing, approved-samples, provider-job, dataset-ready, A/B-decision and
    quality-drop, audit-days and health sensors and the embeddings, teacher, dataset and analytics
    schedules run without a click in the UI; monthly retraining is off until someone turns it
    on."""
    from orchestration.definitions import defs

    schedules = {s.name: s.default_status for s in defs.schedules}
    sensors = {s.name: s.default_status for s in defs.sensors}
    assert schedules == {"hourly_embeddings_schedule": dg.DefaultScheduleStatus.RUNNING,
                         "daily_teacher_schedule": dg.DefaultScheduleStatus.RUNNING,
                         "daily_dataset_schedule": dg.DefaultScheduleStatus.RUNNING,
                         "analytics_schedule": dg.DefaultScheduleStatus.RUNNING,
                         "monthly_training_schedule": dg.DefaultScheduleStatus.STOPPED}
    assert sensors == {"landing_file_sensor": dg.DefaultSensorStatus.RUNNING,
                       "audit_days_sensor": dg.DefaultSensorStatus.RUNNING,
                       "approved_samples_sensor": dg.DefaultSensorStatus.RUNNING,
                       "provider_job_sensor": dg.DefaultSensorStatus.RUNNING,
                       "dataset_ready_sensor": dg.DefaultSensorStatus.RUNNING,
                       "ab_decision_sensor": dg.DefaultSensorStatus.RUNNING,
                       "quality_drop_sensor": dg.DefaultSensorStatus.RUNNING,
                       "health_sensor": dg.DefaultSensorStatus.RUNNING,
                       "analytics_automation_sensor": dg.DefaultSensorStatus.RUNNING}
