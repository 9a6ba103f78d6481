"""Stage `audit`: ``audit_candidates`` -> ``audited_errors`` (verdicts in the warehouse, ``error``
review items in the operational store).

The auditor is ``LEARNLOOP_AUDITOR`` (``rules`` by default; ``openai``/``gemini``/``transformers``
through ``ml.llm.from_env("auditor")``) or the ``auditor`` field of the run config. Auditing is
idempotent per (interaction, auditor, prompt version) through ``AuditAttempt`` rows: an ``ok``
attempt is never repeated, a ``failed`` one is retried by the next run.

Also here: the jobs and schedules of the audit and teaching stages (``audit_job``,
``manual_audit_job``, ``teaching_job``, ``hourly_audit_schedule``, ``daily_teacher_schedule``).
"""


import json
import os
from collections import Counter
from datetime import datetime
from typing import Any

import dagster as dg
import polars as pl
from sqlalchemy import select

from ml import embeddings, warehouse
from ml.audit import make_auditor
from ml.audit.rules import RulesAuditor
from ml.audit.candidates import CandidateConfig, reason_counts, select_candidates
from ml.audit.metrics import find_truth_files, precision_recall, read_truth
from ml.audit.tables import query, replace_table, table_exists, upsert_rows
from ml.llm import from_env
from ml.llm.errors import ConfigError
from orchestration.resources import WAREHOUSE_POOL, LearnloopResource
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
    auditor: str = ""  # "" = LEARNLOOP_AUDITOR; "rules" or an ml.llm kind list ("openai,gemini")
    interaction_ids: list[str] = []
    session_ids: list[str] = []  # raw (as logged) or hashed session ids
    since: str = ""  # ISO timestamp (UTC when no offset), inclusive
    until: str = ""  # ISO timestamp, exclusive


class AuditedErrorsConfig(dg.Config):
    auditor: str = ""  # must resolve to the auditor audit_candidates was selected for
    limit: int = 0  # audit at most this many candidates per run (0 = all)


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
    with session_scope(url) as s:
        rows = s.execute(select(AuditAttempt.interaction_id, AuditAttempt.status).where(
            AuditAttempt.auditor == auditor, AuditAttempt.prompt_version == prompt_version)).all()
    return pl.DataFrame([tuple(r) for r in rows], schema={"interaction_id": pl.String,
                                                          "status": pl.String}, orient="row")


def record_attempt(session, *, interaction_id: str, tenant_id: str, auditor: str,
                   prompt_version: str, status: str, is_error: bool | None,
                   reason: str | None) -> AuditAttempt:
    """Insert or update the (interaction, auditor, prompt version) attempt row."""
    row = session.scalar(select(AuditAttempt).where(
        AuditAttempt.interaction_id == interaction_id, AuditAttempt.auditor == auditor,
        AuditAttempt.prompt_version == prompt_version))
    if row is None:
        row = AuditAttempt(interaction_id=interaction_id, tenant_id=tenant_id, auditor=auditor,
                           prompt_version=prompt_version, status=status, is_error=is_error,
                           reason=reason, attempts=1, updated_at=utcnow())
        session.add(row)
    else:
        row.status, row.is_error, row.reason = status, is_error, reason
        row.attempts = (row.attempts or 0) + 1
        row.updated_at = utcnow()
    return row


def error_dedup_key(interaction_id: str, auditor: str, prompt_version: str) -> str:
    return f"{interaction_id}:{auditor}:{prompt_version}"


def parse_messages(value: str | None, interaction_id: str) -> list[dict[str, Any]]:
    if not value:
        return []
    try:
        out = json.loads(value)
    except json.JSONDecodeError as exc:
        raise ValueError(f"interaction {interaction_id}: messages column is not JSON: {exc}") from None
    if not isinstance(out, list):
        raise ValueError(f"interaction {interaction_id}: messages column is not a JSON list")
    return out


# ---- warehouse reads --------------------------------------------------------------------------------
_CANDIDATE_INPUT = ("interaction_id, tenant_id, session_id, ts, partition_date, feedback_thumbs, "
                    "feedback_rating, requested_human, corrected_response")


def read_interactions_for_selection(con) -> pl.DataFrame:
    warehouse.ensure_table(con, "interactions")
    warehouse.ensure_table(con, "interaction_quality")
    cols = ", ".join(f"i.{c.strip()}" for c in _CANDIDATE_INPUT.split(","))
    return query(
        con,
        f"SELECT {cols}, q.quality_score FROM interactions i "
        "LEFT JOIN interaction_quality q USING (interaction_id) ORDER BY i.ts, i.interaction_id"
    )


def read_full_interactions(con, ids: list[str]) -> pl.DataFrame:
    warehouse.ensure_table(con, "interactions")
    warehouse.ensure_table(con, "interaction_quality")
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
                     learnloop: LearnloopResource) -> dg.MaterializeResult:
    auditor = resolve_auditor(config.auditor)
    settings = learnloop.settings()
    url = learnloop.store()
    cfg = CandidateConfig(
        quality_threshold=config.quality_threshold, calibration_rate=config.calibration_rate,
        seed=config.seed, interaction_ids=tuple(config.interaction_ids),
        session_ids=tuple(config.session_ids), since=_parse_ts(config.since, "since"),
        until=_parse_ts(config.until, "until"),
    )
    aliases = {}
    if cfg.session_ids:
        from ml.ingest import hash_session

        key = settings.hash_key.get_secret_value().encode()
        aliases = {s: hash_session(key, s) for s in cfg.session_ids}
    attempts = attempts_frame(url, auditor.name, auditor.prompt_version)
    with learnloop.warehouse() as con:
        pool = read_interactions_for_selection(con)
        candidates = select_candidates(pool, attempts, auditor=auditor.name,
                                       prompt_version=auditor.prompt_version, config=cfg,
                                       session_aliases=aliases)
        replace_table(con, "audit_candidates", candidates)
    counts = reason_counts(candidates)
    context.log.info(f"{candidates.height} candidates of {pool.height} interactions for "
                     f"{auditor.name} {auditor.prompt_version}")
    return dg.MaterializeResult(metadata={
        "dagster/row_count": candidates.height,
        "interactions": pool.height,
        "candidate_rate": round(candidates.height / pool.height, 4) if pool.height else 0.0,
        "already_audited_ok": int((attempts["status"] == "ok").sum()) if attempts.height else 0,
        "manual": cfg.manual,
        "auditor": auditor.name,
        "prompt_version": auditor.prompt_version,
        "calibration_rate": config.calibration_rate,
        **{f"reason/{k}": v for k, v in counts.items()},
    })


def _demo_precision_recall(landing_root, con, auditor: str, prompt_version: str) -> dict[str, Any]:
    """Precision/recall of this auditor over everything it audited, against the demo
    generator's truth.jsonl files (demo data only; absent in production)."""
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
    return {
        "demo_only/precision": pr["precision"] if pr["precision"] is not None else 0.0,
        "demo_only/recall": pr["recall"] if pr["recall"] is not None else 0.0,
        "demo_only/f1": pr["f1"] if pr["f1"] is not None else 0.0,
        "demo_only/category_accuracy": pr["category_accuracy"] or 0.0,
        "demo_only/labelled_interactions": pr["n"],
        "demo_only/recall_by_mistake": dg.MetadataValue.json(pr["recall_by_mistake"]),
    }


@dg.asset(
    deps=["audit_candidates", "interaction_embeddings"],
    group_name="audit",
    kinds={"duckdb", "sqlite", "polars"},
    pool=WAREHOUSE_POOL,
    description="The Auditor's verdicts (category, severity, confidence, explanation, auditor, "
                "prompt version) in the warehouse; errors become `error` review items.",
)
def audited_errors(context: dg.AssetExecutionContext, config: AuditedErrorsConfig,
                   learnloop: LearnloopResource) -> dg.MaterializeResult:
    auditor = resolve_auditor(config.auditor)
    settings = learnloop.settings()
    url = learnloop.store()
    with learnloop.warehouse() as con:
        if not table_exists(con, "audit_candidates"):
            raise dg.Failure("audit_candidates has never been materialized; materialize it first")
        cands = query(con, "SELECT * FROM audit_candidates ORDER BY selected_at, interaction_id")
        other = cands.filter((pl.col("auditor") != auditor.name)
                             | (pl.col("prompt_version") != auditor.prompt_version))
        if other.height:
            first = other.row(0, named=True)
            raise dg.Failure(
                f"audit_candidates were selected for auditor {first['auditor']!r} prompt "
                f"{first['prompt_version']!r}, but audited_errors runs {auditor.name!r} "
                f"{auditor.prompt_version!r}; re-materialize audit_candidates with the same auditor")
        # a candidate audited OK since the selection (a concurrent run) is skipped
        done = attempts_frame(url, auditor.name, auditor.prompt_version)
        if done.height:
            ok = done.filter(pl.col("status") == "ok")["interaction_id"].to_list()
            cands = cands.filter(~pl.col("interaction_id").is_in(ok))
        if config.limit > 0:
            cands = cands.head(config.limit)
        frame = read_full_interactions(con, cands["interaction_id"].to_list())
    retried = int(cands["reasons"].list.contains("retry").sum()) if cands.height else 0
    relevance_computed = 0
    if isinstance(auditor, RulesAuditor) and frame.height:
        with learnloop.warehouse() as con:  # the population the consensus signals compare with
            auditor.reference = query(
                con, "SELECT tenant_id, user_message, response FROM interactions")
        db = embeddings.connect(settings.lancedb)
        rel = embeddings.read_relevance(db, frame["interaction_id"].to_list())
        frame = frame.join(rel, on="interaction_id", how="left")
        missing = frame.filter(pl.col("qa_relevance").is_null()
                               & pl.col("user_message").is_not_null()
                               & pl.col("response").is_not_null())
        if missing.height:  # not embedded yet: compute here rather than skip the signal
            relevance_computed = missing.height
            scores = embeddings.qa_relevance(missing["user_message"].to_list(),
                                             missing["response"].to_list())
            fill = missing.select("interaction_id").with_columns(
                pl.Series("_rel", scores, dtype=pl.Float64))
            frame = frame.join(fill, on="interaction_id", how="left").with_columns(
                pl.coalesce("qa_relevance", "_rel").alias("qa_relevance")).drop("_rel")

    context.log.info(f"auditing {frame.height} interactions with {auditor.name} "
                     f"{auditor.prompt_version}")
    outcome = auditor.audit_frame(frame)
    verdicts = outcome.verdicts
    with learnloop.warehouse() as con:
        upsert_rows(con, "audited_errors", verdicts, ["interaction_id", "auditor", "prompt_version"])

    rows_by_id = {r["interaction_id"]: r for r in frame.iter_rows(named=True)}
    created = 0
    with session_scope(url) as s:
        for v in verdicts.iter_rows(named=True):
            iid = v["interaction_id"]
            record_attempt(s, interaction_id=iid, tenant_id=v["tenant_id"], auditor=auditor.name,
                           prompt_version=auditor.prompt_version, status="ok",
                           is_error=v["is_error"], reason=None)
            if not v["is_error"]:
                continue
            src = rows_by_id[iid]
            _, new = create_item(
                s, kind="error", dedup_key=error_dedup_key(iid, auditor.name, auditor.prompt_version),
                actor=f"auditor:{auditor.name}"[:128], tenant_id=v["tenant_id"], interaction_id=iid,
                session_id=src.get("session_id"),
                messages=parse_messages(src.get("messages"), iid),
                original_response=src.get("response"), category=v["category"],
                severity=v["severity"], confidence=v["confidence"], explanation=v["explanation"],
                auditor=auditor.name, prompt_version=auditor.prompt_version,
                tags=[f"auditor:{auditor.name}"[:64]],
                extra={"signals": v["signals"], "answered_by": v["answered_by"],
                       "partition_date": str(v["partition_date"]) if v["partition_date"] else None},
            )
            created += int(new)
        for f in outcome.failures:
            record_attempt(s, interaction_id=f.interaction_id, tenant_id=f.tenant_id,
                           auditor=auditor.name, prompt_version=auditor.prompt_version,
                           status="failed", is_error=None, reason=f.reason[:4000])
    for f in outcome.failures[:20]:
        context.log.warning(f"audit of {f.interaction_id} failed (retried next run): {f.reason}")

    errors = verdicts.filter(pl.col("is_error")) if verdicts.height else verdicts
    by_category = dict(Counter(errors["category"].to_list())) if errors.height else {}
    by_severity = dict(Counter(errors["severity"].to_list())) if errors.height else {}
    llm_stats = auditor.router.stats.as_metadata() if hasattr(auditor, "router") else {}
    with learnloop.warehouse() as con:
        pr = _demo_precision_recall(settings.landing, con, auditor.name, auditor.prompt_version)
    return dg.MaterializeResult(metadata={
        "dagster/row_count": verdicts.height,
        "candidates": cands.height,
        "audited": verdicts.height,
        "errors": errors.height,
        "error_rate": round(errors.height / verdicts.height, 4) if verdicts.height else 0.0,
        "errors_by_category": dg.MetadataValue.json(by_category),
        "errors_by_severity": dg.MetadataValue.json(by_severity),
        "review_items_created": created,
        "failures": len(outcome.failures),
        "retried_items": retried,
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


# ---- jobs and schedules -----------------------------------------------------------------------------
audit_job = dg.define_asset_job(
    "audit_job",
    selection=dg.AssetSelection.assets("interaction_embeddings", "audit_candidates",
                                       "audited_errors"),
    description="Embed new interactions, select candidates, audit them with the configured auditor.",
)
manual_audit_job = dg.define_asset_job(
    "manual_audit_job",
    selection=dg.AssetSelection.assets("audit_candidates", "audited_errors"),
    description="Audit the interactions named in run config (interaction_ids, session_ids, "
                "since/until on ops.audit_candidates.config); see manual_audit_run_config().",
)
teaching_job = dg.define_asset_job(
    "teaching_job",
    selection=dg.AssetSelection.assets("teacher_samples", "preference_pairs"),
    description="Propose corrected replies for flagged errors and human corrections; rebuild "
                "preference pairs from approved samples.",
)
hourly_audit_schedule = dg.ScheduleDefinition(
    name="hourly_audit_schedule", job=audit_job, cron_schedule="0 * * * *",
    execution_timezone="UTC", description="Audit new interactions every hour.",
)
daily_teacher_schedule = dg.ScheduleDefinition(
    name="daily_teacher_schedule", job=teaching_job, cron_schedule="30 2 * * *",
    execution_timezone="UTC", description="Teacher samples and preference pairs once a day.",
)
