"""Issue 13 item 6: the example production configuration in deploy/ is loaded and validated for
real: the Dagster instance files against Dagster's instance schema and their run launcher's and
run coordinator's own schemas (dagster-k8s), the Celery executor and its Celery app built from
deploy/celery/celery.yaml, the Helm values against the keys the Dagster chart defines, the MLflow
server command against this MLflow's own `mlflow server`. Each check is shown failing on a
deliberately broken copy."""

from __future__ import annotations

import copy
import importlib.util
import json
import re
import sys
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster._config import process_config
from dagster._core.definitions.job_base import InMemoryJob
from dagster._core.errors import DagsterInvalidConfigError
from dagster._core.executor.init import InitExecutorContext
from dagster._core.instance.config import dagster_instance_config
from dagster._core.storage.dagster_run import DagsterRun
from dagster._core.system_config.objects import ResolvedRunConfig
from dagster._serdes.config_class import class_from_code_pointer

from orchestration.definitions import defs

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S_INSTANCE = DEPLOY / "k8s" / "dagster.yaml"
K8S_VALUES = DEPLOY / "k8s" / "values.yaml"
K8S_ENV = DEPLOY / "k8s" / "learnloop-env.yaml"
CELERY_INSTANCE = DEPLOY / "celery" / "dagster.yaml"
CELERY_YAML = DEPLOY / "celery" / "celery.yaml"
MLFLOW_COMPOSE = DEPLOY / "mlflow" / "compose.yaml"

# what the files read from the environment, with stand-in values
ENV = {
    "LEARNLOOP_DAGSTER_PG_URL": "postgresql+psycopg2://dagster@db.example:5432/dagster",
    "LEARNLOOP_K8S_NAMESPACE": "learnloop",
    "LEARNLOOP_CELERY_BROKER_URL": "redis://redis.example:6379/0",
    "LEARNLOOP_CELERY_BACKEND_URL": "redis://redis.example:6379/1",
}

KUBECONFIG = """\
apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:6443"}}]
contexts: [{name: c, context: {cluster: c, user: u, namespace: learnloop}}]
current-context: c
users: [{name: u, user: {token: not-a-real-token}}]
"""


@pytest.fixture(autouse=True)
def _env(monkeypatch):
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _write_instance(folder: Path, raw: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "dagster.yaml").write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return folder


def validate_instance(raw: dict, folder: Path) -> dict:
    """Validate a dagster.yaml (as a dict) the way Dagster loads it, then every pluggable class
    in it (run launcher, run coordinator) against that class's own config schema, with env
    references resolved. Returns the validated instance config; raises on any problem."""
    config, _ = dagster_instance_config(str(_write_instance(folder, raw)))
    for key in ("run_launcher", "run_coordinator"):
        if key not in config:
            continue
        block = config[key]
        klass = class_from_code_pointer(block["module"], block["class"])
        result = process_config(klass.config_type(), block.get("config") or {})
        if not result.success:
            raise DagsterInvalidConfigError(f"{key} ({block['class']}) config", result.errors,
                                            block.get("config"))
    return config


def _k8s_launcher_config() -> dict:
    from dagster_k8s import K8sRunLauncher

    raw = _load(K8S_INSTANCE)["run_launcher"]["config"]
    return process_config(K8sRunLauncher.config_type(), raw).value


def _outside_the_cluster(raw: dict, tmp_path: Path) -> dict:
    """The instance file with the launcher reading a kubeconfig file instead of the in-cluster
    service account (the only change to run it outside Kubernetes; nothing is contacted)."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(KUBECONFIG)
    raw = copy.deepcopy(raw)
    raw["run_launcher"]["config"].update(load_incluster_config=False,
                                         kubeconfig_file=str(kubeconfig))
    return raw


# ---- Kubernetes: the instance -----------------------------------------------------------------------
def test_k8s_instance_validates_against_dagster_and_dagster_k8s(tmp_path):
    config = validate_instance(_load(K8S_INSTANCE), tmp_path / "home")
    assert config["run_launcher"]["class"] == "K8sRunLauncher"
    assert config["run_coordinator"]["class"] == "QueuedRunCoordinator"
    assert config["storage"]["postgres"]["postgres_url"] == {"env": "LEARNLOOP_DAGSTER_PG_URL"}
    launcher = _k8s_launcher_config()
    assert launcher["job_namespace"] == "learnloop"  # the env reference, resolved
    assert launcher["env_secrets"] == ["learnloop-secrets"]


@pytest.mark.parametrize("breakage", [
    ("run_launchr", None),  # a misspelt top-level key
    ("run_launcher.config.service_acount_name", "learnloop-dagster"),  # launcher's own schema
    ("run_launcher.config.run_k8s_config.container_confg", {}),
    ("run_coordinator.config.dequeue_interval", 5),
    ("run_coordinator.config.max_concurrent_runs", 4),  # refused next to concurrency.pools
    ("concurrency.runs.max_concurent_runs", 4),
])
def test_k8s_instance_with_a_broken_key_fails(tmp_path, breakage):
    raw = _load(K8S_INSTANCE)
    path, value = breakage
    *parents, last = path.split(".")
    node = raw
    for part in parents:
        node = node[part]
    node[last] = value if value is not None else node.get("run_launcher")
    with pytest.raises(DagsterInvalidConfigError):
        validate_instance(raw, tmp_path / "home")


def test_training_runs_get_a_gpu_pod_other_runs_the_default_pod(tmp_path):
    """The pod spec the K8sRunLauncher builds for a run of training_job (its dagster-k8s/config
    tag) and of ingest_job, from the shipped instance's launcher settings."""
    from dagster_k8s import K8sRunLauncher
    from dagster_k8s.container_context import K8sContainerContext
    from dagster_k8s.job import construct_dagster_k8s_job

    config = _outside_the_cluster(_load(K8S_INSTANCE), tmp_path)["run_launcher"]["config"]
    launcher = K8sRunLauncher(**process_config(K8sRunLauncher.config_type(), config).value)

    def pod(job_name: str):
        run = DagsterRun(job_name=job_name, run_id=f"run-{job_name}",
                         tags=dict(defs.resolve_job_def(job_name).tags))
        context = K8sContainerContext.create_for_run(run, launcher, include_run_tags=True)
        job = construct_dagster_k8s_job(
            job_config=context.get_k8s_job_config(job_image="learnloop:1", run_launcher=launcher),
            args=["dagster", "api", "execute_run"], job_name=f"dagster-run-{job_name}",
            pod_name=f"dagster-run-{job_name}", component="run_worker",
            user_defined_k8s_config=context.run_k8s_config, labels={})
        return job.spec.template.spec

    training = pod("training_job")
    resources = training.containers[0].resources
    assert resources.limits["nvidia.com/gpu"] == resources.requests["nvidia.com/gpu"] == "1"
    assert resources.requests["memory"] == "32Gi"
    assert training.node_selector == {"nvidia.com/gpu.present": "true"}
    assert [t.key for t in training.tolerations] == ["nvidia.com/gpu"]
    assert training.service_account_name == "learnloop-dagster"
    env_from = {(e.config_map_ref.name if e.config_map_ref else None,
                 e.secret_ref.name if e.secret_ref else None)
                for e in training.containers[0].env_from}
    assert env_from == {("learnloop-env", None), (None, "learnloop-secrets")}
    assert [(m.name, m.mount_path) for m in training.containers[0].volume_mounts] == [
        ("learnloop-data", "/mnt/learnloop-data")]
    assert training.volumes[0].persistent_volume_claim.claim_name == "learnloop-data"

    ingest = pod("ingest_job")
    assert "nvidia.com/gpu" not in (ingest.containers[0].resources.requests or {})
    assert ingest.containers[0].resources.requests == {"cpu": "2", "memory": "8Gi"}
    assert not ingest.node_selector


def test_a_broken_gpu_tag_is_refused_by_dagster_k8s(monkeypatch):
    from dagster_k8s.job import get_user_defined_k8s_config

    tags = dict(defs.resolve_job_def("training_job").tags)
    assert get_user_defined_k8s_config(tags).container_config["resources"]["limits"]
    broken = json.loads(tags["dagster-k8s/config"])
    broken["container_confg"] = broken.pop("container_config")
    with pytest.raises(dg.DagsterInvalidConfigError):
        get_user_defined_k8s_config({**tags, "dagster-k8s/config": json.dumps(broken)})


@pytest.mark.postgres
def test_k8s_instance_runs_on_postgres_with_its_launcher_and_queue(tmp_path, pg_database,
                                                                   monkeypatch):
    url = pg_database.replace("postgresql://", "postgresql+psycopg2://", 1)
    monkeypatch.setenv("LEARNLOOP_DAGSTER_PG_URL", url)
    folder = _write_instance(tmp_path / "home", _outside_the_cluster(_load(K8S_INSTANCE),
                                                                       tmp_path))
    with dg.DagsterInstance.from_config(str(folder)) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        assert type(instance.run_launcher).__name__ == "K8sRunLauncher"
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        queue = instance.get_concurrency_config().run_queue_config
        assert queue.max_concurrent_runs == 16
        assert instance.run_monitoring_settings["max_resume_run_attempts"] == 3
        run = instance.create_run_for_job(defs.resolve_job_def("ingest_job"))
        assert instance.get_run_by_id(run.run_id) is not None  # written to PostgreSQL


# ---- Kubernetes: the Helm chart's values ----------------------------------------------------------
# The keys the Dagster Helm chart (1.13) defines for the sections these values set, read from the
# chart's values schema (helm/dagster/schema in the Dagster repository). A key outside these is
# a typo the chart would reject (its values.schema.json forbids extra keys).
CHART_KEYS: dict = {
    "global": {"postgresqlSecretName", "dagsterHome", "serviceAccountName",
               "celeryConfigSecretName"},
    "telemetry": {"enabled"},
    "pythonLogs": {"pythonLogLevel", "managedPythonLoggers", "dagsterHandlerConfig"},
    "dagsterWebserver": {
        "replicaCount", "image", "nameOverride", "pathPrefix", "service", "workspace", "env",
        "envConfigMaps", "envSecrets", "deploymentLabels", "labels", "nodeSelector", "affinity",
        "tolerations", "podSecurityContext", "securityContext", "resources", "readinessProbe",
        "livenessProbe", "startupProbe", "annotations", "enableReadOnly", "dbStatementTimeout",
        "dbPoolRecycle", "logLevel", "schedulerName", "volumeMounts", "volumes"},
    "dagster-user-deployments": {
        "enabled", "enableSubchart", "imagePullSecrets", "deployments"},
    "postgresql": {"image", "enabled", "postgresqlHost", "postgresqlUsername",
                   "postgresqlPassword", "postgresqlDatabase", "postgresqlParams",
                   "postgresqlScheme", "service"},
    "generatePostgresqlPasswordSecret": None,
    "runLauncher": {"type", "config"},
    "dagsterDaemon": {
        "enabled", "image", "runCoordinator", "heartbeatTolerance", "env", "envConfigMaps",
        "envSecrets", "deploymentLabels", "labels", "nodeSelector", "affinity", "tolerations",
        "podSecurityContext", "securityContext", "resources", "livenessProbe", "readinessProbe",
        "startupProbe", "annotations", "runMonitoring", "runRetries", "sensors", "schedules",
        "schedulerName", "volumeMounts", "volumes"},
    "concurrency": {"enabled", "pools", "runs"},
}
CHART_NESTED: dict[str, set[str]] = {
    "dagster-user-deployments.deployments[]": {
        "name", "image", "dagsterApiGrpcArgs", "codeServerArgs", "includeConfigInLaunchedRuns",
        "port", "env", "envConfigMaps", "envSecrets", "annotations", "nodeSelector", "affinity",
        "tolerations", "podSecurityContext", "securityContext", "resources", "livenessProbe",
        "readinessProbe", "startupProbe", "labels", "volumeMounts", "volumes", "schedulerName"},
    "runLauncher.config": {"celeryK8sRunLauncher", "k8sRunLauncher", "customRunLauncher"},
    "runLauncher.config.k8sRunLauncher": {
        "image", "imagePullPolicy", "jobNamespace", "loadInclusterConfig", "kubeconfigFile",
        "envConfigMaps", "envSecrets", "envVars", "volumeMounts", "volumes", "labels",
        "failPodOnRunFailure", "resources", "schedulerName", "securityContext", "runK8sConfig"},
    "runLauncher.config.k8sRunLauncher.runK8sConfig": {
        "containerConfig", "podSpecConfig", "podTemplateSpecMetadata", "jobSpecConfig",
        "jobMetadata"},
    "dagsterDaemon.runCoordinator": {"enabled", "type", "config"},
    "dagsterDaemon.runCoordinator.config.queuedRunCoordinator": {
        "maxConcurrentRuns", "tagConcurrencyLimits", "dequeueIntervalSeconds",
        "dequeueNumWorkers", "dequeueUseThreads"},
    "dagsterDaemon.runMonitoring": {
        "enabled", "startTimeoutSeconds", "cancelTimeoutSeconds", "maxResumeRunAttempts",
        "pollIntervalSeconds", "freeSlotsAfterRunEndSeconds"},
    "dagsterDaemon.runRetries": {"enabled", "maxRetries"},
    "dagsterDaemon.sensors": {"useThreads", "numWorkers", "numSubmitWorkers"},
    "dagsterDaemon.schedules": {"useThreads", "numWorkers", "numSubmitWorkers"},
    "concurrency.pools": {"defaultLimit", "granularity", "opGranularityRunBuffer"},
    "concurrency.runs": {"maxConcurrentRuns", "tagConcurrencyLimits"},
    "concurrency.runs.tagConcurrencyLimits[]": {"key", "value", "limit"},
    "postgresql.service": {"port"},
}


def chart_problems(values: dict) -> list[str]:
    """Every key of ``values`` that the chart does not define, and the required keys missing."""
    problems = [f"unknown top-level key {k!r}" for k in values if k not in CHART_KEYS]
    for section, keys in CHART_KEYS.items():
        if keys is not None and isinstance(values.get(section), dict):
            problems += [f"{section}: unknown key {k!r}" for k in values[section] if k not in keys]

    def at(path: str):
        nodes = [values]
        for part in path.split("."):
            many = part.endswith("[]")
            part = part.removesuffix("[]")
            nodes = [n[part] for n in nodes if isinstance(n, dict) and part in n]
            if many:
                nodes = [item for n in nodes for item in n]
        return nodes

    for path, keys in CHART_NESTED.items():
        for node in at(path):
            problems += [f"{path}: unknown key {k!r}" for k in node if k not in keys]
    for deployment in at("dagster-user-deployments.deployments[]"):
        problems += [f"user deployment lacks {k!r}" for k in ("name", "image", "port")
                     if k not in deployment]
        problems += [f"user deployment image lacks {k!r}" for k in ("repository", "tag",
                                                                    "pullPolicy")
                     if k not in deployment.get("image", {})]
    return problems


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)([A-Z])", r"_\1", name).lower()


def _snake_keys(node):
    if isinstance(node, dict):
        return {_snake(k): _snake_keys(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_snake_keys(v) for v in node]
    return node


def instance_from_values(values: dict) -> dict:
    """The parts of the instance the chart renders from these values (its configmap-instance
    template), in dagster.yaml's keys."""
    launcher = values["runLauncher"]["config"]["k8sRunLauncher"]
    daemon = values["dagsterDaemon"]
    return {
        "telemetry": values["telemetry"],
        "python_logs": _snake_keys(values["pythonLogs"]),
        "run_launcher_env": {"env_config_maps": [m["name"] for m in launcher["envConfigMaps"]],
                             "env_secrets": [s["name"] for s in launcher["envSecrets"]],
                             "run_k8s_config": _snake_keys(launcher["runK8sConfig"]),
                             "volumes": launcher["volumes"],
                             "volume_mounts": launcher["volumeMounts"]},
        "run_coordinator": _snake_keys(daemon["runCoordinator"]["config"]["queuedRunCoordinator"]),
        "concurrency": {"pools": _snake_keys(values["concurrency"]["pools"]),
                        "runs": _snake_keys(values["concurrency"]["runs"])},
        "run_monitoring": _snake_keys(daemon["runMonitoring"]),
        "run_retries": _snake_keys(daemon["runRetries"]),
        "sensors": _snake_keys(daemon["sensors"]),
        "schedules": _snake_keys(daemon["schedules"]),
    }


def test_helm_values_use_only_keys_the_chart_defines():
    values = _load(K8S_VALUES)
    assert chart_problems(values) == []
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    assert values["dagsterDaemon"]["runCoordinator"]["type"] == "QueuedRunCoordinator"
    assert values["concurrency"]["enabled"] is True


@pytest.mark.parametrize("edit", [
    lambda v: v["concurrency"]["runs"].update(maxConcurentRuns=4),
    lambda v: v["runLauncher"]["config"]["k8sRunLauncher"].update(envSecret=[]),
    lambda v: v["dagster-user-deployments"]["deployments"][0].pop("port"),
    lambda v: v.update(dagit={}),
])
def test_helm_values_with_a_broken_key_fail(edit):
    values = _load(K8S_VALUES)
    edit(values)
    assert chart_problems(values) != []


def test_helm_values_render_the_same_instance_as_dagster_yaml(tmp_path):
    values = _load(K8S_VALUES)
    instance = _load(K8S_INSTANCE)
    rendered = instance_from_values(values)
    launcher = instance["run_launcher"]["config"]
    assert rendered["run_launcher_env"] == {k: launcher[k] for k in
                                            ("env_config_maps", "env_secrets", "run_k8s_config",
                                             "volumes", "volume_mounts")}
    assert rendered["run_coordinator"] == instance["run_coordinator"]["config"]
    for key in ("telemetry", "python_logs", "concurrency", "run_monitoring", "run_retries",
                "sensors", "schedules"):
        assert rendered[key] == instance[key], key
    # and what the chart renders is a valid instance
    validate_instance({**instance, "run_coordinator": {**instance["run_coordinator"],
                                                       "config": rendered["run_coordinator"]},
                       "concurrency": rendered["concurrency"]}, tmp_path / "rendered")


def test_the_user_deployment_serves_learnloops_code_location():
    (deployment,) = _load(K8S_VALUES)["dagster-user-deployments"]["deployments"]
    assert deployment["dagsterApiGrpcArgs"] == ["-m", "orchestration.definitions"]
    module = importlib.import_module(deployment["dagsterApiGrpcArgs"][1])
    assert isinstance(module.defs, dg.Definitions)


def test_every_learnloop_setting_in_the_configmap_is_one_learnloop_reads(monkeypatch):
    from ml.config import Settings

    data = _load(K8S_ENV)["data"]
    fields = {f"LEARNLOOP_{name.upper()}" for name in Settings.model_fields}
    assert sorted(k for k in data if k.startswith("LEARNLOOP_") and k not in fields) == []
    for name, value in data.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    assert settings.lancedb == "s3://learnloop-data/lancedb"
    assert settings.landing_store.url == "s3://learnloop-data/landing"
    assert settings.archive_store.url == "s3://learnloop-data/landing/_archive"
    assert settings.mlflow_uri.startswith("http://mlflow.")


# ---- Celery --------------------------------------------------------------------------------------
def test_celery_instance_validates(tmp_path):
    config = validate_instance(_load(CELERY_INSTANCE), tmp_path / "home")
    assert config["run_launcher"]["class"] == "DefaultRunLauncher"
    assert config["concurrency"]["runs"]["max_concurrent_runs"] == 8


def test_celery_workers_start_with_the_broker_of_celery_yaml(tmp_path, monkeypatch):
    """What `dagster-celery worker start -A dagster_celery.app -y celery.yaml` does: validate the
    file, write its settings as the module dagster_celery_config, start `celery` whose app reads
    that module."""
    from dagster_celery.cli import get_config_dir, get_validated_config
    from dagster_celery.make_app import make_app

    config = get_validated_config(str(CELERY_YAML))
    assert config["broker"] == ENV["LEARNLOOP_CELERY_BROKER_URL"]  # the env reference, resolved
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    (tmp_path / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    monkeypatch.syspath_prepend(get_config_dir(str(CELERY_YAML)))
    monkeypatch.delitem(sys.modules, "dagster_celery_config", raising=False)
    app = make_app()  # the worker's app (dagster_celery.app)
    assert app.conf.broker_url == ENV["LEARNLOOP_CELERY_BROKER_URL"]
    assert app.conf.result_backend == ENV["LEARNLOOP_CELERY_BACKEND_URL"]
    assert app.conf.worker_prefetch_multiplier == 1 and app.conf.task_acks_late is True
    assert app.conf.worker_concurrency == 2


def test_celery_yaml_with_a_broken_key_fails(tmp_path):
    from dagster_celery.cli import get_validated_config

    raw = _load(CELERY_YAML)
    raw["execution"]["config"]["brokr"] = raw["execution"]["config"].pop("broker")
    broken = tmp_path / "celery.yaml"
    broken.write_text(yaml.safe_dump(raw))
    with pytest.raises(DagsterInvalidConfigError, match="brokr"):
        get_validated_config(str(broken))


def test_celery_code_location_sends_every_job_to_the_celery_workers():
    from dagster_celery.executor import CeleryExecutor
    from dagster_celery.make_app import make_app

    spec = importlib.util.spec_from_file_location("learnloop_celery_definitions",
                                                  DEPLOY / "celery" / "definitions.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    dg.Definitions.validate_loadable(module.defs)
    jobs = list(module.defs.resolve_all_job_defs())
    assert len(jobs) >= 10
    for job in jobs:
        assert job.executor_def.name == "celery", job.name
    job = module.defs.resolve_job_def("audit_job")
    config = ResolvedRunConfig.build(job, {}).execution.execution_engine_config
    executor = job.executor_def.executor_creation_fn(InitExecutorContext(
        job=InMemoryJob(job), executor_def=job.executor_def, executor_config=config,
        instance=dg.DagsterInstance.ephemeral()))
    assert isinstance(executor, CeleryExecutor)
    assert make_app(executor.app_args()).conf.broker_url == ENV["LEARNLOOP_CELERY_BROKER_URL"]


def test_celery_workspace_loads_the_celery_code_location_from_the_repository_root():
    from dagster._core.workspace.load import location_origins_from_yaml_paths

    (origin,) = location_origins_from_yaml_paths([str(DEPLOY / "celery" / "workspace.yaml")])
    target = origin.loadable_target_origin
    assert Path(target.python_file) == DEPLOY / "celery" / "definitions.py"
    assert Path(target.working_directory).resolve() == ROOT


# ---- MLflow --------------------------------------------------------------------------------------
def mlflow_server_args(compose: dict, env: dict[str, str]) -> list[str]:
    """The `mlflow server` arguments of the compose file's command, ${VAR} references filled from
    ``env`` (``${VAR:-default}`` falls back to its default; ``${VAR:?msg}`` must be set)."""
    def fill(arg: str) -> str:
        def one(m: re.Match) -> str:
            name, op, rest = m.group(1), m.group(2), m.group(3)
            if name in env:
                return env[name]
            if op == ":-":
                return rest
            raise KeyError(f"{name} must be set ({rest})")
        return re.sub(r"\$\{(\w+)(?:(:[-?])([^}]*))?\}", one, str(arg))

    command = [fill(a) for a in compose["services"]["mlflow"]["command"]]
    assert command[:2] == ["mlflow", "server"], command
    return command[2:]


MLFLOW_ENV = {"MLFLOW_BACKEND_STORE_URI": "postgresql://mlflow@db.example:5432/mlflow",
              "MLFLOW_ARTIFACTS_DESTINATION": "s3://learnloop-data/mlflow"}


def test_mlflow_server_command_is_one_this_mlflow_accepts():
    from mlflow.cli import server

    args = mlflow_server_args(_load(MLFLOW_COMPOSE), MLFLOW_ENV)
    params = server.make_context("server", args).params
    assert params["backend_store_uri"].startswith("postgresql://")
    assert params["artifacts_destination"].startswith("s3://")
    assert params["serve_artifacts"] is True
    with pytest.raises(KeyError, match="MLFLOW_BACKEND_STORE_URI"):
        mlflow_server_args(_load(MLFLOW_COMPOSE), {})


def test_mlflow_server_command_with_a_broken_option_fails():
    import click
    from mlflow.cli import server

    compose = _load(MLFLOW_COMPOSE)
    command = compose["services"]["mlflow"]["command"]
    command[command.index("--backend-store-uri")] = "--backend-store-url"
    with pytest.raises(click.NoSuchOption):
        server.make_context("server", mlflow_server_args(compose, MLFLOW_ENV))


def test_mlflow_env_example_names_every_variable_the_command_needs():
    names = {line.split("=", 1)[0] for line in
             (DEPLOY / "mlflow" / "mlflow.env.example").read_text().splitlines()
             if line and not line.startswith("#")}
    needed = set(re.findall(r"\$\{(\w+)", MLFLOW_COMPOSE.read_text()))
    assert needed <= names
    assert _load(MLFLOW_COMPOSE)["services"]["mlflow"]["env_file"] == "mlflow.env"


# ---- every file: secrets only by reference ---------------------------------------------------------
SECRET_KEY = re.compile(r"(password|secret|token|api_key|access_key)", re.I)


def secret_literals(path: Path) -> list[str]:
    """Lines of ``path`` that write a secret down: a URL with user:password@, or a key named like
    a secret with a literal value (an env reference, an empty value or a Secret's name is fine)."""
    found = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        code = line.split("#", 1)[0]
        if re.search(r"://[^/\s:@]+:[^@\s]+@", code):
            found.append(f"{path.name}:{n}: {line.strip()}")
            continue
        m = re.match(r"\s*-?\s*([\w.-]+)\s*[:=]\s*(\S.*)?$", code)
        if m and SECRET_KEY.search(m.group(1)):
            value = (m.group(2) or "").strip().strip("\"'")
            name_of_secret = m.group(1).endswith(("SecretName", "_secret", "Secrets", "secrets"))
            literal = value and value not in ("true", "false")
            if literal and not value.startswith(("{env:", "${")) and not name_of_secret:
                found.append(f"{path.name}:{n}: {line.strip()}")
    return found


def test_deploy_files_hold_no_secret_only_references():
    files = [p for p in DEPLOY.rglob("*") if p.is_file() and p.suffix in (".yaml", ".example",
                                                                          ".env", "")]
    assert len(files) >= 7
    assert [line for p in files for line in secret_literals(p)] == []


def test_the_secret_check_catches_a_written_down_password(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("storage:\n  postgres_url: postgresql://dagster:hunter2@db:5432/dagster\n"
                   "postgresqlPassword: hunter2\n")
    assert len(secret_literals(bad)) == 2

