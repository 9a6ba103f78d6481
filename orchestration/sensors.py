"""Sensors: `<event>_sensor`."""


import contextlib
import json
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import dagster as dg

from assets.ingest import LANDING_FINGERPRINT
from assets.partitions import landing_date_partitions
from assets.resources import (
    LandingZoneResource,
    ModelRegistryResource,
    OperationalStoreResource,
    WarehouseResource,
)
from ml import landing
from orchestration.jobs import (
    INGEST_RUN_RETRIES,
    WORKLOAD_TAG,
    audit_day_job,
    datasets_job,
    deployment_job,
    evaluation_job,
    ingest_job,
    retraining_job,
    training_job,
)

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
    reports them). ``landing_dir``: a folder, an ``s3://`` URL or an ``ml.landing_store``."""
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
    # a folder or a bucket prefix: the days and fingerprints come from a listing (sizes and
    # modification times, or sizes and ETags), no file is read
    root = landing_zone.store()
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


# ---- deployment and retraining triggers -------------------------------------------------------
TRIGGER_TAG = "learnloop/trigger"
REASON_TAG = "learnloop/reason"
QUALITY_THRESHOLD_ENV = "LEARNLOOP_QUALITY_DROP_THRESHOLD"
QUALITY_WINDOW_ENV = "LEARNLOOP_QUALITY_WINDOW_DAYS"
QUALITY_HISTORY_DAYS = 30


def _env_number(name: str, default, kind, ok, what: str):
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a{'n integer' if kind is int else ' number'}"
                         ) from None
    if not ok(value):
        raise ValueError(f"{name}={raw!r} must be {what}")
    return value


def quality_watch_settings() -> tuple[float, int]:
    """(relative drop that counts, trailing window in days): LEARNLOOP_QUALITY_DROP_THRESHOLD
    (default 0.10) and LEARNLOOP_QUALITY_WINDOW_DAYS (default 7), read when the sensor runs."""
    days = QUALITY_HISTORY_DAYS - 1
    return (_env_number(QUALITY_THRESHOLD_ENV, 0.10, float, lambda v: 0.0 < v < 1.0,
                        "a share in (0, 1), e.g. 0.10 for a 10% drop"),
            _env_number(QUALITY_WINDOW_ENV, 7, int, lambda v: 3 <= v <= days,
                        f"a number of days from 3 to {days}"))


@contextlib.contextmanager
def read_only_warehouse(warehouse: WarehouseResource) -> Iterator:
    """One attempt at a read-only connection (a sensor tick must stay short: when a run is
    writing the warehouse, the tick says so and the next one reads)."""
    from ml import warehouse as wh

    con = wh.connect(warehouse.target(), read_only=True)
    try:
        yield con
    finally:
        con.close()


def _busy(exc: Exception) -> dg.SkipReason:
    return dg.SkipReason(f"the warehouse is being written (read next tick): {exc}")


@dg.sensor(job=deployment_job, minimum_interval_seconds=300,
           default_status=dg.DefaultSensorStatus.RUNNING,
           description="Starts deployment_job when a challenger has no experiment yet (and was "
                       "not tested against this champion before), and whenever the running "
                       "experiment has new served interactions in the warehouse since the last "
                       "request. Cursor: {experiment id: interactions counted}; run key "
                       "ab-<id>-<count> (ab-start-... for a new challenger): the same data "
                       "never triggers twice.")
def ab_decision_sensor(context: dg.SensorEvaluationContext, store: OperationalStoreResource,
                       warehouse: WarehouseResource, models: ModelRegistryResource):
    import duckdb

    from assets.lifecycle import finished_for_pair
    from ml.deploy.arm_metrics import experiment_interaction_count
    from store import deployments as dep

    registry = models.registry()
    model = registry.model_name
    aliases = registry.aliases()
    champion, challenger = aliases.get("champion"), aliases.get("challenger")
    seen = {str(k): int(v) for k, v in json.loads(context.cursor or "{}").items()}
    with store.session() as s:
        exp = dep.running_experiment(s, model)
        if exp is None:
            if challenger is None or champion is None:
                return dg.SkipReason(f"{model}: no challenger and no running experiment")
            done = finished_for_pair(s, model, champion, challenger)
            if done is not None:
                return dg.SkipReason(f"v{challenger} against v{champion} was decided by "
                                     f"experiment #{done.id} ({done.decision})")
            rows = [r for r in dep.deployment_history(s, model, limit=50)
                    if r.alias == "challenger" and r.status == "active"]
            since = rows[0].id if rows else 0
            return dg.RunRequest(
                run_key=f"ab-start-{model}-v{challenger}-v{champion}-{since}",
                tags={TRIGGER_TAG: "ab_decision_sensor", "learnloop/challenger": challenger})
        exp_id = exp.id
    if not warehouse.exists():
        return dg.SkipReason(f"experiment #{exp_id}: no warehouse yet, nothing served")
    try:
        with read_only_warehouse(warehouse) as con:
            count = int(experiment_interaction_count(con, exp_id))
    except duckdb.IOException as exc:
        context.log.info(f"ab_decision_sensor: {exc}")
        return _busy(exc)
    before = seen.get(str(exp_id), 0)
    cursor = json.dumps({str(exp_id): max(count, before)})
    if count <= before:
        return dg.SensorResult(skip_reason=dg.SkipReason(
            f"experiment #{exp_id}: {count} served interaction(s), none new since the last "
            f"request"), cursor=cursor)
    return dg.SensorResult(run_requests=[dg.RunRequest(
        run_key=f"ab-{exp_id}-{count}",
        tags={TRIGGER_TAG: "ab_decision_sensor", "learnloop/experiment": str(exp_id),
              "learnloop/served": str(count)})], cursor=cursor)


@dg.sensor(job=training_job, minimum_interval_seconds=300,
           default_status=dg.DefaultSensorStatus.RUNNING,
           description="Starts training_job on the newest ready training dataset version when "
                       "no training run used it yet (with approved_samples_sensor: N approved "
                       "samples -> a dataset version -> training -> evaluation -> challenger). "
                       "Cursor: the newest dataset id handled; run key train-<version hash>.")
def dataset_ready_sensor(context: dg.SensorEvaluationContext, store: OperationalStoreResource):
    from sqlalchemy import func, select

    from store.datasets import list_datasets
    from store.models import TrainingRun

    handled = int(context.cursor) if context.cursor else 0
    with store.session() as s:
        ready = [d for d in list_datasets(s, kind="training") if d.status == "ready"]
        if not ready:
            return dg.SkipReason("no ready training dataset version")
        newest = ready[0]  # newest first
        ds = {"id": newest.id, "hash": newest.version_hash,
              "label": f"{newest.name}@{newest.version}"}
        used = s.scalar(select(func.count()).select_from(TrainingRun)
                        .where(TrainingRun.dataset_id == newest.id)) if newest.id > handled else 0
    if ds["id"] <= handled:
        return dg.SkipReason(f"the newest ready dataset version {ds['label']} was handled "
                             f"already")
    cursor = str(ds["id"])
    if used:
        return dg.SensorResult(skip_reason=dg.SkipReason(
            f"{ds['label']} was already used by {used} training run(s)"), cursor=cursor)
    return dg.SensorResult(run_requests=[dg.RunRequest(
        run_key=f"train-{ds['hash']}",
        run_config={"ops": {"candidate_model": {"config": {"dataset": ds["hash"]}}}},
        tags={TRIGGER_TAG: "dataset_ready_sensor", "learnloop/dataset": ds["label"]})],
        cursor=cursor)


@dg.sensor(job=retraining_job, minimum_interval_seconds=3600,
           default_status=dg.DefaultSensorStatus.RUNNING,
           description="Watches the daily mean quality score of the complete days: when the "
                       "newest one is LEARNLOOP_QUALITY_DROP_THRESHOLD (default 10%) below the "
                       "trailing LEARNLOOP_QUALITY_WINDOW_DAYS-day mean (default 7), raises a "
                       "quality_degradation alert and starts retraining_job. Cursor: the last "
                       "day evaluated (each day once); run key quality-drop-<day>.")
def quality_drop_sensor(context: dg.SensorEvaluationContext, store: OperationalStoreResource,
                        warehouse: WarehouseResource):
    import duckdb

    from assets.lifecycle import send_alerts
    from ml.deploy.quality_watch import daily_quality, quality_drop

    threshold, window = quality_watch_settings()
    if not warehouse.exists():
        return dg.SkipReason("no warehouse yet: no quality scores")
    # today is not over: only complete (landing) days are judged, up to yesterday
    until = datetime.now(UTC).date() - timedelta(days=1)
    try:
        with read_only_warehouse(warehouse) as con:
            series = daily_quality(con, days=QUALITY_HISTORY_DAYS, until=until)
    except duckdb.IOException as exc:
        context.log.info(f"quality_drop_sensor: {exc}")
        return _busy(exc)
    if not series:
        return dg.SkipReason(f"no scored interactions in the {QUALITY_HISTORY_DAYS} days up to "
                             f"{until}")
    last = str(series[-1].day)
    if context.cursor and last <= context.cursor:
        return dg.SkipReason(f"{last} was evaluated already (next: the next complete day)")
    drop = quality_drop(series, window=window, threshold=threshold)
    if drop is None:
        return dg.SensorResult(skip_reason=dg.SkipReason(
            f"{last}: no drop of {threshold:.0%} below the trailing {window}-day mean"),
            cursor=last)
    day = str(drop.day)
    message = (f"live quality dropped on {day}: mean quality score {drop.value:.3f}, "
               f"{drop.rel_drop:.1%} below the trailing {drop.window_days}-day mean "
               f"{drop.trailing_mean:.3f} (threshold {threshold:.0%}); retraining started")
    context.log.warning(message)
    send_alerts(store, [{"kind": "quality_degradation", "severity": "warning",
                         "message": message, "source": "sensor:quality_drop_sensor",
                         "details": {**drop.to_dict(), "threshold": threshold},
                         "dedupe_key": f"quality_degradation:{day}"}])
    return dg.SensorResult(run_requests=[dg.RunRequest(
        run_key=f"quality-drop-{day}",
        tags={TRIGGER_TAG: "quality_drop_sensor", REASON_TAG: message[:200]})], cursor=last)


# ---- audit_days_sensor: the scheduled audit, one run per landing day ---------------------------
EMBEDDINGS = dg.AssetKey("interaction_embeddings")
# (not NOT_STARTED: a run created but never launched would hold its day back for good)
IN_FLIGHT = (dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.STARTING,
             dg.DagsterRunStatus.STARTED)
# runs one tick requests at most (oldest days first); the rest wait for the next embeddings run
MAX_AUDIT_DAY_REQUESTS = 60


def audit_days_in_flight(instance: dg.DagsterInstance) -> set[str]:
    """Landing days with an ``audit_day_job`` run queued or going: a day is not requested twice
    at once (the second run would select the interactions the first is auditing)."""
    runs = instance.get_runs(dg.RunsFilter(job_name=audit_day_job.name, statuses=list(IN_FLIGHT)))
    return {r.tags["dagster/partition"] for r in runs if "dagster/partition" in r.tags}


@dg.sensor(job=audit_day_job, minimum_interval_seconds=60,
           default_status=dg.DefaultSensorStatus.RUNNING,
           description="After each new interaction_embeddings materialization (the hourly "
                       "embeddings run, or any other), requests one audit_day_job run per "
                       "landing day with new work for the configured auditor: interactions "
                       "without a verdict that the default selection has not passed over, and "
                       "failed attempts to retry (not given up). Days with an audit run queued or "
                       "going are left for the next embeddings run. The run queue runs the days "
                       "side by side. Cursor: the embeddings storage id handled; run key "
                       "audit-<day>-<storage id>.")
def audit_days_sensor(context: dg.SensorEvaluationContext, store: OperationalStoreResource,
                      warehouse: WarehouseResource):
    import duckdb

    from ml.audit import RulesAuditor, auditor_from_env, tables
    from ml.audit.candidates import (
        CandidateConfig,
        attempts_frame,
        retried_keys,
        selection_fingerprint,
    )
    from store.audit import attempt_rows

    latest = context.instance.fetch_materializations(EMBEDDINGS, limit=1).records
    if not latest:
        return dg.SkipReason("interaction_embeddings was never materialized: nothing to audit "
                             "yet (hourly_embeddings_schedule runs it)")
    storage_id = latest[0].storage_id
    if context.cursor and int(context.cursor) >= storage_id:
        return dg.SkipReason(f"no interaction_embeddings materialization since storage id "
                             f"{context.cursor}")
    if not warehouse.exists():
        return dg.SensorResult(skip_reason=dg.SkipReason("no warehouse yet"),
                               cursor=str(storage_id))
    auditor = auditor_from_env("")
    cfg = CandidateConfig()  # the scheduled run's selection: audit_candidates' defaults
    with store.session() as s:
        failed = attempts_frame(attempt_rows(s, auditor.name, auditor.prompt_version,
                                             statuses=("failed",)))
    try:
        with read_only_warehouse(warehouse) as con:
            work = tables.new_work_by_day(
                con, auditor=auditor.name, prompt_version=auditor.prompt_version,
                selection=selection_fingerprint(auditor.name, auditor.prompt_version, cfg),
                retry_keys=retried_keys(failed, cfg.max_attempts))
    except duckdb.IOException as exc:  # a run holds the file: the cursor stays, next tick reads
        context.log.info(f"audit_days_sensor: {exc}")
        return _busy(exc)
    busy = audit_days_in_flight(context.instance)
    valid = {d for d in work if landing_date_partitions.has_partition_key(d)}
    outside = sorted(set(work) - valid)
    if outside:
        context.log.warning(f"interactions of landing days outside the partitions (skipped): "
                            f"{outside[:10]}")
    days = [d for d in sorted(work) if d in valid and d not in busy][:MAX_AUDIT_DAY_REQUESTS]
    workload = "audit" if isinstance(auditor, RulesAuditor) else "llm"
    requests = [dg.RunRequest(run_key=f"audit-{d}-{storage_id}", partition_key=d,
                              tags={TRIGGER_TAG: "audit_days_sensor", WORKLOAD_TAG: workload,
                                    "learnloop/interactions": str(work[d])})
                for d in days]
    if not requests:
        said = (f"{len(busy)} day(s) with an audit run going" if busy
                else "no landing day has new work")
        return dg.SensorResult(skip_reason=dg.SkipReason(f"{auditor.name}: {said}"),
                               cursor=str(storage_id))
    context.log.info(f"{len(requests)} day(s) to audit with {auditor.name}: "
                     + ", ".join(f"{d} ({work[d]})" for d in days[:10]))
    return dg.SensorResult(run_requests=requests, cursor=str(storage_id))
