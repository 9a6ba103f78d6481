"""Stage `teaching`: ``teacher_samples`` (proposed corrected replies as `sample` review items) and
``preference_pairs`` (original reply rejected, approved correction chosen).

Every LLM teacher attempt is recorded in the warehouse table ``teacher_attempts`` (failed with the
provider's reason, or ok), before the review items are written. A failed interaction gets no sample
item, so the next run proposes for it again (``retried`` in the metadata).

Each sample item gets its interaction's facts from the warehouse (``quality`` from
``interaction_quality.quality_score``, ``intent`` and ``interaction_at`` from ``interactions``) when
it is created; sample items whose three facts are all unknown (made before they were kept) are
backfilled in the same run (``store.samples.fill_sample_facts``: no version, no review event)."""

from collections import Counter
from datetime import UTC, datetime

import dagster as dg
import polars as pl

from assets.catalog import catalog, problems_result
from assets.resources import (
    WAREHOUSE_POOL,
    OperationalStoreResource,
    VectorStoreResource,
    WarehouseResource,
    warehouse_connections,
)
from ml import embeddings
from ml import warehouse as wh
from ml.audit.tables import preference_problems
from ml.audit.taxonomy import SEVERITIES
from ml.llm.errors import ConfigError
from ml.tables import TABLES
from ml.teacher import (
    TEACHER_ATTEMPTS_TABLE,
    RetrievalTeacher,
    TeachResult,
    attempt_rows,
    given_up_ids,
    propose_corrections,
    read_teacher_attempts,
    teacher_from_env,
    teacher_name,
)
from ml.teacher import items as teach
from ml.teacher.retrieval import DEFAULT_THRESHOLD, build_answer_index
from store import samples as store_samples
from store import teaching as store_teaching


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


@dg.asset(
    deps=["audited_errors", "interaction_embeddings"],
    **catalog("teacher_samples", "teaching"),
    kinds={"sqlite", "lancedb"},
    pool=WAREHOUSE_POOL,
    description="A proposed corrected reply (`sample` review item, parent = the error item) for "
                "each confirmed error and each pending error of at least the configured "
                "severity, plus every human agent correction. Sources: human_agent, retrieval "
                "(most similar approved answer, LanceDB), llm:<provider>. Each sample item "
                "keeps its interaction's quality score, intent and time (filters and statistics "
                "of samples); items that lack all three are backfilled from the warehouse.",
)
def teacher_samples(context: dg.AssetExecutionContext, config: TeacherSamplesConfig,
                    warehouse: WarehouseResource, store: OperationalStoreResource,
                    vectors: VectorStoreResource) -> dg.MaterializeResult:
    if config.min_severity_for_teacher not in SEVERITIES:
        raise ConfigError(f"teacher_samples.min_severity_for_teacher must be one of {SEVERITIES}, "
                          f"got {config.min_severity_for_teacher!r}")
    llm = teacher_from_env(config.teacher)
    with store.session() as s:  # errors that want a proposal and have none yet
        wanted = teach.errors_to_teach(store_teaching.open_errors(s),
                                       min_severity=config.min_severity_for_teacher,
                                       include_pending=config.include_pending, limit=config.limit)
        with_sample = store_teaching.interactions_with_sample(s)
        approved = store_teaching.approved_sample_rows(s)

    name = teacher_name(llm) if llm else None
    # one warehouse connection for the run with the offline teacher (see warehouse_connections)
    with warehouse_connections(warehouse, hold=llm is None) as wh_con:
        return _teach(context, config, llm, name, wanted, with_sample, approved, wh_con, store,
                      vectors)


def _teach(context: dg.AssetExecutionContext, config: TeacherSamplesConfig, llm, name,
           wanted: list[dict], with_sample: set, approved: list[dict], wh_con,
           store: OperationalStoreResource, vectors: VectorStoreResource
           ) -> dg.MaterializeResult:
    with wh_con() as con:
        corrections = wh.read_human_corrections(con)
        frame = wh.read_interactions(con, [(w["tenant_id"], w["interaction_id"]) for w in wanted])
        previous = read_teacher_attempts(con, name)
    # an interaction is (tenant_id, interaction_id): ids are per tenant
    by_key = {(r["tenant_id"], r["interaction_id"]): r for r in frame.iter_rows(named=True)}
    missing = [w["interaction_id"] for w in wanted
               if (w["tenant_id"], w["interaction_id"]) not in by_key]
    if missing:
        context.log.warning(f"{len(missing)} error items name interactions not in the warehouse "
                            f"(skipped): {missing[:5]}")
    rows = [{**by_key[k], **w, "original_response": by_key[k].get("response")}
            for w in wanted if (k := (w["tenant_id"], w["interaction_id"])) in by_key]

    db = vectors.connect()
    correction_keys = list(zip(corrections["tenant_id"].to_list(),
                               corrections["interaction_id"].to_list(), strict=True))
    correction_vectors = embeddings.read_question_vectors(db, correction_keys)
    index_size = build_answer_index(db, teach.answer_index_entries(approved, corrections),
                                    _by_unique_id(correction_vectors))
    with wh_con() as con:  # the indexed questions' intents (item 8.13)
        intents = wh.read_intents(con, [(a["tenant_id"], a["interaction_id"]) for a in approved]
                                  + correction_keys)
    retrieval = RetrievalTeacher(db, threshold=config.similarity_threshold,
                                 intents=_by_unique_id(intents))
    question_vectors = embeddings.read_question_vectors(
        db, [(r["tenant_id"], r["interaction_id"]) for r in rows])

    # the teacher's results are keyed by interaction id: one tenant at a time
    given_up: list[str] = []
    result = TeachResult()
    specs: list[dict] = []
    retried = recorded = 0
    for tenant in sorted({r["tenant_id"] for r in rows}):
        t_rows = [r for r in rows if r["tenant_id"] == tenant]
        t_previous = previous.filter(pl.col("tenant_id") == tenant) if previous.height \
            else previous
        if llm is not None and config.max_attempts > 0 and t_previous.height:
            # only request-specific failures count (ml.audit.failures): an outage never gives up
            exhausted = given_up_ids(t_previous, llm.prompt_version, config.max_attempts)
            given_up += [r["interaction_id"] for r in t_rows if r["interaction_id"] in exhausted]
            t_rows = [r for r in t_rows if r["interaction_id"] not in exhausted]
        t_result = propose_corrections(
            t_rows, retrieval=retrieval, llm=llm,
            vectors={i: v for (t, i), v in question_vectors.items() if t == tenant})
        earlier_failed = set(t_previous.filter(pl.col("status") == "failed")["interaction_id"]
                             .to_list()) if t_previous.height else set()
        retried += sum(1 for r in t_rows if r["interaction_id"] in earlier_failed)
        if llm is not None:  # failure reasons are durable before any item is written
            attempts = attempt_rows(t_rows, t_result, t_previous, teacher=name,
                                    prompt_version=llm.prompt_version,
                                    now=datetime.now(UTC).replace(tzinfo=None),
                                    run_id=context.run.run_id)
            with wh_con() as con:
                recorded += wh.upsert_rows(con, TEACHER_ATTEMPTS_TABLE, attempts)
        specs += teach.sample_item_specs(t_rows, t_result.proposals,
                                         prompt_version=llm.prompt_version if llm else None)
        result.merge(t_result, tenant)
    if given_up:
        context.log.warning(
            f"{len(given_up)} errors failed {config.max_attempts} teacher attempts "
            f"request-specifically (outages do not count) and are "
            f"given up (see {TEACHER_ATTEMPTS_TABLE}): {given_up[:5]}")

    with store.session() as s:
        # every human agent correction is a sample too (parent: an error item when there is one)
        human = teach.human_correction_specs(corrections, store_teaching.error_parents(s),
                                             skip=with_sample)
        # sample items from before their interaction's facts were kept (or made while the
        # warehouse lacked them): backfilled below
        missing = store_samples.samples_missing_facts(s)
    # the interaction's quality, intent and time go on each sample item (filters, statistics)
    fact_keys = {(sp["tenant_id"], sp["interaction_id"]) for sp in specs + human} | set(missing)
    with wh_con() as con:
        facts = wh.read_sample_facts(con, sorted(fact_keys))
    created: Counter[str] = Counter()
    with store.session() as s:
        for batch in (specs, human):
            for source, new in store_teaching.create_samples(
                    s, [store_samples.with_facts(sp, facts) for sp in batch]):
                created[source] += int(new)
        filled = store_samples.fill_sample_facts(s, {k: facts[k] for k in missing if k in facts})
    for iid, reason in list(result.failures.items())[:20]:
        context.log.warning(f"teacher failed for {iid} (recorded in {TEACHER_ATTEMPTS_TABLE}, "
                            f"retried next run): {reason}")
    llm_stats = llm.router.stats.as_metadata() if llm else {}
    with wh_con() as con:
        open_failures = int(read_teacher_attempts(con).filter(
            pl.col("status") == "failed").height)
    return dg.MaterializeResult(metadata={
        "dagster/row_count": sum(created.values()),
        "errors_needing_proposal": len(rows) - len(given_up),
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
        "sample_facts_backfilled": filled,
        "sample_facts_not_in_warehouse": sum(1 for k in missing if k not in facts),
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


def _by_unique_id(values: dict[tuple[str, str], object]) -> dict[str, object]:
    """Values keyed by (tenant_id, interaction_id) as the answer index takes them (by id): an
    id two tenants share is left out (its vector encoded again, its intent not compared), never
    the other tenant's value used."""
    counts = Counter(i for _, i in values)
    return {i: v for (_, i), v in values.items() if counts[i] == 1}


PREFERENCE_SCHEMA = TABLES["preference_pairs"].polars_schema()


@dg.asset(
    deps=["teacher_samples"],
    **catalog("preference_pairs", "teaching"),
    kinds={"duckdb", "sqlite"},
    pool=WAREHOUSE_POOL,
    description="Preference pairs for DPO: prompt/messages, rejected = the assistant's original "
                "reply, chosen = the approved or edited correction. Rebuilt from the store.",
)
def preference_pairs(context: dg.AssetExecutionContext, warehouse: WarehouseResource,
                     store: OperationalStoreResource) -> dg.MaterializeResult:
    with store.session() as s:
        pairs = teach.preference_frame(store_teaching.approved_sample_rows(s), PREFERENCE_SCHEMA)
    with warehouse.get_connection() as con:
        wh.replace_table(con, "preference_pairs", pairs)
    by_source = dict(Counter(pairs["source"].to_list())) if pairs.height else {}
    return dg.MaterializeResult(metadata={
        "dagster/row_count": pairs.height,
        "by_source": dg.MetadataValue.json(by_source),
        "edited": int((pairs["status"] == "edited").sum()) if pairs.height else 0,
        "tenants": pairs["tenant_id"].n_unique() if pairs.height else 0,
    })


# ---- checks -----------------------------------------------------------------------------------------
@dg.asset_check(asset=teacher_samples,
                description="Every sample item has a proposed reply and a known source, and every "
                            "teacher proposal names its parent error item.")
def check_samples_are_reviewable(store: OperationalStoreResource) -> dg.AssetCheckResult:
    with store.session() as s:
        problems = store_teaching.sample_problems(s, teach.HUMAN_SOURCE)
    return problems_result(problems)


@dg.asset_check(asset=preference_pairs, pool=WAREHOUSE_POOL,
                description="Every pair has a non-empty chosen and rejected reply that differ; "
                            "each sample item is in one pair at most.")
def check_pairs_differ(warehouse: WarehouseResource) -> dg.AssetCheckResult:
    with warehouse.get_connection() as con:
        return problems_result(preference_problems(con))
