"""Helpers of the service tests (fixtures are in conftest.py): seed data, sign-in, live server."""

from __future__ import annotations

import re
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ml.config import Settings
from service.config import ServiceSettings

PASSWORD = "correct-horse-battery"


@dataclass
class World:
    url: str
    settings: Settings
    tokens: dict[str, str]  # username -> API token
    items: dict[str, int]  # name -> item id


def seed(url: str) -> tuple[dict[str, str], dict[str, int]]:
    from store import repo, reviewers
    from store.db import session_scope

    tokens: dict[str, str] = {}
    with session_scope(url) as s:
        for name, role, tenants in (("root", "admin", []), ("ann", "reviewer", ["acme"]),
                                    ("bob", "reviewer", ["acme"]),
                                    ("zed", "reviewer", ["globex"])):
            info = reviewers.create_reviewer(s, username=name, password=PASSWORD, role=role,
                                             tenants=tenants)
            tokens[name] = info.api_token
    items: dict[str, int] = {}
    convo = [{"role": "system", "content": "You are the support assistant of Acme Cloud."},
             {"role": "user", "content": "How do I reset my password? I am locked out."}]
    with session_scope(url) as s:
        err, _ = repo.create_item(
            s, kind="error", dedup_key="e-acme-1", tenant_id="acme", interaction_id="int-1",
            messages=convo, original_response="Please contact support.",
            category="unhelpful", severity="high", confidence=0.91,
            explanation="The reply does not answer the question and sends the user away.",
            auditor="rules", prompt_version="v1", source="auditor", tags=["onboarding"])
        items["error"] = err.id
        sample, _ = repo.create_item(
            s, kind="sample", dedup_key="s-acme-1", tenant_id="acme", interaction_id="int-1",
            parent_id=err.id, messages=convo, original_response="Please contact support.",
            proposed_response="Open the sign-in page, click 'Forgot password' and follow the "
                              "link we e-mail you. The link is valid for 30 minutes.",
            source="teacher")
        items["sample"] = sample.id
        s2, _ = repo.create_item(
            s, kind="sample", dedup_key="s-acme-2", tenant_id="acme", interaction_id="int-2",
            messages=[{"role": "user", "content": "Can I export my invoices as CSV?"}],
            original_response="No.",
            proposed_response="Yes: go to Billing > Invoices and click 'Export CSV'.",
            source="human", category="wrong_answer", severity="medium", confidence=0.6)
        items["sample2"] = s2.id
        e2, _ = repo.create_item(
            s, kind="error", dedup_key="e-acme-2", tenant_id="acme", interaction_id="int-3",
            messages=[{"role": "user", "content": "What is your refund policy?"}],
            original_response="I'm sorry, I can't help with that.", category="refusal",
            severity="low", confidence=0.4, explanation="A refusal of an answerable question.",
            auditor="rules", prompt_version="v1", source="auditor")
        items["error2"] = e2.id
        g, _ = repo.create_item(
            s, kind="error", dedup_key="e-globex-1", tenant_id="globex",
            interaction_id="int-g1", messages=[{"role": "user", "content": "Hi"}],
            original_response="(empty)", category="empty", severity="critical",
            confidence=0.99, explanation="Empty reply.", auditor="rules", source="auditor")
        items["globex"] = g.id
    return tokens, items


def make_settings(url: str, home: Path) -> Settings:
    return Settings(home=home, store_url=url)


def service_settings(**kw) -> ServiceSettings:
    return ServiceSettings(secret_key="test-secret-key-0123456789", **kw)


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_of(html: str) -> str:
    m = CSRF_RE.search(html)
    assert m, "no CSRF token in the page"
    return m.group(1)


def sign_in(client, username: str, password: str = PASSWORD):
    page = client.get("/login")
    return client.post("/login", data={"username": username, "password": password,
                                       "csrf_token": csrf_of(page.text), "next": "/"},
                       follow_redirects=False)


# ---- a live server (uvicorn in a thread, on a free loopback port) ------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_serving(url: str, proc, timeout_s: float) -> None:
    """Poll ``url`` until it answers 200 while the server process ``proc`` (a ``Popen``) runs;
    raise with the process's output when it exits first or ``timeout_s`` passes."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            if proc.poll() is None:
                proc.kill()
            out, err = proc.communicate(timeout=10)
            raise RuntimeError(f"server at {url} did not start (exit {proc.returncode}): "
                               f"{out or ''}{err or ''}")
        time.sleep(0.1)


class LiveServer:
    def __init__(self, app):
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port,
                                                    log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=10)
