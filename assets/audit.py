"""Stage `audit`: ``audit_candidates`` -> ``audited_errors`` (verdicts in the warehouse, ``error``
review items in the operational store).

The auditor is ``LEARNLOOP_AUDITOR`` (``rules`` by default; ``openai``/``gemini``/``transformers``
through ``ml.llm.from_env("auditor")``) or the ``auditor`` field of the run config. Auditing is
idempotent per (interaction, auditor, prompt version) through ``AuditAttempt`` rows: an ``ok``
attempt is never repeated, a ``failed`` one is retried by the next run. Only request-specific
failures (``ml.audit.failures``: the row is malformed, or the providers rejected this request)
count: after ``max_attempts`` of those it is *given up* (reported, no longer retried by the
schedule). A failure during an outage (5xx, 429, timeout, breaker open, auth) is recorded with its
reason and retried on every run, never counted.

Both assets are partitioned by landing day (``assets.partitions.landing_date_partitions``, as
``interactions``): a run with a partition key selects and audits the interactions of that day only,
so the days of a backlog run side by side (one run each, ``audit_day_job``, requested by
``orchestration.sensors.audit_days_sensor``; several at once where the warehouse takes concurrent
writers: a DuckLake). A run over a range of days works on all of them: ``learnloop run``,
``learnloop audit`` and the demo run ``audit_job`` / ``manual_audit_job`` over the range of the
warehouse's landing days (``orchestration.runner.run_job``); in the UI, pick the days.

``audit_candidates`` tags its rows with the run that selected them and ``audited_errors`` reads only
its own run's rows, so overlapping runs (the hourly job between the two steps of a manual audit)
never audit each other's selection. ``audited_errors`` saves its results in batches
(``batch_size`` items) as they finish: verdicts, attempt rows and review items of a finished batch
survive a crash of the run.

The jobs and schedules of this stage are in ``orchestration/jobs.py``.
"""

from datetime import UTC, date, datetime, timedelta

import dagster as dg
import polars as pl

from assets.catalog import catalog, problems_result, with_metadata
from assets.partitions import landing_date_partitions
from assets.resources import (
    WAREHOUSE_POOL,
    LandingZoneResource,
    OperationalStoreResource,
    VectorStoreResource,
    WarehouseResource,
    session_hash_key,
    warehouse_connections,
)
from ml import embeddings
from ml import warehouse as wh
from ml.audit import RulesAuditor, auditor_from_env, tables
from ml.audit import run as audit_run
from ml.audit.candidates import (
    DEFAULT_MAX_ATTEMPTS,
    REASONS,
    CandidateConfig,
    attempts_frame,
    given_up,
    reason_counts,
    select_candidates,
    selection_fingerprint,
)
from ml.audit.taxonomy import CATEGORY_NAMES, SEVERITIES
from ml.demo.truth import demo_precision_recall
from ml.ingest import hash_session
from ml.llm.errors import ConfigError
from store.audit import attempt_rows, ok_count, save_audit_batch

READ_CHUNK = 5000  # candidates read from the warehouse per query


# ---- configuration --------------------------------------------------------------------------------
class AuditCandidatesConfig(dg.Config):
    """Run parameters of ``audit_candidates``. Any of interaction_ids / session_ids / since /
    until set = a manual audit of exactly the interactions they name."""

    calibration_rate: float = 0.05
    quality_threshold: float = 0.5
    seed: int = 0
    # request-specific failures (ml.audit.failures) after which an item is given up; outages
    # never count
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    retention_days: int = 7  # candidate rows of other runs older than this are pruned
    auditor: str = ""  # "" = LEARNLOOP_AUDITOR; "rules" or an ml.llm kind list ("openai,gemini")
    interaction_ids: list[str] = []
    session_ids: list[str] = []  # raw (as logged) or hashed session ids
    since: str = ""  # ISO timestamp (UTC when no offset), inclusive
    until: str = ""  # ISO timestamp, exclusive


class AuditedErrorsConfig(dg.Config):
    auditor: str = ""  # must resolve to the auditor audit_candidates was selected for
    limit: int = 0  # audit at most this many candidates per run (0 = all)
    batch_size: int = 50  # results are saved after every batch of this many items
    # share of the clean (no error found) verdicts on calibration-sample interactions that get an
    # `error` review item saying "no error found": a reviewer's decision on it labels a true
    # negative (dismissed) or a false negative (confirmed), so recall can be measured. 0 = off.
    clean_review_rate: float = 0.2
    max_attempts: int = DEFAULT_MAX_ATTEMPTS  # as audit_candidates: reported as given up here
    # audit the selection of this run id instead of this run's own (e.g. a selection made by an
    # earlier run); "" = the selection audit_candidates made in this run
    candidates_run_id: str = ""


def _parse_ts(value: str, field: str) -> datetime | None:
    if not value.strip():
        return None
    try:
        return datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"audit_candidates.{field}: not an ISO timestamp: {value!r}") from None


def selection_run_id(context: dg.AssetExecutionContext) -> str:
    """The id candidate rows are tagged with: the run's root run (so a re-execution from failure
    audits the selection of the run it re-executes), else the run itself."""
    run = context.run
    return run.root_run_id or run.run_id


def landing_days(context: dg.AssetExecutionContext) -> tuple[date, date] | None:
    """The first and last landing day of the run: its partition key (a day's run), or its
    partition range (a run of several days: ``orchestration.runner.run_job`` gives a run of
    ``audit_job`` without a key the range of the warehouse's days); None without either."""
    if context.has_partition_key:
        day = date.fromisoformat(context.partition_key)
        return day, day
    if context.has_partition_key_range:
        r = context.partition_key_range
        return date.fromisoformat(r.start), date.fromisoformat(r.end)
    return None


def _days_text(days: tuple[date, date] | None) -> str:
    if days is None:
        return "all"
    return days[0].isoformat() if days[0] == days[1] else f"{days[0]}..{days[1]}"


def _materialized_in_run(context: dg.AssetExecutionContext, run_id: str) -> bool:
    """Whether ``audit_candidates`` was materialized in run ``run_id`` (this instance's log)."""
    key = dg.AssetKey("audit_candidates")
    for rid in dict.fromkeys((run_id, context.run.run_id)):
        for rec in context.instance.all_logs(rid, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION):
            mat = rec.asset_materialization
            if mat is not None and mat.asset_key == key:
                return True
    return False


# ---- assets -----------------------------------------------------------------------------------------
@dg.asset(
    deps=["interactions", "interaction_quality"],
    partitions_def=landing_date_partitions,
    **catalog("audit_candidates", "audit"),
    kinds={"duckdb", "polars"},
    pool=WAREHOUSE_POOL,
    description="Interactions to audit: negative feedback, handoffs, low quality, human "
                "corrections, a seeded calibration sample of the rest, failed attempts to retry "
                "(or the interactions a manual run names). Excludes what the same auditor and "
                "prompt version already audited. Partitioned by landing day: a run with a "
                "partition key selects that day's interactions only, one without every day's.",
)
def audit_candidates(context: dg.AssetExecutionContext, config: AuditCandidatesConfig,
                     warehouse: WarehouseResource,
                     store: OperationalStoreResource) -> dg.MaterializeResult:
    auditor = auditor_from_env(config.auditor)
    if config.retention_days < 1:
        raise ConfigError(f"audit_candidates.retention_days must be at least 1, "
                          f"got {config.retention_days}")
    cfg = CandidateConfig(
        quality_threshold=config.quality_threshold, calibration_rate=config.calibration_rate,
        seed=config.seed, max_attempts=config.max_attempts,
        interaction_ids=tuple(config.interaction_ids),
        session_ids=tuple(config.session_ids), since=_parse_ts(config.since, "since"),
        until=_parse_ts(config.until, "until"),
    )
    aliases = {}
    if cfg.session_ids:
        key = session_hash_key()
        aliases = {s: hash_session(key, s) for s in cfg.session_ids}
    with store.session() as s:  # the retries: bounded by the failures, not by the history
        failed = attempts_frame(attempt_rows(s, auditor.name, auditor.prompt_version,
                                             statuses=("failed",)))
        n_ok = ok_count(s, auditor.name, auditor.prompt_version)
    run_key = selection_run_id(context)
    now = datetime.now(UTC).replace(tzinfo=None)
    selection = selection_fingerprint(auditor.name, auditor.prompt_version, cfg)
    days = landing_days(context)
    with warehouse.get_connection() as con:
        if cfg.manual:  # what the run names, wherever it is in the history (or in its day)
            pool = tables.read_interactions_for_selection(con, days)
            prelim = select_candidates(pool, failed, auditor=auditor.name,
                                       prompt_version=auditor.prompt_version, config=cfg,
                                       session_aliases=aliases, now=now, run_id=run_key)
            with store.session() as s:  # an interaction audited OK is not audited again
                ok = attempts_frame(attempt_rows(s, auditor.name, auditor.prompt_version,
                                                 statuses=("ok",), keys=audit_run.keys_of(prelim)))
            attempts = pl.concat([failed, ok])
        else:  # only new work: no verdict yet, not passed over with the same inputs
            pool = tables.read_selection_pool(
                con, auditor=auditor.name, prompt_version=auditor.prompt_version,
                selection=selection, retry_keys=audit_run.keys_of(failed), days=days)
            attempts = failed
        candidates = select_candidates(pool, attempts, auditor=auditor.name,
                                       prompt_version=auditor.prompt_version, config=cfg,
                                       session_aliases=aliases, now=now, run_id=run_key)
        tables.write_run_candidates(con, run_key, candidates,
                                    prune_before=now - timedelta(days=config.retention_days))
        passed_over = 0
        if not cfg.manual:
            passed_over = tables.write_passed_over(
                con, selection, pool, pl.concat([candidates.select(audit_run.KEY),
                                                 failed.select(audit_run.KEY)]), now=now)
    counts = reason_counts(candidates)
    abandoned = given_up(failed, cfg.max_attempts)  # only failed rows can be given up
    context.log.info(f"{candidates.height} candidates of {pool.height} interactions of "
                     f"{_days_text(days)} for {auditor.name} {auditor.prompt_version} "
                     f"(run {run_key})")
    if abandoned:
        context.log.warning(
            f"{len(abandoned)} interactions failed {cfg.max_attempts} audits and are given up "
            f"(no longer retried; a manual audit naming them still audits them): {abandoned[:10]}")
    return dg.MaterializeResult(metadata={
        "dagster/row_count": candidates.height,
        # the interactions looked at: new ones, changed ones and retries (a manual run: all)
        "interactions": pool.height,
        "passed_over": passed_over,
        "candidate_rate": round(candidates.height / pool.height, 4) if pool.height else 0.0,
        "already_audited_ok": n_ok,
        "manual": cfg.manual,
        "landing_days": _days_text(days),
        "auditor": auditor.name,
        "prompt_version": auditor.prompt_version,
        "calibration_rate": config.calibration_rate,
        "selection_run_id": run_key,
        "given_up": len(abandoned),
        "given_up_ids": dg.MetadataValue.json(abandoned[:50]),
        "max_attempts": cfg.max_attempts,
        **{f"reason/{k}": v for k, v in counts.items()},
    })


@dg.asset(
    deps=["audit_candidates", "interaction_embeddings"],
    partitions_def=landing_date_partitions,
    **catalog("audited_errors", "audit"),
    kinds={"duckdb", "sqlite", "polars"},
    pool=WAREHOUSE_POOL,
    description="The Auditor's verdicts (category, severity, confidence, explanation, auditor, "
                "prompt version) in the warehouse; errors become `error` review items, and a "
                "share of clean calibration verdicts becomes a \"no error found\" item. Audits "
                "only the candidates its own run selected (a partitioned run: its day's); saves "
                "results every batch_size items.",
)
def audited_errors(context: dg.AssetExecutionContext, config: AuditedErrorsConfig,
                   warehouse: WarehouseResource, store: OperationalStoreResource,
                   vectors: VectorStoreResource,
                   landing_zone: LandingZoneResource) -> dg.MaterializeResult:
    if config.batch_size < 1:
        raise ConfigError(f"audited_errors.batch_size must be at least 1, got {config.batch_size}")
    if not 0.0 <= config.clean_review_rate <= 1.0:
        raise ConfigError(f"audited_errors.clean_review_rate must be in [0, 1], "
                          f"got {config.clean_review_rate}")
    auditor = auditor_from_env(config.auditor)
    days = landing_days(context)
    run_key = config.candidates_run_id.strip() or selection_run_id(context)
    # one warehouse connection for the run (dagster-duckdb's connect and close cost more than a
    # batch of the offline auditor); an LLM auditor's run, bound by provider calls, opens one per
    # batch so readers of the file (sensors, the service) get in between
    with warehouse_connections(warehouse, hold=isinstance(auditor, RulesAuditor)) as wh_con:
        with wh_con() as con:
            wh.ensure_table(con, "audited_errors")  # exists even when every audit fails
            cands = tables.read_run_candidates(con, run_key)
        if cands.height == 0 and not _materialized_in_run(context, run_key):
            raise dg.Failure(
                f"audit_candidates was not materialized in run {run_key}: audited_errors audits "
                "only the candidates its own run selected. Materialize audit_candidates and "
                "audited_errors together (audit_job / manual_audit_job), or set "
                "candidates_run_id to the run whose selection to audit.")
        try:
            audit_run.check_selection(cands, auditor.name, auditor.prompt_version)
        except audit_run.SelectionMismatch as exc:
            raise dg.Failure(str(exc)) from None
        selected = cands.height
        # a candidate audited OK since the selection (by an overlapping run) is skipped; one
        # lookup per chunk of the run's candidates, not the auditor's whole history
        since = cands["selected_at"].min() if cands.height else None
        with store.session() as s:
            ok = [(r[0], r[1]) for r in attempt_rows(
                s, auditor.name, auditor.prompt_version, statuses=("ok",),
                keys=audit_run.keys_of(cands),
                updated_since=since.replace(tzinfo=UTC) if since else None)]
        cands = audit_run.still_to_audit(cands, ok, config.limit)
        keys = audit_run.keys_of(cands)
        ids = [i for _, i in keys]
        calibration_ids = audit_run.with_reason(cands, "calibration")

        relevance = None
        relevance_computed = 0
        if isinstance(auditor, RulesAuditor) and ids:
            with wh_con() as con:
                auditor.consensus, n_reference = tables.reference_consensus(
                    con, auditor.thresholds)
            context.log.info(f"consensus reference: {n_reference} interactions of the warehouse")
            relevance = embeddings.read_relevance(vectors.connect(), ids)

        context.log.info(f"auditing {len(ids)} interactions with {auditor.name} "
                         f"{auditor.prompt_version}, saving every {config.batch_size}")
        totals = audit_run.AuditTotals()
        # one warehouse read per read_chunk candidates (whole batches), not per batch
        read_chunk = config.batch_size * max(1, READ_CHUNK // config.batch_size)
        rows, offset = None, 0
        for start in range(0, len(keys), config.batch_size):
            chunk = keys[start:start + config.batch_size]
            if rows is None or start - offset >= read_chunk:
                with wh_con() as con:
                    _, rows = next(tables.interaction_chunks(
                        con, keys[start:start + read_chunk], read_chunk))
                offset = start
                if relevance is not None and rows.height:
                    # the replies of the whole chunk in one encode call: sorted by length into
                    # full batches, so much less padding than batch_size rows at a time
                    rows, n = embeddings.with_qa_relevance(rows, relevance)
                    relevance_computed += n
            frame = tables.rows_of_batch(rows, start - offset, start - offset + len(chunk))
            outcome = auditor.audit_frame(frame)
            verdicts, clean_items = audit_run.labelled_verdicts(
                outcome.verdicts, calibration_ids, config.clean_review_rate)
            items = audit_run.review_item_specs(verdicts, frame, auditor=auditor.name,
                                                prompt_version=auditor.prompt_version,
                                                clean_items=clean_items)
            # the store first (one transaction: attempts and items), then the verdicts: a crash
            # between the two leaves an ok attempt without a verdict, which the next scheduled
            # selection (interactions without a verdict) picks again and re-audits (the items'
            # dedup keys and the verdicts' upsert absorb the repeat)
            with store.session() as s:
                saved = save_audit_batch(
                    s, auditor=auditor.name, prompt_version=auditor.prompt_version,
                    verdicts=verdicts.select("interaction_id", "tenant_id", "is_error").to_dicts(),
                    items=items, failures=audit_run.failure_rows(outcome.failures),
                    max_attempts=config.max_attempts)
            if verdicts.height:
                with wh_con() as con:
                    wh.upsert_rows(con, "audited_errors", verdicts)
            totals.add(verdicts, outcome.failures, created=saved.created,
                       clean_created=saved.clean_created, given_up=saved.given_up)
            context.log.info(f"saved {min(start + len(chunk), len(ids))}/{len(ids)}: "
                             f"{totals.audited} verdicts, {len(totals.failures)} failures")
        with wh_con() as con:
            pr = demo_precision_recall(landing_zone.root(), con, auditor.name,
                                       auditor.prompt_version)
    for f in totals.failures[:20]:
        context.log.warning(f"audit of {f.interaction_id} failed (retried next run unless given "
                            f"up): {f.reason}")
    if totals.given_up:
        context.log.warning(f"{len(totals.given_up)} interactions reached {config.max_attempts} "
                            f"failed audits and are given up: {totals.given_up[:10]}")

    llm_stats = auditor.router.stats.as_metadata() if hasattr(auditor, "router") else {}
    return dg.MaterializeResult(metadata={
        "dagster/row_count": totals.audited,
        "candidates": cands.height,
        "selected_by_run": selected,
        "selection_run_id": run_key,
        "landing_days": _days_text(days),
        "audited": totals.audited,
        "errors": totals.errors,
        "error_rate": totals.error_rate,
        "errors_by_category": dg.MetadataValue.json(dict(totals.by_category)),
        "errors_by_severity": dg.MetadataValue.json(dict(totals.by_severity)),
        "review_items_created": totals.created,
        "clean_review_items_created": totals.clean_created,
        "clean_review_rate": config.clean_review_rate,
        "failures": len(totals.failures),
        "given_up": len(totals.given_up),
        "retried_items": len(audit_run.with_reason(cands, "retry")),
        "batch_size": config.batch_size,
        "retries": int(llm_stats.get("llm_retries", 0)),
        "cache_hits": int(llm_stats.get("llm_cache_hits", 0)),
        "tokens": int(llm_stats.get("llm_tokens", 0)),
        "cost_usd": float(llm_stats.get("llm_cost_usd", 0.0)),
        "relevance_computed_inline": relevance_computed,
        "auditor": auditor.name,
        "prompt_version": auditor.prompt_version,
        **({"prompt_sha": auditor.prompt.sha} if hasattr(auditor, "prompt") else {}),
        **{k: v for k, v in llm_stats.items() if isinstance(v, (int, float))},
        **with_metadata(pr),
    })


# ---- checks -----------------------------------------------------------------------------------------
@dg.asset_check(asset=audit_candidates, pool=WAREHOUSE_POOL,
                description="Every candidate was selected for at least one known reason, and no "
                            "run selected an interaction twice.")
def check_candidates_have_known_reasons(warehouse: WarehouseResource) -> dg.AssetCheckResult:
    with warehouse.get_connection() as con:
        return problems_result(tables.candidate_problems(con, REASONS))


@dg.asset_check(asset=audited_errors, pool=WAREHOUSE_POOL, blocking=True,
                description="Error verdicts carry a known category and severity, clean verdicts "
                            "neither; confidences lie in [0, 1]; one verdict per interaction, "
                            "auditor and prompt version. Blocking: teaching waits for it.")
def check_verdicts_are_consistent(warehouse: WarehouseResource) -> dg.AssetCheckResult:
    with warehouse.get_connection() as con:
        return problems_result(tables.verdict_problems(con, CATEGORY_NAMES, SEVERITIES))
