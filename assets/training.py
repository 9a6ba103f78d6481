"""Stage `training`: ``base_model`` (the model every candidate is fine-tuned from, version 1 of
the registered model and the first champion) and ``candidate_model`` (a LoRA fine-tune of it on a
training dataset version, optionally followed by DPO; or a provider fine-tune job at OpenAI or
Gemini, followed by ``provider_job_sensor``).

The work is done by ``ml.training`` (pure) and ``ml.registry`` (MLflow); these assets read the
dataset version from the operational store, record each training run in ``training_runs`` (its
progress too, which ``learnloop train`` shows as a progress bar) and register each candidate as a
new version of the registered model with its lineage as tags. See docs/training.md.
"""


import json
import os
import time
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field

from assets.catalog import with_metadata
from assets.lifecycle import promote
from assets.resources import (
    WAREHOUSE_POOL,
    DatasetStoreResource,
    ModelRegistryResource,
    OperationalStoreResource,
    WarehouseResource,
)
from ml.registry import git_commit
from store import datasets as store_ds
from store import training as store_tr

OWNERS = ["team:ml-engineering"]
LOCAL_METHODS = ("lora", "lora+dpo")
PROVIDER_METHODS = ("openai", "gemini")
EXPERIMENT = "learnloop-training"


def lineage_tags(*, role: str, method: str, base_model: str, dataset_version: str | None,
                 parent_version: str | None, dagster_run_id: str | None,
                 **extra: str) -> dict[str, str]:
    """The tags every registered version carries: where it came from (dataset version, base
    model, the champion it was trained against, the code and the Dagster run), plus ``extra``."""
    return {"learnloop.role": role, "learnloop.method": method, "base_model": base_model,
            "dataset_version": dataset_version or "", "parent_version": parent_version or "",
            "git_commit": git_commit() or "", "dagster_run_id": dagster_run_id or "", **extra}


# the offline base model's pretraining progress, next to the model folder while it is built
# (it has no training run in the store): what `learnloop train` and `make demo` draw as a bar
BASE_PROGRESS_FILE = ".base_progress.json"


class ProgressReporter:
    """Turns the trainers' progress callbacks into run-log lines (about every 10% and at the
    end) and into the training run's ``progress`` in the operational store, or into
    ``progress_file`` (at most every 2 s), which ``learnloop train`` draws as a progress bar."""

    def __init__(self, context: dg.AssetExecutionContext, store: OperationalStoreResource,
                 run_id: int | None, what: str, progress_file: Path | None = None) -> None:
        self.context, self.store, self.run_id, self.what = context, store, run_id, what
        self.progress_file = progress_file
        self._last_store = 0.0
        self._last_decile = -1

    def __call__(self, event: dict[str, Any]) -> None:
        step, total = event.get("step"), event.get("total_steps")
        now = time.monotonic()
        final = bool(step and total and step >= total)
        if (self.run_id is not None or self.progress_file is not None) \
                and (final or now - self._last_store >= 2.0):
            self._last_store = now
            progress = {"stage": self.what, **{k: v for k, v in event.items()
                                               if isinstance(v, (int, float, str)) or v is None}}
            if self.run_id is not None:
                with self.store.session() as s:
                    s.get(store_tr.TrainingRun, self.run_id).progress = progress
            if self.progress_file is not None:
                tmp = self.progress_file.with_name(self.progress_file.name + ".tmp")
                tmp.write_text(json.dumps(progress))
                os.replace(tmp, self.progress_file)
        if step and total:
            decile = int(10 * step / total)
            if decile > self._last_decile:
                self._last_decile = decile
                shown = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                  for k, v in event.items() if k not in ("step", "total_steps"))
                self.context.log.info(f"{self.what}: step {step}/{total} ({shown})")


# ---- base model -------------------------------------------------------------------------------
class BaseModelConfig(dg.Config):
    """The offline base model's size and pretraining (ignored when LEARNLOOP_BASE_MODEL names a
    model: that one is registered as it is)."""

    rebuild: bool = Field(default=False, description="Build it again even when it exists.")
    vocab_size: int = 4096
    hidden_size: int = 256
    num_layers: int = 4
    epochs: float = 0.0  # 0: the ml default
    max_conversations: int = 0  # 0: the ml default
    seed: int = 0


def _base_spec(config: BaseModelConfig):
    from dataclasses import replace

    from ml.training.base_model import BaseModelSpec

    spec = BaseModelSpec()
    changes: dict[str, Any] = {"vocab_size": config.vocab_size, "hidden_size": config.hidden_size,
                               "num_layers": config.num_layers, "seed": config.seed}
    if config.epochs:
        changes["epochs"] = config.epochs
    if config.max_conversations:
        changes["max_conversations"] = config.max_conversations
    return replace(spec, **changes)


@dg.asset(
    deps=["interactions"],
    group_name="training", owners=OWNERS,
    tags={"stage": "training", "store": "files"},
    kinds={"pytorch", "mlflow"},
    pool=WAREHOUSE_POOL,
    description="The base model every candidate is fine-tuned from: LEARNLOOP_BASE_MODEL (a "
                "local path or a cached hub id, never downloaded) or, by default, a small "
                "Qwen2-style causal LM built offline (a BPE tokenizer trained on the logs with a "
                "ChatML template, briefly pretrained on the ingested conversations) under "
                "$LEARNLOOP_HOME/models/base. Registered in MLflow; it becomes the champion when "
                "the registered model has none.",
)
def base_model(context: dg.AssetExecutionContext, config: BaseModelConfig,
               warehouse: WarehouseResource, store: OperationalStoreResource,
               models: ModelRegistryResource) -> dg.MaterializeResult:
    registry = models.registry()
    named = models.get_base_model()
    metrics: dict[str, Any] = {}
    history_pairs: list = []
    if named:
        path, source, built = named, named, False
        info: dict[str, Any] = {"source": "LEARNLOOP_BASE_MODEL", "name": named}
        context.log.info(f"base model named by LEARNLOOP_BASE_MODEL: {named} (not built)")
    else:
        from ml.training.base_model import build_base_model, corpus_from_warehouse, read_base_info

        folder = models.root() / "base"
        built = config.rebuild or not (folder / "learnloop_base.json").exists()
        if built:
            spec = _base_spec(config)
            conversations, corpus = corpus_from_warehouse(warehouse.target(),
                                                          spec.max_conversations, spec.seed)
            context.log.info(f"pretraining the offline base model on {len(conversations):,} "
                             f"conversations ({corpus})")
            progress_file = models.root() / BASE_PROGRESS_FILE
            try:
                result = build_base_model(
                    conversations, folder, spec, overwrite=config.rebuild, corpus_stats=corpus,
                    progress=ProgressReporter(context, store, None, "base model",
                                              progress_file=progress_file))
            finally:
                progress_file.unlink(missing_ok=True)
            metrics = dict(result.metrics)
            history_pairs = [list(p) for p in result.loss_history]
        else:
            context.log.info(f"offline base model already at {folder} (rebuild=true builds it "
                             f"again)")
        info = read_base_info(folder)
        metrics = metrics or dict(info.get("metrics", {}))
        history_pairs = history_pairs or list(info.get("loss_history") or [])
        path, source = str(folder), str(folder)
    fingerprint = _fingerprint(path) if not named else named
    versions = registry.versions()
    mine = [v for v in versions if v.tags.get("learnloop.base_fingerprint") == fingerprint]
    champion = registry.alias_version("champion")
    if mine:
        version = mine[0].version
        registered = False
    else:
        run_id = registry.create_run(experiment=EXPERIMENT, run_name="base-model",
                                     tags={"learnloop.role": "base", "dagster_run_id":
                                           context.run.run_id})
        registry.log_params(run_id, {"source": source, **(info.get("spec") or {})})
        scalar = {k: v for k, v in metrics.items() if isinstance(v, (int, float))
                  and not isinstance(v, bool)}
        registry.log_metrics(run_id, scalar)
        history = [{"step": int(p[0]), "train_loss": float(p[1])} for p in history_pairs]
        if history:
            registry.log_history(run_id, history)
        if not named:
            registry.log_artifacts(run_id, path, "model")
        registry.set_terminated(run_id, "FINISHED")
        version = registry.register_version(
            source, run_id, tags=lineage_tags(
                role="base", method="base", base_model=source, dataset_version=None,
                parent_version=None, dagster_run_id=context.run.run_id,
                **{"learnloop.base_fingerprint": fingerprint}),
            description="The base model (offline: built from the logs; or LEARNLOOP_BASE_MODEL).")
        registered = True
    if champion is None:  # the first champion, recorded like every later promotion
        with store.session() as s:
            promote(registry, s, version, actor="asset:base_model",
                    reason="the base model: the registered model had no champion",
                    dagster_run_id=context.run.run_id)
        context.log.info(f"{registry.model_name} v{version} (the base model) is the champion: "
                         f"the registered model had none")
        champion = version
    return dg.MaterializeResult(metadata=with_metadata({
        "path": dg.MetadataValue.path(path) if not named else path,
        "built": built, "registered_version": version, "new_version": registered,
        "champion": champion or "", "model_name": registry.model_name,
        "n_params": int(metrics.get("n_params") or 0),
        "final_loss": float(metrics.get("final_loss") or 0.0),
        "val_loss": float(metrics.get("val_loss") or 0.0),
        "tokens_per_s": float(metrics.get("tokens_per_s") or 0.0),
        "wall_seconds": float(metrics.get("wall_seconds") or 0.0),
    }))


def _fingerprint(path: str | Path) -> str:
    """Identity of a local checkpoint: the SHA-256 of its learnloop_base.json (spec, corpus and
    metrics of that build) or of its config.json."""
    import hashlib

    p = Path(path)
    for name in ("learnloop_base.json", "config.json"):
        if (p / name).exists():
            return hashlib.sha256((p / name).read_bytes()).hexdigest()[:32]
    raise FileNotFoundError(f"{p} holds neither learnloop_base.json nor config.json")


# ---- candidate model --------------------------------------------------------------------------
class CandidateModelConfig(dg.Config):
    """How the candidate is trained. ``method``: lora (default), lora+dpo (LoRA, then DPO on the
    version's preference pairs), openai or gemini (a provider fine-tune job on the version's
    export, followed by provider_job_sensor)."""

    method: str = "lora"
    dataset: str = Field(default="", description="Dataset version (hash prefix or name@N); "
                                                 "empty: the newest ready training version.")
    rank: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] = Field(default=["all-linear"], description="Module names, or "
                                      "[\"all-linear\"] (every linear layer but the output "
                                      "head: attention and MLP).")
    learning_rate: float = 0.0  # 0: the ml default for the method
    epochs: float = 0.0  # 0: the ml default
    batch_size: int = 8
    gradient_accumulation: int = 1
    max_seq_len: int = 384
    early_stopping_patience: int = 2
    gradient_checkpointing: bool = False
    seed: int = 0
    dpo_beta: float = 0.1
    safety_mix: bool = Field(default=True, description="Mix the shipped refusals of requests for "
                                                       "other people's data into the train split "
                                                       "(ml/training/safety.py), so the "
                                                       "fine-tune keeps refusing them.")
    # provider fine-tunes
    provider_model: str = Field(default="", description="The provider's base model, e.g. "
                                                        "gpt-4.1-mini-2025-04-14 or "
                                                        "gemini-2.5-flash.")
    provider_base_url: str = ""
    api_key_env: str = Field(default="", description="Name of the environment variable "
                                                     "holding the provider key (never the key).")
    price_per_million_tokens: float = Field(default=0.0, description="Training price in USD per "
                                                                     "million trained tokens.")
    suffix: str = "learnloop"


def _lora_spec(config: CandidateModelConfig):
    from dataclasses import replace

    from ml.training.lora import LoraSpec

    spec = LoraSpec()
    changes: dict[str, Any] = {
        "rank": config.rank, "alpha": config.alpha, "dropout": config.dropout,
        "target_modules": ("all-linear" if list(config.target_modules) == ["all-linear"]
                           else tuple(config.target_modules)),
        "batch_size": config.batch_size,
        "gradient_accumulation": config.gradient_accumulation,
        "max_seq_len": config.max_seq_len,
        "early_stopping_patience": config.early_stopping_patience,
        "gradient_checkpointing": config.gradient_checkpointing, "seed": config.seed,
        "dpo": config.method == "lora+dpo", "dpo_beta": config.dpo_beta}
    if config.learning_rate:
        changes["learning_rate"] = config.learning_rate
    if config.epochs:
        changes["epochs"] = max(1, round(config.epochs))
    return replace(spec, **changes)


def resolve_dataset(session, ref: str):
    """The training dataset version ``ref`` names, or the newest one whose checks passed."""
    if ref:
        ds = store_ds.get_dataset(session, ref, kind="training")
    else:
        ready = [d for d in store_ds.list_datasets(session, kind="training")
                 if d.status == "ready"]
        if not ready:
            raise ValueError("no ready training dataset version: materialize training_dataset "
                             "first (`learnloop datasets build`)")
        ds = max(ready, key=lambda d: d.created_at)
    if ds.status != "ready":
        raise ValueError(f"dataset {ds.name}@{ds.version} ({ds.version_hash[:12]}) failed its "
                         f"checks ({ds.status}); it cannot be trained on")
    return ds


def _base_source(models: ModelRegistryResource) -> str:
    named = models.get_base_model()
    if named:
        return named
    folder = models.root() / "base"
    if not (folder / "config.json").exists():
        raise FileNotFoundError(f"no base model at {folder}: materialize base_model first")
    return str(folder)


@dg.asset(
    deps=["training_dataset", "base_model"],
    group_name="training", owners=OWNERS,
    tags={"stage": "training", "store": "files"},
    kinds={"pytorch", "mlflow"},
    description="A candidate model: a LoRA fine-tune (transformers + peft; loss on the "
                "assistant's reply only) of the base model on a training dataset version's "
                "train split, validated and early-stopped on its validation split, optionally "
                "followed by DPO on its preference pairs (trl); or a provider fine-tune job "
                "(OpenAI, Gemini) on its export. Each candidate is a new version of the "
                "registered model in MLflow with its lineage as tags.",
)
def candidate_model(context: dg.AssetExecutionContext, config: CandidateModelConfig,
                    store: OperationalStoreResource, datasets: DatasetStoreResource,
                    models: ModelRegistryResource) -> dg.MaterializeResult:
    from ml.llm.errors import ConfigError

    method = config.method.strip().lower()
    if method not in LOCAL_METHODS + PROVIDER_METHODS:
        raise ConfigError(f"candidate_model config: method must be one of "
                          f"{list(LOCAL_METHODS + PROVIDER_METHODS)}, got {config.method!r}")
    with store.session() as s:
        ds = resolve_dataset(s, config.dataset)
        dataset = {"id": ds.id, "name": ds.name, "ordinal": ds.version,
                   "version_hash": ds.version_hash, "path": ds.path,
                   "n_train": ds.n_train, "n_validation": ds.n_validation}
    if method in PROVIDER_METHODS:
        return _submit_provider_job(context, config, method, dataset, store, models)
    return _train_local(context, config, method, dataset, store, models)


def _train_local(context, config: CandidateModelConfig, method: str, dataset: dict,
                 store: OperationalStoreResource, models: ModelRegistryResource):
    from ml.datasets.exports import EXPORT_PATHS
    from ml.training.lora import read_chat_jsonl, read_dpo_jsonl, train_lora
    from ml.training.safety import load_safety_mix

    spec = _lora_spec(config)
    registry = models.registry()
    base = _base_source(models)
    folder = Path(dataset["path"])
    train = read_chat_jsonl(folder / EXPORT_PATHS["openai_train"])
    validation = read_chat_jsonl(folder / EXPORT_PATHS["openai_validation"])
    safety = load_safety_mix() if config.safety_mix else []
    train = train + safety
    pairs: dict[str, Any] = {}
    if spec.dpo:
        pairs = {"dpo_train": read_dpo_jsonl(folder / EXPORT_PATHS["dpo_train"]),
                 "dpo_validation": read_dpo_jsonl(folder / EXPORT_PATHS["dpo_validation"])}
    parent = registry.alias_version("champion")
    out_dir = models.root() / "candidates" / f"{dataset['version_hash'][:12]}-{context.run.run_id[:8]}"
    with store.session() as s:
        run = store_tr.create_training_run(
            s, method=method, base_model=base, model_name=registry.model_name,
            dataset_id=dataset["id"], dataset_version=dataset["version_hash"],
            dagster_run_id=context.run.run_id,
            params={**spec.to_dict(), "safety_mix_examples": len(safety)})
        run_id = run.id
    mlflow_run = registry.create_run(experiment=EXPERIMENT, run_name=f"candidate-{run_id}", tags={
        "learnloop.role": "candidate", "learnloop.method": method,
        "dataset_version": dataset["version_hash"], "dagster_run_id": context.run.run_id})
    context.log.info(f"training run {run_id}: {method} on {dataset['name']}@{dataset['ordinal']} "
                     f"({len(train) - len(safety)} train + {len(safety)} safety-mix "
                     f"refusals, {len(validation)} validation) from {base}; "
                     f"MLflow run {mlflow_run}")
    try:
        result = train_lora(base, train, validation, out_dir, spec,
                            progress=ProgressReporter(context, store, run_id, "training"),
                            **pairs)
    except BaseException as exc:
        with store.session() as s:
            store_tr.move_training_run(s, run_id, expect="running", status="failed",
                                       error=f"{type(exc).__name__}: {exc}"[:4000])
        registry.set_terminated(mlflow_run, "FAILED")
        raise
    metrics = {k: v for k, v in result.metrics.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)}
    registry.log_params(mlflow_run, {**spec.to_dict(), "base_model": base, "method": method,
                                     "safety_mix_examples": len(safety),
                                     "dataset": f"{dataset['name']}@{dataset['ordinal']}"})
    registry.log_metrics(mlflow_run, metrics)
    registry.log_history(mlflow_run, list(result.history))
    registry.log_dataset_input(mlflow_run, folder, dataset["name"], dataset["version_hash"])
    registry.log_artifacts(mlflow_run, str(result.adapter_dir), "adapter")
    registry.set_terminated(mlflow_run, "FINISHED")
    version = registry.register_version(
        str(result.merged_dir), mlflow_run, tags=lineage_tags(
            role="candidate", method=method, base_model=base,
            dataset_version=dataset["version_hash"], parent_version=parent,
            dagster_run_id=context.run.run_id, training_run_id=str(run_id),
            dataset=f"{dataset['name']}@{dataset['ordinal']}",
            adapter_dir=str(result.adapter_dir)),
        description=f"{method} on dataset {dataset['name']}@{dataset['ordinal']}")
    with store.session() as s:
        store_tr.move_training_run(s, run_id, expect="running", status="succeeded",
                                   mlflow_run_id=mlflow_run, model_version=version,
                                   metrics=json.loads(json.dumps(result.metrics, default=str)))
    context.log.info(f"{registry.model_name} v{version}: val loss "
                     f"{result.metrics.get('val_loss_before')} -> "
                     f"{result.metrics.get('val_loss_after')}")
    return dg.MaterializeResult(metadata=with_metadata({
        "model_version": version, "model_name": registry.model_name, "method": method,
        "training_run_id": run_id, "mlflow_run_id": mlflow_run,
        "dataset_version": dataset["version_hash"], "base_model": base,
        "parent_version": parent or "", "path": dg.MetadataValue.path(str(out_dir)),
        **{k: v for k, v in metrics.items()},
    }))


def provider_tuner(provider: str, params: dict[str, Any]):
    """The fine-tune client of ``provider`` from a run's recorded (non-secret) parameters."""
    from ml.training.providers import GeminiFineTuner, OpenAIFineTuner

    kwargs: dict[str, Any] = {}
    if params.get("provider_base_url"):
        kwargs["base_url"] = params["provider_base_url"]
    if params.get("api_key_env"):
        kwargs["api_key_env"] = params["api_key_env"]
    if provider == "openai":
        return OpenAIFineTuner(**kwargs)
    if provider == "gemini":
        return GeminiFineTuner(**kwargs)
    raise ValueError(f"unknown fine-tune provider {provider!r}")


def _submit_provider_job(context, config: CandidateModelConfig, method: str, dataset: dict,
                         store: OperationalStoreResource, models: ModelRegistryResource):
    from ml.llm.errors import ConfigError

    if not config.provider_model:
        raise ConfigError(f"candidate_model config: method {method} needs provider_model (the "
                          f"provider's base model to fine-tune)")
    params = {"provider_model": config.provider_model,
              "provider_base_url": config.provider_base_url, "api_key_env": config.api_key_env,
              "price_per_million_tokens": config.price_per_million_tokens,
              "suffix": config.suffix}
    if config.epochs:
        params["n_epochs"] = config.epochs
    hyper = {"n_epochs": int(config.epochs)} if config.epochs else None
    tuner = provider_tuner(method, params)
    state = tuner.submit(dataset["path"], config.provider_model, suffix=config.suffix or None,
                         hyperparameters=hyper)
    registry_name = models.get_model_name()
    with store.session() as s:
        run = store_tr.create_training_run(
            s, method=method, base_model=config.provider_model, model_name=registry_name,
            dataset_id=dataset["id"], dataset_version=dataset["version_hash"],
            dagster_run_id=context.run.run_id, provider=method, provider_job_id=state.job_id,
            status=state.status if state.status in ("queued", "running") else "running",
            params=params, progress={"raw_status": state.raw_status})
        run_id = run.id
    context.log.info(f"training run {run_id}: {method} fine-tune job {state.job_id} submitted "
                     f"({state.raw_status}); provider_job_sensor follows it")
    return dg.MaterializeResult(metadata=with_metadata({
        "method": method, "training_run_id": run_id, "provider_job_id": state.job_id,
        "provider_status": state.raw_status, "dataset_version": dataset["version_hash"],
        "provider_model": config.provider_model, "model_name": registry_name,
    }))


# ---- provider jobs: followed by provider_job_sensor, cancelled by `learnloop training cancel` --
def follow_provider_run(run: dict[str, Any], store: OperationalStoreResource,
                        models: ModelRegistryResource, tuner=None) -> dict[str, Any]:
    """Poll one provider fine-tune (``run`` = ``store.training.run_summary``) once and record
    what changed: progress while it runs; on success a new registry version (source
    ``<provider>:<model id>``) with its lineage, trained tokens and cost; on failure or
    cancellation the reason. Returns ``{"run_id", "status", "model_version"?, "note"}``.
    A run moved meanwhile by someone else (e.g. cancelled) raises ``StaleTrainingRun``."""
    from ml.training.providers import cost_usd

    tuner = tuner or provider_tuner(run["provider"], run["params"])
    state = tuner.poll(run["provider_job_id"])
    run_id = run["id"]
    progress = {"raw_status": state.raw_status, **(state.progress or {})}
    if state.status in ("queued", "running"):
        with store.session() as s:
            store_tr.move_training_run(s, run_id, expect=("queued", "running"),
                                       status=state.status, progress=progress)
        return {"run_id": run_id, "status": state.status,
                "note": f"job {state.job_id} {state.raw_status}"}
    if state.status in ("failed", "cancelled"):
        with store.session() as s:
            store_tr.move_training_run(s, run_id, expect=("queued", "running"),
                                       status=state.status, progress=progress,
                                       error=state.error or state.raw_status)
        return {"run_id": run_id, "status": state.status,
                "note": f"job {state.job_id} {state.status}: {state.error or state.raw_status}"}
    # succeeded
    price = float(run["params"].get("price_per_million_tokens") or 0.0)
    cost = cost_usd(state, price) if price else None
    registry = models.registry()
    with store.session() as s:
        ds = store_ds.get_dataset(s, run["dataset_version"], kind="training") \
            if run.get("dataset_version") else None
        dataset = ({"name": ds.name, "ordinal": ds.version, "path": ds.path}
                   if ds is not None else None)
    parent = registry.alias_version("champion")
    mlflow_run = registry.create_run(experiment=EXPERIMENT, run_name=f"candidate-{run_id}", tags={
        "learnloop.role": "candidate", "learnloop.method": run["provider"],
        "dataset_version": run.get("dataset_version") or "",
        "dagster_run_id": run.get("dagster_run_id") or ""})
    registry.log_params(mlflow_run, {**run["params"], "provider_job_id": state.job_id,
                                     "method": run["provider"]})
    metrics = {"trained_tokens": state.trained_tokens} if state.trained_tokens else {}
    if cost is not None:
        metrics["cost_usd"] = cost
    if metrics:
        registry.log_metrics(mlflow_run, metrics)
    if dataset is not None:
        registry.log_dataset_input(mlflow_run, dataset["path"], dataset["name"],
                                   run["dataset_version"])
    registry.set_terminated(mlflow_run, "FINISHED")
    tags = lineage_tags(role="candidate", method=run["provider"], base_model=run["base_model"],
                        dataset_version=run.get("dataset_version"), parent_version=parent,
                        dagster_run_id=run.get("dagster_run_id"), training_run_id=str(run_id),
                        provider_job_id=state.job_id, provider_model_id=state.model_id or "")
    if run["params"].get("provider_base_url"):
        tags["provider_base_url"] = run["params"]["provider_base_url"]
    if run["params"].get("api_key_env"):
        tags["api_key_env"] = run["params"]["api_key_env"]  # the variable's name, never the key
    version = registry.register_version(f"{run['provider']}:{state.model_id}", mlflow_run,
                                        tags=tags, description=f"{run['provider']} fine-tune "
                                                               f"{state.job_id}")
    with store.session() as s:
        store_tr.move_training_run(s, run_id, expect=("queued", "running"), status="succeeded",
                                   progress=progress, provider_model_id=state.model_id,
                                   cost_usd=cost, mlflow_run_id=mlflow_run,
                                   model_version=version,
                                   metrics={k: v for k, v in metrics.items()})
    return {"run_id": run_id, "status": "succeeded", "model_version": version,
            "note": f"job {state.job_id} succeeded: {state.model_id} is "
                    f"{registry.model_name} v{version}"
                    + (f" (cost ${cost:.2f})" if cost is not None else "")}


def cancel_provider_run(run_id: int, store: OperationalStoreResource, tuner=None) -> dict:
    """Cancel a provider fine-tune: the provider's job first, then the run (compare-and-set: a
    run that ended meanwhile raises ``StaleTrainingRun``)."""
    with store.session() as s:
        run = store_tr.run_summary(store_tr.get_training_run(s, run_id))
    if not run["provider"]:
        raise ValueError(f"training run {run_id} is a local {run['method']} run; only provider "
                         f"fine-tunes can be cancelled")
    if run["status"] not in store_tr.ACTIVE:
        raise ValueError(f"training run {run_id} is already {run['status']}")
    tuner = tuner or provider_tuner(run["provider"], run["params"])
    state = tuner.cancel(run["provider_job_id"])
    with store.session() as s:
        store_tr.move_training_run(s, run_id, expect=store_tr.ACTIVE, status="cancelled",
                                   progress={"raw_status": state.raw_status},
                                   error="cancelled by request")
    return {"run_id": run_id, "status": "cancelled", "raw_status": state.raw_status}
