"""Stage `deployment`: who serves. The MLflow aliases are the serving truth (``champion`` serves
everyone, ``challenger`` the treatment share of a running A/B experiment); every change is also a
row of ``model_deployments`` in the operational store (who, why, on which figures), so the
history, the lineage of champions and the deployable versions come from the store.

Lifecycle functions (used by the assets below and by ``learnloop models``):

* :func:`set_challenger` / :func:`clear_challenger`: the challenger alias;
* :func:`promote`: the champion alias moves to a version (the challenger alias goes when it
  pointed at it); the last ``keep`` champions stay deployable (version tag
  ``learnloop.deployment`` = ``champion`` / ``deployable``), older ones are ``archived`` with an
  ``archive`` row (:func:`enforce_keep`);
* :func:`rollback`: the champion returns to an earlier deployable champion (default: the
  previous one), or, when the target is the champion itself, the challenger is dropped; the
  version that lost is tagged ``rolled_back``;
* :func:`stop_experiment`: a person (or the asset's ``stop`` action) ends the running experiment.

Each one ends a running experiment that the change makes meaningless (decision ``promote``,
``rollback`` or ``stop`` with the actor's reason), writes the store rows first and moves the
aliases last, inside the caller's transaction: a registry error rolls the rows back.

Assets: ``ab_experiment`` (starts an experiment for a new challenger, then decides it stage by
stage from the served interactions in the warehouse with ``ml.deploy``) and ``model_deployment``
(the state after it: champion, challenger, deployable and archived versions, last decisions).
See docs/deployment.md.
"""


import getpass
import json
import math
import os
from datetime import UTC, datetime
from typing import Any

import dagster as dg
from pydantic import Field

from assets.catalog import catalog, with_metadata
from assets.resources import (
    WAREHOUSE_POOL,
    ModelRegistryResource,
    OperationalStoreResource,
    WarehouseResource,
)
from ml.config import Settings
from store import deployments as dep

DEPLOYMENT_TAG = "learnloop.deployment"
"""Version tag: champion | deployable | archived | rolled_back."""
KEEP_DEPLOYABLE = 3
"""How many of the latest champions (the current one included) stay deployable."""
DEPLOYABLE_CHECK = "check_champion_is_deployable"
ACTIONS = ("decide", "start", "stop")
ASSET_ACTOR = "asset:ab_experiment"


def cli_actor() -> str:
    """``cli:<OS user>`` (the user id when the system has no name for it)."""
    try:
        return f"cli:{getpass.getuser()}"
    except OSError:  # no login name, no USER/LOGNAME and no passwd entry (some containers)
        return f"cli:uid-{os.getuid()}"


def clean(obj: Any) -> Any:
    """``obj`` made JSON-safe for the store (PostgreSQL's JSON refuses NaN and Infinity): numbers
    that are not finite become None, tuples lists, other objects their ``str``."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean(v) for v in obj]
    if obj is None or isinstance(obj, (str, int, bool)):
        return obj
    if isinstance(obj, datetime):
        return obj.isoformat()
    return json.loads(json.dumps(obj, default=str))


def _v(version: str | int | None) -> str:
    return "-" if version is None else f"v{version}"


def _versions(versions) -> str:
    return ", ".join(_v(v) for v in versions) or "none"


# ---- the lineage of champions -----------------------------------------------------------------
def archived_versions(session, model_name: str) -> list[str]:
    """Versions archived (an ``archive`` row) and not made champion again since, oldest
    first."""
    archived: dict[str, None] = {}
    for row in reversed(dep.deployment_history(session, model_name, limit=1_000_000)):
        if row.alias == "champion":
            archived.pop(row.model_version, None)
        elif row.alias == "archived":
            archived[row.model_version] = None
    return list(archived)


def lineage(registry, session) -> list[str]:
    """Every version that held ``champion``, was not rolled back and is not archived, newest
    first; the current champion (the alias) first even when no row recorded it."""
    champion = registry.alias_version("champion")
    archived = set(archived_versions(session, registry.model_name))
    rows = [v for v in dep.champion_lineage(session, registry.model_name) if v not in archived]
    if champion is None:
        return rows
    return [champion] + [v for v in rows if v != champion]


def deployable_versions(registry, session, keep: int = KEEP_DEPLOYABLE) -> list[str]:
    """The last ``keep`` champions (the current one first): what a rollback may return to."""
    if keep < 1:
        raise ValueError(f"keep must be at least 1 (the champion), got {keep}")
    return lineage(registry, session)[:keep]


def _tag(registry, version: str, value: str) -> bool:
    """Set the deployment tag of ``version``; True when it changed."""
    if registry.version(version).tags.get(DEPLOYMENT_TAG) == value:
        return False
    registry.set_version_tag(version, DEPLOYMENT_TAG, value)
    return True


def enforce_keep(registry, session, keep: int = KEEP_DEPLOYABLE, *, actor: str,
                 dagster_run_id: str | None = None) -> dict[str, Any]:
    """Tag the last ``keep`` champions ``champion`` / ``deployable`` and archive the older ones
    (tag ``archived`` and an ``archive`` row, once per version). Returns ``{"deployable",
    "archived_now"}``."""
    found = lineage(registry, session)
    if keep < 1:
        raise ValueError(f"keep must be at least 1 (the champion), got {keep}")
    keep_these, older = found[:keep], found[keep:]
    champion = registry.alias_version("champion")
    for v in keep_these:
        _tag(registry, v, "champion" if v == champion else "deployable")
    archived = []
    for v in older:  # not archived yet (lineage leaves archived versions out)
        _tag(registry, v, "archived")
        dep.record_deployment(
            session, model_name=registry.model_name, model_version=v, alias="archived",
            action="archive", actor=actor,
            reason=f"older than the last {keep} champions ({_versions(keep_these)})",
            figures={"keep": keep, "deployable": keep_these}, dagster_run_id=dagster_run_id)
        archived.append(v)
    return {"deployable": keep_these, "archived_now": archived}


# ---- ending an experiment that a change makes meaningless -------------------------------------
def _end_running(registry, session, *, decision: str, reason: str, actor: str,
                 dagster_run_id: str | None, spare: int | None = None) -> int | None:
    """Finish the model's running experiment (unless it is ``spare``, which its caller ends
    itself) with ``decision``; returns its id."""
    exp = dep.running_experiment(session, registry.model_name)
    if exp is None or exp.id == spare:
        return None
    result = dict(exp.result or {})
    stage, share = exp.stage, exp.traffic_split
    dep.finish_experiment(session, exp.id, exp.version, decision, reason, result)
    dep.record_decision(session, experiment_id=exp.id, action=decision, stage=stage,
                        traffic_split=share, reason=reason,
                        figures={"ended_by": actor, "last_result": clean(result)}, actor=actor,
                        dagster_run_id=dagster_run_id)
    return exp.id


# ---- lifecycle ---------------------------------------------------------------------------------
def set_challenger(registry, session, version: str | int, *, actor: str, reason: str,
                   figures: dict | None = None, dagster_run_id: str | None = None
                   ) -> dict[str, Any]:
    """Point ``challenger`` at ``version`` (an existing version that is not the champion). A
    running experiment of another challenger is stopped. Setting the alias it already has
    changes nothing (``unchanged``)."""
    version = registry.version(version).version  # VersionNotFound names the known versions
    model = registry.model_name
    champion = registry.alias_version("champion")
    if version == champion:
        raise ValueError(f"{model} v{version} is the champion: it cannot be its own challenger")
    previous = registry.alias_version("challenger")
    out = {"action": "set_challenger", "model_name": model, "version": version,
           "champion": champion, "previous_challenger": previous, "stopped_experiment": None,
           "unchanged": previous == version}
    if previous == version:
        return out
    running = dep.running_experiment(session, model)
    if running is not None:
        out["stopped_experiment"] = _end_running(
            registry, session, decision="stop", actor=actor, dagster_run_id=dagster_run_id,
            reason=f"the challenger moved from v{running.challenger_version} to v{version}: "
                   f"{reason}")
    dep.record_deployment(session, model_name=model, model_version=version, alias="challenger",
                          action="set_challenger", actor=actor, reason=reason,
                          figures=clean(figures or {}), previous_version=previous,
                          dagster_run_id=dagster_run_id)
    registry.set_alias("challenger", version)
    return out


def clear_challenger(registry, session, *, actor: str, reason: str, figures: dict | None = None,
                     experiment_id: int | None = None, dagster_run_id: str | None = None
                     ) -> dict[str, Any] | None:
    """Remove the ``challenger`` alias (None when none is set); a running experiment other than
    ``experiment_id`` is stopped."""
    model = registry.model_name
    challenger = registry.alias_version("challenger")
    if challenger is None:
        return None
    stopped = _end_running(registry, session, decision="stop", reason=reason, actor=actor,
                           dagster_run_id=dagster_run_id, spare=experiment_id)
    dep.record_deployment(session, model_name=model, model_version=challenger,
                          alias="challenger", action="clear_challenger", actor=actor,
                          reason=reason, figures=clean(figures or {}),
                          experiment_id=experiment_id or stopped, dagster_run_id=dagster_run_id)
    registry.delete_alias("challenger")
    return {"action": "clear_challenger", "model_name": model, "version": challenger,
            "stopped_experiment": stopped}


def promote(registry, session, version: str | int, *, actor: str, reason: str,
            figures: dict | None = None, experiment_id: int | None = None,
            keep: int = KEEP_DEPLOYABLE, dagster_run_id: str | None = None) -> dict[str, Any]:
    """Make ``version`` the champion. The challenger alias is removed when it pointed at it; a
    running experiment other than ``experiment_id`` ends (``promote`` when ``version`` is its
    challenger, else ``stop``); the last ``keep`` champions stay deployable, older ones are
    archived."""
    version = registry.version(version).version
    model = registry.model_name
    if keep < 1:
        raise ValueError(f"keep must be at least 1 (the champion), got {keep}")
    champion = registry.alias_version("champion")
    if version == champion:
        raise ValueError(f"{model} v{version} is already the champion")
    challenger = registry.alias_version("challenger")
    running = dep.running_experiment(session, model)
    stopped = None
    if running is not None and running.id != experiment_id:
        won = running.challenger_version == version
        stopped = _end_running(
            registry, session, decision="promote" if won else "stop", actor=actor,
            dagster_run_id=dagster_run_id,
            reason=(f"v{version} promoted by {actor}: {reason}" if won else
                    f"the champion changed to v{version} by {actor} during the experiment: "
                    f"{reason}"))
    exp_id = experiment_id or stopped
    figures = clean(figures or {})
    dep.record_deployment(session, model_name=model, model_version=version, alias="champion",
                          action="promote", actor=actor, reason=reason, figures=figures,
                          previous_version=champion, experiment_id=exp_id,
                          dagster_run_id=dagster_run_id)
    if challenger == version:
        dep.record_deployment(session, model_name=model, model_version=version,
                              alias="challenger", action="clear_challenger", actor=actor,
                              reason=f"promoted to champion: {reason}", experiment_id=exp_id,
                              dagster_run_id=dagster_run_id)
    registry.set_alias("champion", version)
    if challenger == version:
        registry.delete_alias("challenger")
    kept = enforce_keep(registry, session, keep, actor=actor, dagster_run_id=dagster_run_id)
    return {"action": "promote", "model_name": model, "champion": version,
            "previous_champion": champion,
            "challenger": None if challenger == version else challenger,
            "stopped_experiment": stopped, **kept}


def rollback(registry, session, to_version: str | int | None = None, *, actor: str, reason: str,
             figures: dict | None = None, experiment_id: int | None = None,
             keep: int = KEEP_DEPLOYABLE, dagster_run_id: str | None = None) -> dict[str, Any]:
    """Serve ``to_version`` (default: the previous champion) to everyone again. It must be one
    of the last ``keep`` champions, else ValueError naming those. When it is the champion
    itself (an A/B experiment lost), the challenger is what is rolled back. The challenger
    alias is cleared; a running experiment other than ``experiment_id`` ends with decision
    ``rollback``; the version that lost is tagged ``rolled_back``."""
    model = registry.model_name
    champion = registry.alias_version("champion")
    if champion is None:
        raise ValueError(f"{model} has no champion: nothing to roll back")
    challenger = registry.alias_version("challenger")
    deployable = deployable_versions(registry, session, keep)
    if to_version is None:
        earlier = [v for v in deployable if v != champion]
        if not earlier:
            raise ValueError(f"{model} v{champion} is the only deployable champion: there is "
                             f"no earlier one to roll back to")
        target = earlier[0]
    else:
        target = str(to_version).strip().removeprefix("v")
        if not target.isdigit() or int(target) < 1:
            raise ValueError(f"model version {to_version!r}: expected a positive integer")
    if target not in deployable:
        raise ValueError(f"{model} v{target} is not deployable: a rollback goes to one of the "
                         f"last {keep} champions ({_versions(deployable)})")
    if target == champion and challenger is None:
        raise ValueError(f"{model} v{target} is already the champion and no challenger is set: "
                         f"nothing to roll back (deployable: {_versions(deployable)})")
    lost = challenger if target == champion else champion
    figures = clean(figures or {})
    stopped = _end_running(registry, session, decision="rollback", reason=reason, actor=actor,
                           dagster_run_id=dagster_run_id, spare=experiment_id)
    exp_id = experiment_id or stopped
    if target == champion:  # the challenger lost: its tenure ends rolled back
        dep.record_deployment(session, model_name=model, model_version=lost, alias="challenger",
                              action="rollback", actor=actor, reason=reason, figures=figures,
                              previous_version=champion, experiment_id=exp_id,
                              dagster_run_id=dagster_run_id)
    else:
        dep.record_deployment(session, model_name=model, model_version=target, alias="champion",
                              action="rollback", actor=actor, reason=reason, figures=figures,
                              previous_version=champion, experiment_id=exp_id,
                              dagster_run_id=dagster_run_id)
    if challenger is not None:
        dep.record_deployment(session, model_name=model, model_version=challenger,
                              alias="challenger", action="clear_challenger", actor=actor,
                              reason=f"rollback to v{target}: {reason}", experiment_id=exp_id,
                              dagster_run_id=dagster_run_id)
    if target != champion:
        registry.set_alias("champion", target)
    if challenger is not None:
        registry.delete_alias("challenger")
    registry.set_version_tag(lost, DEPLOYMENT_TAG, "rolled_back")
    kept = enforce_keep(registry, session, keep, actor=actor, dagster_run_id=dagster_run_id)
    return {"action": "rollback", "model_name": model, "champion": target,
            "previous_champion": champion, "rolled_back_version": lost,
            "cleared_challenger": challenger, "stopped_experiment": stopped, **kept}


def stop_experiment(registry, session, *, actor: str, reason: str,
                    dagster_run_id: str | None = None) -> dict[str, Any]:
    """End the running experiment with decision ``stop`` (no winner) and clear the challenger,
    so the champion serves everyone. ValueError when none runs."""
    model = registry.model_name
    exp = dep.running_experiment(session, model)
    if exp is None:
        raise ValueError(f"{model} has no running experiment")
    if not reason or not reason.strip():
        raise ValueError("stopping an experiment needs a reason")
    exp_id = _end_running(registry, session, decision="stop", reason=reason, actor=actor,
                          dagster_run_id=dagster_run_id)
    cleared = clear_challenger(registry, session, actor=actor, reason=f"experiment #{exp_id} "
                               f"stopped: {reason}", experiment_id=exp_id,
                               dagster_run_id=dagster_run_id)
    return {"action": "stop", "model_name": model, "experiment_id": exp_id,
            "cleared_challenger": cleared["version"] if cleared else None}


# ---- the state, for the asset, `learnloop status` and `learnloop models` ----------------------
def result_summary(result: dict[str, Any] | None) -> dict[str, Any] | None:
    """The short form of an experiment's stored ``result`` (what :func:`ab_experiment` writes):
    the decision, its reason and the primary metric and size of each arm."""
    if not result:
        return None
    arms = result.get("arms") or {}
    return {"decision": result.get("decision"), "reason": result.get("reason"),
            "decided_at": result.get("decided_at"),
            "primary_metric": result.get("primary_metric"),
            "stage_treatment_n": result.get("stage_treatment_n"),
            "arms": {arm: {"version": a.get("version"), "n": a.get("n"),
                           "primary": a.get("primary")} for arm, a in arms.items()}}


def last_experiment_dict(exp) -> dict[str, Any] | None:
    if exp is None:
        return None
    summary = result_summary(exp.result) or {}
    return {"id": exp.id, "decision": exp.decision, "status": exp.status, "reason": exp.reason,
            "ended_at": exp.ended_at.isoformat() if exp.ended_at else None,
            "champion_version": exp.champion_version,
            "challenger_version": exp.challenger_version,
            "primary_metric": summary.get("primary_metric")
            or (exp.policy or {}).get("primary_metric"),
            "arms": summary.get("arms") or {}}


def deployment_state(registry, session, keep: int = KEEP_DEPLOYABLE,
                     history: int = 10) -> dict[str, Any]:
    """Champion and challenger (the aliases), the deployable versions, the archived ones (their
    ``archive`` rows, unless promoted again since), the running experiment with its latest
    result summary, the last decided experiment and the latest ``history`` deployment rows.
    Creates no tracking store."""
    model = registry.model_name
    aliases = registry.aliases()
    deployable = deployable_versions(registry, session, keep)
    archived = archived_versions(session, model)
    running = dep.running_experiment(session, model)
    experiment = None
    if running is not None:
        experiment = {**dep.experiment_dict(running),
                      "summary": result_summary(running.result)}
    return {"model_name": model, "champion": aliases.get("champion"),
            "challenger": aliases.get("challenger"), "deployable": deployable,
            "archived": sorted(archived, key=int), "experiment": experiment,
            "last_experiment": last_experiment_dict(dep.last_decided_experiment(session, model)),
            "history": [dep.deployment_dict(r) for r in
                        dep.deployment_history(session, model, limit=history)]}


# ---- alerts ------------------------------------------------------------------------------------
def alert_settings(store: OperationalStoreResource) -> Settings:
    """Settings whose operational store is the resource's (where the alerts are recorded)."""
    return Settings(store_url=store.get_url())


def send_alerts(store: OperationalStoreResource, alerts: list[dict[str, Any]]) -> list[dict]:
    """Raise each alert (``assets.alerting.raise_alert`` keyword arguments); after the
    decision's transaction committed, so an alert never tells of a change that did not
    happen."""
    if not alerts:
        return []
    from assets.alerting import raise_alert

    settings = alert_settings(store)
    return [raise_alert(settings, **a) for a in alerts]


# ---- the A/B experiment asset -----------------------------------------------------------------
class AbExperimentConfig(dg.Config):
    """What to do with the challenger's experiment. Policy fields apply to an experiment started
    by this run (empty or negative: LEARNLOOP_AB_* via ExperimentPolicy.from_env()); a running
    experiment is always decided with the policy stored when it started."""

    action: str = Field(default="decide", description="decide (start an experiment for a new "
                                                      "challenger, else decide the running "
                                                      "one), start (start one now, even for a "
                                                      "pair tested before) or stop (end the "
                                                      "running one, clear the challenger).")
    reason: str = Field(default="", description="Why (recorded; required for stop).")
    keep: int = Field(default=KEEP_DEPLOYABLE, description="Champions that stay deployable.")
    stages: list[float] = Field(default=[], description="Treatment shares, e.g. [0.1, 0.5, 1.0].")
    primary_metric: str = ""
    alpha: float = -1.0
    min_samples_per_arm: int = -1
    min_stage_samples: int = -1
    max_relative_drop: float = -1.0
    max_error_rate: float = -1.0
    max_error_rate_increase: float = -1.0
    min_audited: int = -1
    early_stop_alpha: float = -1.0
    early_stop_min_samples: int = -1
    max_samples_per_arm: int = -1
    subject_key: str = ""


POLICY_NUMBERS = ("alpha", "min_samples_per_arm", "min_stage_samples", "max_relative_drop",
                  "max_error_rate", "max_error_rate_increase", "min_audited",
                  "early_stop_alpha", "early_stop_min_samples", "max_samples_per_arm")


def experiment_policy(config: AbExperimentConfig):
    """``ExperimentPolicy.from_env()`` with the config's non-empty fields."""
    from ml.deploy.experiment import ExperimentPolicy

    overrides: dict[str, Any] = {}
    if config.stages:
        overrides["stages"] = tuple(float(s) for s in config.stages)
    for name in POLICY_NUMBERS:
        value = getattr(config, name)
        if value >= 0:
            overrides[name] = value
    for name in ("primary_metric", "subject_key"):
        if getattr(config, name).strip():
            overrides[name] = getattr(config, name).strip()
    policy = ExperimentPolicy.from_env()
    return policy.with_overrides(**overrides) if overrides else policy


def _naive_utc(t: datetime | None) -> datetime | None:
    if t is None or t.tzinfo is None:
        return t
    return t.astimezone(UTC).replace(tzinfo=None)


def _arm_figures(stats, primary: str) -> dict[str, Any]:
    """One arm in short: its version and size, the primary metric's value and sample size, the
    value of every metric, the audited count and errors."""
    from ml.deploy.experiment import METRICS

    m = stats.metric(primary)
    return clean({"version": stats.version, "n": stats.n, "primary": m["value"],
                  "primary_n": m["n"],
                  **{name: stats.metric(name)["value"] for name in METRICS},
                  "audited": stats.audited, "errors": stats.errors})


def arms_markdown(arms: dict[str, dict[str, Any]]) -> str:
    """The arms side by side: one row per figure, one column per arm."""
    names = list(arms)
    keys: list[str] = []
    for a in arms.values():
        keys += [k for k in a if k not in keys and not isinstance(a[k], (dict, list))]
    show = lambda v: "-" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| figure | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    lines += [f"| {k} | " + " | ".join(show(arms[n].get(k)) for n in names) + " |" for k in keys]
    return "\n".join(lines)


def _start(registry, session, *, champion: str, challenger: str, policy, actor: str,
           reason: str, dagster_run_id: str) -> dict[str, Any]:
    exp = dep.start_experiment(session, model_name=registry.model_name,
                               champion_version=champion, challenger_version=challenger,
                               stages=list(policy.stages), policy=clean(policy.to_dict()),
                               subject_key=policy.subject_key, started_by=actor)
    dep.record_deployment(session, model_name=registry.model_name, model_version=challenger,
                          alias="challenger", action="start_experiment", actor=actor,
                          reason=reason, figures={"stages": list(exp.stages),
                                                  "policy": exp.policy},
                          previous_version=champion, experiment_id=exp.id,
                          dagster_run_id=dagster_run_id)
    return {"experiment_id": exp.id, "status": "running", "stage": 0,
            "traffic_split": exp.traffic_split, "decision": "start",
            "reason": reason, "champion": champion, "challenger": challenger,
            "policy": exp.policy}


def finished_for_pair(session, model: str, champion: str, challenger: str):
    """The latest decided experiment of this challenger against this champion, or None."""
    for exp in dep.list_experiments(session, model, limit=200):
        if (exp.status != "running" and exp.champion_version == champion
                and exp.challenger_version == challenger):
            return exp
    return None


def _arm_stats(warehouse: WarehouseResource, snap: dict[str, Any]):
    """(control, treatment, treatment since the stage started) from the served interactions."""
    from ml.deploy.arm_metrics import arm_stats

    since = _naive_utc(snap["stage_started_at"])
    with warehouse.get_read_connection() as con:
        control, treatment = arm_stats(con, experiment_id=snap["id"],
                                       control_version=snap["champion_version"],
                                       treatment_version=snap["challenger_version"])
        _, stage_treatment = arm_stats(con, experiment_id=snap["id"],
                                       control_version=snap["champion_version"],
                                       treatment_version=snap["challenger_version"], since=since)
    return control, treatment, stage_treatment


def _apply(registry, session, snap: dict[str, Any], decision, result: dict[str, Any], *,
           keep: int, run_id: str) -> list[dict[str, Any]]:
    """Apply ``decision`` to the experiment read as ``snap`` (compare-and-set on its version);
    returns the alerts to raise once committed."""
    exp_id, version, model = snap["id"], snap["version"], registry.model_name
    action, reason = decision.action, decision.reason
    figures = result["figures"]
    dep.record_decision(session, experiment_id=exp_id, action=action, stage=snap["stage"],
                        traffic_split=snap["traffic_split"], reason=reason, figures=figures,
                        actor=ASSET_ACTOR, dagster_run_id=run_id)
    details = {"experiment_id": exp_id, "model_name": model,
               "champion_version": snap["champion_version"],
               "challenger_version": snap["challenger_version"], "decision": action,
               "reason": reason, "summary": result_summary(result)}
    what = (f"experiment #{exp_id} ({model} v{snap['challenger_version']} against "
            f"v{snap['champion_version']})")
    if action == "continue":
        dep.update_result(session, exp_id, version, result)
        return []
    if action == "advance":
        exp = dep.advance_experiment(session, exp_id, version, result)
        dep.record_deployment(session, model_name=model, model_version=snap["challenger_version"],
                              alias="challenger", action="advance", actor=ASSET_ACTOR,
                              reason=reason, figures={**figures, "traffic_split":
                                                      exp.traffic_split},
                              previous_version=snap["champion_version"], experiment_id=exp_id,
                              dagster_run_id=run_id)
        return []
    dep.finish_experiment(session, exp_id, version, action, reason, result)
    if action == "promote":
        promote(registry, session, snap["challenger_version"], actor=ASSET_ACTOR, reason=reason,
                figures=figures, experiment_id=exp_id, keep=keep, dagster_run_id=run_id)
        return [{"kind": "experiment_decided", "severity": "info",
                 "message": f"{what}: promoted, v{snap['challenger_version']} is the champion "
                            f"({reason})", "details": details,
                 "dedupe_key": f"experiment-{exp_id}-promote", "source": ASSET_ACTOR}]
    if action == "rollback":
        rollback(registry, session, snap["champion_version"], actor=ASSET_ACTOR, reason=reason,
                 figures=figures, experiment_id=exp_id, keep=keep, dagster_run_id=run_id)
        return [{"kind": "rollback", "severity": "critical",
                 "message": f"{what}: rolled back, v{snap['champion_version']} serves everyone "
                            f"again ({reason})", "details": details,
                 "dedupe_key": f"experiment-{exp_id}-rollback", "source": ASSET_ACTOR}]
    if action == "stop":
        clear_challenger(registry, session, actor=ASSET_ACTOR, reason=reason, figures=figures,
                         experiment_id=exp_id, dagster_run_id=run_id)
        return [{"kind": "experiment_decided", "severity": "info",
                 "message": f"{what}: stopped without a winner, v{snap['champion_version']} "
                            f"stays the champion ({reason})", "details": details,
                 "dedupe_key": f"experiment-{exp_id}-stop", "source": ASSET_ACTOR}]
    raise ValueError(f"experiment #{exp_id}: unknown decision {action!r} from ml.deploy "
                     f"(expected one of {list(dep.DECISION_ACTIONS)})")


def _stale(log, outcome: dict[str, Any], exc: Exception) -> dict[str, Any]:
    """Another decider (a person, a concurrent run) moved the experiment first: theirs stands,
    this decision is reported and not applied."""
    if log is not None:
        log.warning(f"experiment #{outcome.get('experiment_id')}: not applying "
                    f"{outcome.get('decision')}: {exc}")
    return {**outcome, "stale": str(exc), "applied": False}


def decide_experiment(registry, store: OperationalStoreResource, warehouse: WarehouseResource,
                      *, policy, keep: int, run_id: str, reason: str = "",
                      log=None) -> dict[str, Any]:
    """One look at the A/B test: start an experiment for a challenger that has none (and was not
    tested against this champion before), or decide the running one from the served
    interactions and apply the decision. Returns the outcome (what the asset reports)."""
    from ml.deploy.experiment import ExperimentPolicy, decide

    model = registry.model_name
    aliases = registry.aliases()
    champion, challenger = aliases.get("champion"), aliases.get("challenger")
    with store.session() as s:
        exp = dep.running_experiment(s, model)
        if exp is None:
            if challenger is None:
                return {"decision": "idle", "reason": f"{model} has no challenger: nothing to "
                                                      f"test", "champion": champion}
            if champion is None:
                raise ValueError(f"{model} has a challenger (v{challenger}) but no champion to "
                                 f"test it against")
            done = finished_for_pair(s, model, champion, challenger)
            if done is not None:
                return {"decision": "idle", "champion": champion, "challenger": challenger,
                        "experiment_id": done.id, "status": done.status,
                        "reason": f"v{challenger} against v{champion} was decided by experiment "
                                  f"#{done.id} ({done.decision}: {done.reason}); the action "
                                  f"'start' tests the pair again"}
            return _start(registry, s, champion=champion, challenger=challenger, policy=policy,
                          actor=ASSET_ACTOR, dagster_run_id=run_id,
                          reason=reason or f"new challenger v{challenger}: A/B test against "
                                           f"v{champion} from {policy.stages[0]:.0%} of traffic")
        snap = {"id": exp.id, "version": exp.version, "stage": exp.stage,
                "traffic_split": exp.traffic_split, "champion_version": exp.champion_version,
                "challenger_version": exp.challenger_version, "policy": dict(exp.policy or {}),
                "stages": list(exp.stages or []), "stage_started_at": exp.stage_started_at}
    base = {"experiment_id": snap["id"], "stage": snap["stage"],
            "traffic_split": snap["traffic_split"], "champion": snap["champion_version"],
            "challenger": snap["challenger_version"]}
    if (champion, challenger) != (snap["champion_version"], snap["challenger_version"]):
        # the aliases were moved outside learnloop (e.g. in the MLflow UI): the test is void
        why = (f"the aliases moved during the experiment (champion {_v(champion)}, challenger "
               f"{_v(challenger)}; the experiment tests v{snap['challenger_version']} against "
               f"v{snap['champion_version']})")
        try:
            with store.session() as s:
                dep.finish_experiment(s, snap["id"], snap["version"], "stop", why, {})
                dep.record_decision(s, experiment_id=snap["id"], action="stop",
                                    stage=snap["stage"], traffic_split=snap["traffic_split"],
                                    reason=why, figures={}, actor=ASSET_ACTOR,
                                    dagster_run_id=run_id)
        except dep.StaleExperiment as exc:
            return _stale(log, {**base, "decision": "stop", "reason": why}, exc)
        return {**base, "decision": "stop", "status": "stopped", "reason": why, "applied": True}
    stored = ExperimentPolicy.from_dict(snap["policy"])
    if not warehouse.exists():
        return {**base, "decision": "waiting", "status": "running",
                "reason": "no served interactions yet: the warehouse does not exist"}
    control, treatment, stage_treatment = _arm_stats(warehouse, snap)
    decision = decide(control, treatment, stored, stage=snap["stage"],
                      stage_treatment_n=stage_treatment.n)
    primary = stored.primary_metric
    arms = {"control": _arm_figures(control, primary),
            "treatment": _arm_figures(treatment, primary)}
    figures = clean({**decision.figures, "arms": arms, "primary_metric": primary,
                     "stage_treatment_n": stage_treatment.n, "stage": snap["stage"],
                     "traffic_split": snap["traffic_split"]})
    result = {"decision": decision.action, "reason": decision.reason,
              "decided_at": datetime.now(UTC).isoformat(), "primary_metric": primary,
              "stage_treatment_n": stage_treatment.n, "arms": arms, "figures": figures}
    outcome = {**base, "decision": decision.action, "reason": decision.reason,
               "primary_metric": primary, "arms": arms, "figures": figures,
               "stage_treatment_n": stage_treatment.n}
    try:
        with store.session() as s:
            alerts = _apply(registry, s, snap, decision, result, keep=keep, run_id=run_id)
            exp = dep.get_experiment(s, snap["id"])
            outcome.update(status=exp.status, stage_after=exp.stage,
                           traffic_split_after=exp.traffic_split)
    except dep.StaleExperiment as exc:
        return _stale(log, outcome, exc)
    outcome["applied"] = True
    outcome["alerts"] = send_alerts(store, alerts)
    return outcome


def _metadata(outcome: dict[str, Any]) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "decision": outcome.get("decision", ""), "reason": outcome.get("reason", ""),
        "experiment_id": int(outcome.get("experiment_id") or 0),
        "status": outcome.get("status") or "", "champion": outcome.get("champion") or "",
        "challenger": outcome.get("challenger") or "",
        "stage": int(outcome.get("stage") or 0),
        "traffic_split": float(outcome.get("traffic_split") or 0.0)}
    if "stage_after" in outcome:  # where the decision left it (advance: the next stage)
        meta["stage_after"] = int(outcome["stage_after"])
        meta["traffic_split_after"] = float(outcome["traffic_split_after"] or 0.0)
    if "stale" in outcome:
        meta["stale"] = outcome["stale"]
    arms = outcome.get("arms") or {}
    if arms:
        meta["primary_metric"] = outcome.get("primary_metric") or ""
        for arm, a in arms.items():
            meta[f"{arm}_n"] = int(a.get("n") or 0)
            if isinstance(a.get("primary"), (int, float)):
                meta[f"{arm}_{outcome['primary_metric']}"] = float(a["primary"])
        meta["stage_treatment_n"] = int(outcome.get("stage_treatment_n") or 0)
        # the primary test and every metric's p-value: numbers the UI plots run after run
        figures = outcome.get("figures") or {}
        primary_test = figures.get("primary_test") or {}
        for key in ("p_value", "diff", "rel_diff", "ci_low", "ci_high"):
            if isinstance(primary_test.get(key), (int, float)):
                meta[key] = float(primary_test[key])
        for name, test in (figures.get("tests") or {}).items():
            if isinstance(test.get("p_value"), (int, float)):
                meta[f"p_{name}"] = float(test["p_value"])
        if figures.get("rule"):
            meta["rule"] = figures["rule"]
        meta["arms"] = dg.MetadataValue.md(arms_markdown(arms))
        meta["figures"] = outcome.get("figures") or {}
    return with_metadata(meta)


@dg.asset(
    **catalog("ab_experiment", "deployment"),
    deps=["candidate_evaluation", "interactions", "interaction_quality", "audited_errors"],
    kinds={"mlflow", "duckdb"},
    pool=WAREHOUSE_POOL,
    description="The A/B test of the challenger against the champion: started (stage 0, the "
                "first treatment share) when a challenger has no experiment, then decided on "
                "each run from the served interactions in the warehouse (quality score, "
                "feedback, audited error rate per arm): continue, advance to the next share, "
                "promote, roll back (a guardrail or a significant loss) or stop. Decisions are "
                "compare-and-set on the experiment: a concurrent decider wins, never "
                "overwritten. Run by deployment_job (ab_decision_sensor starts it).",
)
def ab_experiment(context: dg.AssetExecutionContext, config: AbExperimentConfig,
                  store: OperationalStoreResource, warehouse: WarehouseResource,
                  models: ModelRegistryResource) -> dg.MaterializeResult:
    action = config.action.strip().lower()
    if action not in ACTIONS:
        raise ValueError(f"ab_experiment config: action must be one of {list(ACTIONS)}, got "
                         f"{config.action!r}")
    registry = models.registry()
    run_id = context.run.run_id
    if action == "stop":
        with store.session() as s:
            out = stop_experiment(registry, s, actor=ASSET_ACTOR, reason=config.reason,
                                  dagster_run_id=run_id)
        outcome = {"decision": "stop", "status": "stopped", "reason": config.reason,
                   "experiment_id": out["experiment_id"],
                   "challenger": out["cleared_challenger"]}
        send_alerts(store, [{"kind": "experiment_decided", "severity": "info",
                             "message": f"experiment #{out['experiment_id']} stopped by a run of "
                                        f"ab_experiment: {config.reason}",
                             "details": outcome, "source": ASSET_ACTOR,
                             "dedupe_key": f"experiment-{out['experiment_id']}-stop"}])
    elif action == "start":
        aliases = registry.aliases()
        if not aliases.get("challenger") or not aliases.get("champion"):
            raise ValueError(f"{registry.model_name}: starting an experiment needs a champion "
                             f"and a challenger (champion {_v(aliases.get('champion'))}, "
                             f"challenger {_v(aliases.get('challenger'))})")
        with store.session() as s:
            outcome = _start(registry, s, champion=aliases["champion"],
                             challenger=aliases["challenger"], policy=experiment_policy(config),
                             actor=ASSET_ACTOR, dagster_run_id=run_id,
                             reason=config.reason or "started by a run of ab_experiment")
    else:
        outcome = decide_experiment(registry, store, warehouse, policy=experiment_policy(config),
                                    keep=config.keep, run_id=run_id, reason=config.reason,
                                    log=context.log)
    context.log.info(f"ab_experiment: {outcome.get('decision')}"
                     + (f" experiment #{outcome['experiment_id']}"
                        if outcome.get("experiment_id") else "")
                     + f": {outcome.get('reason')}")
    return dg.MaterializeResult(metadata=_metadata(outcome))


# ---- the deployment state asset ----------------------------------------------------------------
class ModelDeploymentConfig(dg.Config):
    keep: int = Field(default=KEEP_DEPLOYABLE, description="Champions that stay deployable; "
                                                           "older ones are archived.")


def _state_markdown(state: dict[str, Any]) -> str:
    lines = [f"**{state['model_name']}**: champion {_v(state['champion'])}, challenger "
             f"{_v(state['challenger'])}; deployable {_versions(state['deployable'])}; "
             f"archived {_versions(state['archived'])}", ""]
    exp = state.get("experiment")
    if exp:
        lines.append(f"Running experiment #{exp['id']}: v{exp['challenger_version']} against "
                     f"v{exp['champion_version']}, stage {exp['stage'] + 1} of "
                     f"{len(exp['stages'])} ({exp['traffic_split']:.0%} of traffic)")
    last = state.get("last_experiment")
    if last:
        lines.append(f"Last decided experiment #{last['id']}: {last['decision']} "
                     f"({last['reason']})")
    lines += ["", "| when | alias | version | action | status | actor | reason |",
              "|---|---|---|---|---|---|---|"]
    for r in state["history"]:
        reason = (r["reason"] or "").replace("|", "/").replace("\n", " ")[:120]
        lines.append(f"| {(r['created_at'] or '')[:19]} | {r['alias']} | v{r['model_version']} "
                     f"| {r['action']} | {r['status']} | {r['actor']} | {reason} |")
    return "\n".join(lines)


def _deployable_check(registry, state: dict[str, Any]) -> dg.AssetCheckResult:
    problems = []
    champion = state["champion"]
    if champion is None:
        problems.append("no champion alias")
    else:
        tag = registry.version(champion).tags.get(DEPLOYMENT_TAG)
        if tag != "champion":
            problems.append(f"v{champion} has {DEPLOYMENT_TAG}={tag!r}, not 'champion'")
        if champion not in state["deployable"]:
            problems.append(f"v{champion} is not among the deployable versions")
        if state.get("store_champion") != champion:
            problems.append(f"the store records {_v(state.get('store_champion'))} as the "
                            f"champion but the alias points at v{champion}")
    return dg.AssetCheckResult(
        check_name=DEPLOYABLE_CHECK, passed=not problems, severity=dg.AssetCheckSeverity.WARN,
        description="; ".join(problems) or f"v{champion} is the recorded, deployable champion",
        metadata=with_metadata({"champion": champion or "", "problems": problems}))


@dg.asset(
    **catalog("model_deployment", "deployment"),
    deps=["ab_experiment"],
    kinds={"mlflow"},
    check_specs=[dg.AssetCheckSpec(
        DEPLOYABLE_CHECK, asset="model_deployment", blocking=False,
        description="The champion alias is set, its version is tagged champion and among the "
                    "deployable versions, and the operational store records the same champion "
                    "(nothing moved the alias behind learnloop's back).")],
    description="Who serves after the A/B decision: the champion and challenger aliases, the "
                "deployable versions (the last `keep` champions, what a rollback may return "
                "to), the archived ones (enforced here too), the running experiment and the "
                "latest deployment changes.",
)
def model_deployment(context: dg.AssetExecutionContext, config: ModelDeploymentConfig,
                     store: OperationalStoreResource,
                     models: ModelRegistryResource) -> dg.MaterializeResult:
    registry = models.registry()
    with store.session() as s:
        kept = enforce_keep(registry, s, config.keep, actor="asset:model_deployment",
                            dagster_run_id=context.run.run_id) \
            if registry.alias_version("champion") else {"archived_now": []}
        state = deployment_state(registry, s, config.keep)
        state["store_champion"] = dep.active_version(s, registry.model_name, "champion")
    if kept["archived_now"]:
        context.log.info(f"archived {_versions(kept['archived_now'])}: older than the last "
                         f"{config.keep} champions")
    exp = state["experiment"]
    last = state["last_experiment"]
    return dg.MaterializeResult(
        metadata=with_metadata({
            "model_name": state["model_name"], "champion": state["champion"] or "",
            "challenger": state["challenger"] or "", "deployable": state["deployable"],
            "archived": state["archived"], "archived_now": kept["archived_now"],
            "experiment_id": int(exp["id"]) if exp else 0,
            "traffic_split": float(exp["traffic_split"]) if exp else 0.0,
            "last_decision": (last or {}).get("decision") or "",
            "last_experiment": last or {},
            "state": dg.MetadataValue.md(_state_markdown(state)),
        }),
        check_results=[_deployable_check(registry, state)])
