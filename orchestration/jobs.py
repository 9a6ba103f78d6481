"""Jobs (`<noun>_job`) and schedules of the stages wired here; the audit and teaching jobs and
schedules live with their assets in assets/audit.py."""

import dagster as dg

ingest_job = dg.define_asset_job(
    "ingest_job",
    selection=dg.AssetSelection.assets("raw_interactions", "interactions",
                                       "quarantined_interactions", "interaction_quality"),
    description="One landing day: register files, validate/scrub/de-duplicate, score quality.",
)

analytics_job = dg.define_asset_job(
    "analytics_job",
    selection=dg.AssetSelection.assets("review_decisions") | dg.AssetSelection.groups("analytics"),
    description="Copy new review events to the warehouse, then rebuild the dbt models and run "
                "the dbt tests.",
)

analytics_schedule = dg.ScheduleDefinition(
    name="analytics_schedule", job=analytics_job, cron_schedule="15 * * * *",
    execution_timezone="UTC", description="Refresh review decisions and the dbt marts hourly.",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)
