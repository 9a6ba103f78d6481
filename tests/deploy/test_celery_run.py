"""Issue 13 item 6: a step of a learnloop job runs on a real Celery worker, as the Celery
deployment runs it: the code location deploy/celery/definitions.py, a worker started with the
documented `dagster-celery worker start -A dagster_celery.app -y deploy/celery/celery.yaml`, the
broker and result backend given by LEARNLOOP_CELERY_BROKER_URL / _BACKEND_URL only. The broker is
kombu's SQLAlchemy transport on the local PostgreSQL (a real Celery transport; production uses
Redis or RabbitMQ, which this machine does not run)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.definitions.reconstruct import ReconstructableRepository

from orchestration import runner
from tests.deploy.processes import stop_group

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.postgres
@pytest.mark.slow
def test_an_ingest_step_runs_on_a_celery_worker(learnloop_home, pg_database, tmp_path,
                                                monkeypatch):
    from ml.demo.generate import generate

    url = pg_database.replace("postgresql://", "postgresql+psycopg2://", 1)
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    (dagster_home / "dagster.yaml").write_text(runner.DAGSTER_YAML)
    env = {"DAGSTER_HOME": str(dagster_home), "PYTHONPATH": str(ROOT),
           "LEARNLOOP_CELERY_BROKER_URL": f"sqla+{url}",
           "LEARNLOOP_CELERY_BACKEND_URL": f"db+{url}",
           # the worker runs `celery` from this environment
           "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"]}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    day = sorted(generate(learnloop_home / "landing", 12, seed=3, days=1)["days"])[0]

    # the instance's storage exists before the worker opens it (as `dagster instance migrate`
    # prepares a production instance once): two processes creating it at once race
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        instance.get_runs(limit=1)
        log = open(tmp_path / "worker.log", "w")  # noqa: SIM115 - closed below
        worker = subprocess.Popen(
            [str(Path(sys.executable).parent / "dagster-celery"), "worker", "start",
             "-A", "dagster_celery.app", "-y", str(ROOT / "deploy" / "celery" / "celery.yaml"),
             "-q", "dagster", "-n", "learnloop-test"],
            env=os.environ.copy(), cwd=ROOT, start_new_session=True, stdout=log,
            stderr=subprocess.STDOUT)
        try:
            repo = ReconstructableRepository.for_file(
                str(ROOT / "deploy" / "celery" / "definitions.py"), "defs",
                working_directory=str(ROOT))
            job = repo.get_reconstructable_job("ingest_job")
            with dg.execute_job(job, instance=instance, tags={"dagster/partition": day},
                                asset_selection=[dg.AssetKey("raw_interactions")]) as result:
                assert worker.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
                assert result.success
                events = [r.dagster_event for r in instance.all_logs(result.run_id)
                          if r.dagster_event is not None]
        finally:
            stop_group(worker)
            log.close()
    (start,) = [e for e in events if e.event_type_value == "STEP_START"]
    assert start.pid not in (None, os.getpid())  # not this (the run's) process: the worker's
    workers = [m.value for e in events if e.event_type_value == "ENGINE_EVENT"
               for label, m in (e.engine_event_data.metadata or {}).items()
               if label == "Celery worker"]
    assert workers and workers[0].startswith("learnloop-test@")
    assert any(e.event_type_value == "ASSET_MATERIALIZATION" for e in events)
