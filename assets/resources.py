"""Dagster resources: one per store, each configurable on its own.

* ``warehouse``: :class:`WarehouseResource` (dagster-duckdb's ``DuckDBResource``), the DuckDB
  file or a DuckLake: its ``url`` field (a DuckLake), else its ``database`` field (a DuckDB
  file), else ``LEARNLOOP_WAREHOUSE_URL`` (a DuckLake, with ``LEARNLOOP_WAREHOUSE_DATA_PATH``),
  else ``LEARNLOOP_WAREHOUSE_PATH``, else ``$LEARNLOOP_HOME/warehouse.duckdb``.
* ``store``: :class:`OperationalStoreResource`, SQLite or PostgreSQL; empty ``url``:
  ``LEARNLOOP_STORE_URL``, else SQLite ``$LEARNLOOP_HOME/store.db``.
* ``vectors``: :class:`VectorStoreResource`, LanceDB; empty ``uri``: ``LEARNLOOP_LANCEDB_URI``,
  else ``$LEARNLOOP_HOME/lancedb``.
* ``landing_zone``: :class:`LandingZoneResource`, the landing files (a folder or a bucket
  prefix, ``ml.landing_store``); empty ``path``: ``LEARNLOOP_LANDING_URL``, else
  ``LEARNLOOP_LANDING_DIR``, else ``$LEARNLOOP_HOME/landing``.

Empty fields are resolved from the environment when the resource is *used*, never at import, so
the shipped definitions run the embedded default with no environment at all (``dg.EnvVar`` has no
default and fails a run when its variable is unset). A deployment binds what it wants, e.g.
``OperationalStoreResource(url=dg.EnvVar("STORE_URL"))``, or sets the fields in run config.
Secrets (the session hash key, API keys, passwords) are never fields, so they never show in run
config or the UI: the hash key is read by :func:`session_hash_key`.

The operational store is migrated at start-up or deploy (``learnloop migrate``, ``learnloop dev``
and every ``learnloop`` command), not by the resource: at the start of a run it only checks, with
one query, that the store is at the head revision, and fails the run naming the fix otherwise.

This module sits below the stage modules (``assets/<stage>.py``) and the sensors
(``orchestration/``), which both use it; it imports only dagster, ``ml`` and ``store``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb
from dagster_duckdb import DuckDBResource
from pydantic import Field, PrivateAttr
from sqlalchemy.orm import Session

from ml import warehouse as wh
from ml.config import Settings
from ml.lake import Lake, open_lake

WAREHOUSE_POOL = "warehouse"
"""The Dagster concurrency pool of every writer of the warehouse: a limit of 1 for the DuckDB
file (one writer at a time); a DuckLake takes concurrent writers, so a deployment on one raises
the limit (docs/deployment.md, "Warehouse on DuckLake")."""

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


def session_hash_key() -> bytes:
    """The key of the keyed hash applied to session ids (``LEARNLOOP_HASH_KEY``, read now)."""
    settings = Settings()
    warn_dev_hash_key_once(settings)
    return settings.hash_key.get_secret_value().encode()


class WarehouseResource(DuckDBResource):
    """The warehouse: a DuckDB file, or a DuckLake (module docstring: which one). File
    connections come from dagster-duckdb's ``get_connection`` (retried with backoff while another
    process holds the file's lock) and writers are serialized by the ``warehouse`` pool; lake
    connections attach the lake (``ml.lake.open_lake``) and take concurrent writers."""

    database: str = Field(
        default="", description="Path of the DuckDB file; empty: the url field, else "
                                "LEARNLOOP_WAREHOUSE_URL (a DuckLake), else "
                                "LEARNLOOP_WAREHOUSE_PATH, else $LEARNLOOP_HOME/warehouse.duckdb.")
    url: str = Field(
        default="", description="A DuckLake warehouse, 'ducklake:postgres:<connection string>' "
                                "(bind it with dg.EnvVar, and keep passwords out of it: "
                                "PGPASSWORD); empty: the database field or the environment.")
    data_path: str = Field(
        default="", description="The DuckLake's data files (folder or s3:// prefix); empty: "
                                "LEARNLOOP_WAREHOUSE_DATA_PATH.")

    def target(self) -> Path | Lake:
        """The warehouse to connect to: a :class:`~ml.lake.Lake`, or the DuckDB file's path."""
        if self.url:
            return Lake(self.url, self.data_path or Settings().warehouse_data_path or "")
        if self.database:
            return Path(self.database).expanduser().resolve()
        target = Settings().warehouse_target
        if isinstance(target, Lake) and self.data_path:
            return Lake(target.url, self.data_path)
        return target

    def is_lake(self) -> bool:
        return isinstance(self.target(), Lake)

    def _duckdb_config(self) -> dict:
        """The connection's DuckDB settings: LEARNLOOP_WAREHOUSE_MEMORY_LIMIT, then the
        resource's own ``connection_config`` (which wins)."""
        return {**Settings().warehouse_duckdb_config(), **self.connection_config}

    def describe(self) -> str:
        """The warehouse for logs and metadata (a lake's password redacted)."""
        return wh.describe(self.target())

    def path(self) -> Path:
        """The DuckDB file (its folder created). A DuckLake has none: :meth:`target`."""
        target = self.target()
        if isinstance(target, Lake):
            raise TypeError(f"the warehouse is the DuckLake {target}, not a DuckDB file: "
                            f"use WarehouseResource.target() / get_connection()")
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    @contextmanager
    def get_connection(self) -> Iterator[duckdb.DuckDBPyConnection]:
        target = self.target()
        if isinstance(target, Lake):
            con = open_lake(target, config=self._duckdb_config())
            try:
                yield con
            finally:
                con.close()
            return
        bound = DuckDBResource(database=str(self.path()), connection_config=self._duckdb_config())
        with bound.get_connection() as con:
            yield con

    def exists(self) -> bool:
        """Whether the warehouse exists (a reader has nothing to read before the first write):
        the DuckDB file, or the lake's catalog."""
        return wh.exists(self.target())

    @contextmanager
    def get_read_connection(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A read-only connection (DuckDB ``access_mode`` READ_ONLY; a lake attached
        READ_ONLY), retried like :meth:`get_connection` while a writer holds the file: for
        readers such as the A/B decision and the sensors. The warehouse must exist
        (:meth:`exists`)."""
        if not self.exists():
            raise FileNotFoundError(f"the warehouse {self.describe()} does not exist yet: "
                                    f"nothing has been ingested")
        target = self.target()
        if isinstance(target, Lake):
            con = open_lake(target, read_only=True, config=self._duckdb_config())
            try:
                yield con
            finally:
                con.close()
            return
        bound = DuckDBResource(database=str(target),
                               connection_config={**self._duckdb_config(),
                                                  "access_mode": "READ_ONLY"})
        with bound.get_connection() as con:
            yield con

    def dbt_env(self) -> dict[str, str]:
        """The environment that points dbt's profile (dbt_project/profiles.yml) at this
        warehouse: the lake's URL and data path, or empty ones for the DuckDB file (whose path
        goes in ``--vars``). Given to the dbt process only, never on its command line."""
        target = self.target()
        if isinstance(target, Lake):
            return {"LEARNLOOP_WAREHOUSE_URL": target.url,
                    "LEARNLOOP_WAREHOUSE_DATA_PATH": target.data_path}
        return {"LEARNLOOP_WAREHOUSE_URL": "", "LEARNLOOP_WAREHOUSE_DATA_PATH": ""}


class OperationalStoreResource(dg.ConfigurableResource):
    """The operational store (review items, reviews, attempts, datasets, runs, deployments):
    SQLite by default, PostgreSQL in production. Checks once per process that the store is at the
    head revision before the first session it hands out."""

    url: str = Field(default="", description="SQLAlchemy URL; empty: LEARNLOOP_STORE_URL, else "
                                             "SQLite $LEARNLOOP_HOME/store.db.")
    _checked: bool = PrivateAttr(default=False)

    def get_url(self) -> str:
        return self.url or Settings().store

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        from store.db import require_current

        require_current(self.get_url())
        self._checked = True

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A transaction: commit on success, roll back on error (``store.db.session_scope``)."""
        from store.db import require_current, session_scope

        url = self.get_url()
        if not self._checked:  # used outside a run (a script, a test calling it directly)
            require_current(url)
            self._checked = True
        with session_scope(url) as s:
            yield s


class VectorStoreResource(dg.ConfigurableResource):
    """The LanceDB vector store (MiniLM vectors of questions and approved replies)."""

    uri: str = Field(default="", description="LanceDB directory or URI; empty: "
                                             "LEARNLOOP_LANCEDB_URI, else $LEARNLOOP_HOME/lancedb.")

    def get_uri(self) -> str:
        return self.uri or Settings().lancedb

    def connect(self) -> Any:
        """A LanceDB connection (``lancedb.DBConnection``)."""
        from ml import embeddings

        return embeddings.connect(self.get_uri())


class LandingZoneResource(dg.ConfigurableResource):
    """The landing zone: ``date=YYYY-MM-DD`` folders of interaction log files, in a folder or
    under a prefix of an S3-compatible bucket (``ml.landing_store``)."""

    path: str = Field(default="", description="Folder of the landing zone, or s3://BUCKET/"
                                              "PREFIX; empty: LEARNLOOP_LANDING_URL, else "
                                              "LEARNLOOP_LANDING_DIR, else $LEARNLOOP_HOME/landing.")

    archive_path: str = Field(default="", description="Folder (or s3://BUCKET/PREFIX) of archived "
                                                      "landing files (`learnloop landing "
                                                      "archive`); empty: LEARNLOOP_ARCHIVE_URL / "
                                                      "LEARNLOOP_ARCHIVE_DIR, else "
                                                      "<landing prefix>/_archive on a bucket, "
                                                      "$LEARNLOOP_HOME/archive in a folder.")

    def store(self):
        """The landing zone (``ml.landing_store.LandingStore``); a local folder is created."""
        from ml.landing_store import open_landing

        store = open_landing(self.path) if self.path else Settings().landing_store
        if store.is_local:
            store.root.mkdir(parents=True, exist_ok=True)
        return store

    def archive_store(self):
        """The archive (not created: a landing zone that never archived has none)."""
        from ml.landing_store import archive_store, open_landing

        if self.archive_path:
            return open_landing(self.archive_path, "LEARNLOOP_ARCHIVE_URL")
        if self.path:
            landing = open_landing(self.path)
            return archive_store(landing, None if not landing.is_local else Settings().archive)
        return Settings().archive_store

    def root(self) -> Path | str:
        """The landing zone's folder, or its ``s3://`` URL on object storage (prefer
        ``store()``)."""
        store = self.store()
        return store.root if store.is_local else store.url

    def archive(self) -> Path | str:
        """The archive's folder, or its ``s3://`` URL (prefer ``archive_store()``)."""
        store = self.archive_store()
        return store.root if store.is_local else store.url


class DatasetStoreResource(dg.ConfigurableResource):
    """Where dataset versions and their exports are written, and the base model whose tokenizer
    bounds their examples."""

    path: str = Field(default="", description="Folder of dataset versions; empty: "
                                              "LEARNLOOP_DATASETS_DIR, else $LEARNLOOP_HOME/datasets.")
    base_model: str = Field(default="", description="Base model (local path or cached hub id); "
                                                    "empty: LEARNLOOP_BASE_MODEL, else the "
                                                    "offline base model.")

    def root(self) -> Path:
        root = Path(self.path).expanduser().resolve() if self.path else Settings().datasets
        root.mkdir(parents=True, exist_ok=True)
        return root

    def home(self) -> Path:
        return Settings().home

    def get_base_model(self) -> str | None:
        return self.base_model or Settings().base_model or None


class ModelRegistryResource(dg.ConfigurableResource):
    """The MLflow tracking store and model registry, the registered model's name, and where
    checkpoints live (the offline base model and each candidate's adapter and merged model)."""

    tracking_uri: str = Field(default="", description="MLflow tracking URI; empty: "
                                                      "LEARNLOOP_MLFLOW_TRACKING_URI, else "
                                                      "sqlite:///$LEARNLOOP_HOME/mlflow.db.")
    artifact_root: str = Field(default="", description="MLflow artifact folder; empty: "
                                                       "$LEARNLOOP_HOME/mlartifacts.")
    model_name: str = Field(default="", description="Registered model; empty: "
                                                    "LEARNLOOP_MODEL_NAME.")
    models_dir: str = Field(default="", description="Checkpoints folder; empty: "
                                                    "LEARNLOOP_MODELS_DIR, else $HOME/models.")
    base_model: str = Field(default="", description="Base model to fine-tune (local path or "
                                                    "cached hub id); empty: "
                                                    "LEARNLOOP_BASE_MODEL, else the offline "
                                                    "base model built under models_dir/base.")

    def settings(self) -> Settings:
        return Settings()

    def get_model_name(self) -> str:
        return self.model_name or Settings().model_name

    def root(self) -> Path:
        root = Path(self.models_dir).expanduser().resolve() if self.models_dir \
            else Settings().models
        root.mkdir(parents=True, exist_ok=True)
        return root

    def get_base_model(self) -> str | None:
        return self.base_model or Settings().base_model or None

    def registry(self):
        from ml.registry import Registry

        s = Settings()
        artifacts = Path(self.artifact_root).expanduser().resolve() if self.artifact_root \
            else s.mlflow_artifacts
        return Registry(self.tracking_uri or s.mlflow_uri, artifacts, self.get_model_name())


def store_resources(home: Path | str | None = None) -> dict[str, dg.ConfigurableResource]:
    """The four store resources under their keys. With ``home``, every store is embedded under
    that folder (as ``LEARNLOOP_HOME=home`` would place it), except a DuckLake warehouse named by
    ``LEARNLOOP_WAREHOUSE_URL``, which lives in no folder and is used as it is (how the test
    suites run on DuckLake); without, each reads the environment when used (the shipped
    definitions)."""
    if home is None:
        return {"warehouse": WarehouseResource(), "store": OperationalStoreResource(),
                "vectors": VectorStoreResource(), "landing_zone": LandingZoneResource(),
                "datasets": DatasetStoreResource(), "models": ModelRegistryResource()}
    s = Settings(home=Path(home), store_url=None, warehouse_path=None, landing_dir=None,
                 landing_url=None, archive_url=None, lancedb_uri=None, archive_dir=None, datasets_dir=None,
                 mlflow_tracking_uri=None, models_dir=None)  # the environment does not move them
    lake = isinstance(Settings().warehouse_target, Lake)
    return {"warehouse": WarehouseResource(database="" if lake else str(s.warehouse)),
            "store": OperationalStoreResource(url=s.store),
            "vectors": VectorStoreResource(uri=s.lancedb),
            "landing_zone": LandingZoneResource(path=str(s.landing),
                                                archive_path=str(s.archive)),
            "datasets": DatasetStoreResource(path=str(s.datasets)),
            "models": ModelRegistryResource(tracking_uri=s.mlflow_uri,
                                            artifact_root=str(s.mlflow_artifacts),
                                            models_dir=str(s.home / "models"))}


@contextmanager
def warehouse_connections(warehouse: WarehouseResource, *, hold: bool
                          ) -> Iterator[Callable[[], AbstractContextManager]]:
    """A factory of warehouse connections for one run: with ``hold``, every use gets the same
    connection, opened once (connect and close cost more than a batch of the offline stages'
    work) and closed at the end, on an exception too; without, each use opens its own (a run
    bound by LLM calls leaves the file to other readers between batches)."""
    with ExitStack() as stack:
        held = stack.enter_context(warehouse.get_connection()) if hold else None
        if held is not None:  # dagster-duckdb closes it on success only
            stack.callback(held.close)

        @contextmanager
        def use() -> Iterator:
            if held is not None:
                yield held
            else:
                with warehouse.get_connection() as con:
                    yield con

        yield use
