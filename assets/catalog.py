"""What the Dagster catalog shows of every asset: its group, owners, tags, and the column schema
and table name of the table it writes (from the registry ``ml.tables``), so the Python assets
show their columns in the UI as the dbt models do. Code references (the file and line of each
asset) are attached where the definitions are assembled (``orchestration/definitions.py``).

``@dg.asset(**catalog("audited_errors", "audit"), ...)`` applies it, and so does
``dg.AssetSpec("interactions", **catalog("interactions", "ingest"), ...)`` in a multi-asset.
"""

from __future__ import annotations

from typing import Any

import dagster as dg

from ml.tables import Table, primary_table

# who answers for each stage (Dagster owners: team:<name> or an e-mail address)
STAGE_OWNERS: dict[str, list[str]] = {
    "ingest": ["team:data-engineering"],
    "quality": ["team:data-engineering"],
    "analytics": ["team:data-engineering"],
    "audit": ["team:ml-engineering"],
    "teaching": ["team:ml-engineering"],
    "review": ["team:review-operations"],
    "datasets": ["team:ml-engineering"],
    "training": ["team:ml-engineering"],
    "evaluation": ["team:ml-engineering"],
    "deployment": ["team:ml-engineering"],
}

# where the asset's data lives (a tag, so the catalog can be filtered by store)
ASSET_STORES: dict[str, str] = {
    "raw_interactions": "duckdb", "interactions": "duckdb", "quarantined_interactions": "duckdb",
    "interaction_quality": "duckdb", "interaction_embeddings": "lancedb",
    "audit_candidates": "duckdb", "audited_errors": "duckdb", "teacher_samples": "operational",
    "preference_pairs": "duckdb", "review_decisions": "duckdb",
    # dataset versions: files under $LEARNLOOP_HOME/datasets, recorded in the operational store
    "eval_suite": "files", "training_dataset": "files",
    # checkpoints under $LEARNLOOP_HOME/models, versions in the MLflow registry
    "base_model": "files", "candidate_model": "files", "candidate_evaluation": "duckdb",
    # experiments and deployments in the operational store, aliases in the MLflow registry
    "ab_experiment": "operational", "model_deployment": "mlflow",
}

# assets whose rows hold conversation text (scrubbed of PII at ingest)
CONVERSATION_TEXT = {"interactions", "quarantined_interactions", "interaction_embeddings",
                     "teacher_samples", "preference_pairs", "eval_suite", "training_dataset"}


def column_schema(table: Table) -> dg.TableSchema:
    return dg.TableSchema(columns=[
        dg.TableColumn(name=c.name, type=c.type, description=c.description)
        for c in table.columns])


def table_metadata(asset: str) -> dict[str, Any]:
    """``dagster/column_schema`` and ``dagster/table_name`` of the table ``asset`` writes (none
    when it writes no table: ``teacher_samples`` writes review items)."""
    if asset == "interaction_embeddings":  # the LanceDB table
        from ml import embeddings

        return {"dagster/column_schema": dg.TableSchema(columns=[
            dg.TableColumn(name=f.name, type=str(f.type),
                           description=embeddings.EMBEDDING_COLUMN_DOCS.get(f.name, ""))
            for f in embeddings.embeddings_schema()]),
            "dagster/table_name": f"lancedb.{embeddings.EMBEDDINGS_TABLE}"}
    table = primary_table(asset)
    if table is None:
        return {}
    return {"dagster/column_schema": column_schema(table),
            "dagster/table_name": f"warehouse.main.{table.name}"}


def tags(asset: str, stage: str) -> dict[str, str]:
    out = {"stage": stage, "store": ASSET_STORES[asset]}
    if asset in CONVERSATION_TEXT:
        out["contains"] = "conversation-text"
    return out


def catalog(asset: str, stage: str) -> dict[str, Any]:
    """``group_name``, ``owners``, ``tags`` and ``metadata`` of ``@dg.asset`` for ``asset``."""
    return {"group_name": stage, "owners": STAGE_OWNERS[stage], "tags": tags(asset, stage),
            "metadata": table_metadata(asset)}


def problems_result(problems: dict[str, int]) -> dg.AssetCheckResult:
    """A check's result from problem -> rows with it: passed when every count is 0."""
    return dg.AssetCheckResult(passed=not any(problems.values()),
                               metadata={**problems, "problem_rows": sum(problems.values())})


def with_metadata(values: dict[str, Any]) -> dict[str, Any]:
    """Plain values as Dagster metadata (dicts and lists as JSON)."""
    return {k: dg.MetadataValue.json(v) if isinstance(v, (dict, list)) else v
            for k, v in values.items()}
