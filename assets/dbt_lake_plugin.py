"""The dbt-duckdb plugin of dbt_project/profiles.yml's ``lake`` output: before dbt-duckdb's own
ATTACH of the lake (which then finds it attached), it loads the DuckLake extensions offline from
their pip packages and attaches the lake named by ``LEARNLOOP_WAREHOUSE_URL`` and
``LEARNLOOP_WAREHOUSE_DATA_PATH`` (``ml.lake.attach``: errors with the password redacted), on a
connection whose automatic extension download is off.

It runs inside the dbt process (``plugins: [{module: assets.dbt_lake_plugin}]``), not in Dagster.
"""

from __future__ import annotations

import os
from typing import Any

from dbt.adapters.duckdb.plugins import BasePlugin

from ml.lake import ALIAS, OFFLINE_CONFIG, Lake, attach


def lake_from_environment() -> Lake:
    return Lake(os.environ.get("LEARNLOOP_WAREHOUSE_URL", ""),
                os.environ.get("LEARNLOOP_WAREHOUSE_DATA_PATH", ""))


class Plugin(BasePlugin):
    def update_connection_config(self, creds: Any, config: dict[str, Any]) -> None:
        config.update(OFFLINE_CONFIG)

    def configure_connection(self, conn: Any) -> None:
        attached = {r[0] for r in conn.execute(
            "SELECT database_name FROM duckdb_databases()").fetchall()}
        if ALIAS not in attached:
            attach(conn, lake_from_environment())
