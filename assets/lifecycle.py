"""The lifecycle of deployments, below the stage modules (like ``assets/alerting.py``): the
training, evaluation and deployment stages and the ``learnloop models`` commands all move the
aliases through it. The MLflow aliases are the serving truth (``champion`` serves everyone,
``challenger`` the treatment share of a running A/B experiment); every change is also a row of
``model_deployments`` in the operational store (who, why, on which figures), so the history, the
lineage of champions and the deployable versions come from the store.

* :func:`set_challenger` / :func:`clear_challenger`: the challenger alias;
* :func:`promote`: the champion alias moves to a version (the challenger alias goes when it
  pointed at it); the last ``keep`` champions stay deployable (version tag
  ``learnloop.deployment`` = ``champion`` / ``deployable``), older ones are ``archived`` with an
  ``archive`` row (:func:`enforce_keep`);
* :func:`rollback`: the champion returns to an earlier deployable champion (default: the
  previous one), or, when the target is the champion itself, the challenger is dropped; the
  version that lost is tagged ``rolled_back``;
* :func:`stop_experiment`: a person (or ab_experiment's ``stop`` action) ends the running
  experiment;
* :func:`deployment_state`: champion, challenger, deployable and archived versions, the running
  and the last experiment (for the ``model_deployment`` asset and ``learnloop status``).

Each change ends a running experiment that it makes meaningless (decision ``promote``,
``rollback`` or ``stop`` with the actor's reason), writes the store rows first and moves the
aliases last, inside the caller's transaction: a registry error rolls the rows back. The
functions take the registry (``ml.registry.Registry``) and a store session as arguments.
See docs/deployment.md.
"""

import getpass
import json
import math
import os
from datetime import datetime
from typing import Any

from assets.alerting import raise_alert
from assets.resources import OperationalStoreResource
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


def v_label(version: str | int | None) -> str:
    return "-" if version is None else f"v{version}"


def v_list(versions) -> str:
    return ", ".join(v_label(v) for v in versions) or "none"


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
            reason=f"older than the last {keep} champions ({v_list(keep_these)})",
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
            hint = (f" (to drop the challenger v{challenger}, roll back to v{champion} itself)"
                    if challenger else "")
            raise ValueError(f"{model} v{champion} is the only deployable champion: there is "
                             f"no earlier one to roll back to{hint}")
        target = earlier[0]
    else:
        target = str(to_version).strip().removeprefix("v")
        if not target.isdigit() or int(target) < 1:
            raise ValueError(f"model version {to_version!r}: expected a positive integer")
    if target not in deployable:
        raise ValueError(f"{model} v{target} is not deployable: a rollback goes to one of the "
                         f"last {keep} champions ({v_list(deployable)})")
    if target == champion and challenger is None:
        raise ValueError(f"{model} v{target} is already the champion and no challenger is set: "
                         f"nothing to roll back (deployable: {v_list(deployable)})")
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
    settings = alert_settings(store)
    return [raise_alert(settings, **a) for a in alerts]


def finished_for_pair(session, model: str, champion: str, challenger: str):
    """The latest decided experiment of this challenger against this champion, or None."""
    for exp in dep.list_experiments(session, model, limit=200):
        if (exp.status != "running" and exp.champion_version == champion
                and exp.challenger_version == challenger):
            return exp
    return None
