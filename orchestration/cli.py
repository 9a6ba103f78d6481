"""The pipeline commands of the ``learnloop`` command line: ``import``, ``generate``, ``run``,
``audit``, ``demo``, ``status``, ``migrate``, ``tables``, ``dev``. The ``learnloop`` group that gathers these
and the service commands (``service/cli.py``) is ``cli/main.py``."""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import UTC
from pathlib import Path

import click

from ml.config import Settings

# generated from the table registry (ml.tables.dbt_sources_yaml)
DBT_SOURCES_FILE = Path(__file__).resolve().parents[1] / "dbt_project" / "models" / "staging" / \
    "_sources.yml"


def _settings() -> Settings:
    s = Settings()
    s.ensure_dirs()
    return s


def _migrated_settings() -> Settings:
    """Settings, with the operational store migrated to head: the start-up step of every command
    that runs assets or reads the store (the assets themselves only check the revision)."""
    from store.db import upgrade

    s = _settings()
    upgrade(s.store)
    return s


@click.command(help="The warehouse tables of the registry (ml/tables.py): name, the asset that "
                    "writes it, key, columns.")
@click.option("--write-dbt-sources", is_flag=True,
              help="rewrite dbt_project/models/staging/_sources.yml from the registry")
@click.option("--json", "as_json", is_flag=True, help="every table with its columns, as JSON")
def tables(write_dbt_sources: bool, as_json: bool) -> None:
    from dataclasses import asdict

    from ml.tables import TABLE_LIST, dbt_sources_yaml

    if write_dbt_sources:
        # not through assets.analytics: loading the dbt assets needs a valid _sources.yml
        target = DBT_SOURCES_FILE
        target.write_text(dbt_sources_yaml(), encoding="utf-8")
        click.echo(f"wrote {target}")
        return
    if as_json:
        click.echo(json.dumps([asdict(t) for t in TABLE_LIST], indent=2))
        return
    for t in TABLE_LIST:
        flags = ", ".join(f for f, on in (("partitioned", t.partitioned),
                                          ("dbt source", t.dbt_source)) if on)
        click.echo(f"{t.name:26} {len(t.columns):3} columns  asset {t.asset:24} "
                   f"key ({', '.join(t.key) or '-'}){'  ' + flags if flags else ''}")


@click.command(help="Migrate the operational store to the revision this code needs (the deploy "
                    "step; every other command that uses the store does it at start-up too).")
def migrate() -> None:
    from store.db import current_revision, head_revision, redacted, upgrade

    settings = _settings()
    before = current_revision(settings.store)
    upgrade(settings.store)
    after = current_revision(settings.store)
    if before == after:
        click.echo(f"{redacted(settings.store)}: already at revision {after}")
    else:
        click.echo(f"{redacted(settings.store)}: migrated from {before or 'an empty store'} to "
                   f"revision {after} (head {head_revision()})")


@click.command("import", help="Import logs into the landing zone. FORMAT: native, openai-chat, "
                             "hh-rlhf, oasst.")
@click.argument("fmt", metavar="FORMAT",
                type=click.Choice(["native", "openai-chat", "hh-rlhf", "oasst"]))
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--tenant", default="default", show_default=True, help="tenant_id of the records")
@click.option("--timestamp", type=click.DateTime(["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S",
                                                   "%Y-%m-%dT%H:%M:%S%z"]),
              default=None, help="timestamp for records that carry none (hh-rlhf, and openai-chat "
                                 "/ oasst without one); default: the file's modification time, so "
                                 "a re-import lands on the same day")
@click.option("--json", "as_json", is_flag=True, help="print the summary as JSON")
def import_cmd(fmt: str, path: Path, tenant: str, timestamp, as_json: bool) -> None:

    from ml.importers import import_to_landing

    settings = _settings()
    if timestamp is not None and timestamp.tzinfo is None:
        timestamp = timestamp.replace(tzinfo=UTC)
    summary = import_to_landing(fmt, path, settings.landing_store, tenant, timestamp=timestamp,
                                warehouse=settings.warehouse_target)
    if as_json:
        click.echo(json.dumps(summary, indent=2, default=str))
        return
    click.echo(f"{path.name}: {summary['accepted']:,} accepted, "
               f"{summary['quarantined']:,} quarantined -> {settings.landing_store}")
    for f in summary.get("files", []):
        click.echo(f"  wrote {f}")
    click.echo(format_outlook(summary["ingest_outlook"]))


def format_outlook(o: dict) -> str:
    """One paragraph: what ingest will do with the imported records (``ingest_outlook``)."""
    lines = [f"ingest will add {o['new']:,} new record(s)"]
    dup, other = o["duplicates_in_import"], o["in_other_landing_files"]
    if dup["exact"] or dup["conflicting"]:
        lines.append(f"  same (tenant, id) twice in this import: {dup['exact']:,} identical "
                     f"copies dropped, {dup['conflicting']:,} different ones quarantined")
    if other["exact"] or other["conflicting"]:
        lines.append(f"  (tenant, id) also in other landing files of the same day: "
                     f"{other['exact']:,} identical (one copy dropped), {other['conflicting']:,} "
                     f"different (the later file's copy quarantined)")
    if o["already_ingested"] is None:
        lines.append(f"  {o.get('warehouse_note', 'warehouse not read')}: ids already ingested "
                     f"were not checked")
    elif o["already_ingested"]:
        lines.append(f"  already ingested: {o['already_ingested']:,} (dropped if identical, "
                     f"quarantined if changed)")
    if o["unchecked_files"]:
        lines.append(f"  {o['unchecked_files']} Parquet landing file(s) of those days not checked")
    return "\n".join(lines)


@click.command(help="Generate seeded demo support-bot logs (same seed, same bytes).")
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="output folder (default: the landing zone)")
@click.option("--interactions", "n", type=click.IntRange(min=1), default=5000, show_default=True)
@click.option("--seed", type=int, default=7, show_default=True)
@click.option("--days", type=click.IntRange(min=1), default=7, show_default=True)
def generate(out: Path | None, n: int, seed: int, days: int) -> None:
    from ml.demo.generate import generate as gen

    out = out or _settings().landing
    summary = gen(out, n, seed, days=days)
    click.echo(json.dumps(summary, indent=2, default=str))


@click.command(help="Counts per stage.")
@click.option("--json", "as_json", is_flag=True, help="machine-readable JSON")
def status(as_json: bool) -> None:
    from orchestration.status import collect_status, format_status

    st = collect_status(_migrated_settings())
    click.echo(json.dumps(st, indent=2) if as_json else format_status(st))


def _landing_day(ctx, param, value):
    """A ``--date``/``--since``/``--until`` value checked as a landing day (a calendar date, not
    before the first landing day, not in the future): a clear usage error otherwise."""
    from ml.landing import check_day

    values = value if isinstance(value, tuple) else (value,)
    for v in values:
        if v is None:
            continue
        try:
            check_day(v)
        except ValueError as exc:
            raise click.BadParameter(str(exc), ctx=ctx, param=param) from None
    return value


@click.command(help="Ingest the landing days that are new or changed since their last ingest "
                   "(or --date, or a --since/--until range of dates, or --force for all) and "
                   "run the jobs after ingest. Exit status: 0 every job succeeded, 1 a job "
                   "failed (or every provider call of a job failed), 3 a store is unreachable, "
                   "130 interrupted.")
@click.option("--date", "dates", multiple=True, callback=_landing_day,
              help="YYYY-MM-DD (repeatable): ingest these days, changed or not")
@click.option("--since", default=None, callback=_landing_day,
              help="YYYY-MM-DD: ingest the landing days from this date on (calendar order), "
                   "changed or not")
@click.option("--until", default=None, callback=_landing_day,
              help="YYYY-MM-DD: ingest the landing days up to this date, included (with or "
                   "without --since)")
@click.option("--force", is_flag=True, help="ingest every landing day, changed or not")
def run(dates: tuple[str, ...], since: str | None, until: str | None, force: bool) -> None:
    if (since or until) and dates:
        raise click.UsageError("give --date or a --since/--until range, not both")
    if since and until and since > until:
        raise click.UsageError(f"--since {since} is after --until {until}")
    settings = _migrated_settings()
    days = list(dates) or None
    if since or until:
        days = landing_days_between(settings.landing_store, since, until)
        if not days:
            raise click.ClickException(
                f"no landing day from {since or 'the first day'} to {until or 'the last day'} "
                f"in {settings.landing_store}: nothing to ingest")
    if not _run_guarded(settings, days, force=force):
        sys.exit(1)


def landing_days_between(landing_dir: Path, since: str | None, until: str | None) -> list[str]:
    """The valid landing days (with a folder) from ``since`` to ``until`` (both included, either
    open), in calendar order."""
    from ml.landing import scan_partitions

    return [d for d in scan_partitions(landing_dir)[0]
            if (since is None or d >= since) and (until is None or d <= until)]


def report_bad_folders(landing_dir: Path) -> int:
    """Print one line per landing folder that is not a valid day (skipped); return how many."""
    from ml.landing import describe_bad_folder, scan_partitions

    bad = scan_partitions(landing_dir)[1]
    for b in bad:
        click.echo(f"warning: {describe_bad_folder(landing_dir, b)}", err=True)
    return len(bad)


def _say(line: str) -> None:
    """A line on stderr that does not break a progress bar."""
    from tqdm import tqdm

    tqdm.write(line, file=sys.stderr)


def _run_guarded(settings: Settings, days: list[str] | None, force: bool = False) -> bool:
    """:func:`_run_chain` with each run tagged with this process as its owner, waiting for the
    warehouse slot (releasing those of dead runs), and stopping on Ctrl-C or SIGTERM with exit
    status 130 (the run in progress ends FAILURE or CANCELED and frees its warehouse slot)."""
    from orchestration import runner

    guard = runner.RunGuard(runner.instance_for(settings), "learnloop run", say=_say)
    try:
        with guard.interrupts():
            return _run_chain(settings, days, force=force, guard=guard)
    except KeyboardInterrupt:
        pass
    click.echo(f"interrupted: stopped before the remaining jobs (last run "
               f"{guard.current_run_id or '-'}); `learnloop run` again picks up where it "
               f"stopped", err=True)
    sys.exit(130)


def _run_chain(settings: Settings, days: list[str] | None, force: bool = False,
               guard=None) -> bool:
    """Ingest, then the post-ingest jobs; True when every job succeeded."""
    from tqdm import tqdm

    from ml import landing
    from orchestration import runner
    from orchestration.definitions import defs
    from orchestration.sensors import days_to_ingest

    instance = runner.instance_for(settings)
    landing_zone = settings.landing_store  # a folder or a bucket prefix
    n_bad = report_bad_folders(landing_zone)
    if not landing.list_partitions(landing_zone) and not days:
        if n_bad:  # only folders that are not days: something to fix, not success
            click.echo(f"no valid landing day in {landing_zone} ({n_bad} invalid folder(s) "
                       f"skipped): nothing to ingest", err=True)
            return False
        # nothing has failed: an empty landing zone is a quiet day, exit status 0
        click.echo(f"the landing zone {landing_zone} is empty: nothing to ingest", err=True)
        return True
    if days is None:
        changed, every = days_to_ingest(instance, landing_zone)
        days = sorted(every) if force else changed
        skipped = len(every) - len(days)
        if skipped:
            click.echo(f"{skipped} landing day(s) unchanged since their last ingest: skipped "
                       f"(--force ingests them again)")
    from assets.resources import warn_dev_hash_key_once

    # said here, once, not in the middle of the progress bar
    warn_dev_hash_key_once(settings, emit=lambda _: click.echo(
        "note: LEARNLOOP_HASH_KEY is not set: session ids are hashed with the shipped development "
        "key (fine for the demo; set your own stable key before ingesting production logs).",
        err=True))
    problems: dict[str, list[str]] = {}
    with tqdm(total=len(days), desc="ingest + quality", unit="day") as bar:
        def on_day(day, result):
            if guard is not None and guard.interrupted:
                raise KeyboardInterrupt
            report = runner.job_report(result)
            if not report.ok:
                problems[day] = report.problems
            bar.set_postfix_str(f"{day} {'ok' if report.ok else 'FAILED'}")
            bar.update(1)

        failed = runner.run_ingest(defs, instance, days, on_day, guard=guard)
    for day, lines in problems.items():
        click.echo(f"ingest of {day} FAILED:", err=True)
        for line in lines:
            click.echo(f"  {line}", err=True)
    if failed:
        click.echo(f"ingest failed for {failed}: see the runs in the Dagster UI", err=True)
    ok = not failed and not problems
    return run_jobs(settings, defs, instance, post_ingest_jobs(defs), guard=guard) and ok


def run_jobs(settings: Settings, defs, instance, jobs: list[str], guard=None,
             run_config: dict[str, dict] | None = None) -> bool:
    """Run ``jobs`` one after the other (each one's output in ``$LEARNLOOP_HOME/logs/<job>.log``),
    printing a line per job; True when every one succeeded. ``run_config``: job -> its run
    config."""
    from orchestration import runner

    ok = True
    log_dir = settings.home / "logs"
    for job in jobs:
        output = log_dir / f"{job}.log"
        click.echo(f"running {job} ... ", nl=False)
        started = time.monotonic()
        res = runner.run_job(defs, instance, job, output=output, guard=guard,
                             run_config=(run_config or {}).get(job))
        took = time.monotonic() - started
        if guard is not None and guard.interrupted:
            click.echo("interrupted")
            raise KeyboardInterrupt
        report = runner.job_report(res)
        tail = f"; {report.retries}" if report.retries else ""
        if report.ok:
            done = len(runner.asset_materializations(res))
            click.echo(f"ok: {done} materializations in {took:.1f} s{tail} (output: {output})")
            for line in report.warnings:
                click.echo(f"  {line}")
            continue
        ok = False
        click.echo(f"FAILED after {took:.1f} s{tail}")
        for line in report.problems + report.warnings:
            click.echo(f"  {line}")
        if not res.success:
            click.echo(f"{job} (run {res.run_id}): the end of its output ({output}):\n"
                       f"{runner.tail(output)}\nThe whole run is in the Dagster UI.", err=True)
    return ok


def post_ingest_jobs(defs) -> list[str]:
    """Jobs that run after ingest, in order, when present in the code location."""
    wanted = ["audit_job", "teaching_job", "analytics_job"]
    names = {j.name for j in defs.resolve_all_job_defs()}
    return [j for j in wanted if j in names]


@click.command(help="Audit chosen interactions now (manual_audit_job), with the configured or "
                   "given auditor.")
@click.option("--ids", "interaction_ids", multiple=True, help="interaction id (repeatable)")
@click.option("--sessions", "session_ids", multiple=True,
              help="session id, raw or hashed (repeatable)")
@click.option("--since", default="", help="ISO timestamp: interactions at or after it")
@click.option("--until", default="", help="ISO timestamp: interactions before it")
@click.option("--auditor", default="", help="override LEARNLOOP_AUDITOR for this run")
def audit(interaction_ids, session_ids, since: str, until: str, auditor: str) -> None:
    from orchestration import runner
    from orchestration.definitions import defs
    from orchestration.jobs import manual_audit_run_config

    if not (interaction_ids or session_ids or since or until):
        raise click.UsageError("name what to audit: --ids, --sessions, --since or --until")
    settings = _migrated_settings()
    instance = runner.instance_for(settings)
    config = manual_audit_run_config(interaction_ids=list(interaction_ids),
                                     session_ids=list(session_ids), since=since, until=until,
                                     auditor=auditor)
    guard = runner.RunGuard(instance, "learnloop audit", say=_say)
    try:
        with guard.interrupts():
            result = runner.run_job(defs, instance, "manual_audit_job", run_config=config,
                                    guard=guard)
    except KeyboardInterrupt:
        result = None
    if result is None or guard.interrupted:
        click.echo(f"interrupted: manual audit run {guard.current_run_id or '-'} stopped", err=True)
        sys.exit(130)
    for mat in runner.asset_materializations(result):
        click.echo(describe_audit_materialization(mat.asset_key.to_user_string(),
                                                  {k: v.value for k, v in mat.metadata.items()}))
    report = runner.job_report(result)
    for line in report.warnings:
        click.echo(f"  {line}")
    if not report.ok:
        for line in report.problems:
            click.echo(f"  {line}", err=True)
        raise click.ClickException(f"manual audit failed: see run {result.run_id} in the Dagster "
                                   f"UI; `learnloop status` shows the failed attempts")


def describe_audit_materialization(asset: str, meta: dict) -> str:
    """One line per asset of an audit run: what was selected and what was audited."""
    if asset == "audit_candidates":
        return (f"audit_candidates: {meta.get('dagster/row_count', 0):,} selected of "
                f"{meta.get('interactions', 0):,} interactions for "
                f"{meta.get('auditor', '?')} {meta.get('prompt_version', '')}".rstrip()
                + (f"; {meta['given_up']} given up after repeated failures"
                   if meta.get("given_up") else ""))
    if asset == "audited_errors":
        by_cat = meta.get("errors_by_category") or {}
        cats = ", ".join(f"{k} {v}" for k, v in sorted(by_cat.items(), key=lambda kv: -kv[1]))
        return (f"audited_errors: {meta.get('audited', 0):,} audited, {meta.get('errors', 0):,} "
                f"errors ({cats or 'none'}), {meta.get('failures', 0):,} failed, "
                f"{meta.get('review_items_created', 0):,} review items created")
    rows = meta.get("dagster/row_count")
    return f"{asset}: {rows:,} rows" if isinstance(rows, int) else f"{asset}: materialized"


def run_demo(n: int, seed: int, second_wave=None) -> None:
    """``learnloop demo`` (the command is ``cli/demo_loop.py``'s: the loop's second wave runs the
    serving API of ``service/``, above this layer, and comes in as ``second_wave``: called with
    ``(settings, defs, instance, guard, seed, run_jobs=..., ingest_day=...)`` after the quality
    gate set a challenger; it returns whether its jobs succeeded)."""
    from ml.demo.generate import generate as gen
    from orchestration.status import collect_status, format_status

    settings = _migrated_settings()
    click.echo(f"learnloop demo in {settings.home}")
    summary = gen(settings.landing, n, seed)
    click.echo(f"generated {summary.get('records', n):,} demo interactions into {settings.landing}")
    ok = _run_guarded(settings, None)
    ok = _demo_review_and_datasets(settings, seed, second_wave) and ok
    st = collect_status(settings)
    click.echo("")
    click.echo(format_status(st))
    click.echo("")
    click.echo("Next:")
    click.echo("  make dev     # Dagster UI at http://127.0.0.1:3000 (runs, assets, checks)")
    click.echo("  make mlflow   # MLflow UI at http://127.0.0.1:5000: the registered model's "
               "versions, aliases and metrics")
    click.echo("  .venv/bin/learnloop reviewers add admin --role admin"
               "   # an account for the review app (prompts for a password)")
    click.echo("  make serve   # review web app at http://127.0.0.1:8000: sign in as admin")
    if not ok:
        sys.exit(1)


DEMO_LEFT_FOR_HUMANS = 0.1  # share of the demo's review items the simulated reviewer leaves


def _enough_for_a_dataset(settings: Settings) -> bool:
    """Whether the demo has the approved samples a dataset needs (the default spec's
    ``min_size``); says why not when it has too few (a small ``--interactions``)."""
    from assets.datasets import TrainingDatasetConfig
    from store.datasets import approved_after
    from store.db import session_scope

    need = TrainingDatasetConfig().min_size
    with session_scope(settings.store) as s:
        have = approved_after(s, None)
    if have < need:
        click.echo(f"datasets_job skipped: {have} approved sample(s), a training dataset needs at "
                   f"least {need} (min_size); run the demo with more --interactions")
    return have >= need


def _only_too_small(settings: Settings) -> bool:
    """True when the newest training dataset version failed only ``check_min_size`` (the
    approved samples were enough, but de-duplication left too few): a demo outcome to report
    (run it with more --interactions), not an error. Says so."""
    from store.datasets import list_datasets
    from store.db import session_scope

    with session_scope(settings.store) as s:
        versions = list_datasets(s, kind="training")
        newest = max(versions, key=lambda d: d.created_at) if versions else None
        failed = list((newest.stats or {}).get("failed_checks") or []) if newest else []
        n_train = newest.n_train if newest else 0
    if newest is None or failed != ["check_min_size"]:
        return False
    click.echo(f"training dataset too small after de-duplication ({n_train} train examples; "
               f"check_min_size failed): run the demo with more --interactions")
    return True


def _has_ready_dataset(settings: Settings) -> bool:
    from store.datasets import list_datasets
    from store.db import session_scope

    with session_scope(settings.store) as s:
        ready = any(d.status == "ready" for d in list_datasets(s, kind="training"))
    if not ready:
        click.echo("training_job skipped: no training dataset version passed its checks")
    return ready


def report_gate(settings: Settings) -> bool | None:
    """Say what the quality gate decided on the newest trained candidate (one line, with every
    threshold's figures) and return whether it passed; None when the newest training run made no
    evaluated version (it failed, or a provider job is still running)."""
    from sqlalchemy import select

    from store.db import session_scope
    from store.models import ModelEvaluation, TrainingRun

    with session_scope(settings.store) as s:
        run = s.scalar(select(TrainingRun).order_by(TrainingRun.id.desc()).limit(1))
        if run is None or run.status != "succeeded" or not run.model_version:
            return None
        ev = s.scalar(select(ModelEvaluation).where(
            ModelEvaluation.candidate_version == run.model_version)
            .order_by(ModelEvaluation.id.desc()).limit(1))
        if ev is None:
            return None
        passed, summary = bool(ev.passed), (ev.gate or {}).get("summary", "")
    if passed:
        click.echo(f"candidate v{run.model_version} is the challenger: {summary}")
    else:
        click.echo(f"candidate v{run.model_version} stays a candidate: {summary}")
    return passed


def train_with_progress(settings: Settings, defs, instance, guard=None,
                        run_config: dict | None = None) -> bool:
    """Run ``training_job`` with a progress bar drawn from the training run's progress in the
    operational store (the run's own output goes to its log file, as for every job)."""
    import threading

    from tqdm import tqdm

    from assets.training import BASE_PROGRESS_FILE
    from store.db import session_scope
    from store.models import TrainingRun

    stop = threading.Event()
    stream = sys.stderr

    base_progress = settings.models / BASE_PROGRESS_FILE

    def follow() -> None:
        from sqlalchemy import select

        bar, shown = None, None
        with session_scope(settings.store) as s:
            newest = s.scalar(select(TrainingRun.id).order_by(TrainingRun.id.desc()).limit(1))
        while not stop.wait(1.0):
            with session_scope(settings.store) as s:
                run = s.scalar(select(TrainingRun).where(TrainingRun.id > (newest or 0))
                               .order_by(TrainingRun.id.desc()).limit(1))
                progress = dict(run.progress or {}) if run is not None else {}
            stage = "training"
            if not progress:  # before the candidate: the offline base model's pretraining
                try:
                    progress = json.loads(base_progress.read_text())
                    stage = "base model"
                except FileNotFoundError:  # not building it (written by os.replace: never partial)
                    continue
            total, step = progress.get("total_steps"), progress.get("step")
            if not total or step is None:
                continue
            if bar is not None and shown != stage:
                bar.close()
                bar = None
            if bar is None:
                shown = stage
                bar = tqdm(total=int(total), desc=f"  {stage}", unit="step", file=stream,
                           leave=False)
            bar.n = min(int(step), int(total))
            loss = progress.get("loss", progress.get("val_loss"))
            if isinstance(loss, (int, float)):
                bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
            bar.refresh()
        if bar is not None:
            bar.close()

    watcher = threading.Thread(target=follow, daemon=True)
    watcher.start()
    try:
        return run_jobs(settings, defs, instance, ["training_job"], guard=guard,
                        run_config={"training_job": run_config} if run_config else None)
    finally:
        stop.set()
        watcher.join(timeout=5)


def _demo_review_and_datasets(settings: Settings, seed: int, second_wave=None) -> bool:
    """The demo's back half: a simulated careful reviewer (``demo-reviewer``, deciding from the
    generator's ground truth; never on real data) decides the flagged errors, the teacher proposes
    corrections for the confirmed ones, the reviewer decides those samples, then preference
    pairs, the evaluation suite and a training dataset version with its exports are built and the
    marts refreshed."""
    from orchestration import runner
    from orchestration.definitions import defs
    from orchestration.demo_review import review_demo_items

    def review(stage: str, kind: str) -> None:
        # a tenth of the items stays pending, for a person to try the review web app on
        counts = review_demo_items(settings.store, settings.landing, seed=seed, kinds=(kind,),
                                   leave_for_humans=DEMO_LEFT_FOR_HUMANS)
        decided = counts["decided"].get(kind, {})
        shown = ", ".join(f"{status} {n:,}" for status, n in sorted(decided.items()) if n)
        click.echo(f"demo-reviewer on {stage} (simulated from the demo's ground truth, "
                   f"{counts['simulated_mistakes']} planted slips): {shown or 'nothing to decide'}"
                   f"; {counts['skipped'].get('left_for_humans', 0):,} left for you")

    guard = runner.RunGuard(runner.instance_for(settings), "learnloop demo", say=_say)
    instance = runner.instance_for(settings)
    try:
        with guard.interrupts():
            review("flagged errors", "error")
            ok = run_jobs(settings, defs, instance, ["teaching_job"], guard=guard)
            review("proposed corrections", "sample")
            ok = run_jobs(settings, defs, instance, ["teaching_job"], guard=guard) and ok
            if _enough_for_a_dataset(settings):
                built = run_jobs(settings, defs, instance, ["datasets_job"], guard=guard)
                ok = (built or _only_too_small(settings)) and ok
                if _has_ready_dataset(settings):
                    trained = train_with_progress(settings, defs, instance, guard=guard)
                    verdict = report_gate(settings)
                    ok = (trained or verdict is False) and ok
                    if verdict and second_wave is not None:
                        ok = _demo_second_wave(settings, defs, instance, guard, seed,
                                               second_wave) and ok
            return run_jobs(settings, defs, instance, ["analytics_job"], guard=guard) and ok
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)


def _demo_second_wave(settings: Settings, defs, instance, guard, seed: int, second_wave) -> bool:
    """The loop closed: an A/B test of the challenger on simulated users served by the serving
    API (``second_wave``: cli/demo_loop.py's ``close_the_loop``)."""
    from orchestration import runner

    def ingest_day(day: str) -> bool:
        failed = runner.run_ingest(defs, instance, [day], guard=guard)
        if failed:
            click.echo(f"ingest of {day} FAILED: see the run in the Dagster UI", err=True)
        return not failed

    return second_wave(settings, defs, instance, guard, seed, run_jobs=run_jobs,
                       ingest_day=ingest_day)


DEV_PORT = 3000


def port_is_free(host: str, port: int) -> bool:
    """True when nothing listens on ``host:port`` (a bind attempt, closed at once)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str) -> int:
    """A port on ``host`` that nothing listens on now (the system picks it)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def choose_dev_port(host: str, wanted: int | None) -> tuple[int, str | None]:
    """(port, note) for the Dagster UI. ``wanted`` (``--port``) is used as given (an error when
    taken; 0: any free port). Without it: ``LEARNLOOP_DAGSTER_PORT`` or 3000, or a free port when
    that one is taken (the note says so)."""
    if wanted:
        if not port_is_free(host, wanted):
            raise click.BadParameter(f"port {wanted} on {host} is in use; pick another, or leave "
                                     f"--port out to get a free one", param_hint="--port")
        return wanted, None
    if wanted == 0:
        return free_port(host), None
    env = os.environ.get("LEARNLOOP_DAGSTER_PORT", "").strip()
    if env and not (env.isdigit() and 0 < int(env) < 65536):
        raise click.ClickException(f"LEARNLOOP_DAGSTER_PORT={env!r} is not a port number")
    preferred, source = (int(env), "LEARNLOOP_DAGSTER_PORT") if env else (DEV_PORT, "the default")
    if port_is_free(host, preferred):
        return preferred, None
    return free_port(host), f"port {preferred} ({source}) is in use"


@click.command(help="Open the Dagster UI and daemon on this project (`dg dev` on workspace.yaml "
                    "with the project's Dagster home). The port: --port, else "
                    "LEARNLOOP_DAGSTER_PORT, else 3000; when that one is taken, a free one.")
@click.option("--port", type=click.IntRange(0, 65535), default=None,
              help="port of the UI (0: any free port); default LEARNLOOP_DAGSTER_PORT or 3000, "
                   "or a free port when that is taken")
@click.option("--host", default="127.0.0.1", show_default=True)
def dev(port: int | None, host: str) -> None:
    from orchestration import runner

    settings = _migrated_settings()  # the assets check the revision; the UI does not migrate
    runner.prepare_dagster_home(settings)
    chosen, note = choose_dev_port(host, port)
    click.echo(f"Dagster UI at http://{host}:{chosen}" + (f" ({note})" if note else ""))
    root = Path(__file__).resolve().parents[1]
    exe = Path(sys.executable).with_name("dg")
    # `dg dev -w` hands the workspace file straight to Dagster's dev server (UI, daemon, code
    # server); `dagster dev` is its superseded predecessor
    os.execv(str(exe), [str(exe), "dev", "-w", str(root / "workspace.yaml"), "-h", host,
                        "-p", str(chosen)])


COMMANDS = [import_cmd, generate, run, audit, status, migrate, tables, dev]  # demo: cli/


STORE_UNREACHABLE_EXIT = 3


def unreachable_store_line(exc: BaseException) -> str | None:
    """One line for an error that means a store cannot be reached or opened: which store (the
    operational store with its password redacted, the warehouse file, the Dagster instance) and
    the database's own reason; None for any other error (it is not ours to shorten)."""
    import traceback

    import duckdb
    import sqlalchemy.exc

    settings = Settings()
    if isinstance(exc, duckdb.IOException | duckdb.ConnectionException):
        return (f"the warehouse {settings.warehouse_target} cannot be opened: "
                f"{_reason(str(exc))} (another process writing it? `learnloop run` and the "
                f"Dagster runs take turns through the warehouse pool)")
    frames = traceback.extract_tb(exc.__traceback__)
    in_store_db = any(Path(f.filename).parts[-2:] == ("store", "db.py") for f in frames)
    if not (isinstance(exc, sqlalchemy.exc.OperationalError | sqlalchemy.exc.InterfaceError)
            or (isinstance(exc, OSError) and in_store_db)):  # e.g. a SQLite folder not creatable
        return None
    reason = _reason(str(getattr(exc, "orig", None) or exc))
    if any("dagster" in Path(f.filename).parts or "dagster_postgres" in f.filename
           for f in frames):
        home = os.environ.get("DAGSTER_HOME") or settings.dagster_home_dir
        return f"the Dagster instance ({home}/dagster.yaml) is unreachable: {reason}"
    from store.db import redacted

    return f"the operational store {redacted(settings.store)} is unreachable: {reason}"


def _reason(text: str) -> str:
    """The first meaningful line of a database error (no SQL, no background link)."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    line = lines[0] if lines else "unknown error"
    return line.removeprefix("(sqlite3.OperationalError) ")[:300]
