"""Stage `teaching`: ``teacher_samples`` (proposed corrected replies as `sample` review items) and
``preference_pairs`` (original reply rejected, approved correction chosen).

Every LLM teacher attempt is recorded in the warehouse table ``teacher_attempts`` (failed with the
provider's reason, or ok), before the review items are written. A failed interaction gets no sample
item, so the next run proposes for it again (``retried`` in the metadata)."""


import json
import os
from collections import Counter
from datetime import datetime, timezone
from typing import Any

import dagster as dg
import polars as pl
from sqlalchemy import select

from assets.audit import read_full_interactions
from ml import embeddings
from ml import warehouse as wh
from ml.audit.llm import parse_messages
from ml.audit.tables import query, replace_table
from ml.audit.taxonomy import SEVERITIES, severity_at_least
from ml.llm import from_env
from ml.llm.errors import ConfigError
from ml.teacher import (
    HUMAN_SOURCE,
    TEACHER_ATTEMPT_COLUMNS,
    TEACHER_ATTEMPT_KEYS,
    TEACHER_ATTEMPTS_TABLE,
    LLMTeacher,
    RetrievalTeacher,
    attempt_rows,
    ensure_attempts_table,
    given_up_ids,
    propose_corrections,
)
from ml.teacher.retrieval import DEFAULT_THRESHOLD, build_answer_index
from assets.resources import (
    WAREHOUSE_POOL,
    OperationalStoreResource,
    VectorStoreResource,
    WarehouseResource,
)
from store.db import session_scope
from store.models import ReviewEvent, ReviewItem
from store.repo import approved_samples, create_item

ROLE = "teacher"


class TeacherSamplesConfig(dg.Config):
    min_severity_for_teacher: str = "medium"  # pending flagged errors at or above get a proposal
    include_pending: bool = True  # False: only errors a reviewer confirmed
    similarity_threshold: float = DEFAULT_THRESHOLD  # retrieval teacher: min cosine
    teacher: str = ""  # "" = LEARNLOOP_TEACHER; "retrieval" or an ml.llm kind list
    limit: int = 0  # at most this many errors per run (0 = all)
    # an error whose LLM proposal failed request-specifically this many times (same teacher and
    # prompt version; ml.audit.failures: 400/413/422, unusable reply, malformed row) is given up:
    # no more calls, listed in the metadata; 0 = retry forever. Failures during an outage (5xx,
    # 429, timeouts, breaker open, auth) are recorded but never counted: retried every run.
    max_attempts: int = 5


def resolve_teacher(override: str = "") -> LLMTeacher | None:
    env = dict(os.environ)
    if override.strip():
        env["LEARNLOOP_TEACHER"] = override.strip()
    router = from_env(ROLE, env)
    return LLMTeacher(router) if router is not None else None


def teacher_name(llm: LLMTeacher) -> str:
    """Stable identity of an LLM teacher: its providers and models, in order."""
    return "llm:" + ",".join(f"{p.name}/{getattr(p, 'model', '?')}" for p in llm.router.providers)


def read_teacher_attempts(con, teacher: str | None = None) -> pl.DataFrame:
    """``teacher_attempts`` rows (of one teacher when given); the table is created when missing
    and an older one gets the columns it lacks."""
    ensure_attempts_table(con)
    if teacher is None:
        return query(con, f"SELECT * FROM {TEACHER_ATTEMPTS_TABLE}")
    return query(con, f"SELECT * FROM {TEACHER_ATTEMPTS_TABLE} WHERE teacher = ?", [teacher])


NO_ERROR_FOUND_FINDING = "A reviewer marked this reply as wrong (the auditor had found no error)"


def teacher_finding(item: ReviewItem, note: str | None) -> str:
    """What the teacher is told is wrong with the reply of the error item ``item``.

    A flagged error: its category, severity and the auditor's explanation. An item without a
    category (a "no error found" calibration item a reviewer confirmed) must not hand the
    auditor's "no error found" text to the teacher: it says a reviewer found the reply wrong.
    A reviewer's decision ``note``, when there is one, is added either way."""
    if item.category:
        finding = f"{item.category} ({item.severity or 'severity not given'}): {item.explanation}"
    elif item.status == "confirmed":
        finding = NO_ERROR_FOUND_FINDING
    else:
        finding = "The reply was flagged for review; no specific error was named"
    if note and note.strip():
        finding += f". Reviewer's note: {note.strip()}"
    return finding


def decision_notes(session, item_ids: list[int]) -> dict[int, str]:
    """The note of the latest ``decide`` event of each item that has one."""
    if not item_ids:
        return {}
    rows = session.execute(select(ReviewEvent.item_id, ReviewEvent.note).where(
        ReviewEvent.item_id.in_(item_ids), ReviewEvent.action == "decide",
        ReviewEvent.note.is_not(None)).order_by(ReviewEvent.id)).all()
    return {item_id: note for item_id, note in rows}  # later events overwrite earlier ones


def sample_dedup_key(interaction_id: str) -> str:
    """One proposed sample per interaction, whoever proposed it (human, retrieval, LLM)."""
    return f"{interaction_id}:sample"


def _last_user(messages: list[dict[str, Any]] | None) -> str | None:
    for m in reversed(messages or []):
        if isinstance(m, dict) and m.get("role") == "user" and m.get("content"):
            return str(m["content"])
    return None


def answer_index_entries(url: str, corrections: pl.DataFrame) -> pl.DataFrame:
    """Approved/edited sample items and human corrections as (question, answer) entries."""
    rows = []
    with session_scope(url) as s:
        for item in approved_samples(s):
            q, a = _last_user(item.messages), item.final_response
            if q and q.strip() and a and a.strip():
                rows.append({"interaction_id": item.interaction_id, "tenant_id": item.tenant_id,
                             "question": q, "answer": a, "origin": "sample_item",
                             "item_id": item.id})
    for r in corrections.iter_rows(named=True):
        q, a = r.get("user_message"), r.get("corrected_response")
        if q and q.strip() and a and a.strip():
            rows.append({"interaction_id": r["interaction_id"], "tenant_id": r["tenant_id"],
                         "question": q, "answer": a, "origin": "human_correction",
                         "item_id": None})
    return pl.DataFrame(rows, schema={"interaction_id": pl.String, "tenant_id": pl.String,
                                      "question": pl.String, "answer": pl.String,
                                      "origin": pl.String, "item_id": pl.Int64})


@dg.asset(
    deps=["audited_errors", "interaction_embeddings"],
    group_name="teaching",
    kinds={"sqlite", "lancedb"},
    pool=WAREHOUSE_POOL,
    description="A proposed corrected reply (`sample` review item, parent = the error item) for "
                "each confirmed error and each pending error of at least the configured "
                "severity, plus every human agent correction. Sources: human_agent, retrieval "
                "(most similar approved answer, LanceDB), llm:<provider>.",
)
def teacher_samples(context: dg.AssetExecutionContext, config: TeacherSamplesConfig,
                    warehouse: WarehouseResource, store: OperationalStoreResource,
                    vectors: VectorStoreResource) -> dg.MaterializeResult:
    if config.min_severity_for_teacher not in SEVERITIES:
        raise ConfigError(f"teacher_samples.min_severity_for_teacher must be one of {SEVERITIES}, "
                          f"got {config.min_severity_for_teacher!r}")
    url = store.get_url()
    llm = resolve_teacher(config.teacher)

    # errors that want a proposal and have none yet
    with session_scope(url) as s:
        have = set(s.scalars(select(ReviewItem.dedup_key).where(ReviewItem.kind == "sample")))
        errors = list(s.scalars(select(ReviewItem).where(
            ReviewItem.kind == "error", ReviewItem.status.in_(("pending", "confirmed")))
            .order_by(ReviewItem.id)))
        notes = decision_notes(s, [e.id for e in errors if e.status == "confirmed"])
        wanted = []
        for e in errors:
            if sample_dedup_key(e.interaction_id) in have:
                continue
            if e.status == "confirmed" or (config.include_pending and severity_at_least(
                    e.severity, config.min_severity_for_teacher)):
                wanted.append({"error_id": e.id, "interaction_id": e.interaction_id,
                               "tenant_id": e.tenant_id, "category": e.category,
                               "severity": e.severity, "status": e.status,
                               "finding": teacher_finding(e, notes.get(e.id))})
    # one proposal per interaction: the first error item (lowest id) is the parent
    seen: set[str] = set()
    wanted = [w for w in wanted if not (w["interaction_id"] in seen or seen.add(w["interaction_id"]))]
    if config.limit > 0:
        wanted = wanted[: config.limit]

    name = teacher_name(llm) if llm else None
    with warehouse.get_connection() as con:
        wh.ensure_table(con, "interactions")
        corrections = query(
            con,
            "SELECT * FROM interactions WHERE corrected_response IS NOT NULL "
            "ORDER BY ts, interaction_id")
        frame = read_full_interactions(con, [w["interaction_id"] for w in wanted])
        previous = read_teacher_attempts(con, name) if llm else read_teacher_attempts(con)
    by_id = {r["interaction_id"]: r for r in frame.iter_rows(named=True)}
    missing = [w["interaction_id"] for w in wanted if w["interaction_id"] not in by_id]
    if missing:
        context.log.warning(f"{len(missing)} error items name interactions not in the warehouse "
                            f"(skipped): {missing[:5]}")
    rows = [{**by_id[w["interaction_id"]], **w, "original_response":
             by_id[w["interaction_id"]].get("response")} for w in wanted if w["interaction_id"] in by_id]

    given_up: list[str] = []
    if llm is not None and config.max_attempts > 0 and previous.height:
        # only request-specific failures count (ml.audit.failures): an outage never gives up
        exhausted = given_up_ids(previous, llm.prompt_version, config.max_attempts)
        given_up = [r["interaction_id"] for r in rows if r["interaction_id"] in exhausted]
        rows = [r for r in rows if r["interaction_id"] not in exhausted]
        if given_up:
            context.log.warning(
                f"{len(given_up)} errors failed {config.max_attempts} teacher attempts "
                f"request-specifically (outages do not count) and are "
                f"given up (see {TEACHER_ATTEMPTS_TABLE}): {given_up[:5]}")

    db = vectors.connect()
    index_size = build_answer_index(db, answer_index_entries(url, corrections),
                                    embeddings.read_question_vectors(
                                        db, corrections["interaction_id"].to_list()))
    retrieval = RetrievalTeacher(db, threshold=config.similarity_threshold)
    vectors = embeddings.read_question_vectors(db, [r["interaction_id"] for r in rows])
    result = propose_corrections(rows, retrieval=retrieval, llm=llm, vectors=vectors)
    earlier_failed = set(previous.filter(pl.col("status") == "failed")["interaction_id"].to_list()) \
        if previous.height else set()
    retried = sum(1 for r in rows if r["interaction_id"] in earlier_failed)
    recorded = 0
    if llm is not None:  # failure reasons are durable before any item is written
        attempts = attempt_rows(rows, result, previous, teacher=name,
                                prompt_version=llm.prompt_version,
                                now=datetime.now(timezone.utc).replace(tzinfo=None),
                                run_id=context.run.run_id)
        with warehouse.get_connection() as con:
            recorded = wh.upsert_rows(con, TEACHER_ATTEMPTS_TABLE, attempts,
                                             TEACHER_ATTEMPT_KEYS, TEACHER_ATTEMPT_COLUMNS)

    created: Counter[str] = Counter()
    with session_scope(url) as s:
        for r in rows:
            p = result.proposals.get(r["interaction_id"])
            if p is None:
                continue
            _, new = create_item(
                s, kind="sample", dedup_key=sample_dedup_key(r["interaction_id"]),
                actor=f"teacher:{p.source}"[:128], tenant_id=r["tenant_id"],
                interaction_id=r["interaction_id"], session_id=r.get("session_id"),
                parent_id=r["error_id"], messages=parse_messages(r.get("messages"), r["interaction_id"]),
                original_response=r.get("response"), proposed_response=p.response,
                source=p.source[:64], category=r["category"], severity=r["severity"],
                tags=[f"source:{p.source}"[:64]],
                extra={**p.extra, "error_status": r["status"],
                       "teacher_prompt_version": llm.prompt_version if llm else None},
            )
            created[p.source] += int(new)
        # every human agent correction is a sample too (parent: an error item when there is one)
        parents = dict(s.execute(select(ReviewItem.interaction_id, ReviewItem.id).where(
            ReviewItem.kind == "error").order_by(ReviewItem.id.desc())).all())
        for r in corrections.iter_rows(named=True):
            key = sample_dedup_key(r["interaction_id"])
            if key in have:
                continue
            _, new = create_item(
                s, kind="sample", dedup_key=key, actor="teacher:human_agent",
                tenant_id=r["tenant_id"], interaction_id=r["interaction_id"],
                session_id=r.get("session_id"), parent_id=parents.get(r["interaction_id"]),
                messages=parse_messages(r.get("messages"), r["interaction_id"]),
                original_response=r.get("response"), proposed_response=r["corrected_response"],
                source=HUMAN_SOURCE, category=r.get("correction_category"),
                tags=[f"source:{HUMAN_SOURCE}"],
                extra={"agent_id": r.get("correction_agent_id"),
                       "reason": r.get("correction_reason")},
            )
            created[HUMAN_SOURCE] += int(new)
    for iid, reason in list(result.failures.items())[:20]:
        context.log.warning(f"teacher failed for {iid} (recorded in {TEACHER_ATTEMPTS_TABLE}, "
                            f"retried next run): {reason}")
    llm_stats = llm.router.stats.as_metadata() if llm else {}
    with warehouse.get_connection() as con:
        open_failures = int(read_teacher_attempts(con).filter(
            pl.col("status") == "failed").height)
    return dg.MaterializeResult(metadata={
        "dagster/row_count": sum(created.values()),
        "errors_needing_proposal": len(rows),
        "proposals": len(result.proposals),
        "no_similar_answer": len(result.no_proposal),
        "failures": len(result.failures),
        "retried": retried,
        "given_up": len(given_up),
        "given_up_ids": dg.MetadataValue.json(given_up[:50]),
        "max_attempts": config.max_attempts,
        "attempts_recorded": recorded,
        "failed_attempts_open": open_failures,
        "samples_created": sum(created.values()),
        "samples_by_source": dg.MetadataValue.json(dict(created)),
        "human_corrections_seen": corrections.height,
        "answer_index_size": index_size,
        "similarity_threshold": config.similarity_threshold,
        "teacher": name if llm else "retrieval",
        "teacher_prompt_version": llm.prompt_version if llm else "retrieval-v1",
        "tokens": int(llm_stats.get("llm_tokens", 0)),
        "cost_usd": float(llm_stats.get("llm_cost_usd", 0.0)),
        "cache_hits": int(llm_stats.get("llm_cache_hits", 0)),
        "retries": int(llm_stats.get("llm_retries", 0)),
    })


def preference_frame(url: str) -> pl.DataFrame:
    """Preference pairs from approved/edited sample items: chosen = final reply, rejected =
    original reply (pairs where they are equal or either is empty are left out)."""
    rows = []
    with session_scope(url) as s:
        for item in approved_samples(s):
            chosen, rejected = item.final_response, item.original_response
            if not chosen or not chosen.strip() or rejected is None or \
                    chosen.strip() == rejected.strip():
                continue
            rows.append({
                "sample_item_id": item.id, "error_item_id": item.parent_id,
                "interaction_id": item.interaction_id, "tenant_id": item.tenant_id,
                "prompt": _last_user(item.messages),
                "messages": json.dumps(item.messages or [], ensure_ascii=False),
                "chosen": chosen, "rejected": rejected, "source": item.source,
                "status": item.status, "category": item.category, "decided_by": item.decided_by,
                "decided_at": item.decided_at.replace(tzinfo=None) if item.decided_at else None,
            })
    schema = {"sample_item_id": pl.Int64, "error_item_id": pl.Int64, "interaction_id": pl.String,
              "tenant_id": pl.String, "prompt": pl.String, "messages": pl.String,
              "chosen": pl.String, "rejected": pl.String, "source": pl.String,
              "status": pl.String, "category": pl.String, "decided_by": pl.String,
              "decided_at": pl.Datetime("us")}
    return pl.DataFrame(rows, schema=schema)


@dg.asset(
    deps=["teacher_samples"],
    group_name="teaching",
    kinds={"duckdb", "sqlite"},
    pool=WAREHOUSE_POOL,
    description="Preference pairs for DPO: prompt/messages, rejected = the assistant's original "
                "reply, chosen = the approved or edited correction. Rebuilt from the store.",
)
def preference_pairs(context: dg.AssetExecutionContext, warehouse: WarehouseResource,
                     store: OperationalStoreResource) -> dg.MaterializeResult:
    pairs = preference_frame(store.get_url())
    with warehouse.get_connection() as con:
        replace_table(con, "preference_pairs", pairs)
    by_source = dict(Counter(pairs["source"].to_list())) if pairs.height else {}
    return dg.MaterializeResult(metadata={
        "dagster/row_count": pairs.height,
        "by_source": dg.MetadataValue.json(by_source),
        "edited": int((pairs["status"] == "edited").sum()) if pairs.height else 0,
        "tenants": pairs["tenant_id"].n_unique() if pairs.height else 0,
    })
