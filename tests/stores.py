"""Store resources for tests: the four of ``assets.resources`` with the operational store
migrated first (the deploy step ``learnloop migrate`` does it for real)."""

from __future__ import annotations

from pathlib import Path

from assets.resources import store_resources
from store.db import upgrade


def resources_for(home: Path | str | None = None, **extra) -> dict:
    """Every store embedded under ``home`` (or where ``LEARNLOOP_*`` puts it when None), the
    operational store migrated to head, plus ``extra`` resources (e.g. ``dbt``)."""
    resources = store_resources(home)
    upgrade(resources["store"].get_url())
    return {**resources, **extra}


def warehouse_target(home: Path | str):
    """The warehouse of a test under ``home``: the DuckLake of LEARNLOOP_WAREHOUSE_URL when the
    test runs on one (``tests/lakes.py``), else ``home/warehouse.duckdb``."""
    from ml.config import Settings
    from ml.lake import Lake

    target = Settings().warehouse_target
    return target if isinstance(target, Lake) else Path(home) / "warehouse.duckdb"


def warehouse_connect(home: Path | str, read_only: bool = False):
    """A connection to the warehouse of a test under ``home`` (:func:`warehouse_target`)."""
    from ml.warehouse import connect

    return connect(warehouse_target(home), read_only=read_only)


def materialize(assets, home: Path | str, **kwargs):
    """``dg.materialize`` of ``assets``; without a ``partition_key``, a run that includes
    day-partitioned assets (the audit) covers the landing days of ``home``'s warehouse, as
    ``learnloop run`` does (``orchestration.runner.all_days_tags``)."""
    import dagster as dg

    from orchestration.runner import all_days_tags

    if "partition_key" not in kwargs and any(
            getattr(a, "partitions_def", None) is not None for a in assets):
        kwargs["tags"] = {**all_days_tags(target=warehouse_target(home)),
                          **(kwargs.get("tags") or {})}
    return dg.materialize(assets, **kwargs)
