"""Reviewer accounts and collector keys (store modules), the CLI helpers, the sign-in limiter."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from argon2 import PasswordHasher
from servicekit import make_settings
from sqlalchemy import select

from service import cli_support
from service.security import LoginLimiter
from store import collector_keys, repo, reviewers
from store.db import session_scope
from store.models import CollectorKey, Reviewer, ReviewEvent


def test_passwords_and_tokens_are_stored_hashed(svc_store, monkeypatch):
    monkeypatch.setattr(reviewers, "_hasher", PasswordHasher())  # the production parameters
    with session_scope(svc_store) as s:
        info = reviewers.create_reviewer(s, username="ann", password="s3cret-pass",
                                         tenants=["acme"])
    with session_scope(svc_store) as s:
        row = s.scalar(select(Reviewer).where(Reviewer.username == "ann"))
        assert row.password_hash.startswith("$argon2id$") and "s3cret-pass" not in row.password_hash
        assert info.api_token and info.api_token not in (row.api_token_hash or "")
        assert row.api_token_hash == reviewers.hash_token(info.api_token)
        assert reviewers.authenticate(s, "ann", "s3cret-pass").username == "ann"
        assert reviewers.authenticate(s, "ann", "wrong-pass") is None
        assert reviewers.authenticate(s, "nobody", "s3cret-pass") is None
        assert reviewers.by_token(s, info.api_token).tenants == ["acme"]
        assert reviewers.by_token(s, info.api_token + "x") is None


def test_account_rules(svc_store):
    with session_scope(svc_store) as s:
        with pytest.raises(reviewers.ReviewerError, match="role must be one of"):
            reviewers.create_reviewer(s, username="a", password="password1", role="boss",
                                      tenants=["x"])
        with pytest.raises(reviewers.ReviewerError, match="at least one tenant"):
            reviewers.create_reviewer(s, username="a", password="password1")
        with pytest.raises(reviewers.ReviewerError, match="password must be"):
            reviewers.create_reviewer(s, username="a", password="short", tenants=["x"])
        with pytest.raises(reviewers.ReviewerError, match="username must be"):
            reviewers.create_reviewer(s, username="a b", password="password1", tenants=["x"])
        admin = reviewers.create_reviewer(s, username="root", password="password1", role="admin")
        assert admin.scope == ["*"]
        with pytest.raises(reviewers.ReviewerError, match="already exists"):
            reviewers.create_reviewer(s, username="root", password="password1", role="admin")
        with pytest.raises(reviewers.ReviewerError, match="last active admin"):
            reviewers.set_active(s, "root", False)
        with pytest.raises(reviewers.ReviewerError, match="last active admin"):
            reviewers.update_reviewer(s, "root", role="reviewer", tenants=["x"])
        reviewers.create_reviewer(s, username="root2", password="password1", role="admin")
        reviewers.set_active(s, "root", False)
        assert reviewers.authenticate(s, "root", "password1") is None
        assert reviewers.by_token(s, admin.api_token) is None
        with pytest.raises(reviewers.ReviewerNotFound, match="not found"):
            reviewers.set_password(s, "nobody", "password1")


@pytest.mark.parametrize("second", ["deactivate", "demote"])
def test_two_admins_removing_each_other_at_once_leave_one(svc_store, monkeypatch, second):
    """The last-admin rule under a race: root and root2 remove each other in two threads that
    both count the admins before either writes (a barrier right after the count). Without a lock
    both see the other as the remaining admin and none is left; with it the second waits for
    the first to commit and is refused (the barrier then times out, which is expected)."""
    import threading

    with session_scope(svc_store) as s:
        for name in ("root", "root2"):
            reviewers.create_reviewer(s, username=name, password="password1", role="admin")
    counted = threading.Barrier(2)
    count = reviewers._other_active_admins

    def count_then_meet(session, r):
        n = count(session, r)
        try:
            counted.wait(timeout=1.5)
        except threading.BrokenBarrierError:
            pass  # the other thread is waiting for our lock: that is the point
        return n

    monkeypatch.setattr(reviewers, "_other_active_admins", count_then_meet)
    outcome: dict[str, object] = {}

    def remove(actor: str, target: str, how: str) -> None:
        try:
            with session_scope(svc_store) as s:
                if how == "deactivate":
                    reviewers.set_active(s, target, False, actor=actor)
                else:
                    reviewers.update_reviewer(s, target, role="reviewer", tenants=["x"],
                                              actor=actor)
            outcome[actor] = "done"
        except Exception as exc:  # noqa: BLE001 - reported by the assertions below
            outcome[actor] = exc

    threads = [threading.Thread(target=remove, args=("root", "root2", "deactivate")),
               threading.Thread(target=remove, args=("root2", "root", second))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    done = [a for a, o in outcome.items() if o == "done"]
    refused = [o for o in outcome.values() if isinstance(o, reviewers.ReviewerError)]
    assert len(done) == 1 and len(refused) == 1, outcome
    assert "last active admin" in str(refused[0])
    with session_scope(svc_store) as s:
        admins = [r.username for r in reviewers.list_reviewers(s)
                  if r.role == "admin" and r.active]
    assert admins == done  # the one who acted first is the admin left


def test_password_reset_replaces_the_api_token_unless_kept(svc_store):
    with session_scope(svc_store) as s:
        old = reviewers.create_reviewer(s, username="ann", password="password1",
                                        tenants=["acme"]).api_token
    with session_scope(svc_store) as s:
        info = reviewers.set_password(s, "ann", "password2", actor="root")
    assert info.api_token and info.api_token != old
    with session_scope(svc_store) as s:
        assert reviewers.by_token(s, old) is None  # a stolen token dies with the old password
        assert reviewers.by_token(s, info.api_token).username == "ann"
        assert reviewers.by_username(s, "ann").session_epoch == 1
        kept = reviewers.set_password(s, "ann", "password3", actor="root", keep_token=True)
    assert kept.api_token is None
    with session_scope(svc_store) as s:
        assert reviewers.by_token(s, info.api_token).username == "ann"
        assert reviewers.by_username(s, "ann").session_epoch == 2
        changes = [h.new_value for h in reviewers.list_audit(s) if h.key == "reviewer:ann"]
    assert changes[1:] == [{"password": "changed", "api_token": "rotated"},
                           {"password": "changed"}]
    assert info.api_token not in str(changes)


def test_progress_counts_decisions_today_and_total(svc_store):
    with session_scope(svc_store) as s:
        for k in range(3):
            item, _ = repo.create_item(s, kind="sample", dedup_key=f"k{k}", tenant_id="acme",
                                       interaction_id=f"i{k}", proposed_response="p")
            if k < 2:
                repo.decide(s, item.id, decision="approve", expected_version=1, actor="ann")
        # a decision two days ago (events are append-only: write it as it would have been written)
        s.add(ReviewEvent(item_id=item.id, tenant_id="acme", actor="ann", action="decide",
                          before={"status": "pending"}, after={"status": "approved"},
                          at=datetime.now(UTC) - timedelta(days=2)))
    with session_scope(svc_store) as s:
        assert reviewers.progress(s, "ann") == {"today": 2, "total": 3}
        assert reviewers.progress(s, "bob") == {"today": 0, "total": 0}


def test_collector_keys(svc_store):
    with session_scope(svc_store) as s:
        info = collector_keys.create_key(s, "acme", label="bot")
        assert info.key.startswith("llc_")
        assert s.scalar(select(CollectorKey.key_hash)) == collector_keys.hash_key(info.key)
        assert collector_keys.tenant_for_key(s, info.key) == "acme"
        assert collector_keys.tenant_for_key(s, "llc_other") is None
        assert collector_keys.tenant_for_key(s, None) is None
        collector_keys.revoke_key(s, info.id)
        assert collector_keys.tenant_for_key(s, info.key) is None
        with pytest.raises(collector_keys.CollectorKeyError, match="tenant_id must be"):
            collector_keys.create_key(s, "bad tenant")


def test_cli_support_creates_accounts_and_keys(sqlite_store, tmp_path):
    settings = make_settings(sqlite_store, tmp_path / "home")
    info = cli_support.add_reviewer("ann", "password-123", "reviewer", ["acme", "globex"],
                                    settings=settings)
    assert (info.username, info.role, info.tenants) == ("ann", "reviewer", ["acme", "globex"])
    assert info.api_token.startswith("llr_")
    key = cli_support.add_collector_key("acme", settings=settings)
    with session_scope(sqlite_store) as s:
        assert collector_keys.tenant_for_key(s, key) == "acme"
    assert [r.username for r in cli_support.list_reviewers(settings=settings)] == ["ann"]
    with pytest.raises(reviewers.ReviewerError, match="already exists"):
        cli_support.add_reviewer("ann", "password-123", "reviewer", ["acme"], settings=settings)


def test_login_limiter_window():
    now = [0.0]
    lim = LoginLimiter(3, 60, clock=lambda: now[0], max_per_ip=100)
    for _ in range(3):
        wait, _stamp = lim.attempt("Ann", "1.2.3.4")
        assert wait is None
    assert lim.attempt("ann", "1.2.3.4")[0] == 60  # usernames are case-insensitive
    assert lim.retry_after("ann", "1.2.3.4") == 60
    assert lim.attempt("ann", "5.6.7.8")[0] is None  # per username + IP
    now[0] = 30
    assert lim.retry_after("ann", "1.2.3.4") == 30
    now[0] = 60.5
    assert lim.retry_after("ann", "1.2.3.4") is None
    wait, stamp = lim.attempt("ann", "1.2.3.4")
    lim.succeeded("ann", "1.2.3.4", stamp)  # a sign-in clears the username+IP history
    for _ in range(3):
        assert lim.attempt("ann", "1.2.3.4")[0] is None


def test_login_limiter_per_ip_spans_usernames():
    now = [0.0]
    lim = LoginLimiter(3, 60, clock=lambda: now[0], max_per_ip=5)
    for k in range(5):
        assert lim.attempt(f"user{k}", "9.9.9.9")[0] is None
    assert lim.attempt("fresh-name", "9.9.9.9")[0] == 60  # the address is spent
    assert lim.attempt("fresh-name", "8.8.8.8")[0] is None
    now[0] = 61
    assert lim.attempt("fresh-name", "9.9.9.9")[0] is None


def test_login_limiter_counts_concurrent_attempts_exactly():
    import threading

    lim = LoginLimiter(5, 300, max_per_ip=1000)
    barrier, allowed = threading.Barrier(40), []

    def go():
        barrier.wait()
        allowed.append(lim.attempt("ann", "1.1.1.1")[0] is None)

    threads = [threading.Thread(target=go) for _ in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(allowed) == 5


def test_serve_passes_proxy_settings_to_uvicorn():
    import uvicorn

    from service.config import ServiceSettings

    default = cli_support.uvicorn_options("127.0.0.1", 8000, ServiceSettings())
    assert default["proxy_headers"] is False
    opts = cli_support.uvicorn_options(
        "0.0.0.0", 9000, ServiceSettings(proxy_headers=True, forwarded_allow_ips="10.0.0.7"))
    cfg = uvicorn.Config(lambda *a: None, **opts)  # uvicorn accepts every option
    assert (cfg.proxy_headers, cfg.forwarded_allow_ips, cfg.port) == (True, "10.0.0.7", 9000)
