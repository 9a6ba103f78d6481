"""Issue 3's "Done when", as a user does it: with LEARNLOOP_AUDITOR=openai and
LEARNLOOP_TEACHER=openai pointed at a stand-in OpenAI server (real HTTP on loopback), `learnloop
demo` runs the same chain through the `openai` client: verdicts and corrected replies come from
the server, `learnloop status --json` shows pending error and sample items, and the API key
never reaches a log file, the warehouse or the store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
from sqlalchemy import create_engine, text

from tests.llm.fake_servers import FakeOpenAIServer, ok

ROOT = Path(__file__).resolve().parents[2]
LEARNLOOP = Path(sys.executable).with_name("learnloop")
KEY = "sk-e2e-secret-0123456789abcdef"

pytestmark = pytest.mark.slow

VERDICT = json.dumps({"is_error": True, "category": "factual_error", "severity": "high",
                      "confidence": 0.85, "explanation": "The stated price is wrong."})
CORRECTION = json.dumps({"corrected_response": "The Pro plan costs 29 EUR per month.",
                         "rationale": "Gives the right price."})


def _reply(request):
    system = request.body["messages"][0]["content"]
    return ok(CORRECTION if "You are the Teacher" in system else VERDICT)


def test_demo_chain_runs_through_the_openai_client(tmp_path):
    home = tmp_path / "home"
    with FakeOpenAIServer(default=_reply) as server:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("LEARNLOOP_") and k != "DAGSTER_HOME"}
        env.update({"LEARNLOOP_HOME": str(home), "E2E_OPENAI_KEY": KEY,
                    "LEARNLOOP_LLM_CACHE": "none"})
        for role in ("AUDITOR", "TEACHER"):
            env.update({f"LEARNLOOP_{role}": "openai", f"LEARNLOOP_{role}_MODEL": "gpt-test",
                        f"LEARNLOOP_{role}_BASE_URL": server.base_url,
                        f"LEARNLOOP_{role}_API_KEY_ENV": "E2E_OPENAI_KEY"})
        run = subprocess.run([str(LEARNLOOP), "demo", "--interactions", "150"], env=env,
                             cwd=ROOT, capture_output=True, text=True, timeout=900)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        # the stand-in teacher writes one correction for everything: after de-duplication 150
        # interactions leave too few examples, which the demo reports instead of failing
        if "training_job skipped" in run.stdout:
            assert "training dataset too small after de-duplication" in run.stdout
        calls = server.calls
        auth = {r.headers.get("authorization") for r in server.requests}
        status = subprocess.run([str(LEARNLOOP), "status", "--json"], env=env, cwd=ROOT,
                                capture_output=True, text=True, timeout=120)
    assert status.returncode == 0, status.stderr
    st = json.loads(status.stdout)
    assert st["errors"]["pending"] > 0 and st["samples"]["pending"] > 0
    assert calls > 0 and auth == {f"Bearer {KEY}"}  # the real client sent the env var's key

    con = duckdb.connect(str(home / "warehouse.duckdb"), read_only=True)
    try:
        auditors = con.execute("SELECT DISTINCT auditor, answered_by FROM audited_errors").fetchall()
        flagged = con.execute("SELECT count(*) FROM audited_errors WHERE is_error").fetchone()[0]
    finally:
        con.close()
    assert auditors and all(a.startswith("llm:") and b == "openai" for a, b in auditors)
    assert flagged == sum(st["errors"].values())  # the demo-reviewer decided most of them

    engine = create_engine(f"sqlite:///{home / 'store.db'}")
    try:
        with engine.connect() as c:
            sources = dict(c.execute(text(
                "SELECT source, count(*) FROM review_items WHERE kind = 'sample' GROUP BY source")
            ).all())
            dump = " ".join(str(r) for r in c.execute(text("SELECT * FROM review_items")).all())
    finally:
        engine.dispose()
    assert sources.get("llm:openai", 0) > 0
    assert "The Pro plan costs 29 EUR per month." in dump

    # the key is nowhere on disk: job logs, store, warehouse, Dagster home
    for path in home.rglob("*"):
        if path.is_file() and path.stat().st_size < 200 * 2**20:
            assert KEY.encode() not in path.read_bytes(), f"API key found in {path}"
