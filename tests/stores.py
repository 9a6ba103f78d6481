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
