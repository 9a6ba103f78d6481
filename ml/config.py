"""One settings object for learnloop.

Every store location and service URL comes from here. Values are read from environment variables
prefixed ``LEARNLOOP_`` when ``Settings()`` is *instantiated* (never at import time), so tests and
Dagster resources can build their own instances. See docs/configuration.md.
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEV_HASH_KEY = "learnloop-dev-key-change-me"

_MEMORY = re.compile(r"\d+(?:\.\d+)?\s*(?:[KMGT]i?B)", re.IGNORECASE)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LEARNLOOP_", extra="ignore")

    home: Path = Field(default=Path(".learnloop"), description="Root of every embedded store.")
    landing_dir: Path | None = Field(default=None, description="Landing zone; default $HOME/landing.")
    landing_url: str | None = Field(
        default=None,
        description="The landing zone on S3-compatible object storage instead of a folder: "
                    "s3://BUCKET/PREFIX (credentials, region and endpoint from the standard "
                    "AWS_* variables). Excludes LEARNLOOP_LANDING_DIR.")
    archive_url: str | None = Field(
        default=None,
        description="Archived landing files on object storage: s3://BUCKET/PREFIX; default "
                    "with LEARNLOOP_LANDING_URL: <its prefix>/_archive (of the same bucket).")
    warehouse_path: Path | None = Field(default=None, description="DuckDB warehouse file.")
    warehouse_url: SecretStr | None = Field(
        default=None,
        description="A DuckLake warehouse instead of the DuckDB file: 'ducklake:postgres:<libpq "
                    "connection string>' (several writers), e.g. 'ducklake:postgres:dbname=lake "
                    "host=pg user=learnloop'; with LEARNLOOP_WAREHOUSE_DATA_PATH. Prefer "
                    "PGPASSWORD or ~/.pgpass to a password in the URL (it is redacted anyway).")
    warehouse_data_path: str | None = Field(
        default=None,
        description="Where a DuckLake warehouse keeps its Parquet files: a folder every writer "
                    "sees, or an object-storage prefix (s3://bucket/lake/).")
    warehouse_memory_limit: str | None = Field(
        default=None,
        description="DuckDB's memory_limit on every warehouse connection, e.g. 4GB or 3GiB. "
                    "DuckDB keeps the blocks it has read cached up to this limit (the audit's "
                    "reads leave the day's tables in memory); default DuckDB's own: 80% of the "
                    "RAM, or of the container's memory limit. Set it in a run pod that also "
                    "holds a model.")
    store_url: str | None = Field(
        default=None, description="SQLAlchemy URL of the operational store; default SQLite in home."
    )
    lancedb_uri: str | None = Field(default=None, description="LanceDB directory or URI.")
    mlflow_tracking_uri: str | None = Field(default=None, description="MLflow tracking URI.")
    dagster_home: Path | None = Field(default=None, description="Dagster instance directory.")
    archive_dir: Path | None = Field(
        default=None, description="Archived landing files (`learnloop landing archive`); default "
                                  "$HOME/archive.")
    dbt_dir: Path | None = Field(
        default=None, description="dbt's generated files (target/: manifest, run artifacts and "
                                  "logs); default $HOME/dbt.")
    datasets_dir: Path | None = Field(
        default=None, description="Dataset versions and their exports (one folder per version); "
                                  "default $HOME/datasets.")
    base_model: str | None = Field(
        default=None, description="The base model to fine-tune: a local path or a hub id already "
                                  "in the local cache (never downloaded unless named here); its "
                                  "tokenizer bounds the dataset's examples. Default: the offline "
                                  "base model under $HOME/models/base.")
    model_name: str = Field(
        default="learnloop-assistant", min_length=1, max_length=200,
        description="The registered model (MLflow registry) of this assistant: every candidate "
                    "is a new version of it; the aliases champion/challenger point into it.")
    models_dir: Path | None = Field(
        default=None, description="Model checkpoints: the offline base model (base/) and each "
                                  "candidate's adapter and merged model; default $HOME/models.")
    gate_min_margin: float = Field(
        default=0.01, ge=0.0, le=1.0,
        description="Quality gate: the candidate's ROUGE-L on the evaluation suite must beat the "
                    "champion's by at least this much (absolute).")
    gate_max_retention_drop: float = Field(
        default=0.02, ge=0.0, le=1.0,
        description="Quality gate: the candidate's retention-set ROUGE-L may be at most this "
                    "fraction below the champion's (relative drop; 0.02 = 2%).")
    gate_max_refusal_regression: float = Field(
        default=0.0, ge=0.0, le=1.0,
        description="Quality gate: how much lower than the champion's the candidate's refusal "
                    "rate on the must-refuse prompts may be (0 = no regression allowed).")
    dataset_min_new_approved: int = Field(
        default=200, ge=1, description="The dataset sensor builds a new dataset version when at "
                                       "least this many samples were approved since the last one.")
    hash_key: SecretStr = Field(
        default=SecretStr(DEV_HASH_KEY),
        description="Key of the keyed hash (HMAC-SHA256) applied to session ids.",
    )
    service_url: str = Field(
        default="http://127.0.0.1:8000",
        description="Where the review service and collector listen (`learnloop serve` binds its "
                    "host and port unless --host/--port are given).",
    )

    @field_validator("home", mode="after")
    @classmethod
    def _absolute_home(cls, v: Path) -> Path:
        return v.expanduser().resolve()

    @field_validator("warehouse_memory_limit", mode="after")
    @classmethod
    def _memory_limit(cls, v: str | None) -> str | None:
        if v is None or not v.strip():
            return None
        if not _MEMORY.fullmatch(v.strip()):
            raise ValueError(f"LEARNLOOP_WAREHOUSE_MEMORY_LIMIT={v!r} is not a memory size: a "
                             "number and a unit of KB, MB, GB, TB, KiB, MiB, GiB or TiB (4GB)")
        return v.strip()

    @field_validator("landing_url", "archive_url", mode="after")
    @classmethod
    def _object_url(cls, v: str | None, info) -> str | None:
        if v is None or not v.strip():
            return None
        from ml.landing_store import parse_url

        parse_url(v, f"LEARNLOOP_{info.field_name.upper()}")  # a clear error for a bad URL
        return v.strip()

    @model_validator(mode="after")
    def _one_landing_zone(self) -> Settings:
        if self.landing_url and self.landing_dir is not None:
            raise ValueError("set LEARNLOOP_LANDING_URL (a bucket) or LEARNLOOP_LANDING_DIR (a "
                             "folder) for the landing zone, not both")
        if self.archive_url and not self.landing_url:
            raise ValueError("LEARNLOOP_ARCHIVE_URL needs LEARNLOOP_LANDING_URL (a landing zone "
                             "in a folder archives to LEARNLOOP_ARCHIVE_DIR)")
        if self.landing_url and self.archive_dir is not None:
            raise ValueError("the landing zone is on object storage (LEARNLOOP_LANDING_URL): "
                             "archive it there too (LEARNLOOP_ARCHIVE_URL, default "
                             "<landing prefix>/_archive), not to LEARNLOOP_ARCHIVE_DIR")
        return self

    @field_validator("service_url", mode="after")
    @classmethod
    def _service_url(cls, v: str) -> str:
        from urllib.parse import urlsplit

        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"LEARNLOOP_SERVICE_URL must be an http(s) URL with a host, got {v!r}")
        return v

    @property
    def service_bind(self) -> tuple[str, int]:
        """(host, port) from ``service_url`` (port 80/443 by scheme when the URL names none)."""
        from urllib.parse import urlsplit

        parts = urlsplit(self.service_url)
        return parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)

    @property
    def uses_dev_hash_key(self) -> bool:
        """True while session ids are hashed with the shipped development key."""
        return self.hash_key.get_secret_value() == DEV_HASH_KEY

    # ---- derived locations -------------------------------------------------------------------
    @property
    def landing(self) -> Path:
        """The landing zone's folder; a ``LandingConfigError`` when it is on object storage
        (``LEARNLOOP_LANDING_URL``): use ``landing_store``, which is either."""
        if self.landing_url:
            from ml.landing_store import LandingConfigError

            raise LandingConfigError(
                f"the landing zone is on object storage (LEARNLOOP_LANDING_URL="
                f"{self.landing_url}), not in a folder: this needs a local folder (e.g. "
                f"`learnloop generate --out DIR`, then copy it to the bucket)")
        return (self.landing_dir or self.home / "landing").expanduser().resolve()

    @property
    def landing_store(self):
        """The landing zone (``ml.landing_store.LandingStore``): the bucket prefix of
        ``LEARNLOOP_LANDING_URL``, else the folder ``landing``."""
        from ml.landing_store import LocalLandingStore, ObjectLandingStore

        if self.landing_url:
            return ObjectLandingStore.from_url(self.landing_url)
        return LocalLandingStore(self.landing)

    @property
    def archive_store(self):
        """Where archived landing files go: ``LEARNLOOP_ARCHIVE_URL`` or ``<landing
        prefix>/_archive`` with a landing zone on object storage, else the folder ``archive``."""
        from ml.landing_store import LocalLandingStore, ObjectLandingStore

        if self.landing_url:
            if self.archive_url:
                return ObjectLandingStore.from_url(self.archive_url, "LEARNLOOP_ARCHIVE_URL")
            return self.landing_store.sub("_archive")
        return LocalLandingStore(self.archive)

    @property
    def landing_location(self) -> str:
        """Where the landing zone is, for messages: its folder or its URL."""
        return self.landing_url or str(self.landing)

    @property
    def warehouse(self) -> Path:
        return (self.warehouse_path or self.home / "warehouse.duckdb").expanduser().resolve()

    def warehouse_duckdb_config(self) -> dict[str, str]:
        """DuckDB settings of every warehouse connection (``LEARNLOOP_WAREHOUSE_MEMORY_LIMIT``)."""
        return {"memory_limit": self.warehouse_memory_limit} if self.warehouse_memory_limit else {}

    @property
    def warehouse_target(self):
        """The warehouse to connect to (``ml.warehouse.connect``): the DuckLake of
        ``warehouse_url`` (an ``ml.lake.Lake``) when set, else the DuckDB file ``warehouse``."""
        if self.warehouse_url is None or not self.warehouse_url.get_secret_value().strip():
            return self.warehouse
        from ml.lake import Lake

        return Lake(self.warehouse_url.get_secret_value(), self.warehouse_data_path or "")

    @property
    def store(self) -> str:
        return self.store_url or f"sqlite:///{self.home / 'store.db'}"

    @property
    def lancedb(self) -> str:
        return self.lancedb_uri or str(self.home / "lancedb")

    @property
    def mlflow_uri(self) -> str:
        return self.mlflow_tracking_uri or f"sqlite:///{self.home / 'mlflow.db'}"

    @property
    def mlflow_artifacts(self) -> Path:
        return self.home / "mlartifacts"

    @property
    def archive(self) -> Path:
        return (self.archive_dir or self.home / "archive").expanduser().resolve()

    @property
    def dbt_target(self) -> Path:
        return ((self.dbt_dir or self.home / "dbt") / "target").expanduser().resolve()

    @property
    def datasets(self) -> Path:
        return (self.datasets_dir or self.home / "datasets").expanduser().resolve()

    @property
    def models(self) -> Path:
        return (self.models_dir or self.home / "models").expanduser().resolve()

    @property
    def dagster_home_dir(self) -> Path:
        return (self.dagster_home or self.home / "dagster_home").expanduser().resolve()

    def ensure_dirs(self) -> None:
        local = () if self.landing_url else (self.landing,)
        for p in (self.home, *local, self.warehouse.parent, self.dagster_home_dir):
            p.mkdir(parents=True, exist_ok=True)


def get_settings(**overrides) -> Settings:
    """Read the environment now (not at import) and apply explicit overrides."""
    return Settings(**overrides)
