"""``learnloop train`` (train and evaluate a candidate now, with a progress bar), ``learnloop
retrain`` (a new dataset version, then train and evaluate, with the reason as a run tag) and
``learnloop training list | show | cancel`` (training runs, provider fine-tune jobs)."""

from __future__ import annotations

import json
import sys

import click

from orchestration.cli import _migrated_settings as _settings


def _fail(message: str, code: int = 2) -> None:
    click.echo(f"learnloop training: {message}", err=True)
    sys.exit(code)


@click.command(help="Train a candidate on a dataset version and evaluate it against the champion "
                    "(training_job: base_model, candidate_model, candidate_evaluation). A passing "
                    "quality gate makes it the challenger. docs/training.md.")
@click.option("--dataset", default="", help="dataset version (hash prefix or name@N); default: "
                                            "the newest ready one")
@click.option("--method", type=click.Choice(["lora", "lora+dpo", "openai", "gemini"]),
              default="lora", show_default=True)
@click.option("--epochs", type=float, default=0.0, help="0: the default")
@click.option("--learning-rate", type=float, default=0.0, help="0: the default")
@click.option("--rank", type=int, default=16, show_default=True, help="LoRA rank (alpha: twice it)")
@click.option("--provider-model", default="", help="the provider's base model (openai/gemini)")
@click.option("--provider-base-url", default="", help="the provider's API base URL")
@click.option("--api-key-env", default="", help="NAME of the env variable holding the key")
def train(dataset: str, method: str, epochs: float, learning_rate: float, rank: int,
          provider_model: str, provider_base_url: str, api_key_env: str) -> None:
    from orchestration import runner
    from orchestration.cli import _say, report_gate, train_with_progress
    from orchestration.definitions import defs

    settings = _settings()
    cfg = {"method": method, "dataset": dataset, "epochs": epochs,
           "learning_rate": learning_rate, "rank": rank, "alpha": 2 * rank,
           "provider_model": provider_model, "provider_base_url": provider_base_url,
           "api_key_env": api_key_env}
    instance = runner.instance_for(settings)
    guard = runner.RunGuard(instance, "learnloop train", say=_say)
    try:
        with guard.interrupts():
            ok = train_with_progress(settings, defs, instance, guard=guard,
                                     run_config={"ops": {"candidate_model": {"config": cfg}}})
            report_gate(settings)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    if not ok:
        sys.exit(1)


@click.command(help="Retrain now: datasets_job (the evaluation suite and a training dataset "
                    "version from the approved samples), then training_job (base model, "
                    "candidate, evaluation against the champion; a passing gate makes it the "
                    "challenger), with progress bars. The reason is a tag of both runs "
                    "(learnloop/reason). The Dagster UI's trigger is retraining_job.")
@click.option("--reason", required=True, help="why (a tag of the runs)")
def retrain(reason: str) -> None:
    from assets.lifecycle import cli_actor
    from orchestration import runner
    from orchestration.cli import (
        _has_ready_dataset,
        _say,
        report_gate,
        run_jobs,
        train_with_progress,
    )
    from orchestration.definitions import defs
    from orchestration.sensors import REASON_TAG, TRIGGER_TAG

    if not reason.strip():
        _fail("--reason must say why (it is recorded as a tag of the runs)")
    settings = _settings()
    instance = runner.instance_for(settings)
    guard = runner.RunGuard(instance, "learnloop retrain", say=_say)
    guard.tags = {**guard.tags, TRIGGER_TAG: cli_actor(), REASON_TAG: reason.strip()}
    try:
        with guard.interrupts():
            if not run_jobs(settings, defs, instance, ["datasets_job"], guard=guard):
                click.echo("datasets_job failed: not training (see its output above)", err=True)
                sys.exit(1)
            if not _has_ready_dataset(settings):
                sys.exit(1)
            ok = train_with_progress(settings, defs, instance, guard=guard)
            report_gate(settings)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    if not ok:
        sys.exit(1)


@click.group(help="Training runs: local LoRA runs and provider fine-tune jobs.")
def training() -> None:
    pass


@training.command("list", help="Training runs, newest first.")
@click.option("--json", "as_json", is_flag=True, help="machine-readable JSON")
@click.option("--limit", type=int, default=50, show_default=True)
def list_cmd(as_json: bool, limit: int) -> None:
    from store.db import session_scope
    from store.training import list_training_runs, run_summary

    with session_scope(_settings().store) as s:
        rows = [run_summary(r) for r in list_training_runs(s, limit=limit)]
    if as_json:
        click.echo(json.dumps(rows, indent=2, default=str))
        return
    if not rows:
        click.echo("no training runs yet: `learnloop train` (or `learnloop demo`) starts one")
        return
    click.echo(f"{'id':>4} {'method':<9} {'status':<10} {'version':>7} {'dataset':<13} "
               f"{'val loss':>17} {'cost':>8}  started")
    for r in rows:
        m = r["metrics"]
        loss = (f"{m['val_loss_before']:.3f}->{m['val_loss_after']:.3f}"
                if isinstance(m.get("val_loss_before"), (int, float))
                and isinstance(m.get("val_loss_after"), (int, float)) else "-")
        cost = f"${r['cost_usd']:.2f}" if r["cost_usd"] is not None else "-"
        click.echo(f"{r['id']:>4} {r['method']:<9} {r['status']:<10} "
                   f"{r['model_version'] or '-':>7} {(r['dataset_version'] or '-')[:12]:<13} "
                   f"{loss:>17} {cost:>8}  {(r['started_at'] or '')[:19]}")


@training.command("show", help="One training run with its parameters, metrics and progress.")
@click.argument("run_id", type=int)
def show_cmd(run_id: int) -> None:
    from store.db import session_scope
    from store.repo import NotFound
    from store.training import get_training_run, run_summary

    with session_scope(_settings().store) as s:
        try:
            row = run_summary(get_training_run(s, run_id))
        except NotFound as exc:
            _fail(str(exc))
    click.echo(json.dumps(row, indent=2, default=str))


@training.command("cancel", help="Cancel a provider fine-tune job (OpenAI, Gemini) and its run.")
@click.argument("run_id", type=int)
def cancel_cmd(run_id: int) -> None:
    from assets.resources import OperationalStoreResource
    from assets.training import cancel_provider_run
    from ml.training.providers import FineTuneError
    from store.repo import NotFound
    from store.training import StaleTrainingRun

    settings = _settings()
    try:
        out = cancel_provider_run(run_id, OperationalStoreResource(url=settings.store))
    except (NotFound, ValueError, StaleTrainingRun) as exc:
        _fail(str(exc))
    except FineTuneError as exc:
        _fail(f"the provider refused to cancel: {exc}", code=1)
    click.echo(f"training run {run_id} cancelled (provider status {out['raw_status']})")


COMMANDS = [train, retrain, training]
