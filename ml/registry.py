"""The MLflow tracking store and model registry of learnloop.

One :class:`Registry` wraps an ``MlflowClient`` for one tracking store (SQLite under
``$LEARNLOOP_HOME`` by default), one artifact root and one registered model (``Settings.model_name``):

* training runs: an experiment whose artifacts live under the artifact root, runs created and
  ended through the client (never MLflow's process-global "active run", so concurrent Dagster runs
  in one process do not share a run), params (flattened, stringified, cut to MLflow's value limit
  with :data:`TRUNCATION_MARKER`), metrics, per-step loss curves, artifacts and the dataset version
  as an MLflow dataset input;
* the registry: every candidate is a new version of the registered model with lineage tags; the
  aliases ``champion`` / ``challenger`` point into it.

Opening a fresh SQLite store runs MLflow's migrations (about 2 s), and importing mlflow itself
takes about as long, so both happen on first use only: constructing a ``Registry`` is free, and
the read methods (:meth:`Registry.versions`, :meth:`Registry.alias_version`,
:meth:`Registry.summary`, ...) never create a SQLite store that does not exist yet.
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from ml.config import Settings

DEFAULT_EXPERIMENT = "learnloop-training"
# MLflow's limits (mlflow.utils.validation, 3.17)
MAX_PARAM_VALUE_LENGTH = 6000
MAX_PARAMS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000
MAX_DATASET_DIGEST_LENGTH = 36
# appended to a param value cut to MAX_PARAM_VALUE_LENGTH; {n} is the original length
TRUNCATION_MARKER = "...[truncated, {n} chars]"
# the input tag that carries the full dataset version hash (the digest holds at most 36 chars)
VERSION_HASH_INPUT_TAG = "learnloop.version_hash"
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class VersionNotFound(LookupError):
    """A model version (or alias) that the registered model does not have."""


@dataclass(frozen=True)
class ModelVersionInfo:
    """One version of the registered model, with what its training run recorded."""

    name: str
    version: str
    aliases: list[str]
    tags: dict[str, str]
    run_id: str | None
    source: str
    status: str
    created: str  # ISO 8601, UTC
    description: str | None
    metrics: dict[str, float] = field(default_factory=dict)  # latest value of each run metric
    params: dict[str, str] = field(default_factory=dict)
    run_status: str | None = None  # None when the version has no run or its run is gone

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _mlflow_error_code(exc: BaseException) -> str | None:
    return getattr(exc, "error_code", None)


def _sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (None for other stores and in-memory SQLite)."""
    if not uri.startswith("sqlite:"):
        return None
    rest = uri[len("sqlite:"):]
    if not rest.startswith("///"):
        raise ValueError(f"unsupported SQLite tracking URI {uri!r}: expected sqlite:///PATH")
    path = rest[3:].split("?", 1)[0]
    if path in ("", ":memory:"):
        return None
    return Path(path)


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested mappings flattened to dotted keys, every value a string (lists and tuples as JSON,
    ``None`` as ``"None"``), values longer than MLflow's limit cut with :data:`TRUNCATION_MARKER`
    naming the original length."""
    out: dict[str, str] = {}
    for key, value in params.items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"param keys must be non-empty strings, got {key!r} under "
                             f"{prefix or 'the top level'}")
        full = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten_params(value, prefix=f"{full}."))
            continue
        if isinstance(value, list | tuple):
            text = json.dumps(list(value), default=str)
        else:
            text = str(value)
        if len(text) > MAX_PARAM_VALUE_LENGTH:
            marker = TRUNCATION_MARKER.format(n=len(text))
            text = text[:MAX_PARAM_VALUE_LENGTH - len(marker)] + marker
        out[full] = text
    return out


def _metric_value(key: str, value: Any) -> float:
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int | float):
        return float(value)
    raise TypeError(f"metric {key!r} must be a number or a bool, got {type(value).__name__} "
                    f"{value!r}")


def git_commit(repo_dir: str | Path | None = None) -> str | None:
    """The commit checked out in ``repo_dir`` (default: this project's checkout), or None when
    that folder is not inside a git repository. Any other git failure raises."""
    where = Path(repo_dir) if repo_dir is not None else Path(__file__).resolve().parents[1]
    if not where.is_dir():
        raise FileNotFoundError(f"git_commit: {where} is not a directory")
    proc = subprocess.run(["git", "-C", str(where), "rev-parse", "HEAD"], capture_output=True,
                          text=True, check=False)
    if proc.returncode == 0:
        return proc.stdout.strip()
    if "not a git repository" in proc.stderr:
        return None
    raise RuntimeError(f"git rev-parse HEAD in {where} failed ({proc.returncode}): "
                       f"{proc.stderr.strip()}")


class Registry:
    """The tracking store at ``tracking_uri`` (also the registry store), experiments' artifacts
    under ``artifact_root``, and the registered model ``model_name``.

    The client is created on first use (one per ``Registry``; MLflow shares the database engine
    between clients of the same URI in one process)."""

    def __init__(self, tracking_uri: str, artifact_root: str | Path, model_name: str) -> None:
        if not tracking_uri:
            raise ValueError("Registry: tracking_uri is empty")
        if not model_name or "'" in model_name:
            raise ValueError(f"Registry: model name {model_name!r} must be non-empty and must "
                             f"not contain a single quote")
        self.tracking_uri = tracking_uri
        self.artifact_root = Path(artifact_root).expanduser().resolve()
        self.model_name = model_name
        self._db_path = _sqlite_path(tracking_uri)
        self._client: MlflowClient | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> Registry:
        """The project's registry: ``Settings.mlflow_uri``, ``mlflow_artifacts``, ``model_name``."""
        return cls(settings.mlflow_uri, settings.mlflow_artifacts, settings.model_name)

    def __repr__(self) -> str:
        return f"Registry({self.tracking_uri!r}, {str(self.artifact_root)!r}, {self.model_name!r})"

    # ---- the client ---------------------------------------------------------------------------
    def store_exists(self) -> bool:
        """False only for a SQLite store whose file does not exist yet (other stores: True)."""
        return self._db_path is None or self._db_path.exists()

    @property
    def client(self) -> MlflowClient:
        """The MLflow client; creating it creates (and migrates) a SQLite store if needed."""
        if self._client is None:
            with self._lock:
                if self._client is None:
                    from mlflow import MlflowClient

                    if self._db_path is not None:
                        self._db_path.parent.mkdir(parents=True, exist_ok=True)
                    self._client = MlflowClient(tracking_uri=self.tracking_uri,
                                                registry_uri=self.tracking_uri)
        return self._client

    # ---- experiments and runs -----------------------------------------------------------------
    def experiment_id(self, name: str = DEFAULT_EXPERIMENT) -> str:
        """The id of experiment ``name``, created with its artifacts under
        ``artifact_root/name`` when missing. A concurrent create of the same name is re-read."""
        from mlflow.exceptions import MlflowException

        if not _SAFE_NAME.match(name):
            raise ValueError(f"experiment name {name!r}: use letters, digits, '_', '.', '-' "
                             f"(it names the artifact folder)")
        exp = self.client.get_experiment_by_name(name)
        if exp is None:
            location = (self.artifact_root / name).as_uri()
            try:
                return self.client.create_experiment(name, artifact_location=location)
            except MlflowException as exc:
                if _mlflow_error_code(exc) != "RESOURCE_ALREADY_EXISTS":
                    raise
            exp = self.client.get_experiment_by_name(name)
            if exp is None:
                raise RuntimeError(f"experiment {name!r} was reported to exist but cannot be "
                                   f"read from {self.tracking_uri}")
        if exp.lifecycle_stage != "active":
            raise RuntimeError(f"experiment {name!r} (id {exp.experiment_id}) is deleted in "
                               f"{self.tracking_uri}: restore it (mlflow experiments restore "
                               f"--experiment-id {exp.experiment_id}) or use another name")
        return exp.experiment_id

    def create_run(self, run_name: str, tags: Mapping[str, Any] | None = None,
                   experiment: str = DEFAULT_EXPERIMENT) -> str:
        """A new run (status RUNNING) in ``experiment``; returns its run id. End it with
        :meth:`end_run` (or use :meth:`start_run`)."""
        run = self.client.create_run(self.experiment_id(experiment), run_name=run_name,
                                     tags={k: str(v) for k, v in (tags or {}).items()})
        return run.info.run_id

    def set_terminated(self, run_id: str, status: str = "FINISHED") -> None:
        """End run ``run_id`` with ``status`` (FINISHED, FAILED or KILLED)."""
        if status not in ("FINISHED", "FAILED", "KILLED"):
            raise ValueError(f"run status {status!r}: expected FINISHED, FAILED or KILLED")
        self.client.set_terminated(run_id, status=status)

    end_run = set_terminated

    @contextmanager
    def start_run(self, run_name: str, tags: Mapping[str, Any] | None = None,
                  experiment: str = DEFAULT_EXPERIMENT) -> Iterator[str]:
        """A run for the ``with`` block, yielding its run id: FINISHED when the block completes,
        KILLED on KeyboardInterrupt, FAILED on any other exception (which propagates)."""
        run_id = self.create_run(run_name, tags, experiment)
        try:
            yield run_id
        except KeyboardInterrupt:
            self.set_terminated(run_id, "KILLED")
            raise
        except BaseException:
            self.set_terminated(run_id, "FAILED")
            raise
        self.set_terminated(run_id, "FINISHED")

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> dict[str, str]:
        """Log ``params`` (see :func:`flatten_params`); returns what was logged. MLflow refuses
        to change a param already logged on the run with another value (raises)."""
        from mlflow.entities import Param

        flat = flatten_params(params)
        items = [Param(k, v) for k, v in flat.items()]
        for i in range(0, len(items), MAX_PARAMS_PER_BATCH):
            self.client.log_batch(run_id, params=items[i:i + MAX_PARAMS_PER_BATCH])
        return flat

    def log_metrics(self, run_id: str, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Log numeric metrics (a bool is 1.0 / 0.0) at ``step`` (default 0)."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, _metric_value(k, v), now, step or 0) for k, v in metrics.items()]
        self._log_metric_batches(run_id, items)

    def log_history(self, run_id: str, history: list[Mapping[str, Any]]) -> int:
        """Per-step curves: each entry has ``step`` and any numeric series (``train_loss``,
        ``val_loss``, ``learning_rate``, ...); a series missing or None at a step is skipped
        there. Returns the number of metric points logged."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = []
        for i, entry in enumerate(history):
            step = entry.get("step")
            if not isinstance(step, int) or isinstance(step, bool):
                raise ValueError(f"history entry {i} needs an integer 'step', got {step!r}")
            for key, value in entry.items():
                if key != "step" and value is not None:
                    items.append(Metric(key, _metric_value(key, value), now, step))
        self._log_metric_batches(run_id, items)
        return len(items)

    def _log_metric_batches(self, run_id: str, items: list) -> None:
        for i in range(0, len(items), MAX_METRICS_PER_BATCH):
            self.client.log_batch(run_id, metrics=items[i:i + MAX_METRICS_PER_BATCH])

    def log_artifacts(self, run_id: str, local_dir: str | Path,
                      artifact_path: str | None = None) -> None:
        """Copy the files of ``local_dir`` into the run's artifacts (under ``artifact_path``)."""
        local = Path(local_dir)
        if not local.is_dir():
            raise FileNotFoundError(f"log_artifacts: {local} is not a directory")
        self.client.log_artifacts(run_id, str(local), artifact_path)

    def log_dataset_input(self, run_id: str, dataset_dir: str | Path, name: str,
                          version_hash: str, context: str = "training") -> None:
        """Record a dataset version as an input of the run: an MLflow dataset named ``name``
        whose source is the version's folder and whose digest is the version hash (its first
        36 characters, MLflow's digest limit; the whole hash is the input tag
        :data:`VERSION_HASH_INPUT_TAG`), with ``context`` as ``mlflow.data.context``."""
        from mlflow.data.dataset_source_registry import get_dataset_source_from_json
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.entities import DatasetInput, InputTag
        from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

        folder = Path(dataset_dir).resolve()
        if not folder.is_dir():
            raise FileNotFoundError(f"log_dataset_input: dataset folder {folder} does not exist")
        if not version_hash:
            raise ValueError("log_dataset_input: version_hash is empty")
        # the "local" source type by name: resolving the raw path is ambiguous in 3.17 (two
        # local artifact sources are registered) and warns
        source = get_dataset_source_from_json(json.dumps({"uri": str(folder)}), "local")
        dataset = MetaDataset(source, name=name,
                              digest=version_hash[:MAX_DATASET_DIGEST_LENGTH])
        tags = [InputTag(MLFLOW_DATASET_CONTEXT, context),
                InputTag(VERSION_HASH_INPUT_TAG, version_hash)]
        self.client.log_inputs(run_id, datasets=[DatasetInput(dataset._to_mlflow_entity(), tags)])

    # ---- the registered model -----------------------------------------------------------------
    def ensure_model(self) -> None:
        """Create the registered model unless it exists (a concurrent create is fine)."""
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(self.model_name)
            return
        except MlflowException as exc:
            if _mlflow_error_code(exc) != "RESOURCE_DOES_NOT_EXIST":
                raise
        try:
            self.client.create_registered_model(
                self.model_name, description="learnloop's assistant: every fine-tuned candidate "
                                             "is a version; aliases champion/challenger.")
        except MlflowException as exc:
            if _mlflow_error_code(exc) != "RESOURCE_ALREADY_EXISTS":
                raise

    def register_version(self, source: str, run_id: str | None, tags: Mapping[str, Any],
                         description: str | None = None) -> str:
        """A new version of the registered model (created if needed) from ``source`` (the model's
        folder or URI) and ``run_id``, with lineage ``tags`` (dataset_version, base_model,
        parent_version, git_commit, dagster_run_id, method, ...; None values are left out).
        Returns the version number as a string."""
        self.ensure_model()
        mv = self.client.create_model_version(
            self.model_name, str(source), run_id=run_id, description=description,
            tags={k: str(v) for k, v in tags.items() if v is not None})
        return str(mv.version)

    def set_alias(self, alias: str, version: str | int) -> None:
        """Point ``alias`` at ``version`` (moving it if it pointed elsewhere)."""
        self._require_version(str(version))
        self.client.set_registered_model_alias(self.model_name, alias, str(version))

    def delete_alias(self, alias: str) -> None:
        """Remove ``alias`` (an alias that is not set raises VersionNotFound)."""
        if self.alias_version(alias) is None:
            raise VersionNotFound(f"registered model {self.model_name!r} has no alias {alias!r}")
        self.client.delete_registered_model_alias(self.model_name, alias)

    def aliases(self) -> dict[str, str]:
        """alias -> version of the registered model ({} when it or the store does not exist)."""
        from mlflow.exceptions import MlflowException

        if not self.store_exists():
            return {}
        try:
            model = self.client.get_registered_model(self.model_name)
        except MlflowException as exc:
            if _mlflow_error_code(exc) == "RESOURCE_DOES_NOT_EXIST":
                return {}
            raise
        return {a: str(v) for a, v in (model.aliases or {}).items()}

    def alias_version(self, alias: str) -> str | None:
        """The version ``alias`` points at, or None when the alias (or the model) is not set."""
        if not alias:
            raise ValueError("alias_version: alias is empty")
        return self.aliases().get(alias)

    def versions(self) -> list[ModelVersionInfo]:
        """Every version of the registered model, newest first, with its run's params and
        latest metric values ([] when the model or the store does not exist)."""
        if not self.store_exists():
            return []
        found = self._search()
        aliases = self.aliases()
        found.sort(key=lambda mv: int(mv.version), reverse=True)
        return [self._info(mv, aliases) for mv in found]

    def version(self, v: str | int) -> ModelVersionInfo:
        """One version; VersionNotFound names the model and the version when it does not exist."""
        return self._info(self._require_version(str(v)), self.aliases())

    def resolve(self, ref: str) -> ModelVersionInfo:
        """A version by number (``"3"``) or by alias (``"champion"``)."""
        if ref.isdigit():
            return self.version(ref)
        v = self.alias_version(ref)
        if v is None:
            raise VersionNotFound(f"registered model {self.model_name!r} has no alias {ref!r}"
                                  + self._known_versions_hint())
        return self.version(v)

    def set_version_tag(self, v: str | int, key: str, value: Any) -> None:
        """Set tag ``key`` of version ``v`` to ``str(value)``."""
        self._require_version(str(v))
        self.client.set_model_version_tag(self.model_name, str(v), key, str(value))

    def summary(self) -> dict[str, Any]:
        """``name``, ``versions`` (count), ``champion``, ``challenger`` (alias targets or None)
        and ``latest`` (highest version or None); never creates a SQLite store."""
        aliases = self.aliases()
        numbers = [mv.version for mv in self._search()] if self.store_exists() else []
        return {"name": self.model_name, "versions": len(numbers),
                "champion": aliases.get("champion"), "challenger": aliases.get("challenger"),
                "latest": str(max(int(n) for n in numbers)) if numbers else None}

    # ---- helpers ------------------------------------------------------------------------------
    def _search(self) -> list:
        found, token = [], None
        while True:
            page = self.client.search_model_versions(f"name = '{self.model_name}'",
                                                     page_token=token)
            found.extend(page)
            token = page.token
            if not token:
                return found

    def _known_versions_hint(self) -> str:
        if not self.store_exists():
            return f" (no tracking store at {self.tracking_uri} yet)"
        numbers = sorted(int(mv.version) for mv in self._search())
        return f" (versions: {', '.join(map(str, numbers))})" if numbers else " (no versions yet)"

    def _require_version(self, v: str):
        from mlflow.exceptions import MlflowException

        if not v.isdigit() or int(v) < 1:
            raise ValueError(f"model version {v!r}: expected a positive integer")
        if not self.store_exists():
            raise VersionNotFound(f"registered model {self.model_name!r} has no version {v}"
                                  + self._known_versions_hint())
        try:
            return self.client.get_model_version(self.model_name, v)
        except MlflowException as exc:
            if _mlflow_error_code(exc) != "RESOURCE_DOES_NOT_EXIST":
                raise
            raise VersionNotFound(f"registered model {self.model_name!r} has no version {v}"
                                  + self._known_versions_hint()) from exc

    def _info(self, mv, aliases: dict[str, str]) -> ModelVersionInfo:
        from mlflow.exceptions import MlflowException

        metrics: dict[str, float] = {}
        params: dict[str, str] = {}
        run_status = None
        if mv.run_id:
            try:
                run = self.client.get_run(mv.run_id)
            except MlflowException as exc:  # the run was deleted for good: say so (run_status)
                if _mlflow_error_code(exc) != "RESOURCE_DOES_NOT_EXIST":
                    raise
            else:
                metrics, params = dict(run.data.metrics), dict(run.data.params)
                run_status = run.info.status
        created = datetime.fromtimestamp(mv.creation_timestamp / 1000, tz=UTC)
        return ModelVersionInfo(
            name=self.model_name, version=str(mv.version),
            aliases=sorted(a for a, v in aliases.items() if v == str(mv.version)),
            tags=dict(mv.tags or {}), run_id=mv.run_id or None, source=mv.source,
            status=str(mv.status), created=created.isoformat(timespec="seconds"),
            description=mv.description or None, metrics=metrics, params=params,
            run_status=run_status)
