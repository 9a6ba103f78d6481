"""The deployment and retraining triggers: ab_decision_sensor, dataset_ready_sensor and
quality_drop_sensor over a real MLflow registry, operational store and DuckDB warehouse, each
evaluated twice with the cursor of the first evaluation: the same data never triggers twice."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest

from assets import deployment as d
from assets import lifecycle as lc
from assets.resources import ModelRegistryResource, OperationalStoreResource
from orchestration.definitions import defs
from orchestration.sensors import ab_decision_sensor, dataset_ready_sensor, quality_drop_sensor
from store import deployments as dep
from store.db import session_scope
from tests.deploykit import copy_mlflow, mlflow_template, served, write
from tests.stores import resources_for

MODEL = "tiny-assistant"


@pytest.fixture(scope="module")
def mlflow_db(tmp_path_factory) -> Path:
    return mlflow_template(tmp_path_factory.mktemp("mlflow"))


@pytest.fixture()
def res(tmp_path, mlflow_db, store_url, monkeypatch):
    root = tmp_path / "home"
    monkeypatch.setenv("LEARNLOOP_HOME", str(root))
    for var in ("LEARNLOOP_QUALITY_DROP_THRESHOLD", "LEARNLOOP_QUALITY_WINDOW_DAYS"):
        monkeypatch.delenv(var, raising=False)
    out = resources_for(root)
    out["store"] = OperationalStoreResource(url=store_url)
    out["models"] = ModelRegistryResource(
        tracking_uri=copy_mlflow(mlflow_db, root / "mlflow.db"),
        artifact_root=str(root / "mlartifacts"), models_dir=str(root / "models"),
        model_name=MODEL)
    return out


def _tick(sensor, instance, res, cursor=None):
    ctx = dg.build_sensor_context(instance=instance, cursor=cursor, resources=res)
    result = sensor(ctx)
    if isinstance(result, dg.SensorResult):
        return list(result.run_requests or []), result.cursor, result.skip_reason
    if isinstance(result, dg.RunRequest):
        return [result], ctx.cursor, None
    return [], ctx.cursor, result


def test_the_triggers_are_in_the_code_location():
    sensors = {s.name: s for s in defs.sensors}
    assert sensors["ab_decision_sensor"].job_name == "deployment_job"
    assert sensors["ab_decision_sensor"].minimum_interval_seconds == 300
    assert sensors["dataset_ready_sensor"].job_name == "training_job"
    assert sensors["quality_drop_sensor"].job_name == "retraining_job"
    assert sensors["quality_drop_sensor"].minimum_interval_seconds == 3600
    # the jobs run their own assets only: the upstream deps are not pulled in
    assert set(defs.resolve_job_def("deployment_job").graph.node_dict) == \
        {"ab_experiment", "model_deployment"}
    assert set(defs.resolve_job_def("retraining_job").graph.node_dict) == \
        {"eval_suite", "training_dataset", "base_model", "candidate_model",
         "candidate_evaluation"}


def test_ab_decision_sensor_starts_an_experiment_then_decides_on_new_data_only(res, store_url,
                                                                               tmp_path):
    reg = res["models"].registry()
    for _ in range(2):
        reg.register_version(str(tmp_path), None, {"learnloop.role": "candidate"})
    with dg.instance_for_test() as instance:
        requests, _, skip = _tick(ab_decision_sensor, instance, res)
        assert not requests and "no challenger" in skip.skip_message
        with session_scope(store_url) as s:
            lc.promote(reg, s, "1", actor="asset:base_model", reason="base")
            lc.set_challenger(reg, s, "2", actor="asset:candidate_evaluation", reason="gate")
        # a challenger without an experiment: one start request, the same key on every tick
        (start,), _, _ = _tick(ab_decision_sensor, instance, res)
        assert start.run_key.startswith(f"ab-start-{MODEL}-v2-v1-")
        (again,), _, _ = _tick(ab_decision_sensor, instance, res)
        assert again.run_key == start.run_key

        result = dg.materialize([d.ab_experiment], resources=res)
        exp_id = int(result.asset_materializations_for_node("ab_experiment")[0]
                     .metadata["experiment_id"].value)
        requests, cursor, skip = _tick(ab_decision_sensor, instance, res)
        assert not requests and "no warehouse yet" in skip.skip_message  # nothing served yet

        write(res["warehouse"].path(),
              served(exp_id, "control", "1", 25, quality=0.7, thumbs_up=0.7, seed=1),
              served(exp_id, "treatment", "2", 5, quality=0.7, thumbs_up=0.7, seed=2),
              served(None, None, "1", 7, quality=0.7, thumbs_up=0.7, seed=3))  # not in it
        (first,), cursor, _ = _tick(ab_decision_sensor, instance, res, cursor)
        assert first.run_key == f"ab-{exp_id}-30" and first.tags["learnloop/served"] == "30"
        assert json.loads(cursor) == {str(exp_id): 30}
        # the same data with the cursor of the first tick: nothing
        requests, cursor2, skip = _tick(ab_decision_sensor, instance, res, cursor)
        assert not requests and "none new" in skip.skip_message and cursor2 == cursor
        write(res["warehouse"].path(),
              served(exp_id, "treatment", "2", 4, quality=0.7, thumbs_up=0.7, seed=4))
        (second,), cursor, _ = _tick(ab_decision_sensor, instance, res, cursor2)
        assert second.run_key == f"ab-{exp_id}-34"

        # decided: a rolled-back pair is not tested again
        with session_scope(store_url) as s:
            lc.rollback(reg, s, "1", actor="cli:ann", reason="enough")
            assert dep.get_experiment(s, exp_id).status == "rolled_back"
        requests, _, skip = _tick(ab_decision_sensor, instance, res, cursor)
        assert not requests and "no challenger" in skip.skip_message


def test_dataset_ready_sensor_trains_each_new_version_once(res, store_url):
    from store.datasets import record_dataset
    from store.training import create_training_run

    def dataset(h: str, status: str = "ready") -> int:
        with session_scope(store_url) as s:
            return record_dataset(s, kind="training", name="default", version_hash=h * 64,
                                  items=[{"item_key": f"sample:{h}", "split": "train",
                                          "prompt_hash": h, "example_hash": h}],
                                  path="/nowhere", n_train=1, status=status)[0].id

    with dg.instance_for_test() as instance:
        requests, _, skip = _tick(dataset_ready_sensor, instance, res)
        assert not requests and "no ready" in skip.skip_message
        first_id = dataset("a")
        (req,), cursor, _ = _tick(dataset_ready_sensor, instance, res)
        assert req.run_key == "train-" + "a" * 64 and cursor == str(first_id)
        assert req.run_config == {"ops": {"candidate_model": {"config": {"dataset": "a" * 64}}}}
        assert req.tags["learnloop/trigger"] == "dataset_ready_sensor"
        requests, cursor, _ = _tick(dataset_ready_sensor, instance, res, cursor)
        assert not requests and cursor == str(first_id)
        # a version whose checks failed is not trained on
        dataset("b", status="failed")
        assert _tick(dataset_ready_sensor, instance, res, cursor)[0] == []
        # a new ready version that someone already trained on (`learnloop train`): skipped,
        # and the cursor moves past it
        third = dataset("c")
        with session_scope(store_url) as s:
            create_training_run(s, method="lora", base_model="tiny", model_name=MODEL,
                                dataset_id=third, dataset_version="c" * 64)
        requests, cursor, skip = _tick(dataset_ready_sensor, instance, res, cursor)
        assert not requests and "already used by 1 training run" in skip.skip_message
        assert cursor == str(third)
        fourth = dataset("e")
        (req,), cursor, _ = _tick(dataset_ready_sensor, instance, res, cursor)
        assert req.run_key == "train-" + "e" * 64 and cursor == str(fourth)


def _alerts(url: str) -> list[tuple]:
    from sqlalchemy import select

    from store.models import Alert

    with session_scope(url) as s:
        return [(a.kind, a.dedupe_key, a.occurrences)
                for a in s.scalars(select(Alert).order_by(Alert.id))]


def test_quality_drop_sensor_alerts_and_retrains_once_per_day(res, store_url, monkeypatch):
    today = datetime.now(UTC).replace(tzinfo=None, hour=12, minute=0, second=0, microsecond=0)
    yesterday = today - timedelta(days=1)
    steady = [served(None, None, "1", 25, quality=0.8, thumbs_up=0.8, seed=i, prefix=f"d{i}",
                     start=yesterday - timedelta(days=i), spread=0.02) for i in range(1, 8)]
    write(res["warehouse"].path(), *steady)
    with dg.instance_for_test() as instance:
        requests, cursor, skip = _tick(quality_drop_sensor, instance, res)
        assert not requests and "no drop of 10%" in skip.skip_message
        assert cursor == (yesterday - timedelta(days=1)).date().isoformat()
        # yesterday: a clear drop; today (not over) a worse one, not judged yet
        write(res["warehouse"].path(),
              served(None, None, "1", 30, quality=0.55, thumbs_up=0.3, seed=20, prefix="y",
                     start=yesterday, spread=0.02),
              served(None, None, "1", 30, quality=0.2, thumbs_up=0.1, seed=21, prefix="t",
                     start=today, spread=0.02))
        (req,), cursor, _ = _tick(quality_drop_sensor, instance, res, cursor)
        day = yesterday.date().isoformat()
        assert req.run_key == f"quality-drop-{day}" and cursor == day
        assert req.tags["learnloop/trigger"] == "quality_drop_sensor"
        assert "below the trailing 7-day mean" in req.tags["learnloop/reason"]
        assert _alerts(store_url) == [("quality_degradation", f"quality_degradation:{day}", 1)]
        # the same day again with the cursor: no second alert, no second run
        requests, cursor2, skip = _tick(quality_drop_sensor, instance, res, cursor)
        assert not requests and "evaluated already" in skip.skip_message and cursor2 == cursor
        assert _alerts(store_url) == [("quality_degradation", f"quality_degradation:{day}", 1)]
        # a stricter threshold is read when the sensor runs; a bad one is refused by name
        monkeypatch.setenv("LEARNLOOP_QUALITY_DROP_THRESHOLD", "1.5")
        with pytest.raises(ValueError, match="LEARNLOOP_QUALITY_DROP_THRESHOLD='1.5'"):
            _tick(quality_drop_sensor, instance, res, cursor)
