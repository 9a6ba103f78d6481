"""The `learnloop` command line."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import click

from ml.config import Settings


def _settings() -> Settings:
    s = Settings()
    s.ensure_dirs()
    return s


@click.group(help="learnloop: continuous learning from a chatbot's own logs.")
def main() -> None:
    # LanceDB's Rust core logs warnings (e.g. "No existing dataset ..., it will be created") straight
    # to the terminal; keep those to errors unless the user asked for more.
    os.environ.setdefault("LANCEDB_LOG", "error")


@main.command("import", help="Import logs into the landing zone. FORMAT: native, openai-chat, "
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
    from datetime import timezone

    from ml.importers import import_to_landing

    settings = _settings()
    if timestamp is not None and timestamp.tzinfo is None:
        timestamp = timestamp.replace(tzinfo=timezone.utc)
    summary = import_to_landing(fmt, path, settings.landing, tenant, timestamp=timestamp)
    if as_json:
        click.echo(json.dumps(summary, indent=2, default=str))
    else:
        click.echo(f"{path.name}: {summary['accepted']:,} accepted, "
                   f"{summary['quarantined']:,} quarantined -> {settings.landing}")
        for f in summary.get("files", []):
            click.echo(f"  wrote {f}")


@main.command(help="Generate seeded demo support-bot logs (same seed, same bytes).")
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


@main.command(help="Counts per stage.")
@click.option("--json", "as_json", is_flag=True, help="machine-readable JSON")
def status(as_json: bool) -> None:
    from orchestration.status import collect_status, format_status

    st = collect_status(_settings())
    click.echo(json.dumps(st, indent=2) if as_json else format_status(st))


@main.command(help="Ingest the landing zone (all days, or --date) and refresh analytics.")
@click.option("--date", "dates", multiple=True, help="YYYY-MM-DD (repeatable); default all days")
def run(dates: tuple[str, ...]) -> None:
    _run_chain(_settings(), list(dates) or None)


def _run_chain(settings: Settings, days: list[str] | None) -> bool:
    from tqdm import tqdm

    from ml import landing
    from orchestration import runner
    from orchestration.definitions import defs

    instance = runner.instance_for(settings)
    days = days or landing.list_partitions(settings.landing)
    if not days:
        click.echo(f"the landing zone {settings.landing} is empty: nothing to ingest", err=True)
        return False
    from orchestration.resources import warn_dev_hash_key_once

    # said here, once, not in the middle of the progress bar
    warn_dev_hash_key_once(settings, emit=lambda _: click.echo(
        "note: LEARNLOOP_HASH_KEY is not set: session ids are hashed with the shipped development "
        "key (fine for the demo; set your own stable key before ingesting production logs).",
        err=True))
    ok = True
    with tqdm(total=len(days), desc="ingest + quality", unit="day") as bar:
        def on_day(day, result):
            nonlocal ok
            ok = ok and result.success
            bar.set_postfix_str(f"{day} {'ok' if result.success else 'FAILED'}")
            bar.update(1)

        failed = runner.run_ingest(defs, instance, days, on_day)
    if failed:
        click.echo(f"ingest failed for {failed}: see the runs in the Dagster UI", err=True)
    log_dir = settings.home / "logs"
    for job in post_ingest_jobs(defs):
        output = log_dir / f"{job}.log"
        click.echo(f"running {job} ... ", nl=False)
        started = time.monotonic()
        res = runner.run_job(defs, instance, job, output=output)
        took = time.monotonic() - started
        if res.success:
            done = len(res.get_asset_materialization_events())
            click.echo(f"ok: {done} materializations in {took:.1f} s (output: {output})")
        else:
            ok = False
            click.echo("FAILED")
            click.echo(f"{job} failed after {took:.1f} s; the end of its output ({output}):\n"
                       f"{runner.tail(output)}\nThe whole run is in the Dagster UI.", err=True)
    return ok and not failed


def post_ingest_jobs(defs) -> list[str]:
    """Jobs that run after ingest, in order, when present in the code location."""
    wanted = ["audit_job", "teaching_job", "analytics_job"]
    names = {j.name for j in defs.resolve_all_job_defs()}
    return [j for j in wanted if j in names]


@main.command(help="Audit chosen interactions now (manual_audit_job), with the configured or "
                   "given auditor.")
@click.option("--ids", "interaction_ids", multiple=True, help="interaction id (repeatable)")
@click.option("--sessions", "session_ids", multiple=True,
              help="session id, raw or hashed (repeatable)")
@click.option("--since", default="", help="ISO timestamp: interactions at or after it")
@click.option("--until", default="", help="ISO timestamp: interactions before it")
@click.option("--auditor", default="", help="override LEARNLOOP_AUDITOR for this run")
def audit(interaction_ids, session_ids, since: str, until: str, auditor: str) -> None:
    from assets.audit import manual_audit_run_config
    from orchestration import runner
    from orchestration.definitions import defs

    if not (interaction_ids or session_ids or since or until):
        raise click.UsageError("name what to audit: --ids, --sessions, --since or --until")
    settings = _settings()
    instance = runner.instance_for(settings)
    config = manual_audit_run_config(interaction_ids=list(interaction_ids),
                                     session_ids=list(session_ids), since=since, until=until,
                                     auditor=auditor)
    result = runner.run_job(defs, instance, "manual_audit_job", run_config=config)
    for event in result.get_asset_materialization_events():
        mat = event.materialization
        shown = {k: v.value for k, v in mat.metadata.items()
                 if k in ("candidates", "audited", "errors", "failures", "error_rate")}
        click.echo(f"{mat.asset_key.to_user_string()}: {shown}")
    if not result.success:
        raise click.ClickException(f"manual audit failed: see run {result.run_id} in the Dagster UI")


@main.command(help="Run the whole chain on the embedded default: no server, no API key.")
@click.option("--interactions", "n", type=click.IntRange(min=1), default=3000, show_default=True)
@click.option("--seed", type=int, default=7, show_default=True)
def demo(n: int, seed: int) -> None:
    from ml.demo.generate import generate as gen
    from orchestration.status import collect_status, format_status

    settings = _settings()
    click.echo(f"learnloop demo in {settings.home}")
    summary = gen(settings.landing, n, seed)
    click.echo(f"generated {summary.get('records', n):,} demo interactions into {settings.landing}")
    ok = _run_chain(settings, None)
    st = collect_status(settings)
    click.echo("")
    click.echo(format_status(st))
    click.echo("")
    click.echo("Next:")
    click.echo("  make dev     # Dagster UI at http://127.0.0.1:3000 (runs, assets, checks)")
    click.echo(f"  .venv/bin/mlflow ui --backend-store-uri {settings.mlflow_uri}"
               "   # MLflow UI at http://127.0.0.1:5000")
    click.echo("  .venv/bin/learnloop reviewers add admin --role admin"
               "   # an account for the review app (prompts for a password)")
    click.echo("  make serve   # review web app at http://127.0.0.1:8000: sign in as admin")
    if not ok:
        sys.exit(1)


@main.command(help="Open the Dagster UI on this project (dagster dev).")
@click.option("--port", type=int, default=3000, show_default=True)
def dev(port: int) -> None:
    from orchestration import runner

    settings = _settings()
    runner.prepare_dagster_home(settings)
    root = Path(__file__).resolve().parents[1]
    exe = Path(sys.executable).with_name("dagster")
    os.execv(str(exe), [str(exe), "dev", "-w", str(root / "workspace.yaml"), "-p", str(port)])


@main.command(help="Start the review web app, JSON API and log collector.")
@click.option("--host", default=None, help="default: the host of LEARNLOOP_SERVICE_URL "
                                            "(127.0.0.1)")
@click.option("--port", type=int, default=None, help="default: the port of LEARNLOOP_SERVICE_URL "
                                                     "(8000)")
def serve(host: str | None, port: int | None) -> None:
    from service.cli_support import serve as run_server

    settings = _settings()
    url_host, url_port = settings.service_bind
    run_server(host or url_host, port or url_port, settings)


@main.group(help="Reviewer accounts of the review web app. Every change is recorded in the "
                  "store's config_history (who, when, old and new value).")
def reviewers() -> None:
    pass


def _read_new_password(from_stdin: bool) -> str:
    """A new password from one line of standard input, or prompted for twice without echo."""
    if from_stdin:
        line = sys.stdin.readline()
        if not line:
            raise click.ClickException("--password-stdin: standard input is empty")
        return line.rstrip("\r\n")
    return click.prompt("New password", hide_input=True, confirmation_prompt=True)


def _account_call(fn, *args):
    from store.collector_keys import CollectorKeyError
    from store.reviewers import ReviewerError

    try:
        return fn(*args, settings=_settings())
    except (ReviewerError, CollectorKeyError) as exc:
        raise click.ClickException(str(exc)) from None


@reviewers.command("add", help="Create a reviewer; prints the API token once.")
@click.argument("username")
@click.option("--role", type=click.Choice(["reviewer", "admin"]), default="reviewer",
              show_default=True)
@click.option("--tenant", "tenants", multiple=True,
              help="tenant the reviewer may see (repeatable; admins see all)")
@click.option("--password", prompt=True, hide_input=True, confirmation_prompt=True,
              envvar="LEARNLOOP_NEW_REVIEWER_PASSWORD",
              help="prompted for when not given (or set LEARNLOOP_NEW_REVIEWER_PASSWORD)")
def reviewers_add(username: str, role: str, tenants: tuple[str, ...], password: str) -> None:
    from service.cli_support import add_reviewer

    info = _account_call(add_reviewer, username, password, role, list(tenants))
    click.echo(f"created {info.role} {info.username!r} for tenants {info.tenants or ['*']}")
    click.echo(f"API token (shown once): {info.api_token}")


@reviewers.command("list", help="List reviewer accounts.")
def reviewers_list() -> None:
    from service.cli_support import list_reviewers

    for r in list_reviewers(_settings()):
        click.echo(f"{r.username:20} {r.role:9} {'active' if r.active else 'INACTIVE':9} "
                   f"{','.join(r.tenants) or '*'}")


@reviewers.command("deactivate", help="Deactivate an account: sign-in, its API token and its "
                                      "open web sessions stop working at once.")
@click.argument("username")
def reviewers_deactivate(username: str) -> None:
    from service.cli_support import set_reviewer_active

    _account_call(set_reviewer_active, username, False)
    click.echo(f"deactivated {username!r}")


@reviewers.command("activate", help="Reactivate a deactivated account.")
@click.argument("username")
def reviewers_activate(username: str) -> None:
    from service.cli_support import set_reviewer_active

    _account_call(set_reviewer_active, username, True)
    click.echo(f"activated {username!r}")


@reviewers.command("set-password", help="Set a new password (prompted twice, never echoed; or "
                                        "one line from stdin). Open web sessions end and the API "
                                        "token is replaced: the new one is printed once (a reset "
                                        "after a compromise leaves no old credential working).")
@click.argument("username")
@click.option("--password-stdin", is_flag=True, help="read the password from standard input")
@click.option("--keep-token", is_flag=True,
              help="keep the current API token (a routine change, no compromise suspected)")
def reviewers_set_password(username: str, password_stdin: bool, keep_token: bool) -> None:
    from functools import partial

    from service.cli_support import set_reviewer_password

    password = _read_new_password(password_stdin)
    info = _account_call(partial(set_reviewer_password, keep_token=keep_token), username, password)
    click.echo(f"password of {username!r} changed; their open sessions have ended")
    if info.api_token:
        click.echo(f"new API token of {username!r} (shown once; the old one stopped working): "
                   f"{info.api_token}")
    else:
        click.echo(f"the API token of {username!r} was kept (--keep-token)")


@reviewers.command("update", help="Change an account's role and/or tenants (--tenant replaces "
                                  "the whole list).")
@click.argument("username")
@click.option("--role", type=click.Choice(["reviewer", "admin"]), default=None)
@click.option("--tenant", "tenants", multiple=True, help="new tenant list (repeatable)")
def reviewers_update(username: str, role: str | None, tenants: tuple[str, ...]) -> None:
    from service.cli_support import update_reviewer

    if role is None and not tenants:
        raise click.UsageError("nothing to change: give --role and/or --tenant")
    info = _account_call(update_reviewer, username, role, list(tenants) if tenants else None)
    click.echo(f"{info.username!r} is now {info.role} for tenants {info.tenants or ['*']}")


@reviewers.command("rotate-token", help="Issue a new API token (printed once); the old one "
                                        "stops working.")
@click.argument("username")
def reviewers_rotate_token(username: str) -> None:
    from service.cli_support import rotate_reviewer_token

    token = _account_call(rotate_reviewer_token, username)
    click.echo(f"new API token of {username!r} (shown once): {token}")


@main.group("collector-keys", help="API keys of the log collector (one per tenant).")
def collector_keys() -> None:
    pass


@collector_keys.command("add", help="Create a collector key for TENANT; prints it once.")
@click.argument("tenant")
@click.option("--label", default=None)
def collector_keys_add(tenant: str, label: str | None) -> None:
    from service.cli_support import add_collector_key

    key = _account_call(add_collector_key, tenant, label)
    click.echo(f"collector key for tenant {tenant!r} (shown once): {key}")


@collector_keys.command("list", help="List collector keys (never the keys themselves).")
def collector_keys_list() -> None:
    from service.cli_support import list_collector_keys

    for k in list_collector_keys(_settings()):
        click.echo(f"{k.id:5} {k.tenant_id:20} {'active' if k.active else 'REVOKED':8} "
                   f"{k.label or ''}")


@collector_keys.command("revoke", help="Revoke the collector key with id KEY_ID (see `list`); "
                                       "requests with it get 401.")
@click.argument("key_id", type=click.IntRange(min=1))
def collector_keys_revoke(key_id: int) -> None:
    from service.cli_support import revoke_collector_key

    info = _account_call(revoke_collector_key, key_id)
    click.echo(f"revoked collector key {info.id} of tenant {info.tenant_id!r}")
