"""Sensors: `<event>_sensor`."""


import json

import dagster as dg

from assets.ingest import LANDING_FINGERPRINT
from assets.partitions import landing_date_partitions
from assets.resources import LandingZoneResource
from ml import landing
from orchestration.jobs import ingest_job

INTERACTIONS = dg.AssetKey("interactions")


def ingested_fingerprints(instance: dg.DagsterInstance, days) -> dict[str, str | None]:
    """day -> the landing fingerprint of the latest ``interactions`` materialization of that day
    (whoever launched it: this sensor, ``learnloop run``/``demo``, the UI); None when the day was
    never ingested (or by a version that did not record it)."""
    out: dict[str, str | None] = {}
    for day in days:
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=INTERACTIONS, asset_partitions=[day]), limit=1).records
        meta = records[0].asset_materialization.metadata if records else {}
        value = meta.get(LANDING_FINGERPRINT)
        out[day] = value.value if value is not None else None
    return out


def still_to_ingest(instance: dg.DagsterInstance, fingerprints: dict[str, str],
                    days) -> list[str]:
    """The days of ``days`` (sorted) whose landing files (``fingerprints``: day -> fingerprint)
    differ from what their last ingest read; empty day folders are left out."""
    days = [d for d in sorted(days) if fingerprints[d] != landing.EMPTY_FINGERPRINT]
    done = ingested_fingerprints(instance, days)
    return [d for d in days if done.get(d) != fingerprints[d]]


def days_to_ingest(instance: dg.DagsterInstance, landing_dir) -> tuple[list[str],
                                                                        dict[str, str]]:
    """(days whose landing files differ from what their last ingest read, all fingerprints)."""
    now = landing.day_fingerprints(landing_dir)
    return still_to_ingest(instance, now, now), now


@dg.sensor(job=ingest_job, minimum_interval_seconds=30,
           default_status=dg.DefaultSensorStatus.RUNNING,
           description="Starts ingest for every landing day whose files are new or changed since "
                       "that day was last ingested (by this sensor or by the CLI).")
def landing_file_sensor(context: dg.SensorEvaluationContext, landing_zone: LandingZoneResource):
    seen: dict[str, str] = json.loads(context.cursor) if context.cursor else {}
    now = landing.day_fingerprints(landing_zone.root())
    changed = [d for d, fp in now.items() if seen.get(d) != fp and fp != landing.EMPTY_FINGERPRINT]
    if not changed:
        return dg.SkipReason(f"no new landing files ({len(now)} days known)")
    wanted = still_to_ingest(context.instance, now, changed)
    cursor = json.dumps(now, sort_keys=True)
    if not wanted:
        return dg.SensorResult(skip_reason=dg.SkipReason(
            f"{len(changed)} changed day(s) already ingested with these files (by the CLI?)"),
            cursor=cursor)
    existing = set(context.instance.get_dynamic_partitions(landing_date_partitions.name))
    new_days = [d for d in wanted if d not in existing]
    return dg.SensorResult(
        run_requests=[dg.RunRequest(run_key=f"{d}:{now[d]}", partition_key=d) for d in wanted],
        dynamic_partitions_requests=[landing_date_partitions.build_add_request(new_days)]
        if new_days else [],
        cursor=cursor,
    )
