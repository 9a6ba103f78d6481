"""`learnloop reviewers ...` and `learnloop collector-keys ...`: admin changes from the CLI."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from cli.main import main
from store import collector_keys, reviewers
from store.db import session_scope
from store.models import ConfigHistory


@pytest.fixture()
def cli(sqlite_store, tmp_path, monkeypatch):
    monkeypatch.setenv("LEARNLOOP_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LEARNLOOP_STORE_URL", sqlite_store)
    runner = CliRunner()

    def run(*args, input=None, ok=True):
        res = runner.invoke(main, list(args), input=input, catch_exceptions=False)
        if ok:
            assert res.exit_code == 0, res.output
        return res

    return run


def test_reviewer_lifecycle_from_the_cli(cli, sqlite_store):
    out = cli("reviewers", "add", "ann", "--tenant", "acme", input="first-password\nfirst-password\n")
    assert "API token (shown once): llr_" in out.output and "first-password" not in out.output
    first_token = out.output.rsplit(" ", 1)[-1].strip()
    cli("reviewers", "add", "root", "--role", "admin", input="admin-password\nadmin-password\n")

    # a password reset replaces the API token too (printed once): no old credential survives
    out = cli("reviewers", "set-password", "ann", input="second-password\nsecond-password\n")
    assert "second-password" not in out.output and "open sessions have ended" in out.output
    assert "new API token of 'ann' (shown once; the old one stopped working): llr_" in out.output
    reset_token = out.output.rsplit(" ", 1)[-1].strip()
    out = cli("reviewers", "set-password", "ann", "--password-stdin", "--keep-token",
              input="third-password\n")
    assert "third-password" not in out.output and "llr_" not in out.output
    assert "API token of 'ann' was kept" in out.output
    with session_scope(sqlite_store) as s:
        assert reviewers.authenticate(s, "ann", "second-password") is None
        assert reviewers.authenticate(s, "ann", "third-password").username == "ann"
        assert reviewers.by_token(s, first_token) is None
        assert reviewers.by_token(s, reset_token).username == "ann"

    bad = cli("reviewers", "set-password", "ann", "--password-stdin", input="short\n", ok=False)
    assert bad.exit_code == 1 and "password must be 8-1024 characters" in bad.output
    missing = cli("reviewers", "deactivate", "nobody", ok=False)
    assert missing.exit_code == 1 and "reviewer 'nobody' not found" in missing.output

    cli("reviewers", "deactivate", "ann")
    assert "INACTIVE" in cli("reviewers", "list").output
    with session_scope(sqlite_store) as s:
        assert reviewers.authenticate(s, "ann", "third-password") is None
    cli("reviewers", "activate", "ann")
    out = cli("reviewers", "update", "ann", "--tenant", "globex", "--tenant", "initech")
    assert "for tenants ['globex', 'initech']" in out.output
    last = cli("reviewers", "update", "root", "--role", "reviewer", "--tenant", "x", ok=False)
    assert "last active admin" in last.output
    token = cli("reviewers", "rotate-token", "ann").output.rsplit(" ", 1)[-1].strip()
    with session_scope(sqlite_store) as s:
        assert reviewers.by_token(s, token).username == "ann"
        rows = s.scalars(select(ConfigHistory).order_by(ConfigHistory.id)).all()
        changes = [(r.key, r.new_value) for r in rows]
        assert all(r.changed_by.startswith("cli") for r in rows)
    assert ("reviewer:ann", {"password": "changed", "api_token": "rotated"}) in changes
    assert ("reviewer:ann", {"password": "changed"}) in changes  # --keep-token
    assert ("reviewer:ann", {"active": False}) in changes
    assert ("reviewer:ann", {"active": True}) in changes
    assert ("reviewer:ann", {"role": "reviewer", "tenants": ["globex", "initech"]}) in changes
    assert ("reviewer:ann", {"api_token": "rotated"}) in changes
    assert "password" not in str([r.old_value for r in rows])
    assert not any("third-password" in str(c) or token in str(c) or reset_token in str(c)
                   for c in changes)


def test_collector_keys_list_and_revoke(cli, sqlite_store):
    out = cli("collector-keys", "add", "acme", "--label", "bot")
    key = out.output.rsplit(" ", 1)[-1].strip()
    listing = cli("collector-keys", "list").output
    assert "acme" in listing and "active" in listing and key not in listing
    cli("collector-keys", "revoke", "1")
    assert "REVOKED" in cli("collector-keys", "list").output
    with session_scope(sqlite_store) as s:
        assert collector_keys.tenant_for_key(s, key) is None
        assert s.scalars(select(ConfigHistory.new_value)).all()[-1] == {"active": False}
    assert "not found" in cli("collector-keys", "revoke", "7", ok=False).output
