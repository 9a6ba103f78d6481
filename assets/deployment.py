"""Stage `deployment`: ``ab_experiment`` (starts an A/B experiment for a new challenger, then
decides it stage by stage from the served interactions in the warehouse with ``ml.deploy``:
continue, advance to the next treatment share, promote, roll back, stop) and
``model_deployment`` (the state after it: champion, challenger, deployable and archived
versions, the running and last experiments, the latest changes; with the non-blocking check
``check_champion_is_deployable``). The aliases move through ``assets.lifecycle``, the functions
``learnloop models promote | rollback | experiment stop`` use too. See docs/deployment.md.
"""


from datetime import UTC, datetime
from typing import Any

import dagster as dg
from pydantic import Field

from assets.catalog import catalog, with_metadata
from assets.lifecycle import (
    DEPLOYMENT_TAG,
    KEEP_DEPLOYABLE,
    clean,
    clear_challenger,
    deployment_state,
    enforce_keep,
    finished_for_pair,
    promote,
    result_summary,
    rollback,
    send_alerts,
    stop_experiment,
    v_label,
    v_list,
)
from assets.resources import (
    WAREHOUSE_POOL,
    ModelRegistryResource,
    OperationalStoreResource,
    WarehouseResource,
)
from store import deployments as dep

DEPLOYABLE_CHECK = "check_champion_is_deployable"
ACTIONS = ("decide", "start", "stop")
ASSET_ACTOR = "asset:ab_experiment"


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
        why = (f"the aliases moved during the experiment (champion {v_label(champion)}, challenger "
               f"{v_label(challenger)}; the experiment tests v{snap['challenger_version']} against "
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
                             f"and a challenger (champion {v_label(aliases.get('champion'))}, "
                             f"challenger {v_label(aliases.get('challenger'))})")
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
    lines = [f"**{state['model_name']}**: champion {v_label(state['champion'])}, challenger "
             f"{v_label(state['challenger'])}; deployable {v_list(state['deployable'])}; "
             f"archived {v_list(state['archived'])}", ""]
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
            problems.append(f"the store records {v_label(state.get('store_champion'))} as the "
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
        context.log.info(f"archived {v_list(kept['archived_now'])}: older than the last "
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
