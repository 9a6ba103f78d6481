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

``audit_candidates`` tags its rows with the run that selected them and ``audited_errors`` reads only
its own run's rows, so overlapping runs (the hourly job between the two steps of a manual audit)
never audit each other's selection. ``audited_errors`` saves its results in batches
(``batch_size`` items) as they finish: verdicts, attempt rows and review items of a finished batch
survive a crash of the run.

The jobs and schedules of this stage are in ``orchestration/jobs.py``.
"""


import os
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import dagster as dg
import polars as pl
from sqlalchemy import select

from ml import embeddings
from ml import warehouse as wh
from ml.audit import make_auditor
from ml.audit.rules import RulesAuditor
from ml.audit.failures import tag_reason
from ml.audit.llm import parse_messages
from ml.audit.candidates import (
    CANDIDATE_COLUMNS,
    DEFAULT_MAX_ATTEMPTS,
    CandidateConfig,
    calibration_draw,
    given_up,
    reason_counts,
    select_candidates,
)
from ml.audit.tables import ensure as ensure_audit_table
from ml.audit.tables import query, upsert_rows
from ml.demo.truth import find_truth_files, precision_recall, read_truth
from ml.llm import from_env
from ml.llm.errors import ConfigError
from assets.resources import (
    WAREHOUSE_POOL,
    LandingZoneResource,
    OperationalStoreResource,
    VectorStoreResource,
    WarehouseResource,
    session_hash_key,
)
from store.db import session_scope
from store.models import AuditAttempt, utcnow
from store.repo import create_item

ROLE = "auditor"


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


def resolve_auditor(override: str = ""):
    """The configured auditor: rules (router None) or an LLM auditor on the role's router."""
    if override.strip():
        env = dict(os.environ)
        env["LEARNLOOP_AUDITOR"] = override.strip()
        return make_auditor(from_env(ROLE, env))
    return make_auditor(from_env(ROLE))


def _parse_ts(value: str, field: str) -> datetime | None:
    if not value.strip():
        return None
    try:
        return datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"audit_candidates.{field}: not an ISO timestamp: {value!r}") from None


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


# ---- store helpers ----------------------------------------------------------------------------------
def attempts_frame(url: str, auditor: str, prompt_version: str) -> pl.DataFrame:
    """(interaction_id, status, attempts, reason) of this auditor's and prompt version's
    attempts (the reason's prefix says whether the last failure counted, see ``given_up``)."""
    with session_scope(url) as s:
        rows = s.execute(select(AuditAttempt.interaction_id, AuditAttempt.status,
                                AuditAttempt.attempts, AuditAttempt.reason).where(
            AuditAttempt.auditor == auditor, AuditAttempt.prompt_version == prompt_version)).all()
    return pl.DataFrame([tuple(r) for r in rows], schema={"interaction_id": pl.String,
                                                          "status": pl.String,
                                                          "attempts": pl.Int64,
                                                          "reason": pl.String}, orient="row")


def record_attempt(session, *, interaction_id: str, tenant_id: str, auditor: str,
                   prompt_version: str, status: str, is_error: bool | None,
                   reason: str | None, counted: bool = True) -> AuditAttempt:
    """Insert or update the (interaction, auditor, prompt version) attempt row.

    ``attempts`` counts the attempts that got somewhere: an ``ok`` one and each request-specific
    failure (``counted``, see ``ml.audit.failures``). A failure during an outage (``counted``
    false) is recorded (status ``failed``, its reason) without counting, so it never brings the
    interaction closer to being given up."""
    step = 1 if status == "ok" or counted else 0
    row = session.scalar(select(AuditAttempt).where(
        AuditAttempt.interaction_id == interaction_id, AuditAttempt.auditor == auditor,
        AuditAttempt.prompt_version == prompt_version))
    if row is None:
        row = AuditAttempt(interaction_id=interaction_id, tenant_id=tenant_id, auditor=auditor,
                           prompt_version=prompt_version, status=status, is_error=is_error,
                           reason=reason, attempts=step, updated_at=utcnow())
        session.add(row)
    else:
        row.status, row.is_error, row.reason = status, is_error, reason
        row.attempts = (row.attempts or 0) + step
        row.updated_at = utcnow()
    return row


def error_dedup_key(interaction_id: str, auditor: str, prompt_version: str) -> str:
    return f"{interaction_id}:{auditor}:{prompt_version}"


def selection_run_id(context: dg.AssetExecutionContext) -> str:
    """The id candidate rows are tagged with: the run's root run (so a re-execution from failure
    audits the selection of the run it re-executes), else the run itself."""
    run = context.run
    return run.root_run_id or run.run_id


def ensure_candidates_table(con) -> None:
    """``audit_candidates`` with every column of ``CANDIDATE_COLUMNS`` (a warehouse created before
    ``run_id`` existed gets the column; its old rows have run_id NULL and are pruned)."""
    wh.ensure_table(con, "audit_candidates", CANDIDATE_COLUMNS)


def write_run_candidates(con, run_id: str, candidates: pl.DataFrame, *,
                         prune_before: datetime) -> int:
    """Replace this run's rows of ``audit_candidates`` with ``candidates`` (one transaction);
    other runs' rows stay unless selected before ``prune_before`` (or untagged)."""
    ensure_candidates_table(con)
    return wh.write_frame(
        con, "audit_candidates", candidates, columns=CANDIDATE_COLUMNS,
        delete_where="run_id = ? OR run_id IS NULL OR selected_at < ?",
        params=[run_id, prune_before])


def read_run_candidates(con, run_id: str) -> pl.DataFrame:
    """The candidates the run ``run_id`` selected (and only those)."""
    ensure_candidates_table(con)
    return query(con, "SELECT * FROM audit_candidates WHERE run_id = ? "
                      "ORDER BY selected_at, interaction_id", [run_id])


# ---- warehouse reads --------------------------------------------------------------------------------
_CANDIDATE_INPUT = ("interaction_id, tenant_id, session_id, ts, partition_date, feedback_thumbs, "
                    "feedback_rating, requested_human, corrected_response")


def read_interactions_for_selection(con) -> pl.DataFrame:
    wh.ensure_table(con, "interactions")
    wh.ensure_table(con, "interaction_quality")
    cols = ", ".join(f"i.{c.strip()}" for c in _CANDIDATE_INPUT.split(","))
    return query(
        con,
        f"SELECT {cols}, q.quality_score FROM interactions i "
        "LEFT JOIN interaction_quality q USING (interaction_id) ORDER BY i.ts, i.interaction_id"
    )


def read_full_interactions(con, ids: list[str]) -> pl.DataFrame:
    wh.ensure_table(con, "interactions")
    wh.ensure_table(con, "interaction_quality")
    con.register("_ids", pl.DataFrame({"interaction_id": ids},
                                      schema={"interaction_id": pl.String}).to_arrow())
    try:
        return query(
            con,
            "SELECT i.*, q.quality_score FROM interactions i "
            "SEMI JOIN _ids USING (interaction_id) "
            "LEFT JOIN interaction_quality q USING (interaction_id) ORDER BY i.ts, i.interaction_id"
        )
    finally:
        con.unregister("_ids")


# ---- assets -----------------------------------------------------------------------------------------
@dg.asset(
    deps=["interactions", "interaction_quality"],
    group_name="audit",
    kinds={"duckdb", "polars"},
    pool=WAREHOUSE_POOL,
    description="Interactions to audit: negative feedback, handoffs, low quality, human "
                "corrections, a seeded calibration sample of the rest, failed attempts to retry "
                "(or the interactions a manual run names). Excludes what the same auditor and "
                "prompt version already audited.",
)
def audit_candidates(context: dg.AssetExecutionContext, config: AuditCandidatesConfig,
                     warehouse: WarehouseResource,
                     store: OperationalStoreResource) -> dg.MaterializeResult:
    auditor = resolve_auditor(config.auditor)
    url = store.get_url()
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
        from ml.ingest import hash_session

        key = session_hash_key()
        aliases = {s: hash_session(key, s) for s in cfg.session_ids}
    attempts = attempts_frame(url, auditor.name, auditor.prompt_version)
    run_key = selection_run_id(context)
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    with warehouse.get_connection() as con:
        pool = read_interactions_for_selection(con)
        candidates = select_candidates(pool, attempts, auditor=auditor.name,
                                       prompt_version=auditor.prompt_version, config=cfg,
                                       session_aliases=aliases, now=now, run_id=run_key)
        write_run_candidates(con, run_key, candidates,
                             prune_before=now - timedelta(days=config.retention_days))
    counts = reason_counts(candidates)
    abandoned = given_up(attempts, cfg.max_attempts)
    context.log.info(f"{candidates.height} candidates of {pool.height} interactions for "
                     f"{auditor.name} {auditor.prompt_version} (run {run_key})")
    if abandoned:
        context.log.warning(
            f"{len(abandoned)} interactions failed {cfg.max_attempts} audits and are given up "
            f"(no longer retried; a manual audit naming them still audits them): {abandoned[:10]}")
    return dg.MaterializeResult(metadata={
        "dagster/row_count": candidates.height,
        "interactions": pool.height,
        "candidate_rate": round(candidates.height / pool.height, 4) if pool.height else 0.0,
        "already_audited_ok": int((attempts["status"] == "ok").sum()) if attempts.height else 0,
        "manual": cfg.manual,
        "auditor": auditor.name,
        "prompt_version": auditor.prompt_version,
        "calibration_rate": config.calibration_rate,
        "selection_run_id": run_key,
        "given_up": len(abandoned),
        "given_up_ids": dg.MetadataValue.json(abandoned[:50]),
        "max_attempts": cfg.max_attempts,
        **{f"reason/{k}": v for k, v in counts.items()},
    })


def _demo_precision_recall(landing_root, con, auditor: str, prompt_version: str) -> dict[str, Any]:
    """Precision/recall of this auditor over everything it audited, against the demo
    generator's truth.jsonl files (demo data only; absent in production). A figure with no data
    behind it (e.g. precision with nothing flagged) is left out and named in ``demo_only/note``,
    never reported as 0."""
    files = find_truth_files(landing_root)
    if not files:
        return {}
    truth = pl.concat([read_truth(f) for f in files]).unique("interaction_id", keep="last")
    verdicts = query(
        con,
        "SELECT interaction_id, is_error, category FROM audited_errors "
        "WHERE auditor = ? AND prompt_version = ?", [auditor, prompt_version])
    known = query(con, "SELECT interaction_id FROM interactions")
    truth = truth.join(known, on="interaction_id", how="semi")
    # an interaction never audited counts as not flagged (end-to-end recall)
    full = truth.select("interaction_id").join(verdicts, on="interaction_id", how="left") \
        .with_columns(pl.col("is_error").fill_null(False))
    pr = precision_recall(full, truth)
    out: dict[str, Any] = {}
    missing = []
    for key in ("precision", "recall", "f1", "category_accuracy"):
        if pr[key] is None:
            missing.append(key)
        else:
            out[f"demo_only/{key}"] = pr[key]
    if missing:
        out["demo_only/note"] = (f"no data for {', '.join(missing)} (nothing flagged, no labelled "
                                 f"errors or no true positives): left out, not 0")
    out["demo_only/labelled_interactions"] = pr["n"]
    out["demo_only/recall_by_mistake"] = dg.MetadataValue.json(pr["recall_by_mistake"])
    return out


def _materialized_in_run(context: dg.AssetExecutionContext, run_id: str) -> bool:
    """Whether ``audit_candidates`` was materialized in run ``run_id`` (this instance's log)."""
    key = dg.AssetKey("audit_candidates")
    for rid in dict.fromkeys((run_id, context.run.run_id)):
        for rec in context.instance.all_logs(rid, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION):
            mat = rec.asset_materialization
            if mat is not None and mat.asset_key == key:
                return True
    return False


def clean_review_ids(verdicts: pl.DataFrame, calibration_ids: set[str], rate: float) -> set[str]:
    """The clean (is_error false) verdicts on calibration-sample interactions that get a "no error
    found" review item: a stable hash draw below ``rate`` (the same interactions on every run)."""
    if rate <= 0 or verdicts.height == 0:
        return set()
    clean = [i for i, e in zip(verdicts["interaction_id"].to_list(),
                               verdicts["is_error"].to_list()) if not e and i in calibration_ids]
    draws = calibration_draw(clean, "clean-review")
    return {i for i, d in zip(clean, draws) if d < rate}


@dataclass
class BatchTotals:
    audited: int = 0
    errors: int = 0
    created: int = 0
    clean_created: int = 0
    failures: list[Any] = field(default_factory=list)
    given_up: list[str] = field(default_factory=list)
    by_category: Counter = field(default_factory=Counter)
    by_severity: Counter = field(default_factory=Counter)


def save_batch(warehouse: WarehouseResource, url: str, auditor, frame: pl.DataFrame, outcome,
               *, calibration_ids: set[str], clean_review_rate: float, max_attempts: int,
               totals: BatchTotals) -> None:
    """Save one batch's results: verdicts to the warehouse first, then (one store transaction)
    ok/failed attempt rows and the review items. A crash between the two leaves verdicts without
    an ok attempt: the next run re-audits those and the upsert / dedup keys absorb the repeat."""
    verdicts = outcome.verdicts
    from ml.audit.labels import with_label_columns  # recall / kappa label weights (auditing.md)
    verdicts = with_label_columns(verdicts, calibration_ids, clean_review_ids(
        verdicts, calibration_ids, clean_review_rate), clean_review_rate)
    if verdicts.height:
        with warehouse.get_connection() as con:
            upsert_rows(con, "audited_errors", verdicts,
                        ["interaction_id", "auditor", "prompt_version"])
    rows_by_id = {r["interaction_id"]: r for r in frame.iter_rows(named=True)}
    clean_items = clean_review_ids(verdicts, calibration_ids, clean_review_rate)
    actor = f"auditor:{auditor.name}"[:128]
    with session_scope(url) as s:
        for v in verdicts.iter_rows(named=True):
            iid = v["interaction_id"]
            record_attempt(s, interaction_id=iid, tenant_id=v["tenant_id"], auditor=auditor.name,
                           prompt_version=auditor.prompt_version, status="ok",
                           is_error=v["is_error"], reason=None)
            if not v["is_error"] and iid not in clean_items:
                continue
            src = rows_by_id[iid]
            common = dict(
                tenant_id=v["tenant_id"], interaction_id=iid, session_id=src.get("session_id"),
                messages=parse_messages(src.get("messages"), iid),
                original_response=src.get("response"), confidence=v["confidence"],
                auditor=auditor.name, prompt_version=auditor.prompt_version)
            extra = {"signals": v["signals"], "answered_by": v["answered_by"],
                     "partition_date": str(v["partition_date"]) if v["partition_date"] else None}
            key = error_dedup_key(iid, auditor.name, auditor.prompt_version)
            if v["is_error"]:
                _, new = create_item(
                    s, kind="error", dedup_key=key, actor=actor, category=v["category"],
                    severity=v["severity"], explanation=v["explanation"],
                    tags=[f"auditor:{auditor.name}"[:64]], extra=extra, **common)
                totals.created += int(new)
            else:  # calibration: a clean verdict for a reviewer to check (labels TN / FN)
                _, new = create_item(
                    s, kind="error", dedup_key=key, actor=actor, category=None, severity=None,
                    explanation=(f"No error found by the auditor (calibration sample). "
                                 f"{v['explanation']} Confirm if the reply is in fact wrong; "
                                 f"dismiss if it is fine."),
                    tags=[f"auditor:{auditor.name}"[:64], "calibration", "no_error_found"],
                    extra={**extra, "verdict": "no error found", "is_error": False}, **common)
                totals.clean_created += int(new)
        for f in outcome.failures:
            row = record_attempt(s, interaction_id=f.interaction_id, tenant_id=f.tenant_id,
                                 auditor=auditor.name, prompt_version=auditor.prompt_version,
                                 status="failed", is_error=None,
                                 reason=tag_reason(f.reason, f.counted)[:4000], counted=f.counted)
            if f.counted and row.attempts >= max_attempts:
                totals.given_up.append(f.interaction_id)
    errors = verdicts.filter(pl.col("is_error")) if verdicts.height else verdicts
    totals.audited += verdicts.height
    totals.errors += errors.height
    totals.failures.extend(outcome.failures)
    if errors.height:
        totals.by_category.update(errors["category"].to_list())
        totals.by_severity.update(errors["severity"].to_list())


@dg.asset(
    deps=["audit_candidates", "interaction_embeddings"],
    group_name="audit",
    kinds={"duckdb", "sqlite", "polars"},
    pool=WAREHOUSE_POOL,
    description="The Auditor's verdicts (category, severity, confidence, explanation, auditor, "
                "prompt version) in the warehouse; errors become `error` review items, and a "
                "share of clean calibration verdicts becomes a \"no error found\" item. Audits "
                "only the candidates its own run selected; saves results every batch_size items.",
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
    auditor = resolve_auditor(config.auditor)
    url = store.get_url()
    run_key = config.candidates_run_id.strip() or selection_run_id(context)
    with warehouse.get_connection() as con:
        ensure_audit_table(con, "audited_errors")  # exists even when every audit fails
        cands = read_run_candidates(con, run_key)
    if cands.height == 0 and not _materialized_in_run(context, run_key):
        raise dg.Failure(
            f"audit_candidates was not materialized in run {run_key}: audited_errors audits only "
            "the candidates its own run selected. Materialize audit_candidates and audited_errors "
            "together (audit_job / manual_audit_job), or set candidates_run_id to the run whose "
            "selection to audit.")
    other = cands.filter((pl.col("auditor") != auditor.name)
                         | (pl.col("prompt_version") != auditor.prompt_version))
    if other.height:
        first = other.row(0, named=True)
        raise dg.Failure(
            f"audit_candidates were selected for auditor {first['auditor']!r} prompt "
            f"{first['prompt_version']!r}, but audited_errors runs {auditor.name!r} "
            f"{auditor.prompt_version!r}; re-materialize audit_candidates with the same auditor")
    selected = cands.height
    # a candidate audited OK since the selection (a concurrent run) is skipped
    done = attempts_frame(url, auditor.name, auditor.prompt_version)
    if done.height:
        ok = done.filter(pl.col("status") == "ok")["interaction_id"].to_list()
        cands = cands.filter(~pl.col("interaction_id").is_in(ok))
    if config.limit > 0:
        cands = cands.head(config.limit)
    ids = cands["interaction_id"].to_list()
    retried = int(cands["reasons"].list.contains("retry").sum()) if cands.height else 0
    calibration_ids = set(cands.filter(pl.col("reasons").list.contains("calibration"))
                          ["interaction_id"].to_list()) if cands.height else set()

    relevance = None
    relevance_computed = 0
    if isinstance(auditor, RulesAuditor) and ids:
        with warehouse.get_connection() as con:  # the population the consensus signals compare with
            auditor.reference = query(
                con, "SELECT tenant_id, user_message, response FROM interactions")
        relevance = embeddings.read_relevance(vectors.connect(), ids)

    context.log.info(f"auditing {len(ids)} interactions with {auditor.name} "
                     f"{auditor.prompt_version}, saving every {config.batch_size}")
    totals = BatchTotals()
    for start in range(0, len(ids), config.batch_size):
        chunk = ids[start:start + config.batch_size]
        with warehouse.get_connection() as con:
            frame = read_full_interactions(con, chunk)
        if relevance is not None and frame.height:
            frame, n = _with_relevance(frame, relevance)
            relevance_computed += n
        outcome = auditor.audit_frame(frame)
        save_batch(warehouse, url, auditor, frame, outcome, calibration_ids=calibration_ids,
                   clean_review_rate=config.clean_review_rate, max_attempts=config.max_attempts,
                   totals=totals)
        context.log.info(f"saved {min(start + len(chunk), len(ids))}/{len(ids)}: "
                         f"{totals.audited} verdicts, {len(totals.failures)} failures")
    for f in totals.failures[:20]:
        context.log.warning(f"audit of {f.interaction_id} failed (retried next run unless given "
                            f"up): {f.reason}")
    if totals.given_up:
        context.log.warning(f"{len(totals.given_up)} interactions reached {config.max_attempts} "
                            f"failed audits and are given up: {totals.given_up[:10]}")

    llm_stats = auditor.router.stats.as_metadata() if hasattr(auditor, "router") else {}
    with warehouse.get_connection() as con:
        pr = _demo_precision_recall(landing_zone.root(), con, auditor.name, auditor.prompt_version)
    return dg.MaterializeResult(metadata={
        "dagster/row_count": totals.audited,
        "candidates": cands.height,
        "selected_by_run": selected,
        "selection_run_id": run_key,
        "audited": totals.audited,
        "errors": totals.errors,
        "error_rate": round(totals.errors / totals.audited, 4) if totals.audited else 0.0,
        "errors_by_category": dg.MetadataValue.json(dict(totals.by_category)),
        "errors_by_severity": dg.MetadataValue.json(dict(totals.by_severity)),
        "review_items_created": totals.created,
        "clean_review_items_created": totals.clean_created,
        "clean_review_rate": config.clean_review_rate,
        "failures": len(totals.failures),
        "given_up": len(totals.given_up),
        "retried_items": retried,
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
        **pr,
    })


def _with_relevance(frame: pl.DataFrame, relevance: pl.DataFrame) -> tuple[pl.DataFrame, int]:
    """``frame`` with ``qa_relevance`` from the embeddings table, computed here for interactions
    not embedded yet (rather than skipping the signal). Returns (frame, computed inline)."""
    frame = frame.join(relevance, on="interaction_id", how="left")
    missing = frame.filter(pl.col("qa_relevance").is_null()
                           & pl.col("user_message").is_not_null()
                           & pl.col("response").is_not_null())
    if not missing.height:
        return frame, 0
    scores = embeddings.qa_relevance(missing["user_message"].to_list(),
                                     missing["response"].to_list())
    fill = missing.select("interaction_id").with_columns(
        pl.Series("_rel", scores, dtype=pl.Float64))
    frame = frame.join(fill, on="interaction_id", how="left").with_columns(
        pl.coalesce("qa_relevance", "_rel").alias("qa_relevance")).drop("_rel")
    return frame, missing.height
