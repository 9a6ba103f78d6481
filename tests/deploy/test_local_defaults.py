"""Issue 13 item 6: the embedded default runs on a bounded multiprocess executor and queues the
runs the daemon launches within limits sized for 2 cores. Real Dagster instances from the shipped
dagster.yaml; the queue decisions are Dagster's own daemon logic over real runs in the instance."""

from __future__ import annotations

import json
import os

import dagster as dg
import pytest
import yaml
from dagster._core.definitions.job_base import InMemoryJob
from dagster._core.definitions.reconstruct import ReconstructableRepository
from dagster._core.errors import DagsterInvalidConfigError
from dagster._core.executor.init import InitExecutorContext
from dagster._core.instance.config import dagster_instance_config
from dagster._core.remote_origin import (
    RegisteredCodeLocationOrigin,
    RemoteJobOrigin,
    RemoteRepositoryOrigin,
)
from dagster._core.storage.dagster_run import DagsterRun, DagsterRunStatus
from dagster._core.system_config.objects import ResolvedRunConfig
from dagster._daemon.run_coordinator.queued_run_coordinator_daemon import (
    QueuedRunCoordinatorDaemon,
)

from orchestration import runner
from orchestration.definitions import MAX_CONCURRENT_STEPS, defs
from orchestration.jobs import WORKLOAD_TAG

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture()
def instance(tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(runner.DAGSTER_YAML)
    with dg.DagsterInstance.from_config(str(home)) as inst:
        yield inst


def _build_executor(job: dg.JobDefinition, run_config: dict | None = None):
    """The executor a launched run of ``job`` gets (what Dagster builds at run start)."""
    config = ResolvedRunConfig.build(job, run_config or {}).execution.execution_engine_config
    return job.executor_def.executor_creation_fn(InitExecutorContext(
        job=InMemoryJob(job), executor_def=job.executor_def, executor_config=config,
        instance=dg.DagsterInstance.ephemeral()))


# ---- the executor -----------------------------------------------------------------------------------
def test_every_job_runs_on_a_bounded_multiprocess_executor_one_run_can_override():
    from dagster._core.executor.multiprocess import MultiprocessExecutor

    jobs = list(defs.resolve_all_job_defs())
    assert {j.name for j in jobs} >= {"ingest_job", "audit_job", "training_job"}
    for job in jobs:
        executor = _build_executor(job)
        assert isinstance(executor, MultiprocessExecutor), job.name
        assert executor._max_concurrent == MAX_CONCURRENT_STEPS == 2
    one = _build_executor(defs.resolve_job_def("audit_job"),
                          {"execution": {"config": {"max_concurrent": 1}}})
    assert one._max_concurrent == 1
    with pytest.raises(dg.DagsterInvalidConfigError, match="max_concurent"):
        _build_executor(defs.resolve_job_def("audit_job"),
                        {"execution": {"config": {"max_concurent": 1}}})


def test_the_jobs_are_reconstructable_from_the_code_location():
    """What the multiprocess executor needs: each step process loads its job again from the
    module pointer (workspace.yaml's python_module)."""
    repo = ReconstructableRepository.for_module("orchestration.definitions", "defs",
                                                working_directory=ROOT)
    for name in ("ingest_job", "audit_job", "training_job", "analytics_job"):
        job = repo.get_reconstructable_job(name)
        assert job.get_definition().name == name
        assert job.get_definition().executor_def.name == "multiprocess"


# ---- the instance: queue and pools -------------------------------------------------------------
def test_shipped_instance_queues_runs_with_limits_and_keeps_the_warehouse_pool(instance):
    from dagster._core.run_coordinator import QueuedRunCoordinator

    assert isinstance(instance.run_coordinator, QueuedRunCoordinator)
    config = instance.get_concurrency_config()
    assert config.pool_config.default_pool_limit == 1  # the warehouse pool: one step at a time
    queue = config.run_queue_config
    assert queue.max_concurrent_runs == 2
    assert {(t["value"], t["limit"]) for t in queue.tag_concurrency_limits
            if t["key"] == WORKLOAD_TAG} == {("training", 1), ("llm", 1)}


def test_every_job_says_its_workload_and_only_training_asks_for_a_gpu():
    workloads = {j.name: j.tags.get(WORKLOAD_TAG) for j in defs.resolve_all_job_defs()
                 if j.name != "__ASSET_JOB"}
    assert None not in workloads.values(), workloads
    assert workloads["training_job"] == workloads["retraining_job"] == "training"
    # audit_day_job's runs say `audit` instead when the auditor is the offline rules
    # (audit_days_sensor's request tags)
    assert {n for n, w in workloads.items() if w == "llm"} == {
        "audit_job", "audit_day_job", "manual_audit_job", "teaching_job"}
    assert workloads["embeddings_job"] == "embeddings"
    gpu = {j.name for j in defs.resolve_all_job_defs() if "dagster-k8s/config" in j.tags}
    assert gpu == {"training_job", "retraining_job"}
    k8s = json.loads(defs.resolve_job_def("training_job").tags["dagster-k8s/config"])
    assert k8s["container_config"]["resources"]["limits"]["nvidia.com/gpu"] == "1"


def _add_run(instance: dg.DagsterInstance, job_name: str, status: DagsterRunStatus) -> str:
    """A run of ``job_name`` with the job's tags, as the daemon's submission stores it."""
    job = defs.resolve_job_def(job_name)
    origin = RemoteJobOrigin(repository_origin=RemoteRepositoryOrigin(
        code_location_origin=RegisteredCodeLocationOrigin("learnloop"),
        repository_name="__repository__"), job_name=job_name)
    run = instance.add_run(DagsterRun(job_name=job_name, status=status, tags=dict(job.tags),
                                      remote_job_origin=origin))
    return run.run_id


def _dequeued(instance: dg.DagsterInstance) -> list[str]:
    """The queued runs Dagster's run-queue daemon would launch now, by job name."""
    daemon = QueuedRunCoordinatorDaemon(interval_seconds=1)
    runs = daemon._get_runs_to_dequeue(instance, instance.get_concurrency_config(), None)
    return [r.job_name for r in runs]


def test_the_queue_launches_two_runs_at_most_one_training_and_one_llm(instance):
    for name in ("audit_job", "teaching_job", "training_job", "retraining_job", "ingest_job"):
        _add_run(instance, name, DagsterRunStatus.QUEUED)
    # two slots, oldest first: the first LLM run, then (the second LLM run waits) the first
    # training run
    assert _dequeued(instance) == ["audit_job", "training_job"]


def test_a_running_training_run_holds_back_the_next_one(instance):
    _add_run(instance, "training_job", DagsterRunStatus.STARTED)
    for name in ("retraining_job", "ingest_job", "analytics_job"):
        _add_run(instance, name, DagsterRunStatus.QUEUED)
    assert _dequeued(instance) == ["ingest_job"]  # one slot left, not for a training run
    _add_run(instance, "audit_job", DagsterRunStatus.STARTED)
    assert _dequeued(instance) == []  # two runs in progress: the limit


# ---- the shipped file and its upgrades ---------------------------------------------------------
def test_run_limits_inside_the_run_coordinator_are_refused_next_to_pools(tmp_path):
    """Why the limits sit in concurrency.runs: Dagster refuses max_concurrent_runs in the run
    coordinator's config once concurrency.pools is set (the warehouse pool)."""
    raw = yaml.safe_load(runner.DAGSTER_YAML)
    raw["run_coordinator"]["config"]["max_concurrent_runs"] = 2
    (tmp_path / "dagster.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(DagsterInvalidConfigError, match="max_concurrent_runs"):
        dagster_instance_config(str(tmp_path))


def test_a_broken_key_in_the_shipped_instance_fails_validation(tmp_path):
    dagster_instance_config(str(_write(tmp_path / "ok", runner.DAGSTER_YAML)))
    broken = runner.DAGSTER_YAML.replace("max_concurrent_runs:", "max_concurent_runs:")
    with pytest.raises(DagsterInvalidConfigError, match="max_concurent_runs"):
        dagster_instance_config(str(_write(tmp_path / "broken", broken)))


def _write(folder, text: str):
    folder.mkdir()
    (folder / "dagster.yaml").write_text(text)
    return folder


@pytest.mark.parametrize("postgres", [False, True])
def test_every_earlier_unedited_dagster_yaml_is_upgraded_in_its_variant(tmp_path, monkeypatch,
                                                                       postgres):
    from ml.config import Settings

    monkeypatch.setenv("LEARNLOOP_HOME", str(tmp_path / "ll"))
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    monkeypatch.delenv("LEARNLOOP_DAGSTER_PG_URL", raising=False)
    cfg = Settings().dagster_home_dir / "dagster.yaml"
    cfg.parent.mkdir(parents=True)
    suffix = runner._POSTGRES_STORAGE if postgres else ""
    want = runner.DAGSTER_YAML_POSTGRES if postgres else runner.DAGSTER_YAML
    assert runner.DAGSTER_YAML not in runner._EARLIER_DAGSTER_YAMLS
    for earlier in runner._EARLIER_DAGSTER_YAMLS:
        cfg.write_text(earlier + suffix)
        runner.prepare_dagster_home(Settings())
        assert cfg.read_text() == want
    cfg.write_text(runner._EARLIER_DAGSTER_YAMLS[-1] + suffix + "# mine\n")  # edited: kept
    runner.prepare_dagster_home(Settings())
    assert cfg.read_text().endswith("# mine\n")
