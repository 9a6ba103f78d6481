"""SQLAlchemy 2 models of the operational store (workflow state).

The operational store is the only place review state lives. SQLite by default, PostgreSQL in
production; Alembic migrations in ``store/migrations`` create exactly these tables.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


ITEM_KINDS = ("error", "sample")
ERROR_STATUSES = ("pending", "confirmed", "dismissed")
SAMPLE_STATUSES = ("pending", "approved", "rejected", "edited")
STATUSES = tuple(dict.fromkeys(ERROR_STATUSES + SAMPLE_STATUSES))


class ReviewItem(Base):
    """A flagged error or a proposed training sample awaiting a human decision."""

    __tablename__ = "review_items"
    __table_args__ = (
        UniqueConstraint("kind", "dedup_key", name="uq_review_items_kind_dedup"),
        Index("ix_review_items_queue", "kind", "status", "tenant_id"),
        Index("ix_review_items_interaction", "tenant_id", "interaction_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(16))  # error | sample
    status: Mapped[str] = mapped_column(String(16), default="pending")
    version: Mapped[int] = mapped_column(Integer, default=1)  # optimistic locking
    dedup_key: Mapped[str] = mapped_column(String(300))  # idempotency of producers
    tenant_id: Mapped[str] = mapped_column(String(128), default="default")
    interaction_id: Mapped[str] = mapped_column(String(256))
    session_id: Mapped[str | None] = mapped_column(String(256), nullable=True)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("review_items.id"), nullable=True)
    # the conversation as the reviewer sees it (already scrubbed)
    messages: Mapped[list | None] = mapped_column(JSON, nullable=True)
    original_response: Mapped[str | None] = mapped_column(Text, nullable=True)
    # error items: the auditor's verdict
    category: Mapped[str | None] = mapped_column(String(64), nullable=True)
    severity: Mapped[str | None] = mapped_column(String(16), nullable=True)
    confidence: Mapped[float | None] = mapped_column(Float, nullable=True)
    explanation: Mapped[str | None] = mapped_column(Text, nullable=True)
    auditor: Mapped[str | None] = mapped_column(String(128), nullable=True)
    prompt_version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # sample items: the proposed and the final (approved/edited) reply
    proposed_response: Mapped[str | None] = mapped_column(Text, nullable=True)
    final_response: Mapped[str | None] = mapped_column(Text, nullable=True)
    source: Mapped[str | None] = mapped_column(String(64), nullable=True)
    tags: Mapped[list] = mapped_column(JSON, default=list)
    # facts of the interaction copied from the warehouse when the item is created (filters and
    # statistics of samples: quality range, intent, date range); NULL when unknown
    quality: Mapped[float | None] = mapped_column(Float, nullable=True)
    intent: Mapped[str | None] = mapped_column(String(64), nullable=True)
    interaction_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    extra: Mapped[dict] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    decided_by: Mapped[str | None] = mapped_column(String(128), nullable=True)
    decided_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class ReviewEvent(Base):
    """Append-only audit trail: one row per change of a review item."""

    __tablename__ = "review_events"
    __table_args__ = (Index("ix_review_events_item", "item_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("review_items.id"))
    tenant_id: Mapped[str] = mapped_column(String(128))
    actor: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(32))  # created | decide | tag | untag
    before: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    after: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    note: Mapped[str | None] = mapped_column(Text, nullable=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Reviewer(Base):
    __tablename__ = "reviewers"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    username: Mapped[str] = mapped_column(String(128), unique=True)
    password_hash: Mapped[str] = mapped_column(String(256))
    role: Mapped[str] = mapped_column(String(16), default="reviewer")  # reviewer | admin
    tenants: Mapped[list] = mapped_column(JSON, default=list)  # ["*"] = all tenants
    api_token_hash: Mapped[str | None] = mapped_column(String(128), nullable=True, unique=True)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # bumped by sign-out, deactivation and password changes: every session cookie that carries
    # an older epoch is refused (server-side sign-out)
    session_epoch: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class CollectorKey(Base):
    """Per-tenant API keys of the log collector (only a hash is stored)."""

    __tablename__ = "collector_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(String(128))
    key_hash: Mapped[str] = mapped_column(String(128), unique=True)
    label: Mapped[str | None] = mapped_column(String(128), nullable=True)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class AuditAttempt(Base):
    """One auditing attempt of one interaction by one auditor + prompt version (idempotency)."""

    __tablename__ = "audit_attempts"
    __table_args__ = (
        UniqueConstraint("tenant_id", "interaction_id", "auditor", "prompt_version",
                         name="uq_audit_attempt"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    interaction_id: Mapped[str] = mapped_column(String(256))
    tenant_id: Mapped[str] = mapped_column(String(128), default="default")
    auditor: Mapped[str] = mapped_column(String(128))
    prompt_version: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))  # ok | failed
    is_error: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=1)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


DATASET_KINDS = ("training", "eval_suite")
DATASET_SPLITS = ("train", "validation", "eval", "retention")


class Dataset(Base):
    """One immutable, versioned dataset: a training dataset (train + validation splits) or an
    evaluation suite (eval + retention sets). ``version_hash`` is the content hash (same spec over
    the same data, same hash); ``version`` is its ordinal within (kind, name)."""

    __tablename__ = "datasets"
    __table_args__ = (
        UniqueConstraint("kind", "name", "version", name="uq_dataset_version"),
        UniqueConstraint("kind", "name", "version_hash", name="uq_dataset_hash"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(16), default="training",
                                      server_default="training")  # training | eval_suite
    name: Mapped[str] = mapped_column(String(128))
    version: Mapped[int] = mapped_column(Integer)
    version_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    parent_version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    status: Mapped[str] = mapped_column(String(16), default="ready")
    n_train: Mapped[int] = mapped_column(Integer, default=0)
    n_validation: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    n_eval: Mapped[int] = mapped_column(Integer, default=0)  # eval suites: evaluation items
    n_retention: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    spec: Mapped[dict] = mapped_column(JSON, default=dict, server_default=text("'{}'"))
    filters: Mapped[dict] = mapped_column(JSON, default=dict)
    counts: Mapped[dict] = mapped_column(JSON, default=dict, server_default=text("'{}'"))
    stats: Mapped[dict] = mapped_column(JSON, default=dict)
    # format -> the export's file or folder, relative to ``path``
    exports: Mapped[dict] = mapped_column(JSON, default=dict, server_default=text("'{}'"))
    path: Mapped[str | None] = mapped_column(Text, nullable=True)
    checksum: Mapped[str | None] = mapped_column(String(128), nullable=True)
    created_by: Mapped[str | None] = mapped_column(String(128), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class DatasetItem(Base):
    """One example of a dataset version and its split. ``item_key`` names where it came from
    (``sample:<review item id>`` or ``interaction:<tenant>/<interaction id>``); ``prompt_hash`` is
    the SHA-256 of the normalised prompt, so an evaluation item is recognised in a training set
    even when it arrives under another key."""

    __tablename__ = "dataset_items"
    __table_args__ = (
        UniqueConstraint("dataset_id", "item_key", name="uq_dataset_item"),
        Index("ix_dataset_items_key", "item_key"),
        Index("ix_dataset_items_prompt", "prompt_hash"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id"))
    item_key: Mapped[str] = mapped_column(String(300))
    review_item_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    split: Mapped[str] = mapped_column(String(16))  # train | validation | eval | retention
    source: Mapped[str | None] = mapped_column(String(64), nullable=True)
    category: Mapped[str | None] = mapped_column(String(64), nullable=True)
    tenant_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    session_key: Mapped[str | None] = mapped_column(String(300), nullable=True)
    prompt_hash: Mapped[str] = mapped_column(String(64))
    example_hash: Mapped[str] = mapped_column(String(64))


class TrainingRun(Base):
    """One training of a candidate model: local LoRA (+ optional DPO) or a provider fine-tune.

    ``status``: queued | running | succeeded | failed | cancelled. A provider run stays
    ``running`` until ``provider_job_sensor`` sees its job end. ``model_version`` is the MLflow
    registry version the run produced."""

    __tablename__ = "training_runs"
    __table_args__ = (
        UniqueConstraint("provider", "provider_job_id", name="uq_training_provider_job"),
        Index("ix_training_runs_status", "status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    dataset_id: Mapped[int | None] = mapped_column(ForeignKey("datasets.id"), nullable=True)
    method: Mapped[str] = mapped_column(String(32))  # lora | lora+dpo | openai | gemini
    base_model: Mapped[str] = mapped_column(String(256))
    status: Mapped[str] = mapped_column(String(16), default="queued")
    mlflow_run_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    model_version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    params: Mapped[dict] = mapped_column(JSON, default=dict)
    metrics: Mapped[dict] = mapped_column(JSON, default=dict)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    model_name: Mapped[str | None] = mapped_column(String(256), nullable=True)
    dataset_version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    dagster_run_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    provider: Mapped[str | None] = mapped_column(String(32), nullable=True)
    provider_job_id: Mapped[str | None] = mapped_column(String(256), nullable=True)
    provider_model_id: Mapped[str | None] = mapped_column(String(256), nullable=True)
    cost_usd: Mapped[float | None] = mapped_column(Float, nullable=True)
    progress: Mapped[dict] = mapped_column(JSON, default=dict)
    updated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class ModelEvaluation(Base):
    """A candidate evaluated against the champion on the evaluation suite and the retention set,
    with the quality gate's verdict (``gate``: thresholds, failures)."""

    __tablename__ = "model_evaluations"
    __table_args__ = (Index("ix_model_evaluations_candidate", "model_name", "candidate_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_name: Mapped[str] = mapped_column(String(256))
    candidate_version: Mapped[str] = mapped_column(String(64))
    champion_version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    eval_suite_version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    dataset_version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    training_run_id: Mapped[int | None] = mapped_column(ForeignKey("training_runs.id"),
                                                        nullable=True)
    candidate: Mapped[dict] = mapped_column(JSON, default=dict)
    champion: Mapped[dict] = mapped_column(JSON, default=dict)
    comparison: Mapped[dict] = mapped_column(JSON, default=dict)
    gate: Mapped[dict] = mapped_column(JSON, default=dict)
    passed: Mapped[bool] = mapped_column(Boolean)
    mlflow_run_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    dagster_run_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


DEPLOYMENT_ACTIONS = ("set_challenger", "clear_challenger", "start_experiment", "advance",
                      "promote", "rollback", "archive")


class ModelDeployment(Base):
    """Every change of who serves: an alias set, moved or cleared, an experiment started or
    advanced, a version archived; with who or which trigger did it (``actor``), why, and the
    figures it rested on. Append-only but for ``status``/``ended_at``: the row of the alias's
    current holder is ``active`` until another version takes the alias (``retired``) or a
    rollback removes it (``rolled_back``)."""

    __tablename__ = "model_deployments"
    __table_args__ = (Index("ix_model_deployments_alias", "model_name", "alias", "status"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_name: Mapped[str] = mapped_column(String(256))
    model_version: Mapped[str] = mapped_column(String(64))
    alias: Mapped[str] = mapped_column(String(32))  # champion | challenger | archived
    status: Mapped[str] = mapped_column(String(16), default="active")  # active | retired | rolled_back
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    action: Mapped[str] = mapped_column(String(32), server_default="promote")
    actor: Mapped[str] = mapped_column(String(128), server_default="unknown")
    previous_version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    figures: Mapped[dict] = mapped_column(JSON, default=dict, server_default=text("'{}'"))
    experiment_id: Mapped[int | None] = mapped_column(ForeignKey("experiments.id"), nullable=True)
    dagster_run_id: Mapped[str | None] = mapped_column(String(64), nullable=True)


EXPERIMENT_STATUSES = ("running", "promoted", "rolled_back", "stopped")


class Experiment(Base):
    """An A/B test of the challenger (treatment) against the champion (control): staged traffic
    (``stages``, the treatment's share at each; ``stage`` the index now), the policy it is
    decided by, and its outcome. ``version`` makes every move a compare-and-set: two deciders
    never overwrite each other silently."""

    __tablename__ = "experiments"
    __table_args__ = (
        Index("ix_experiments_model_status", "model_name", "status"),
        # at most one running experiment per registered model, even for two starts at once
        Index("uq_experiments_one_running", "model_name", unique=True,
              sqlite_where=text("status = 'running'"),
              postgresql_where=text("status = 'running'")),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    champion_version: Mapped[str] = mapped_column(String(64))
    challenger_version: Mapped[str] = mapped_column(String(64))
    traffic_split: Mapped[float] = mapped_column(Float, default=0.1)  # the treatment's share now
    status: Mapped[str] = mapped_column(String(16), default="running")
    result: Mapped[dict] = mapped_column(JSON, default=dict)  # the latest decision's figures
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    model_name: Mapped[str] = mapped_column(String(256), server_default="")
    stages: Mapped[list] = mapped_column(JSON, default=list, server_default=text("'[]'"))
    stage: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    stage_started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True),
                                                              nullable=True)
    subject_key: Mapped[str] = mapped_column(String(16), server_default="user")  # user | session
    policy: Mapped[dict] = mapped_column(JSON, default=dict, server_default=text("'{}'"))
    decision: Mapped[str | None] = mapped_column(String(32), nullable=True)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    started_by: Mapped[str] = mapped_column(String(128), server_default="unknown")
    version: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    updated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class ExperimentDecision(Base):
    """Append-only: every look at an experiment (continue, advance, promote, rollback, stop) with
    every figure it rested on (per-arm metrics, tests, thresholds)."""

    __tablename__ = "experiment_decisions"
    __table_args__ = (Index("ix_experiment_decisions_experiment", "experiment_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiments.id"))
    action: Mapped[str] = mapped_column(String(32))  # continue | advance | promote | rollback | stop
    stage: Mapped[int] = mapped_column(Integer)
    traffic_split: Mapped[float] = mapped_column(Float)
    reason: Mapped[str] = mapped_column(Text)
    figures: Mapped[dict] = mapped_column(JSON, default=dict)
    actor: Mapped[str] = mapped_column(String(128))
    dagster_run_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


ALERT_KINDS = ("quality_degradation", "provider_error_rate", "cost_over_budget", "rollback",
               "gate_failed", "review_queue_stalled", "experiment_decided")


class Alert(Base):
    """An alert: raised once per ``dedupe_key`` while it is open (a repeat counts in
    ``occurrences`` and ``last_seen_at``); ``notified`` lists the channels that delivered it."""

    __tablename__ = "alerts"
    __table_args__ = (Index("ix_alerts_dedupe_key", "dedupe_key"),
                      Index("ix_alerts_status", "status"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(64))
    severity: Mapped[str] = mapped_column(String(16), default="warning")
    message: Mapped[str] = mapped_column(Text)
    details: Mapped[dict] = mapped_column(JSON, default=dict)
    acknowledged: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    dedupe_key: Mapped[str] = mapped_column(String(300), server_default="")
    source: Mapped[str] = mapped_column(String(128), server_default="")
    status: Mapped[str] = mapped_column(String(16), server_default="open")  # open | acknowledged | resolved
    occurrences: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    last_seen_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    notified: Mapped[list] = mapped_column(JSON, default=list, server_default=text("'[]'"))
    notified_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    acknowledged_by: Mapped[str | None] = mapped_column(String(128), nullable=True)
    acknowledged_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True),
                                                             nullable=True)


class ServedTurn(Base):
    """A reply the serving API gave, waiting for its feedback before it goes to the landing zone
    as a whole interaction record (``record``, the interaction record contract). Feedback and
    signals merge into it while it waits (the session's next turn marks it ``user_continued``);
    it is written (``flushed_at`` set) when the session ends, the feedback window passes
    (LEARNLOOP_SERVE_FEEDBACK_WINDOW_S) or ``learnloop serving flush`` runs; nothing is lost if the
    service restarts in between (store/serving.py)."""

    __tablename__ = "served_turns"
    __table_args__ = (Index("ix_served_turns_session", "session_id"),
                      Index("ix_served_turns_pending", "flushed_at", "created_at"))

    interaction_id: Mapped[str] = mapped_column(String(256), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(128))
    session_id: Mapped[str] = mapped_column(String(256))
    subject: Mapped[str] = mapped_column(String(256))
    model_version: Mapped[str] = mapped_column(String(64))
    experiment_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    arm: Mapped[str | None] = mapped_column(String(16), nullable=True)
    record: Mapped[dict] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    flushed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    landing_file: Mapped[str | None] = mapped_column(Text, nullable=True)


class ConfigHistory(Base):
    """Every configuration change, with who made it and the old and new value."""

    __tablename__ = "config_history"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    key: Mapped[str] = mapped_column(String(128))
    old_value: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    new_value: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    changed_by: Mapped[str] = mapped_column(String(128))
    changed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


RETENTION_ACTIONS = ("archive", "delete")


class RetentionEvent(Base):
    """Append-only record of each archive and deletion of landing data: who, when, why, which
    day and files, and what it removed (rows per warehouse table, review items closed, ...)."""

    __tablename__ = "retention_events"
    __table_args__ = (Index("ix_retention_events_day", "day"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    action: Mapped[str] = mapped_column(String(16))  # archive | delete
    day: Mapped[str] = mapped_column(String(10))  # the landing day, YYYY-MM-DD
    actor: Mapped[str] = mapped_column(String(128))
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    files: Mapped[list] = mapped_column(JSON, default=list)
    counts: Mapped[dict] = mapped_column(JSON, default=dict)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
