"""Dagster resources. Values come from run config or from ``LEARNLOOP_*`` env vars read when the
resource is used (never at import time)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import dagster as dg
import duckdb

from ml.config import Settings


_warned_dev_key = False


def warn_dev_hash_key_once(settings: Settings, emit=None) -> None:
    """Say once per process that session ids are hashed with the shipped development key:
    through ``emit(message)`` when given (the CLI, before its progress bar), else to the Dagster
    log of the run."""
    global _warned_dev_key
    if settings.uses_dev_hash_key and not _warned_dev_key:
        _warned_dev_key = True
        (emit or dg.get_dagster_logger().warning)(
            "LEARNLOOP_HASH_KEY is not set: session ids are hashed with the shipped development "
            "key. Set your own stable key before ingesting production logs (docs/configuration.md).")


class LearnloopResource(dg.ConfigurableResource):
    """Where every store lives. Empty fields fall back to the ``LEARNLOOP_*`` environment, read
    when the resource is used (not at import).

    The shipped definitions bind empty fields so the embedded default runs with no environment at
    all (``dg.EnvVar`` has no default and fails a run when its variable is unset). A deployment
    binds what it wants from its environment, e.g.
    ``LearnloopResource(home=dg.EnvVar("LEARNLOOP_HOME"), store_url=dg.EnvVar("STORE_URL"))``,
    or sets the fields in run config. Secrets (the hash key, API keys) are never fields, so they
    never show in run config or the UI.
    """

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
        warn_dev_hash_key_once(s)
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
