"""``learnloop models``: list and show the versions of the registered model (the MLflow model
registry at ``Settings.mlflow_uri``; ``make mlflow`` opens the same store in the MLflow UI).

Neither command creates a tracking store that does not exist yet."""

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


COMMANDS = [models]
