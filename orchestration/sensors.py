"""Sensors: `<event>_sensor`."""


import json
import time

import dagster as dg

from assets.ingest import LANDING_FINGERPRINT
from assets.resources import LandingZoneResource, ModelRegistryResource, OperationalStoreResource
from ml import landing
from orchestration.jobs import INGEST_RUN_RETRIES, datasets_job, evaluation_job, ingest_job

INTERACTIONS = dg.AssetKey("interactions")
RUN_KEY_TAG = "dagster/run_key"
WILL_RETRY_TAG = "dagster/will_retry"
AUTO_RETRY_RUN_ID_TAG = "dagster/auto_retry_run_id"
# Requests of one day's ingest (with the same landing files) the sensor makes at most; each
# request's run also has Dagster's own run retries (``INGEST_RUN_RETRIES``, when the instance
# enables them). After the last one fails the day waits for new files or a manual run.
MAX_SENSOR_ATTEMPTS = 3
# Wait after a failed attempt before the next one: RETRY_BACKOFF_S * 2 ** (attempt - 1) seconds.
RETRY_BACKOFF_S = 300
# A requested run that does not show up in the instance after this long (the daemon died
# between the tick and the launch, the run was deleted) is requested again as a new attempt.
LOST_RUN_S = 900


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
    """(days whose landing files differ from what their last ingest read, the fingerprints of
    every valid day). Folders that are not valid days are skipped (``landing.scan_partitions``
    reports them)."""
    now = landing.day_fingerprints(landing_dir)
    return still_to_ingest(instance, now, now), now


def attempt_state(instance: dg.DagsterInstance, run_key: str) -> tuple[str, float | None]:
    """What became of the run a sensor requested with ``run_key``, Dagster's automatic
    re-executions of it included: ("missing", None) when no run has it (yet); ("running", None)
    while a run of it is queued or going, or a failed one will be retried by Dagster;
    ("succeeded", end) or ("failed", end) with the end time of its last run."""
    records = instance.get_run_records(filters=dg.RunsFilter(tags={RUN_KEY_TAG: run_key}),
                                       limit=1)
    if not records:
        return "missing", None
    group = instance.get_run_group(records[0].dagster_run.run_id)
    runs = list(group[1]) if group else [records[0].dagster_run]
    if any(r.status == dg.DagsterRunStatus.SUCCESS for r in runs):
        return "succeeded", _end_time(instance, runs)
    if any(not r.is_finished for r in runs):
        return "running", None
    if any(r.tags.get(WILL_RETRY_TAG) == "true" and AUTO_RETRY_RUN_ID_TAG not in r.tags
           for r in runs):
        return "running", None  # the run-retry daemon has not launched the retry yet
    return "failed", _end_time(instance, runs)


def _end_time(instance: dg.DagsterInstance, runs) -> float | None:
    ends = [rec.end_time for r in runs if (rec := instance.get_run_record_by_id(r.run_id))
            and rec.end_time]
    return max(ends) if ends else None


def _load_cursor(raw: str | None) -> dict:
    """The sensor's cursor: ``{"requested": {day: {fp, key, attempt, at}}, "given_up": {day: fp},
    "bad": [folder]}``. A cursor of an earlier version (the map day -> fingerprint) starts over:
    what is ingested is read from the materializations, never from the cursor."""
    cursor = json.loads(raw) if raw else {}
    if not isinstance(cursor, dict) or "requested" not in cursor:
        cursor = {}
    return {"requested": dict(cursor.get("requested", {})),
            "given_up": dict(cursor.get("given_up", {})), "bad": list(cursor.get("bad", []))}


def _attempt_key(day: str, fp: str, attempt: int) -> str:
    return f"{day}:{fp}" if attempt == 1 else f"{day}:{fp}:attempt-{attempt}"


@dg.sensor(job=ingest_job, minimum_interval_seconds=30,
           default_status=dg.DefaultSensorStatus.RUNNING,
           description="Starts ingest for every landing day whose files are new or changed since "
                       "that day was last ingested (by this sensor or by the CLI); a failed "
                       "ingest is requested again after a back-off, up to "
                       f"{MAX_SENSOR_ATTEMPTS} times; landing folders that are not valid days "
                       "are reported and skipped.")
def landing_file_sensor(context: dg.SensorEvaluationContext, landing_zone: LandingZoneResource):
    root = landing_zone.root()
    cursor = _load_cursor(context.cursor)
    days, bad = landing.scan_partitions(root)
    for b in bad:  # once per folder (and again once it was fixed and broke again)
        if b.folder not in cursor["bad"]:
            context.log.warning(landing.describe_bad_folder(root, b))
    cursor["bad"] = sorted(b.folder for b in bad)
    fps = landing.day_fingerprints(root, days)
    wanted = still_to_ingest(context.instance, fps, days)
    # a day is done when its `interactions` materialization records these files: whoever ran it
    cursor["requested"] = {d: r for d, r in cursor["requested"].items() if d in wanted}
    cursor["given_up"] = {d: fp for d, fp in cursor["given_up"].items()
                          if d in wanted and fps[d] == fp}
    now = time.time()
    requests, waiting, notes = [], [], []
    for day in wanted:
        fp = fps[day]
        if cursor["given_up"].get(day) == fp:
            continue
        prev = cursor["requested"].get(day)
        attempt = 1
        if prev is not None and prev["fp"] == fp:
            state, ended = attempt_state(context.instance, prev["key"])
            if state == "running" or (state == "missing" and now - prev["at"] < LOST_RUN_S):
                waiting.append(day)
                continue
            if state in ("failed", "succeeded", "missing"):
                # "succeeded" without this fingerprint recorded: the run read other files
                if prev["attempt"] >= MAX_SENSOR_ATTEMPTS:
                    cursor["given_up"][day] = fp
                    context.log.warning(
                        f"ingest of {day} {state} {prev['attempt']} time(s) with these landing "
                        f"files (last run key {prev['key']}): not requested again until its "
                        f"files change; `learnloop run --date {day}` or the Dagster UI runs it")
                    notes.append(f"{day} given up")
                    continue
                wait = RETRY_BACKOFF_S * 2 ** (prev["attempt"] - 1)
                if ended is not None and now - ended < wait:
                    waiting.append(day)
                    notes.append(f"{day} attempt {prev['attempt']} {state}, next in "
                                 f"{int(wait - (now - ended))} s")
                    continue
                attempt = prev["attempt"] + 1
                context.log.warning(f"ingest of {day} {state} (run key {prev['key']}): "
                                    f"requesting attempt {attempt} of {MAX_SENSOR_ATTEMPTS}")
        key = _attempt_key(day, fp, attempt)
        cursor["requested"][day] = {"fp": fp, "key": key, "attempt": attempt, "at": now}
        requests.append(dg.RunRequest(
            run_key=key, partition_key=day,
            tags={"dagster/max_retries": str(INGEST_RUN_RETRIES),
                  "learnloop/attempt": str(attempt)}))
    new_cursor = json.dumps(cursor, sort_keys=True)
    if requests:
        return dg.SensorResult(run_requests=requests, cursor=new_cursor)
    said = [f"{len(days)} valid landing day(s)"]
    if bad:
        said.append(f"{len(bad)} invalid folder(s) skipped")
    if waiting:
        said.append(f"waiting on {len(waiting)} day(s)")
    if not wanted:
        said.append("every day already ingested with its current files (by this sensor or "
                    "the CLI)")
    return dg.SensorResult(skip_reason=dg.SkipReason("; ".join(said + notes)), cursor=new_cursor)


@dg.sensor(job=datasets_job, minimum_interval_seconds=300,
           default_status=dg.DefaultSensorStatus.RUNNING,
           description="Builds a new dataset version (eval suite + training dataset) when at least "
                       "LEARNLOOP_DATASET_MIN_NEW_APPROVED samples (default 200) were approved "
                       "since the newest version. The cursor is the newest decision counted: the "
                       "same approvals never trigger twice.")
def approved_samples_sensor(context: dg.SensorEvaluationContext, store: OperationalStoreResource):
    from datetime import datetime

    from ml.config import Settings
    from store.datasets import approved_after, latest_dataset, latest_decision_at

    threshold = Settings().dataset_min_new_approved
    with store.session() as s:
        latest = latest_dataset(s, "training")
        # approvals already in a version (built here, by the CLI or the demo) and approvals this
        # sensor already requested a run for (its cursor) are not new
        marks = [t for t in (latest.created_at if latest else None,
                             datetime.fromisoformat(context.cursor) if context.cursor else None)
                 if t is not None]
        since = max(marks, key=lambda t: t.replace(tzinfo=None)) if marks else None
        n = approved_after(s, since)
        newest = latest_decision_at(s)
    if n < threshold:
        when = f" ({since.isoformat()})" if since else ""
        return dg.SkipReason(f"{n} sample(s) approved since the last dataset version or request"
                             f"{when}; a new version is built at {threshold}")
    cursor = newest.isoformat()
    context.update_cursor(cursor)
    return dg.RunRequest(run_key=f"datasets-{cursor}",
                         tags={"learnloop/trigger": "approved_samples_sensor",
                               "learnloop/new_approved": str(n)})


@dg.sensor(job=evaluation_job, minimum_interval_seconds=60,
           default_status=dg.DefaultSensorStatus.RUNNING,
           description="Follows provider fine-tune jobs (OpenAI, Gemini) started by "
                       "candidate_model: records their progress; when one succeeds, registers the "
                       "fine-tuned model as a new version (with its cost) and starts "
                       "evaluation_job on it; a failed or cancelled job is recorded with its "
                       "reason. One poll per job per tick: no waiting inside a run.")
def provider_job_sensor(context: dg.SensorEvaluationContext, store: OperationalStoreResource,
                        models: ModelRegistryResource):
    from assets.training import follow_provider_run
    from ml.training.providers import FineTuneError
    from store.training import StaleTrainingRun, active_provider_runs, run_summary

    with store.session() as s:
        runs = [run_summary(r) for r in active_provider_runs(s)]
    if not runs:
        return dg.SkipReason("no provider fine-tune job is queued or running")
    requests, notes = [], []
    for run in runs:
        try:
            outcome = follow_provider_run(run, store, models)
        except FineTuneError as exc:  # the provider is down: polled again next tick
            notes.append(f"run {run['id']}: polling job {run['provider_job_id']} failed, "
                         f"retried next tick: {exc}")
            context.log.warning(notes[-1])
            continue
        except StaleTrainingRun as exc:  # cancelled meanwhile
            notes.append(str(exc))
            continue
        notes.append(f"run {run['id']}: {outcome['note']}")
        context.log.info(notes[-1])
        if outcome.get("model_version"):
            requests.append(dg.RunRequest(
                run_key=f"provider-eval-{run['id']}",
                run_config={"ops": {"candidate_evaluation": {"config": {
                    "candidate_version": outcome["model_version"]}}}},
                tags={"learnloop/trigger": "provider_job_sensor",
                      "learnloop/training_run": str(run["id"])}))
    return dg.SensorResult(run_requests=requests,
                           skip_reason=None if requests else dg.SkipReason("; ".join(notes)))
