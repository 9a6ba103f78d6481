"""The one Dagster code location of learnloop (workspace.yaml -> orchestration.definitions)."""

import warnings

import dagster as dg

from assets.analytics import dbt_analytics_assets, dbt_resource
from assets.audit import (
    audit_candidates,
    audited_errors,
    check_candidates_have_known_reasons,
    check_verdicts_are_consistent,
)
from assets.datasets import eval_suite, training_dataset
from assets.deployment import ab_experiment, model_deployment
from assets.embeddings import interaction_embeddings
from assets.evaluation import candidate_evaluation
from assets.ingest import ingest_interactions, raw_interactions
from assets.quality import interaction_quality
from assets.resources import store_resources
from assets.review import review_decisions
from assets.teaching import (
    check_pairs_differ,
    check_samples_are_reviewable,
    preference_pairs,
    teacher_samples,
)
from assets.training import base_model, candidate_model
from orchestration.automation import analytics_automation_sensor
from orchestration.health import health_sensor
from orchestration.jobs import (
    analytics_job,
    analytics_schedule,
    audit_day_job,
    audit_job,
    daily_dataset_schedule,
    daily_teacher_schedule,
    datasets_job,
    deployment_job,
    embeddings_job,
    evaluation_job,
    hourly_embeddings_schedule,
    ingest_job,
    manual_audit_job,
    monthly_training_schedule,
    retraining_job,
    teaching_job,
    training_job,
)
from orchestration.sensors import (
    ab_decision_sensor,
    approved_samples_sensor,
    audit_days_sensor,
    dataset_ready_sensor,
    landing_file_sensor,
    provider_job_sensor,
    quality_drop_sensor,
)

# Steps of a run the daemon launches (schedules, sensors, the UI) each run in their own process,
# at most MAX_CONCURRENT_STEPS of them at a time per run (run config
# `execution: {config: {max_concurrent: N}}` changes it for one run). Two runs at a time
# (dagster.yaml, concurrency.runs) x 2 steps fill the 2 cores this is sized for; steps that touch
# the warehouse still take the `warehouse` pool's one slot in turn (concurrency.pools).
# `learnloop run` and the tests execute in-process: execute_in_process ignores this executor.
MAX_CONCURRENT_STEPS = 2


def _multiprocess_config(config: dict) -> dict:
    return {"max_concurrent": config["max_concurrent"]}


learnloop_executor = dg.multiprocess_executor.configured(
    _multiprocess_config,
    name="multiprocess",
    config_schema={"max_concurrent": dg.Field(
        int, default_value=MAX_CONCURRENT_STEPS,
        description="How many steps of this run may run at once, each in its own process.")},
    description="Each step in its own process, at most max_concurrent at a time.",
)

with warnings.catch_warnings():
    # code references are a beta API of Dagster, chosen on purpose: no warning per process load
    warnings.simplefilter("ignore", dg.BetaWarning)
    assets = dg.with_source_code_references([
        raw_interactions, ingest_interactions,  # ingest
        interaction_quality, interaction_embeddings,  # quality
        audit_candidates, audited_errors,  # audit
        teacher_samples, preference_pairs,  # teaching
        review_decisions,  # review
        eval_suite, training_dataset,  # datasets
        base_model, candidate_model,  # training
        candidate_evaluation,  # evaluation
        ab_experiment, model_deployment,  # deployment
        dbt_analytics_assets,  # analytics
    ])

def build_definitions(executor: dg.ExecutorDefinition = learnloop_executor) -> dg.Definitions:
    """The code location with ``executor`` as every job's executor (a cluster's code location
    passes its own, e.g. deploy/celery/definitions.py the Celery executor)."""
    return dg.Definitions(
        # with code references: each asset's file and line in the UI (dbt models: their .sql)
        assets=assets,
        asset_checks=[check_candidates_have_known_reasons, check_verdicts_are_consistent,
                      check_samples_are_reviewable, check_pairs_differ],
        jobs=[ingest_job, embeddings_job, audit_job, audit_day_job, manual_audit_job, teaching_job,
              datasets_job, analytics_job, training_job, evaluation_job, retraining_job,
              deployment_job],
        schedules=[hourly_embeddings_schedule, daily_teacher_schedule, daily_dataset_schedule,
                   analytics_schedule, monthly_training_schedule],
        sensors=[landing_file_sensor, audit_days_sensor, approved_samples_sensor, provider_job_sensor,
                 dataset_ready_sensor, ab_decision_sensor, quality_drop_sensor, health_sensor,
                 analytics_automation_sensor],
        # one resource per store (assets/resources.py), each read from LEARNLOOP_* when used
        resources={**store_resources(), "dbt": dbt_resource},
        executor=executor,
    )


defs = build_definitions()
