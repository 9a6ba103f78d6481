"""Dagster resources. Values come from run config or from ``LEARNLOOP_*`` env vars read when the
resource is used (never at import time)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import dagster as dg
import duckdb

from ml.config import Settings


class LearnloopResource(dg.ConfigurableResource):
    """Where every store lives. Empty fields fall back to the ``LEARNLOOP_*`` environment."""

    home: str = ""
    store_url: str = ""
    warehouse_path: str = ""
    landing_dir: str = ""
    lancedb_uri: str = ""
    mlflow_tracking_uri: str = ""

    def settings(self) -> Settings:
        overrides = {k: v for k, v in {
            "home": self.home, "store_url": self.store_url, "warehouse_path": self.warehouse_path,
            "landing_dir": self.landing_dir, "lancedb_uri": self.lancedb_uri,
            "mlflow_tracking_uri": self.mlflow_tracking_uri,
        }.items() if v}
        s = Settings(**overrides)
        s.ensure_dirs()
        return s

    @contextmanager
    def warehouse(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection to the DuckDB warehouse (writers are serialized by the `warehouse` pool)."""
        con = duckdb.connect(str(self.settings().warehouse))
        try:
            yield con
        finally:
            con.close()

    def store(self) -> str:
        """The operational store URL, migrated to head."""
        from store.db import upgrade

        url = self.settings().store
        upgrade(url)
        return url


WAREHOUSE_POOL = "warehouse"
