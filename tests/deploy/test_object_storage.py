"""Issue 13 item 6: the stores that go to object storage on a cluster, on a real S3-compatible
server (moto's S3 server over HTTP, the protocol MinIO, Ceph or R2 speak), configured only through
the environment variables of deploy/k8s/learnloop-env.yaml and deploy/mlflow/mlflow.env.example:
LanceDB written by the real `interaction_embeddings` asset, and the MLflow tracking server started
with deploy/mlflow/compose.yaml's command (PostgreSQL backend store, artifacts on the bucket)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import dagster as dg
import pytest
import yaml

from tests.deploy.processes import free_port, stop_group
from tests.deploy.test_configs import mlflow_server_args

ROOT = Path(__file__).resolve().parents[2]
BUCKET = "learnloop-data"


@pytest.fixture()
def s3(monkeypatch):
    """An S3-compatible server on a free local port with the bucket, and the environment a
    learnloop pod gets (keys, region, endpoint): yields the endpoint URL."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        env = {"AWS_ACCESS_KEY_ID": "learnloop-test", "AWS_SECRET_ACCESS_KEY": "learnloop-test",
               "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1",
               "AWS_ENDPOINT": endpoint, "AWS_ENDPOINT_URL": endpoint, "AWS_ALLOW_HTTP": "true",
               "MLFLOW_S3_ENDPOINT_URL": endpoint}
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        boto3.client("s3").create_bucket(Bucket=BUCKET)
        yield endpoint
    finally:
        server.stop()


def _keys(prefix: str) -> list[str]:
    import boto3

    pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=BUCKET,
                                                                          Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


@pytest.mark.slow
def test_embeddings_go_to_lancedb_on_object_storage_from_the_env_alone(s3, learnloop_home,
                                                                       monkeypatch):
    import lancedb

    from assets.embeddings import interaction_embeddings
    from assets.resources import VectorStoreResource
    from tests.assets.conftest import land_and_ingest
    from tests.stores import resources_for

    day = land_and_ingest(learnloop_home, n=12)
    uri = f"s3://{BUCKET}/lancedb"
    monkeypatch.setenv("LEARNLOOP_LANCEDB_URI", uri)
    # the shipped resource: no uri of its own, so LEARNLOOP_LANCEDB_URI decides
    resources = {**resources_for(learnloop_home), "vectors": VectorStoreResource()}
    partitioned = interaction_embeddings.partitions_def is not None
    with dg.instance_for_test() as instance:
        result = dg.materialize([interaction_embeddings], instance=instance, resources=resources,
                                partition_key=day if partitioned else None)
    assert result.success
    assert not (learnloop_home / "lancedb").exists()  # nothing went to the local default
    keys = _keys("lancedb/interaction_embeddings.lance/")
    assert any(k.endswith(".lance") for k in keys), keys  # data files on the bucket
    table = lancedb.connect(uri).open_table("interaction_embeddings")
    assert table.count_rows() > 0


@pytest.mark.postgres
@pytest.mark.slow
def test_mlflow_server_of_the_compose_file_keeps_runs_in_postgres_and_artifacts_on_s3(
        s3, pg_database, tmp_path):
    """deploy/mlflow/compose.yaml's command, run for real: runs, registered versions and aliases
    in PostgreSQL, an artifact logged through the server lands on the bucket."""
    import mlflow
    from mlflow import MlflowClient

    port = free_port()
    compose = yaml.safe_load((ROOT / "deploy" / "mlflow" / "compose.yaml").read_text())
    args = mlflow_server_args(compose, {
        "MLFLOW_BACKEND_STORE_URI": pg_database.replace("postgresql://",
                                                        "postgresql+psycopg2://", 1),
        "MLFLOW_ARTIFACTS_DESTINATION": f"s3://{BUCKET}/mlflow",
        "MLFLOW_ALLOWED_HOSTS": f"127.0.0.1:{port},localhost:{port}"})
    # this machine: loopback, our port, one worker
    args[args.index("--host") + 1] = "127.0.0.1"
    args[args.index("--port") + 1] = str(port)
    args[args.index("--workers") + 1] = "1"
    log = open(tmp_path / "mlflow.log", "w")  # noqa: SIM115 - closed below
    # its own process group: the server's uvicorn workers are stopped with it
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", *args], stdout=log,
                              stderr=subprocess.STDOUT, env=os.environ.copy(), cwd=tmp_path,
                              start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("mlflow server did not start: "
                                     + (tmp_path / "mlflow.log").read_text()[-3000:])
            time.sleep(0.5)
        mlflow.set_tracking_uri(url)
        client = MlflowClient(url)
        experiment = client.create_experiment("deploy-check")
        run = client.create_run(experiment)
        (tmp_path / "adapter.txt").write_text("weights")
        client.log_artifact(run.info.run_id, str(tmp_path / "adapter.txt"))
        client.create_registered_model("learnloop-assistant")
        version = client.create_model_version("learnloop-assistant",
                                              f"runs:/{run.info.run_id}/adapter.txt",
                                              run_id=run.info.run_id)
        client.set_registered_model_alias("learnloop-assistant", "champion", version.version)
        assert client.get_model_version_by_alias("learnloop-assistant",
                                                 "champion").version == version.version
        assert [k for k in _keys("mlflow/") if k.endswith("adapter.txt")]
    finally:
        mlflow.set_tracking_uri(None)
        stop_group(server)
        log.close()
    import sqlalchemy as sa

    engine = sa.create_engine(pg_database)
    try:
        with engine.connect() as con:  # the registry lives in PostgreSQL
            names = con.execute(sa.text("SELECT name FROM registered_models")).scalars().all()
    finally:
        engine.dispose()
    assert names == ["learnloop-assistant"]
