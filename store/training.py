"""Training runs and model evaluations in the operational store.

A training run moves ``queued -> running -> succeeded | failed | cancelled``; every move is a
compare-and-set on the status it expects (:func:`move_training_run`), so a sensor and a person
cancelling the same provider job never overwrite each other silently: the loser gets
:class:`StaleTrainingRun`. An evaluation is append-only (one row per candidate evaluated).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from store.models import ModelEvaluation, TrainingRun
from store.repo import NotFound

RUN_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
ACTIVE = ("queued", "running")
FINAL = ("succeeded", "failed", "cancelled")
RUN_FIELDS = frozenset(c.name for c in TrainingRun.__table__.columns) - {"id"}


class StaleTrainingRun(RuntimeError):
    """The run's status was not the one the caller expected (someone else moved it)."""


def _now() -> datetime:
    return datetime.now(UTC)


def create_training_run(session: Session, *, method: str, base_model: str, model_name: str,
                        status: str = "running", **fields: Any) -> TrainingRun:
    """A new run (default ``running``); ``fields`` are other ``TrainingRun`` columns."""
    if status not in RUN_STATUSES:
        raise ValueError(f"training run status must be one of {list(RUN_STATUSES)}, got {status!r}")
    unknown = set(fields) - RUN_FIELDS
    if unknown:
        raise ValueError(f"unknown training run fields: {sorted(unknown)}")
    run = TrainingRun(method=method, base_model=base_model, model_name=model_name, status=status,
                      updated_at=_now(), **fields)
    session.add(run)
    session.flush()
    return run


def get_training_run(session: Session, run_id: int) -> TrainingRun:
    run = session.get(TrainingRun, run_id)
    if run is None:
        raise NotFound(f"training run {run_id} does not exist")
    return run


def move_training_run(session: Session, run_id: int, *, expect: Sequence[str] | str,
                      **fields: Any) -> TrainingRun:
    """Set ``fields`` on run ``run_id`` if its status is one of ``expect``; a final status
    (succeeded/failed/cancelled) also sets ``finished_at``. Raises :class:`StaleTrainingRun` when
    the status is not expected (e.g. the job was cancelled meanwhile), :class:`NotFound` when the
    run does not exist."""
    expect = (expect,) if isinstance(expect, str) else tuple(expect)
    unknown = set(fields) - RUN_FIELDS
    if unknown:
        raise ValueError(f"unknown training run fields: {sorted(unknown)}")
    status = fields.get("status")
    if status is not None and status not in RUN_STATUSES:
        raise ValueError(f"training run status must be one of {list(RUN_STATUSES)}, got {status!r}")
    values = dict(fields, updated_at=_now())
    if status in FINAL and "finished_at" not in values:
        values["finished_at"] = _now()
    res = session.execute(update(TrainingRun)
                          .where(TrainingRun.id == run_id, TrainingRun.status.in_(expect))
                          .values(**values).execution_options(synchronize_session=False))
    if res.rowcount != 1:
        current = session.get(TrainingRun, run_id)
        if current is None:
            raise NotFound(f"training run {run_id} does not exist")
        session.refresh(current)
        raise StaleTrainingRun(f"training run {run_id} is {current.status!r}, expected one of "
                               f"{list(expect)}: it was moved by someone else")
    session.flush()
    run = session.get(TrainingRun, run_id)
    session.refresh(run)
    return run


def active_provider_runs(session: Session) -> list[TrainingRun]:
    """Provider fine-tunes still queued or running (what ``provider_job_sensor`` follows)."""
    return list(session.scalars(select(TrainingRun).where(
        TrainingRun.provider.is_not(None), TrainingRun.status.in_(ACTIVE))
        .order_by(TrainingRun.id)))


def list_training_runs(session: Session, *, model_name: str | None = None,
                       limit: int = 50) -> list[TrainingRun]:
    q = select(TrainingRun).order_by(TrainingRun.id.desc()).limit(limit)
    if model_name:
        q = q.where(TrainingRun.model_name == model_name)
    return list(session.scalars(q))


def training_run_for_version(session: Session, model_name: str,
                             model_version: str) -> TrainingRun | None:
    return session.scalar(select(TrainingRun).where(
        TrainingRun.model_name == model_name, TrainingRun.model_version == str(model_version))
        .order_by(TrainingRun.id.desc()).limit(1))


def run_summary(run: TrainingRun) -> dict[str, Any]:
    return {
        "id": run.id, "model_name": run.model_name, "method": run.method,
        "base_model": run.base_model, "status": run.status, "dataset_id": run.dataset_id,
        "dataset_version": run.dataset_version, "model_version": run.model_version,
        "mlflow_run_id": run.mlflow_run_id, "dagster_run_id": run.dagster_run_id,
        "provider": run.provider, "provider_job_id": run.provider_job_id,
        "provider_model_id": run.provider_model_id, "cost_usd": run.cost_usd,
        "params": run.params or {}, "metrics": run.metrics or {}, "progress": run.progress or {},
        "error": run.error,
        "started_at": run.started_at.isoformat() if run.started_at else None,
        "finished_at": run.finished_at.isoformat() if run.finished_at else None,
    }


# ---- evaluations ------------------------------------------------------------------------------

def record_evaluation(session: Session, *, model_name: str, candidate_version: str,
                      candidate: dict, champion: dict, comparison: dict, gate: dict,
                      passed: bool, **fields: Any) -> ModelEvaluation:
    row = ModelEvaluation(model_name=model_name, candidate_version=str(candidate_version),
                          candidate=candidate, champion=champion, comparison=comparison,
                          gate=gate, passed=bool(passed), created_at=_now(), **fields)
    session.add(row)
    session.flush()
    return row


def latest_evaluation(session: Session, model_name: str,
                      candidate_version: str | None = None) -> ModelEvaluation | None:
    q = select(ModelEvaluation).where(ModelEvaluation.model_name == model_name)
    if candidate_version is not None:
        q = q.where(ModelEvaluation.candidate_version == str(candidate_version))
    return session.scalar(q.order_by(ModelEvaluation.id.desc()).limit(1))


def list_evaluations(session: Session, model_name: str | None = None,
                     limit: int = 50) -> list[ModelEvaluation]:
    q = select(ModelEvaluation).order_by(ModelEvaluation.id.desc()).limit(limit)
    if model_name:
        q = q.where(ModelEvaluation.model_name == model_name)
    return list(session.scalars(q))


def evaluation_summary(ev: ModelEvaluation) -> dict[str, Any]:
    return {
        "id": ev.id, "model_name": ev.model_name, "candidate_version": ev.candidate_version,
        "champion_version": ev.champion_version, "eval_suite_version": ev.eval_suite_version,
        "dataset_version": ev.dataset_version, "training_run_id": ev.training_run_id,
        "candidate": ev.candidate, "champion": ev.champion, "comparison": ev.comparison,
        "gate": ev.gate, "passed": ev.passed, "mlflow_run_id": ev.mlflow_run_id,
        "dagster_run_id": ev.dagster_run_id,
        "created_at": ev.created_at.isoformat() if ev.created_at else None,
    }
