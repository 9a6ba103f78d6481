"""The service commands of the ``learnloop`` command line: ``serve``, ``reviewers ...``,
``collector-keys ...``, ``serving flush`` (the functions they call are in ``service/cli_support.py``). The
``learnloop`` group that gathers these and the pipeline commands is ``cli/main.py``."""

from __future__ import annotations

import sys

import click

from ml.config import Settings


def _settings() -> Settings:
    s = Settings()
    s.ensure_dirs()
    return s


@click.command(help="Start the review web app, JSON API, log collector and serving API.")
@click.option("--host", default=None, help="default: the host of LEARNLOOP_SERVICE_URL "
                                            "(127.0.0.1)")
@click.option("--port", type=int, default=None, help="default: the port of LEARNLOOP_SERVICE_URL "
                                                     "(8000)")
def serve(host: str | None, port: int | None) -> None:
    from service.cli_support import serve as run_server

    settings = _settings()
    url_host, url_port = settings.service_bind
    run_server(host or url_host, port or url_port, settings)


@click.group(help="Reviewer accounts of the review web app. Every change is recorded in the "
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


@click.group("collector-keys", help="API keys of the log collector (one per tenant).")
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


@click.group(help="The serving API's replies waiting for feedback (served turns).")
def serving() -> None:
    pass


@serving.command("flush", help="Write the served turns whose feedback window "
                               "(LEARNLOOP_SERVE_FEEDBACK_WINDOW_S) has passed to the landing "
                               "zone; with --all, every pending turn.")
@click.option("--all", "all_pending", is_flag=True,
              help="write every pending turn, also those still in their feedback window")
def serving_flush(all_pending: bool) -> None:
    from service.serving import flush_pending
    from store.db import upgrade

    settings = _settings()
    upgrade(settings.store)
    out = flush_pending(settings, all_pending=all_pending)
    scope = "every pending turn" if all_pending else f"turns created before {out['older_than']}"
    click.echo(f"wrote {out['written']} served turn(s) ({scope}) to "
               f"{len(out['files'])} landing file(s)")
    for f in out["files"]:
        click.echo(f"  {settings.landing_store.ref(f)}")


COMMANDS = [serve, reviewers, collector_keys, serving]
