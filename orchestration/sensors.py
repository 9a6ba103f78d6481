"""Sensors: `<event>_sensor`."""


import hashlib
import json

import dagster as dg

from assets.partitions import landing_date_partitions
from assets.resources import LandingZoneResource
from ml import landing
from orchestration.jobs import ingest_job


def landing_fingerprints(landing_dir) -> dict[str, str]:
    """day -> fingerprint of its finished files (names, sizes, mtimes)."""
    out: dict[str, str] = {}
    for day in landing.list_partitions(landing_dir):
        h = hashlib.sha256()
        for p in landing.list_files(landing_dir, day):
            st = p.stat()
            h.update(f"{p.name}:{st.st_size}:{st.st_mtime_ns}\n".encode())
        out[day] = h.hexdigest()[:16]
    return out


@dg.sensor(job=ingest_job, minimum_interval_seconds=30,
           default_status=dg.DefaultSensorStatus.RUNNING,
           description="Starts ingest for every landing day whose files are new or changed.")
def landing_file_sensor(context: dg.SensorEvaluationContext, landing_zone: LandingZoneResource):
    seen: dict[str, str] = json.loads(context.cursor) if context.cursor else {}
    now = landing_fingerprints(landing_zone.root())
    changed = sorted(d for d, fp in now.items() if seen.get(d) != fp and fp != hashlib.sha256().hexdigest()[:16])
    if not changed:
        return dg.SkipReason(f"no new landing files ({len(now)} days known)")
    existing = set(context.instance.get_dynamic_partitions(landing_date_partitions.name))
    new_days = [d for d in changed if d not in existing]
    return dg.SensorResult(
        run_requests=[dg.RunRequest(run_key=f"{d}:{now[d]}", partition_key=d) for d in changed],
        dynamic_partitions_requests=[landing_date_partitions.build_add_request(new_days)]
        if new_days else [],
        cursor=json.dumps(now, sort_keys=True),
    )
