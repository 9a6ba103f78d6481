"""Deployments and A/B experiments in the operational store.

* ``model_deployments``: every change of who serves, append-only but for the ``status`` of an
  alias's holder (:func:`record_deployment`). The MLflow aliases are the serving truth; these
  rows say who moved them, when, why and on which figures.
* ``experiments``: at most one ``running`` experiment per registered model
  (:func:`start_experiment` refuses a second). Every move (:func:`advance_experiment`,
  :func:`finish_experiment`) is a compare-and-set on the experiment's ``version``: two deciders
  (the sensor and a person) never overwrite each other silently, the loser gets
  :class:`StaleExperiment`.
* ``experiment_decisions``: append-only, every look at an experiment with its figures.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from store.models import (
    DEPLOYMENT_ACTIONS,
    EXPERIMENT_STATUSES,
    Experiment,
    ExperimentDecision,
    ModelDeployment,
)
from store.repo import NotFound

ALIASES = ("champion", "challenger", "archived")
DECISION_ACTIONS = ("continue", "advance", "promote", "rollback", "stop")
FINAL_DECISIONS = {"promote": "promoted", "rollback": "rolled_back", "stop": "stopped"}


class StaleExperiment(RuntimeError):
    """The experiment moved since the caller read it (another decider won)."""


class ExperimentConflict(RuntimeError):
    """A second running experiment for the same registered model."""


def _now() -> datetime:
    return datetime.now(UTC)


def _check(value: str, allowed: Sequence[str], what: str) -> None:
    if value not in allowed:
        raise ValueError(f"{what} must be one of {list(allowed)}, got {value!r}")


# -- deployments ---------------------------------------------------------------------------------


def record_deployment(session: Session, *, model_name: str, model_version: str, alias: str,
                      action: str, actor: str, reason: str | None = None,
                      figures: dict[str, Any] | None = None,
                      previous_version: str | None = None, experiment_id: int | None = None,
                      dagster_run_id: str | None = None) -> ModelDeployment:
    """Record one change. For ``champion`` and ``challenger`` the alias's earlier active row ends
    (``rolled_back`` when ``action`` is a rollback, else ``retired``) and the new row is the
    active one; ``clear_challenger`` ends the challenger's row and adds a ``retired`` row saying
    why; ``archived`` rows are a plain record."""
    _check(alias, ALIASES, "alias")
    _check(action, DEPLOYMENT_ACTIONS, "action")
    if not actor:
        raise ValueError("record_deployment: actor (who or which trigger) is required")
    now = _now()
    ended = "rolled_back" if action == "rollback" else "retired"
    if alias in ("champion", "challenger"):
        session.execute(update(ModelDeployment).where(
            ModelDeployment.model_name == model_name, ModelDeployment.alias == alias,
            ModelDeployment.status == "active").values(status=ended, ended_at=now))
    status = "active"
    if action == "clear_challenger" or alias == "archived":
        status = "retired"
    row = ModelDeployment(model_name=model_name, model_version=str(model_version), alias=alias,
                          action=action, actor=actor, reason=reason, figures=dict(figures or {}),
                          previous_version=None if previous_version is None
                          else str(previous_version),
                          experiment_id=experiment_id, dagster_run_id=dagster_run_id,
                          status=status, created_at=now,
                          ended_at=now if status != "active" else None)
    session.add(row)
    session.flush()
    return row


def active_version(session: Session, model_name: str, alias: str) -> str | None:
    """The version the store says holds ``alias`` (None when no active row)."""
    return session.scalar(select(ModelDeployment.model_version).where(
        ModelDeployment.model_name == model_name, ModelDeployment.alias == alias,
        ModelDeployment.status == "active").order_by(ModelDeployment.id.desc()).limit(1))


def deployment_history(session: Session, model_name: str | None = None,
                       limit: int = 50) -> list[ModelDeployment]:
    q = select(ModelDeployment).order_by(ModelDeployment.id.desc()).limit(limit)
    if model_name is not None:
        q = q.where(ModelDeployment.model_name == model_name)
    return list(session.scalars(q))


def champion_lineage(session: Session, model_name: str) -> list[str]:
    """Every version that held ``champion``, newest first, each once (the current one first when
    it is recorded); a rolled-back champion is left out: a version whose latest time as champion
    ended in a rollback, even when it had held the alias before (a version re-promoted after a
    rollback is back in)."""
    rows = session.scalars(select(ModelDeployment).where(
        ModelDeployment.model_name == model_name, ModelDeployment.alias == "champion")
        .order_by(ModelDeployment.id.desc()))
    out: list[str] = []
    seen: set[str] = set()
    for r in rows:
        if r.model_version in seen:
            continue
        seen.add(r.model_version)  # the version's newest champion row decides
        if r.status != "rolled_back":
            out.append(r.model_version)
    return out


def deployment_dict(row: ModelDeployment) -> dict[str, Any]:
    return {"id": row.id, "model_name": row.model_name, "model_version": row.model_version,
            "alias": row.alias, "action": row.action, "status": row.status, "actor": row.actor,
            "reason": row.reason, "figures": row.figures or {},
            "previous_version": row.previous_version, "experiment_id": row.experiment_id,
            "dagster_run_id": row.dagster_run_id,
            "created_at": row.created_at.isoformat() if row.created_at else None,
            "ended_at": row.ended_at.isoformat() if row.ended_at else None}


# -- experiments ---------------------------------------------------------------------------------


def start_experiment(session: Session, *, model_name: str, champion_version: str,
                     challenger_version: str, stages: Sequence[float], policy: dict[str, Any],
                     subject_key: str, started_by: str, name: str | None = None) -> Experiment:
    """A new running experiment at stage 0. Raises :class:`ExperimentConflict` when the model
    already has a running one, ValueError on bad stages (increasing shares in (0, 1])."""
    _check(subject_key, ("user", "session"), "subject_key")
    shares = [float(s) for s in stages]
    if not shares or any(not 0 < s <= 1 for s in shares) or shares != sorted(set(shares)):
        raise ValueError(f"stages must be increasing treatment shares in (0, 1], got {list(stages)}")
    if str(champion_version) == str(challenger_version):
        raise ValueError(f"the challenger v{challenger_version} is the champion: nothing to test")
    running = running_experiment(session, model_name)
    if running is not None:
        raise ExperimentConflict(
            f"{model_name} already has a running experiment #{running.id} ({running.name}: "
            f"v{running.challenger_version} against v{running.champion_version}); stop it first")
    now = _now()
    exp = Experiment(name=name or f"{model_name}-v{challenger_version}-vs-v{champion_version}-"
                                  f"{now.strftime('%Y%m%dT%H%M%S%f')}",
                     model_name=model_name, champion_version=str(champion_version),
                     challenger_version=str(challenger_version), stages=shares, stage=0,
                     traffic_split=shares[0], status="running", result={}, policy=dict(policy),
                     subject_key=subject_key, started_by=started_by, started_at=now,
                     stage_started_at=now, version=1, updated_at=now)
    session.add(exp)
    session.flush()
    return exp


def running_experiment(session: Session, model_name: str) -> Experiment | None:
    return session.scalar(select(Experiment).where(
        Experiment.model_name == model_name, Experiment.status == "running")
        .order_by(Experiment.id.desc()).limit(1))


def get_experiment(session: Session, experiment_id: int) -> Experiment:
    exp = session.get(Experiment, experiment_id)
    if exp is None:
        raise NotFound(f"experiment #{experiment_id} does not exist")
    return exp


def list_experiments(session: Session, model_name: str | None = None,
                     limit: int = 20) -> list[Experiment]:
    q = select(Experiment).order_by(Experiment.id.desc()).limit(limit)
    if model_name is not None:
        q = q.where(Experiment.model_name == model_name)
    return list(session.scalars(q))


def last_decided_experiment(session: Session, model_name: str | None = None) -> Experiment | None:
    q = select(Experiment).where(Experiment.status != "running")
    if model_name is not None:
        q = q.where(Experiment.model_name == model_name)
    return session.scalar(q.order_by(Experiment.ended_at.desc(), Experiment.id.desc()).limit(1))


def _cas(session: Session, exp: Experiment, expected_version: int, **values: Any) -> Experiment:
    res = session.execute(update(Experiment).where(
        Experiment.id == exp.id, Experiment.version == expected_version,
        Experiment.status == "running").values(version=expected_version + 1, updated_at=_now(),
                                               **values))
    if res.rowcount != 1:
        session.refresh(exp)
        raise StaleExperiment(f"experiment #{exp.id} changed meanwhile (now version "
                              f"{exp.version}, status {exp.status}, stage {exp.stage}); read it "
                              f"again before deciding")
    session.refresh(exp)
    return exp


def advance_experiment(session: Session, experiment_id: int, expected_version: int,
                       result: dict[str, Any]) -> Experiment:
    """Move a running experiment to its next stage (the treatment's next share)."""
    exp = get_experiment(session, experiment_id)
    # the next stage is computed from the row as stored now, not from a copy this session read
    # earlier: with a fresh ``expected_version`` and a stale copy the move would repeat a stage
    session.refresh(exp)
    if exp.stage + 1 >= len(exp.stages):
        raise ValueError(f"experiment #{exp.id} is at its last stage ({exp.stages[exp.stage]:.0%})")
    nxt = exp.stage + 1
    return _cas(session, exp, expected_version, stage=nxt, traffic_split=float(exp.stages[nxt]),
                stage_started_at=_now(), result=result)


def finish_experiment(session: Session, experiment_id: int, expected_version: int, decision: str,
                      reason: str, result: dict[str, Any]) -> Experiment:
    """End a running experiment: ``promote`` (the challenger won), ``rollback`` (it lost, or a
    guardrail tripped) or ``stop`` (no winner, or stopped by a person)."""
    _check(decision, tuple(FINAL_DECISIONS), "decision")
    exp = get_experiment(session, experiment_id)
    return _cas(session, exp, expected_version, status=FINAL_DECISIONS[decision],
                decision=decision, reason=reason, result=result, ended_at=_now())


def update_result(session: Session, experiment_id: int, expected_version: int,
                  result: dict[str, Any]) -> Experiment:
    """Keep the latest figures on a running experiment (a ``continue`` decision)."""
    exp = get_experiment(session, experiment_id)
    return _cas(session, exp, expected_version, result=result)


def record_decision(session: Session, *, experiment_id: int, action: str, stage: int,
                    traffic_split: float, reason: str, figures: dict[str, Any], actor: str,
                    dagster_run_id: str | None = None) -> ExperimentDecision:
    _check(action, DECISION_ACTIONS, "action")
    row = ExperimentDecision(experiment_id=experiment_id, action=action, stage=stage,
                             traffic_split=float(traffic_split), reason=reason,
                             figures=dict(figures), actor=actor, dagster_run_id=dagster_run_id,
                             created_at=_now())
    session.add(row)
    session.flush()
    return row


def experiment_decisions(session: Session, experiment_id: int) -> list[ExperimentDecision]:
    return list(session.scalars(select(ExperimentDecision).where(
        ExperimentDecision.experiment_id == experiment_id).order_by(ExperimentDecision.id)))


def experiment_dict(exp: Experiment, decisions: Sequence[ExperimentDecision] = ()
                    ) -> dict[str, Any]:
    iso = lambda t: t.isoformat() if t else None  # noqa: E731
    out = {"id": exp.id, "name": exp.name, "model_name": exp.model_name,
           "champion_version": exp.champion_version,
           "challenger_version": exp.challenger_version, "status": exp.status,
           "stages": list(exp.stages or []), "stage": exp.stage,
           "traffic_split": exp.traffic_split, "subject_key": exp.subject_key,
           "policy": exp.policy or {}, "decision": exp.decision, "reason": exp.reason,
           "result": exp.result or {}, "started_by": exp.started_by, "version": exp.version,
           "started_at": iso(exp.started_at), "stage_started_at": iso(exp.stage_started_at),
           "ended_at": iso(exp.ended_at)}
    if decisions:
        out["decisions"] = [{"id": d.id, "action": d.action, "stage": d.stage,
                             "traffic_split": d.traffic_split, "reason": d.reason,
                             "actor": d.actor, "created_at": iso(d.created_at)}
                            for d in decisions]
    return out


__all__ = ["ALIASES", "DECISION_ACTIONS", "EXPERIMENT_STATUSES", "ExperimentConflict",
           "StaleExperiment", "active_version", "advance_experiment", "champion_lineage",
           "deployment_dict", "deployment_history", "experiment_decisions", "experiment_dict",
           "finish_experiment", "get_experiment", "last_decided_experiment", "list_experiments",
           "record_decision", "record_deployment", "running_experiment", "start_experiment",
           "update_result"]
