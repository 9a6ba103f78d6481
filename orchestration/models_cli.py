"""``learnloop models``: list and show the versions of the registered model (the MLflow model
registry at ``Settings.mlflow_uri``; ``make mlflow`` opens the same store in the MLflow UI), and
deploy them: ``promote``, ``rollback``, ``history``, ``experiment [show | stop]``.

``list`` and ``show`` never create a tracking store that does not exist yet. The deployment
commands go through ``assets.lifecycle`` (the same functions the Dagster assets use): the MLflow
aliases move and every change is recorded in the operational store with the OS user as actor."""

from __future__ import annotations

import json
import sys

import click

from ml.config import Settings
from ml.registry import ModelVersionInfo, Registry, VersionNotFound

# run metrics (or, failing that, version tags) shown as columns of `learnloop models list`
EVAL_COLUMNS = ("eval_rougeL", "retention_rougeL", "gate_passed")
# longer param values are cut in the text of `show` (--json prints them whole)
SHOW_PARAM_CHARS = 120


def _fail(message: str, code: int = 2) -> None:
    click.echo(f"learnloop models: {message}", err=True)
    sys.exit(code)


def _reason(reason: str) -> str:
    if not reason.strip():
        _fail("--reason must say why (it is recorded with the change)")
    return reason.strip()


def _change(fn):
    """Run ``fn(registry, session)`` in one store transaction; a bad version, a refused move or
    an experiment decided meanwhile ends the command with exit status 2 and the reason."""
    from orchestration.cli import _migrated_settings
    from store.db import session_scope
    from store.deployments import ExperimentConflict, StaleExperiment
    from store.repo import NotFound

    settings = _migrated_settings()
    reg = Registry.from_settings(settings)
    try:
        with session_scope(settings.store) as s:
            return fn(reg, s)
    except (VersionNotFound, ValueError, NotFound, StaleExperiment, ExperimentConflict) as exc:
        _fail(str(exc))


def _v(version) -> str:
    return f"v{version}" if version else "-"


def _registry() -> Registry:
    return Registry.from_settings(Settings())


def _eval_value(v: ModelVersionInfo, key: str) -> str:
    """A metric of the version's run, else a version tag of that name, else '-'."""
    if key in v.metrics:
        value = v.metrics[key]
        if key == "gate_passed":
            return "yes" if value else "no"
        return f"{value:.4f}"
    tag = v.tags.get(key)
    if tag is None:
        return "-"
    if key == "gate_passed":
        return {"true": "yes", "1": "yes", "1.0": "yes", "false": "no", "0": "no",
                "0.0": "no"}.get(tag.lower(), tag)
    return tag


def _empty_message(reg: Registry) -> str:
    where = "" if reg.store_exists() else f" (no tracking store at {reg.tracking_uri} yet)"
    return (f"no versions of the registered model {reg.model_name!r} yet{where}: a training run "
            f"registers one")


@click.group(help="Versions of the registered model in the MLflow registry (`make mlflow` opens "
                  "the MLflow UI on it).")
def models() -> None:
    pass


def _method(v) -> str:
    """How a version was made: its ``learnloop.method`` tag (lora, lora+dpo, openai, gemini),
    ``base`` for a base model, else a plain ``method`` tag, else ``-``."""
    if v.tags.get("learnloop.method"):
        return v.tags["learnloop.method"]
    if v.tags.get("learnloop.role") == "base":
        return "base"
    return v.tags.get("method", "-")


@models.command("list", help="Every version, newest first: aliases, method, dataset version "
                             "and evaluation metrics.")
@click.option("--json", "as_json", is_flag=True, help="machine-readable JSON")
def list_cmd(as_json: bool) -> None:
    reg = _registry()
    rows = reg.versions()
    if as_json:
        click.echo(json.dumps([v.to_dict() for v in rows], indent=2))
        return
    if not rows:
        click.echo(_empty_message(reg))
        return
    click.echo(f"{reg.model_name}")
    click.echo(f"{'version':>7}  {'aliases':<20} {'created':<19}  {'method':<8} "
               f"{'dataset':<12}  {'eval_rougeL':>11} {'retention_rougeL':>16} {'gate':>4}")
    for v in rows:
        cols = [_eval_value(v, k) for k in EVAL_COLUMNS]
        click.echo(f"{v.version:>7}  {','.join(v.aliases) or '-':<20} "
                   f"{v.created[:19].replace('T', ' '):<19}  {_method(v):<8} "
                   f"{v.tags.get('dataset_version', '-')[:12]:<12}  {cols[0]:>11} {cols[1]:>16} "
                   f"{cols[2]:>4}")


@models.command(help="One version: lineage tags, its run's params and metrics, source, "
                     "aliases. V: a version number or an alias such as champion.")
@click.argument("version")
@click.option("--json", "as_json", is_flag=True, help="machine-readable JSON")
def show(version: str, as_json: bool) -> None:
    reg = _registry()
    try:
        v = reg.resolve(version)
    except (VersionNotFound, ValueError) as exc:
        _fail(str(exc))
    if as_json:
        click.echo(json.dumps(v.to_dict(), indent=2))
        return
    click.echo(f"{v.name} version {v.version}"
               + (f"  [{', '.join(v.aliases)}]" if v.aliases else ""))
    click.echo(f"  created      {v.created}   status {v.status}")
    click.echo(f"  source       {v.source}")
    click.echo(f"  run          {v.run_id or '-'}"
               + (f" ({v.run_status})" if v.run_status else
                  " (run not found in the tracking store)" if v.run_id else ""))
    if v.description:
        click.echo(f"  description  {v.description}")
    for key, value in sorted(v.tags.items()):
        click.echo(f"  tag          {key} = {value}")
    for key, value in sorted(v.params.items()):
        shown = value if len(value) <= SHOW_PARAM_CHARS else \
            f"{value[:SHOW_PARAM_CHARS]}... ({len(value):,} chars; --json shows all)"
        click.echo(f"  param        {key} = {shown}")
    for key, value in sorted(v.metrics.items()):
        click.echo(f"  metric       {key} = {value:g}")


@models.command(help="Make version V the champion now (a person's decision: no A/B test). The "
                     "challenger alias goes when it pointed at V; a running experiment ends; the "
                     "last 3 champions stay deployable, older ones are archived.")
@click.argument("version")
@click.option("--reason", required=True, help="why (recorded with the change)")
@click.option("--json", "as_json", is_flag=True, help="machine-readable JSON")
def promote(version: str, reason: str, as_json: bool) -> None:
    from assets import lifecycle as d

    why = _reason(reason)
    out = _change(lambda reg, s: d.promote(reg, s, version, actor=d.cli_actor(), reason=why))
    if as_json:
        click.echo(json.dumps(out, indent=2))
        return
    click.echo(f"{out['model_name']} {_v(out['champion'])} is the champion (was "
               f"{_v(out['previous_champion'])}); deployable: "
               f"{', '.join(_v(x) for x in out['deployable'])}")
    if out["archived_now"]:
        click.echo(f"archived: {', '.join(_v(x) for x in out['archived_now'])}")
    if out["stopped_experiment"]:
        click.echo(f"experiment #{out['stopped_experiment']} ended")


@models.command(help="Serve an earlier champion to everyone again: V (one of the last 3 "
                     "champions) or, without V, the previous champion. The challenger alias is "
                     "cleared and a running experiment ends with decision rollback.")
@click.argument("version", required=False)
@click.option("--reason", required=True, help="why (recorded with the change)")
@click.option("--json", "as_json", is_flag=True, help="machine-readable JSON")
def rollback(version: str | None, reason: str, as_json: bool) -> None:
    from assets import lifecycle as d

    why = _reason(reason)
    out = _change(lambda reg, s: d.rollback(reg, s, version, actor=d.cli_actor(), reason=why))
    if as_json:
        click.echo(json.dumps(out, indent=2))
        return
    click.echo(f"{out['model_name']} {_v(out['champion'])} serves everyone again; "
               f"{_v(out['rolled_back_version'])} rolled back")
    if out["cleared_challenger"]:
        click.echo(f"challenger {_v(out['cleared_challenger'])} cleared")
    if out["stopped_experiment"]:
        click.echo(f"experiment #{out['stopped_experiment']} ended: rollback")


@models.command(help="Deployment history, newest first: every move of the champion and "
                     "challenger aliases and every archived version, who did it and why.")
@click.option("--limit", type=int, default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="machine-readable JSON")
def history(limit: int, as_json: bool) -> None:
    from orchestration.cli import _migrated_settings
    from store.db import session_scope
    from store.deployments import deployment_dict, deployment_history

    settings = _migrated_settings()
    name = settings.model_name
    with session_scope(settings.store) as s:
        rows = [deployment_dict(r) for r in deployment_history(s, name, limit=limit)]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo(f"no deployments of {name} recorded yet: the base model becomes the first "
                   f"champion when training_job runs")
        return
    click.echo(f"{'when':<19}  {'alias':<10} {'version':>7}  {'action':<16} {'status':<11} "
               f"{'exp':>4}  {'actor':<26} reason")
    for r in rows:
        click.echo(f"{(r['created_at'] or '')[:19].replace('T', ' '):<19}  {r['alias']:<10} "
                   f"{_v(r['model_version']):>7}  {r['action']:<16} {r['status']:<11} "
                   f"{r['experiment_id'] or '-':>4}  {r['actor'][:26]:<26} "
                   f"{(r['reason'] or '').splitlines()[0] if r['reason'] else ''}")


def _experiment_json(s, exp) -> dict:
    from assets.lifecycle import result_summary
    from store.deployments import experiment_decisions, experiment_dict

    return {**experiment_dict(exp, experiment_decisions(s, exp.id)),
            "summary": result_summary(exp.result)}


def _show_experiment(experiment_id: int | None, as_json: bool) -> None:
    from orchestration.cli import _migrated_settings
    from store.db import session_scope
    from store.deployments import get_experiment, last_decided_experiment, running_experiment
    from store.repo import NotFound

    settings = _migrated_settings()
    name = settings.model_name
    with session_scope(settings.store) as s:
        if experiment_id is not None:
            try:
                exp = get_experiment(s, experiment_id)
            except NotFound as exc:
                _fail(str(exc))
        else:
            exp = running_experiment(s, name) or last_decided_experiment(s, name)
        data = _experiment_json(s, exp) if exp is not None else None
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    if data is None:
        click.echo(f"no experiments of {name} yet: a challenger (a candidate that passed the "
                   f"quality gate) starts one when deployment_job runs")
        return
    for line in format_experiment(data):
        click.echo(line)


def format_experiment(e: dict) -> list[str]:
    """The text of `learnloop models experiment show`."""
    stages = ", ".join(f"{x:.0%}" for x in e["stages"])
    lines = [f"experiment #{e['id']} {e['name']}: {e['status']}"
             + (f" ({e['decision']}: {e['reason']})" if e["decision"] else ""),
             f"  treatment {_v(e['challenger_version'])} against control "
             f"{_v(e['champion_version'])}; stage {e['stage'] + 1} of {len(e['stages'])} "
             f"({e['traffic_split']:.0%} of traffic; stages {stages}); by {e['subject_key']}",
             f"  started {(e['started_at'] or '')[:19]} by {e['started_by']}; this stage since "
             f"{(e['stage_started_at'] or '')[:19]}"
             + (f"; ended {e['ended_at'][:19]}" if e["ended_at"] else "")]
    summary = e.get("summary")
    if summary:
        metric = summary.get("primary_metric") or "primary"
        lines.append(f"  latest look {(summary.get('decided_at') or '')[:19]}: "
                     f"{summary.get('decision')}: {summary.get('reason')}")
        lines.append(f"    {'arm':<10} {'version':>7} {'n':>7} {metric:>14}")
        for arm, a in (summary.get("arms") or {}).items():
            value = a.get("primary")
            shown = f"{value:.4f}" if isinstance(value, (int, float)) else "-"
            lines.append(f"    {arm:<10} {_v(a.get('version')):>7} {a.get('n') or 0:>7} "
                         f"{shown:>14}")
    for d in e.get("decisions") or []:
        lines.append(f"  {(d['created_at'] or '')[:19]}  {d['action']:<8} at "
                     f"{d['traffic_split']:.0%}  by {d['actor']}: {d['reason']}")
    return lines


@models.group(invoke_without_command=True,
              help="The A/B experiment of the challenger against the champion: `show [ID]` "
                   "(default: the running one, else the last one) or `stop --reason R`.")
@click.option("--json", "as_json", is_flag=True, help="machine-readable JSON")
@click.pass_context
def experiment(ctx: click.Context, as_json: bool) -> None:
    if ctx.invoked_subcommand is None:
        _show_experiment(None, as_json)


@experiment.command("show", help="One experiment with its policy, latest figures per arm and "
                                 "every decision. ID: default the running one, else the last.")
@click.argument("experiment_id", type=int, required=False)
@click.option("--json", "as_json", is_flag=True, help="machine-readable JSON")
def experiment_show(experiment_id: int | None, as_json: bool) -> None:
    _show_experiment(experiment_id, as_json)


@experiment.command("stop", help="End the running experiment without a winner (decision stop) "
                                 "and clear the challenger: the champion serves everyone.")
@click.option("--reason", required=True, help="why (recorded with the decision)")
@click.option("--json", "as_json", is_flag=True, help="machine-readable JSON")
def experiment_stop(reason: str, as_json: bool) -> None:
    from assets import lifecycle as d

    why = _reason(reason)
    out = _change(lambda reg, s: d.stop_experiment(reg, s, actor=d.cli_actor(), reason=why))
    if as_json:
        click.echo(json.dumps(out, indent=2))
        return
    click.echo(f"experiment #{out['experiment_id']} stopped; challenger "
               f"{_v(out['cleared_challenger'])} cleared: the champion serves everyone")


COMMANDS = [models]
