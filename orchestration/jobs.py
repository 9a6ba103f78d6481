"""Jobs (`<noun>_job`) and schedules of every stage."""

import json
from typing import Any

import dagster as dg

# Dagster run retries of an ingest run the landing sensor launched (its ``dagster/max_retries``
# tag; the instance's dagster.yaml enables run retries with a default of 0 for other runs). The
# sensor's own attempts (``orchestration.sensors.MAX_SENSOR_ATTEMPTS``) come on top.
INGEST_RUN_RETRIES = 2

# What a run of each job mostly spends: the run queue's tag limits (dagster.yaml,
# concurrency.runs.tag_concurrency_limits) let at most one `training` and one `llm` run go at a time.
WORKLOAD_TAG = "learnloop/workload"


def _workload(kind: str) -> dict[str, str]:
    return {WORKLOAD_TAG: kind}


# On Kubernetes (dagster-k8s K8sRunLauncher, deploy/k8s/) a training run gets its own pod on a GPU
# node: the launcher reads this tag of the job's runs. Other launchers ignore it. Sizes: one GPU,
# host memory for the base model, its tokenizer and the dataset (docs/deployment.md, "At scale").
GPU_TRAINING_K8S_CONFIG: dict[str, Any] = {
    "container_config": {
        "resources": {
            "requests": {"cpu": "4", "memory": "32Gi", "nvidia.com/gpu": "1"},
            "limits": {"memory": "48Gi", "nvidia.com/gpu": "1"},
        },
    },
    "pod_spec_config": {
        "node_selector": {"nvidia.com/gpu.present": "true"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    },
}


def _gpu_training() -> dict[str, str]:
    return {**_workload("training"), "dagster-k8s/config": json.dumps(GPU_TRAINING_K8S_CONFIG)}

ingest_job = dg.define_asset_job(
    "ingest_job",
    tags=_workload("ingest"),
    selection=dg.AssetSelection.assets("raw_interactions", "interactions",
                                       "quarantined_interactions", "interaction_quality"),
    description="One landing day: register files, validate/scrub/de-duplicate, score quality.",
)

analytics_job = dg.define_asset_job(
    "analytics_job",
    tags=_workload("analytics"),
    selection=dg.AssetSelection.assets("review_decisions") | dg.AssetSelection.groups("analytics"),
    description="Copy new review events to the warehouse, then rebuild the dbt models and run "
                "the dbt tests.",
)

analytics_schedule = dg.ScheduleDefinition(
    name="analytics_schedule", job=analytics_job, cron_schedule="15 * * * *",
    execution_timezone="UTC", description="Refresh review decisions and the dbt marts hourly.",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)

audit_job = dg.define_asset_job(
    "audit_job",
    tags=_workload("llm"),
    selection=dg.AssetSelection.assets("interaction_embeddings", "audit_candidates",
                                       "audited_errors"),
    description="Embed new interactions, select candidates, audit them with the configured "
                "auditor: every landing day (no partition key), or one (a partition key).",
)
# The scheduled path (docs/scale-audit-teach.md, "Parallel audit"): the hourly schedule embeds
# the new interactions; after each embeddings run audit_days_sensor requests one audit_day_job
# run per landing day with new work, and the run queue runs them side by side.
embeddings_job = dg.define_asset_job(
    "embeddings_job",
    tags=_workload("embeddings"),
    selection=dg.AssetSelection.assets("interaction_embeddings"),
    description="Embed the questions of the landing days that changed since the last run.",
)
audit_day_job = dg.define_asset_job(
    "audit_day_job",
    tags=_workload("llm"),
    # partitioned by landing day: inferred from the assets (assets.partitions)
    selection=dg.AssetSelection.assets("audit_candidates", "audited_errors"),
    description="Select and audit the new interactions of one landing day (partition key): "
                "audit_days_sensor starts one run per day with work; a backfill audits a range.",
)
manual_audit_job = dg.define_asset_job(
    "manual_audit_job",
    tags=_workload("llm"),
    selection=dg.AssetSelection.assets("audit_candidates", "audited_errors"),
    description="Audit the interactions named in run config (interaction_ids, session_ids, "
                "since/until on ops.audit_candidates.config); see manual_audit_run_config().",
)
teaching_job = dg.define_asset_job(
    "teaching_job",
    tags=_workload("llm"),
    selection=dg.AssetSelection.assets("teacher_samples", "preference_pairs"),
    description="Propose corrected replies for flagged errors and human corrections; rebuild "
                "preference pairs from approved samples.",
)
# RUNNING by default: they run as soon as the code location loads (dagster dev, the daemon);
# stop them in the Dagster UI (Automation) where that is not wanted.
hourly_embeddings_schedule = dg.ScheduleDefinition(
    name="hourly_embeddings_schedule", job=embeddings_job, cron_schedule="0 * * * *",
    execution_timezone="UTC",
    description="Embed new interactions every hour; audit_days_sensor then audits each landing "
                "day with new work in its own run.",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)
daily_teacher_schedule = dg.ScheduleDefinition(
    name="daily_teacher_schedule", job=teaching_job, cron_schedule="30 2 * * *",
    execution_timezone="UTC", description="Teacher samples and preference pairs once a day.",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)


def manual_audit_run_config(*, interaction_ids: list[str] | None = None,
                            session_ids: list[str] | None = None, since: str = "",
                            until: str = "", auditor: str = "") -> dict[str, Any]:
    """Run config of ``manual_audit_job`` (for the CLI: ``learnloop audit --sessions ...``)."""
    cfg: dict[str, Any] = {"interaction_ids": list(interaction_ids or []),
                           "session_ids": list(session_ids or []), "since": since, "until": until}
    if auditor:
        cfg["auditor"] = auditor
    ops: dict[str, Any] = {"audit_candidates": {"config": cfg}}
    if auditor:
        ops["audited_errors"] = {"config": {"auditor": auditor}}
    return {"ops": ops}

datasets_job = dg.define_asset_job(
    "datasets_job",
    tags=_workload("datasets"),
    selection=dg.AssetSelection.assets("eval_suite", "training_dataset"),
    description="Hold out the evaluation suite, then build a training dataset version with its "
                "exports and blocking checks (run config: ops.training_dataset.config is the "
                "dataset spec).",
)

daily_dataset_schedule = dg.ScheduleDefinition(
    name="daily_dataset_schedule", job=datasets_job, cron_schedule="0 4 * * *",
    execution_timezone="UTC",
    description="Prepare the evaluation suite and a training dataset version daily with the "
                "default spec (unchanged data gives the same version: nothing new is recorded).",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)

training_job = dg.define_asset_job(
    "training_job",
    tags=_gpu_training(),
    selection=dg.AssetSelection.assets("base_model", "candidate_model", "candidate_evaluation"),
    description="Build (or reuse) the base model, train a candidate on the newest ready dataset "
                "version (run config: ops.candidate_model.config) and evaluate it against the "
                "champion; a passing quality gate makes it the challenger. A provider fine-tune "
                "(method openai/gemini) only submits its job here: provider_job_sensor follows "
                "it and starts evaluation_job when it ends.",
)

evaluation_job = dg.define_asset_job(
    "evaluation_job",
    tags=_workload("training"),
    selection=dg.AssetSelection.assets("candidate_evaluation"),
    description="Evaluate a candidate version against the champion (run config: "
                "ops.candidate_evaluation.config.candidate_version) and apply the quality gate.",
)

monthly_training_schedule = dg.ScheduleDefinition(
    name="monthly_training_schedule", job=training_job, cron_schedule="0 5 1 * *",
    execution_timezone="UTC",
    description="Retrain monthly on the newest ready dataset version with the default LoRA "
                "configuration (off by default: turn it on in the UI once the loop is trusted).",
    default_status=dg.DefaultScheduleStatus.STOPPED,
)

deployment_job = dg.define_asset_job(
    "deployment_job",
    tags=_workload("deployment"),
    selection=dg.AssetSelection.assets("ab_experiment", "model_deployment"),
    description="Look at the A/B test: start an experiment for a new challenger, or decide the "
                "running one from the served interactions (continue, advance, promote, roll "
                "back, stop), then report who serves (run config: ops.ab_experiment.config; "
                "action start/stop by hand). ab_decision_sensor starts it.",
)

retraining_job = dg.define_asset_job(
    "retraining_job",
    tags=_gpu_training(),
    selection=dg.AssetSelection.assets("eval_suite", "training_dataset", "base_model",
                                       "candidate_model", "candidate_evaluation"),
    description="Retrain from scratch: hold out the evaluation suite, build a training dataset "
                "version, train a candidate on it and evaluate it against the champion (a "
                "passing gate makes it the challenger). The manual trigger in the UI, and what "
                "quality_drop_sensor starts when live quality drops.",
)
