"""Stage `datasets`: ``eval_suite`` (reviewer-approved corrections held out of every training set,
plus a retention set of good historical interactions) and ``training_dataset`` (an immutable,
content-hashed dataset version built from a spec, with its exports and blocking checks).

The work is done by ``ml.datasets`` (pure: build, exports, checks, eval-suite selection); these
assets read the operational store (approved samples, earlier versions, held-out items), the
warehouse (good historical interactions, preference pairs) and LanceDB (the MiniLM question
vectors), and record each version in the store's ``datasets`` / ``dataset_items`` tables. See
docs/datasets.md.
"""


from collections import Counter
from pathlib import Path
from typing import Any

import dagster as dg

from assets.catalog import with_metadata
from assets.resources import (
    WAREHOUSE_POOL,
    DatasetStoreResource,
    OperationalStoreResource,
    VectorStoreResource,
    WarehouseResource,
)
from ml import warehouse as wh
from store import datasets as store_ds

HUMAN_SOURCE = "human_agent"
OWNERS = ["team:ml-engineering"]


# ---- candidates from the stores ---------------------------------------------------------------
def session_key(tenant_id: str, session_id: str | None, interaction_id: str) -> str:
    """The conversation an example belongs to (never on both sides of a split); an interaction
    without a session is its own conversation."""
    return f"{tenant_id}/{session_id}" if session_id else f"{tenant_id}/interaction:{interaction_id}"


def sample_example(row: dict[str, Any]) -> dict[str, Any]:
    """An approved or edited sample item (``store.datasets.approved_sample_records``) as an
    example: its conversation and the reviewer's final reply (the proposed one for a human agent's
    correction not reviewed yet)."""
    completion = row.get("final_response") or row.get("proposed_response") or ""
    return {
        "key": f"sample:{row['id']}", "review_item_id": row["id"], "tenant_id": row["tenant_id"],
        "session_key": session_key(row["tenant_id"], row.get("session_id"),
                                   row["interaction_id"]),
        "interaction_id": row["interaction_id"], "messages": list(row.get("messages") or []),
        "completion": completion, "source": row.get("source") or "unknown",
        "category": row.get("category") or "uncategorized", "intent": row.get("intent"),
        "quality": row.get("quality"),
        "timestamp": row.get("interaction_at") or row.get("created_at"),
        "tags": list(row.get("tags") or []),
    }


def interaction_example(row: dict[str, Any], source: str = "replay:interaction") -> dict[str, Any]:
    """A good historical interaction (``ml.warehouse.read_good_interactions``) as an example: its
    conversation and the reply the user liked."""
    from ml.conversation import parse_messages

    messages = parse_messages(row.get("messages"), row["interaction_id"])
    if (not messages or messages[-1].get("role") != "user") and row.get("user_message"):
        messages = [*messages, {"role": "user", "content": row["user_message"]}]
    thumbs = row.get("feedback_thumbs")
    return {
        "key": f"interaction:{row['tenant_id']}/{row['interaction_id']}",
        "tenant_id": row["tenant_id"], "interaction_id": row["interaction_id"],
        "session_key": session_key(row["tenant_id"], row.get("session_id"),
                                   row["interaction_id"]),
        "messages": messages, "completion": row.get("response") or "", "source": source,
        "category": "uncategorized", "intent": row.get("intent"),
        "quality": row.get("quality_score"), "timestamp": row.get("ts"),
        "thumbs_up": None if thumbs is None else thumbs == "up",
    }


def flagged_interactions(session) -> list[tuple[str, str]]:
    """(tenant, interaction) of every error item not dismissed: never a "good" interaction."""
    from sqlalchemy import select

    from store.models import ReviewItem

    return [tuple(r) for r in session.execute(
        select(ReviewItem.tenant_id, ReviewItem.interaction_id).where(
            ReviewItem.kind == "error", ReviewItem.status != "dismissed")).all()]


def _relative_exports(exports: dict[str, Any]) -> dict[str, str]:
    return {k: str(v) for k, v in sorted(exports.items())}


def _folder(root: Path, kind: str, name: str, version_hash: str) -> Path:
    return root / kind / name / version_hash


def _write_once(context: dg.AssetExecutionContext, folder: Path, write) -> None:
    """Versions are immutable: ``write()`` the version's folder unless it exists and matches its
    manifest (a rebuild of the same version writes nothing)."""
    from ml.datasets.exports import verify_exports

    if folder.is_dir() and not verify_exports(folder):
        context.log.info(f"{folder.name[:12]} already written at {folder}")
    else:
        write()


def _pair_rows(con) -> list[dict[str, Any]]:
    """The warehouse's preference pairs as ``ml.datasets.exports.dpo_lines`` reads them (keyed by
    their sample item, the prompt from the dataset's example)."""
    if not wh.table_exists(con, "preference_pairs"):
        return []
    frame = wh.query(con, "SELECT sample_item_id, chosen, rejected, category FROM "
                          "preference_pairs ORDER BY sample_item_id")
    return [{"key": f"sample:{r['sample_item_id']}", "chosen": r["chosen"],
             "rejected": r["rejected"], "category": r["category"]}
            for r in frame.iter_rows(named=True)]


# ---- eval_suite --------------------------------------------------------------------------------
class EvalSuiteConfig(dg.Config):
    name: str = "default"
    size: int = 500  # evaluation items wanted (reviewer-approved corrections) ...
    max_share: float = 0.2  # ... but at most this share of the approved corrections available
    retention_size: int = 200  # good historical interactions for the forgetting check
    retention_min_quality: float = 0.8
    seed: int = 0


@dg.asset(
    deps=["teacher_samples", "interaction_quality"],
    group_name="datasets", owners=OWNERS,
    tags={"stage": "datasets", "store": "files", "contains": "conversation-text"},
    kinds={"sqlite", "duckdb", "json"},
    pool=WAREHOUSE_POOL,
    description="The evaluation suite: reviewer-approved corrections held out of every training "
                "set (500 by default when data allows, stratified by category; an item once "
                "held out stays out of every later training set) and a retention set of good "
                "historical interactions (thumbs-up, high quality) for the forgetting check. "
                "Versioned by content hash under $LEARNLOOP_HOME/datasets/eval_suite/.",
)
def eval_suite(context: dg.AssetExecutionContext, config: EvalSuiteConfig,
               store: OperationalStoreResource, warehouse: WarehouseResource,
               datasets: DatasetStoreResource) -> dg.MaterializeResult:
    from ml.datasets.eval_suite import EVAL_PATHS, select_eval_suite, write_eval_suite
    from ml.datasets.exports import dataset_checksum

    with store.session() as s:
        corrections = [sample_example(r) for r in store_ds.approved_sample_records(s)]
        previous = store_ds.latest_dataset(s, "eval_suite", config.name)
        prev_items = store_ds.dataset_items(s, previous.id) if previous is not None else []
        already_trained = store_ds.trained(s)
        flagged = flagged_interactions(s)
    with warehouse.get_connection() as con:
        good = wh.read_good_interactions(con, min_quality=config.retention_min_quality,
                                         exclude=flagged)
    history = [interaction_example(r) for r in good.iter_rows(named=True)]
    suite = select_eval_suite(
        corrections, history, previous_eval_keys=[i.item_key for i in prev_items
                                                  if i.split == "eval"],
        previous_retention_keys=[i.item_key for i in prev_items if i.split == "retention"],
        trained=already_trained, size=config.size, max_share=config.max_share,
        retention_size=config.retention_size,
        retention_min_quality=config.retention_min_quality, seed=config.seed)
    folder = _folder(datasets.root(), "eval_suite", config.name, suite.version_hash)
    _write_once(context, folder, lambda: write_eval_suite(suite, folder))
    categories = dict(Counter(e.category for e in suite.eval))
    with store.session() as s:
        ds, created = store_ds.record_dataset(
            s, kind="eval_suite", name=config.name, version_hash=suite.version_hash,
            items=suite.items(), parent_version=previous.version_hash if previous else None,
            spec=config.model_dump(), counts=suite.counts,
            stats={"category_counts": categories,
                   "retention_by_intent": dict(Counter(e.intent or "unknown"
                                                       for e in suite.retention))},
            exports=_relative_exports(EVAL_PATHS), path=str(folder),
            checksum=dataset_checksum(folder), n_eval=len(suite.eval),
            n_retention=len(suite.retention), created_by=f"dagster:{context.run.run_id}")
        ordinal = ds.version
    context.log.info(f"eval suite {config.name}@{ordinal} {suite.version_hash[:12]}: "
                     f"{len(suite.eval)} evaluation items, {len(suite.retention)} retention "
                     f"items ({'new version' if created else 'unchanged'})")
    return dg.MaterializeResult(metadata=with_metadata({
        "version": suite.version_hash, "ordinal": ordinal, "new_version": created,
        "eval_items": len(suite.eval), "retention_items": len(suite.retention),
        "eval_by_category": categories, "counts": suite.counts,
        "path": dg.MetadataValue.path(str(folder)),
        "parent_version": previous.version_hash if previous else "",
    }))


# ---- training_dataset ---------------------------------------------------------------------------
CHECK_NAMES = ("check_no_pii", "check_roles", "check_no_empty_turns", "check_token_limit",
               "check_no_leakage", "check_no_eval_items", "check_min_size",
               "check_category_balance")
CHECK_DOCS = {
    "check_no_pii": "No PII residue in any turn (ml.pii and Presidio's recognizers).",
    "check_roles": "Roles in a valid order: optional system, then user/assistant alternating "
                   "from user, ending with the assistant's reply.",
    "check_no_empty_turns": "No empty turn.",
    "check_token_limit": "Every example within max_tokens of the base model's tokenizer.",
    "check_no_leakage": "No train/validation leakage: no example or prompt on both sides, no "
                        "near-duplicate pair across the split.",
    "check_no_eval_items": "No evaluation-suite item (by key or prompt) inside.",
    "check_min_size": "At least min_size training examples.",
    "check_category_balance": "Category mix within the spec's caps and max_category_share.",
}
# ml.datasets.checks.run_checks names the held-out check after what it compares
_RUN_CHECK_NAMES = {"check_no_held_out": "check_no_eval_items"}


class TrainingDatasetConfig(dg.Config):
    """The dataset spec (docs/datasets.md): which samples, how they are de-duplicated, balanced,
    mixed with replay and split."""

    name: str = "default"
    date_from: str | None = None  # YYYY-MM-DD, on the interaction's time
    date_to: str | None = None
    quality_min: float | None = None
    quality_max: float | None = None
    categories: list[str] = []
    intents: list[str] = []
    sources: list[str] = []  # e.g. human_agent, retrieval, llm:* (a trailing * matches a prefix)
    tenants: list[str] = []
    include_tags: list[str] = []  # only samples with one of these tags (empty: all)
    exclude_tags: list[str] = ["exclude"]
    category_caps: dict[str, int] = {}
    default_cap: int | None = None
    max_category_share: float | None = 0.5
    replay_share: float = 0.2
    replay_min_quality: float = 0.8
    near_dup_threshold: float = 0.95
    validation_share: float = 0.2
    seed: int = 0
    min_size: int = 20
    max_tokens: int | None = 1024
    incremental: bool = False
    # a human agent's correction is a human-written label: in the dataset unless a reviewer
    # rejected it (False: only reviewer-approved samples)
    human_corrections_unreviewed: bool = True

    def spec(self):
        from ml.datasets.spec import DatasetSpec

        d = self.model_dump()
        d.pop("human_corrections_unreviewed")
        filters = {k: d.pop(k) for k in ("date_from", "date_to", "quality_min", "quality_max",
                                         "categories", "intents", "sources", "tenants")}
        return DatasetSpec.from_dict({**d, "filters": filters})


def training_dataset_check_specs() -> list[dg.AssetCheckSpec]:
    return [dg.AssetCheckSpec(name, asset="training_dataset", blocking=True,
                              description=CHECK_DOCS[name]) for name in CHECK_NAMES]


@dg.asset(
    deps=["eval_suite", "preference_pairs", "interaction_embeddings"],
    group_name="datasets", owners=OWNERS,
    tags={"stage": "datasets", "store": "files", "contains": "conversation-text"},
    kinds={"sqlite", "lancedb", "json"},
    pool=WAREHOUSE_POOL,
    check_specs=training_dataset_check_specs(),
    description="An immutable training dataset version from the spec (run config): approved "
                "and edited samples (the reviewer's text) and human corrections, exact and "
                "near-duplicate removal (LanceDB, MiniLM), category caps with k-means diversity "
                "sampling, replay of earlier good data, a session-grouped stratified split; "
                "exports (OpenAI, Gemini, Hugging Face, DPO) under "
                "$LEARNLOOP_HOME/datasets/training/; blocking checks.",
)
def training_dataset(context: dg.AssetExecutionContext, config: TrainingDatasetConfig,
                     store: OperationalStoreResource, warehouse: WarehouseResource,
                     vectors: VectorStoreResource,
                     datasets: DatasetStoreResource) -> dg.MaterializeResult:
    from ml.datasets.build import build_dataset, stored_vectors
    from ml.datasets.checks import run_checks
    from ml.datasets.exports import EXPORT_PATHS, dataset_checksum, write_exports
    from ml.datasets.tokens import resolve_tokenizer, token_counter
    from ml.llm.errors import ConfigError

    try:
        spec = config.spec()
    except ValueError as exc:
        raise ConfigError(f"training_dataset config: {exc}") from None
    with store.session() as s:
        approved = store_ds.approved_sample_records(s)
        human = store_ds.pending_human_corrections(s, HUMAN_SOURCE) \
            if config.human_corrections_unreviewed else []
        held = store_ds.held_out(s)
        parent = store_ds.latest_dataset(s, "training", spec.name)
        previous_keys = [i.item_key for i in store_ds.dataset_items(s, parent.id)] \
            if parent is not None else []
        flagged = flagged_interactions(s)
    candidates = [sample_example(r) for r in approved + human]
    with warehouse.get_connection() as con:
        good = wh.read_good_interactions(con, min_quality=spec.replay_min_quality,
                                         exclude=flagged)
        pairs = _pair_rows(con)
    pool = [interaction_example(r) for r in good.iter_rows(named=True)]
    if spec.incremental:  # earlier approved data comes back as replay only
        earlier = set(previous_keys)
        pool += [{**c, "source": "replay:approved"} for c in candidates if c["key"] in earlier]
    context.log.info(f"dataset {spec.name}: {len(candidates)} candidate samples "
                     f"({len(human)} unreviewed human corrections), {len(pool)} in the replay "
                     f"pool, {len(held.keys)} held-out evaluation items")

    base_model = datasets.get_base_model()
    tok = resolve_tokenizer(base_model, datasets.home())
    if base_model and tok.source != "base_model":
        raise ConfigError(f"LEARNLOOP_BASE_MODEL={base_model!r}: its tokenizer cannot be loaded "
                          f"offline ({'; '.join(tok.notes)}); set it to a local folder or a "
                          f"hub id already in the cache")
    vecs = stored_vectors(vectors.connect(), candidates + pool)
    build = build_dataset(candidates, pool, spec, held, vectors=vecs,
                          previous_keys=previous_keys, count_tokens=token_counter(tok.tokenizer))
    results = {_RUN_CHECK_NAMES.get(k, k): r
               for k, r in run_checks(build, held, tok.tokenizer).items()}
    if set(results) != set(CHECK_NAMES):  # every declared check gets its result
        raise RuntimeError(f"dataset checks ran {sorted(results)}, expected {list(CHECK_NAMES)}")
    failed = sorted(name for name, r in results.items() if not r.passed)

    folder = _folder(datasets.root(), "training", spec.name, build.version_hash)
    _write_once(context, folder, lambda: write_exports(build, folder, pairs))
    spec_record = {**spec.to_dict(),
                   "human_corrections_unreviewed": config.human_corrections_unreviewed}
    category_counts = dict(sorted(Counter(e.category for _, e in build.split_items()).items()))
    stats = {**build.stats, "category_counts": category_counts,
             "tokenizer": {"source": tok.source, "name": tok.name},
             "failed_checks": failed,
             "checks": {n: {"passed": r.passed, "description": r.description}
                        for n, r in sorted(results.items())}}
    with store.session() as s:
        ds, created = store_ds.record_dataset(
            s, kind="training", name=spec.name, version_hash=build.version_hash,
            items=build.items(), parent_version=parent.version_hash if parent else None,
            spec=spec_record, filters=spec.filters.to_dict(), counts=build.counts, stats=stats,
            exports=_relative_exports(EXPORT_PATHS), path=str(folder),
            checksum=dataset_checksum(folder), n_train=len(build.train),
            n_validation=len(build.validation),
            status="failed_checks" if failed else "ready",
            created_by=f"dagster:{context.run.run_id}")
        ordinal, status = ds.version, ds.status
    summary = (f"dataset {spec.name}@{ordinal} {build.version_hash[:12]}: train "
               f"{len(build.train)}, validation {len(build.validation)}, dropped "
               f"{len(build.dropped)} ({'new version' if created else 'unchanged'}, {status})")
    (context.log.warning if failed else context.log.info)(
        summary + (f"; failed checks: {', '.join(failed)}" if failed else ""))
    check_results = [
        dg.AssetCheckResult(check_name=name, passed=r.passed,
                            severity=dg.AssetCheckSeverity.ERROR,
                            metadata=with_metadata({"description": r.description, **r.metadata,
                                                    "examples": list(r.failures)[:5]}))
        for name, r in sorted(results.items()) if name in CHECK_NAMES]
    dropped_by_stage = dict(Counter(d.stage for d in build.dropped))
    return dg.MaterializeResult(
        metadata=with_metadata({
            "version": build.version_hash, "ordinal": ordinal, "new_version": created,
            "status": status, "dagster/row_count": len(build.train) + len(build.validation),
            "train": len(build.train), "validation": len(build.validation),
            "replay": build.counts.get("splits", {}).get("replay", 0),
            "dropped_by_stage": dropped_by_stage,
            "category_counts": category_counts,
            "category_mix": build.stats.get("category_mix", {}),
            "by_source": build.counts.get("by_source", {}),
            "counts": build.counts, "spec": spec_record,
            "parent_version": parent.version_hash if parent else "",
            "checksum": ds.checksum or "", "tokenizer": f"{tok.source}: {tok.name}",
            "path": dg.MetadataValue.path(str(folder)),
            "exports": _relative_exports(EXPORT_PATHS),
        }),
        check_results=check_results)
