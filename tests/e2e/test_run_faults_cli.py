"""Issue 9 item 10, as a user meets the faults: `learnloop run` killed with SIGKILL during ingest
and during the audit, then run again (no loss, no duplicates, no stuck slot); the LLM provider
down for a whole run (non-zero exit, the status shows the pending attempts, the next run
completes); the operational store unreachable in the middle of a run, then back (a clear failure,
then a consistent re-run).

`learnloop run` is the real command in a subprocess on generated demo logs, with one change to
keep these tests short: the dbt analytics job (30 s, no part in these faults) is left out of the
post-ingest jobs. Every wait has a timeout."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import duckdb
import pytest
from sqlalchemy import create_engine, text

from tests.llm.fake_servers import FakeOpenAIServer, error, ok

ROOT = Path(__file__).resolve().parents[2]
LEARNLOOP = Path(sys.executable).with_name("learnloop")

pytestmark = pytest.mark.slow

# `learnloop` without the analytics job (see the module docstring)
NO_ANALYTICS = ("import orchestration.cli as c; c.post_ingest_jobs = lambda defs: "
                "[j for j in ('audit_job', 'teaching_job')]; from cli.main import main; main()")


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("LEARNLOOP_") and k != "DAGSTER_HOME"}
    env.update({"LEARNLOOP_HOME": str(home), "LEARNLOOP_LLM_CACHE": "none",
                "PYTHONPATH": str(ROOT), **extra})
    return env


def _cmd(*args: str) -> list[str]:
    return [sys.executable, "-c", NO_ANALYTICS, *args]


def _generate(home: Path, n: int = 60) -> None:
    subprocess.run([str(LEARNLOOP), "generate", "--interactions", str(n), "--days", "1"],
                   env=_env(home), cwd=ROOT, check=True, capture_output=True, timeout=120)


def _run(home: Path, timeout: float = 240, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(_cmd("run"), env=_env(home, **extra), cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def _instance(home: Path) -> dg.DagsterInstance:
    return dg.DagsterInstance.from_config(str(home / "dagster_home"))


def _read(db: Path, sql: str) -> list[tuple]:
    """Rows of ``sql`` on one of the CLI's Dagster SQLite files, through a read-only connection.
    Opening the instance itself while the CLI creates its storage would race the CLI's schema
    stamping (two alembic heads); a read-only query never writes. No rows until the CLI has
    created the file and table."""
    if not db.exists():
        return []
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return con.execute(sql).fetchall()
    except sqlite3.OperationalError:  # no table yet, or the CLI holds a write lock: poll again
        return []
    finally:
        con.close()


def _held_steps(home: Path) -> set[str]:
    """The steps holding the warehouse slot in the CLI's Dagster instance."""
    return {row[0] for row in _read(
        home / "dagster_home" / "history" / "runs" / "index.db",
        "SELECT step_key FROM concurrency_slots WHERE concurrency_key = 'warehouse' "
        "AND run_id IS NOT NULL AND NOT deleted")}


def _ingest_finished(home: Path) -> bool:
    return bool(_read(home / "dagster_home" / "history" / "runs.db",
                      "SELECT 1 FROM runs WHERE pipeline_name = 'ingest_job' "
                      "AND status IN ('SUCCESS', 'FAILURE', 'CANCELED')"))


def _kill_when_slot_held_by(home: Path, proc: subprocess.Popen, steps: set[str],
                            timeout: float = 180) -> str:
    """SIGKILL ``proc`` once one of ``steps`` holds the warehouse slot; the step killed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        held = _held_steps(home)
        if held & steps:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            return (held & steps).pop()
        time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"none of {steps} took the warehouse slot within {timeout} s "
                         f"(exit {proc.poll()}): {proc.communicate()}")


def _counts(home: Path) -> dict[str, object]:
    con = duckdb.connect(str(home / "warehouse.duckdb"), read_only=True)
    try:
        q = lambda sql: con.execute(sql).fetchone()[0]  # noqa: E731
        out = {
            "interactions": q("SELECT count(*) FROM interactions"),
            "interaction_ids": q("SELECT count(DISTINCT (tenant_id, interaction_id)) "
                                 "FROM interactions"),
            "quarantined": q("SELECT count(*) FROM quarantined_interactions"),
            "audited": q("SELECT count(*) FROM audited_errors"),
            "audited_keys": q("SELECT count(DISTINCT (tenant_id, interaction_id, auditor, "
                              "prompt_version)) FROM audited_errors"),
        }
    finally:
        con.close()
    engine = create_engine(f"sqlite:///{home / 'store.db'}")
    try:
        with engine.connect() as c:
            out["items"] = dict(c.execute(text(
                "SELECT kind, count(*) FROM review_items GROUP BY kind")).all())
            out["attempts"] = dict(c.execute(text(
                "SELECT status, count(*) FROM audit_attempts GROUP BY status")).all())
    finally:
        engine.dispose()
    return out


def _no_stuck_runs(home: Path) -> None:
    with _instance(home) as instance:
        info = instance.event_log_storage.get_concurrency_info("warehouse")
        assert info.claimed_slots == [] and info.pending_steps == []
        unfinished = [r.run_id for r in instance.get_runs() if not r.is_finished]
        assert unfinished == []


def test_kill_9_during_ingest_and_during_audit_then_run_again(tmp_path):
    baseline, home = tmp_path / "baseline", tmp_path / "crashed"
    _generate(baseline)
    _generate(home)
    first = _run(baseline)
    assert first.returncode == 0, first.stdout + first.stderr[-3000:]

    proc = subprocess.Popen(_cmd("run"), env=_env(home), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    _kill_when_slot_held_by(home, proc, {"ingest_interactions"})
    proc = subprocess.Popen(_cmd("run", "--force"), env=_env(home), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _kill_when_slot_held_by(home, proc, {"audit_candidates", "audited_errors"})

    again = _run(home, timeout=240)  # before the fix: waits at 0% for ever (the timeout fails it)
    assert again.returncode == 0, again.stdout + again.stderr[-3000:]
    assert "released the warehouse slot of run" in again.stderr
    assert "marked FAILURE" in again.stderr
    crashed = _counts(home)
    assert crashed == _counts(baseline)
    assert crashed["interactions"] == crashed["interaction_ids"] > 0
    assert crashed["audited"] == crashed["audited_keys"] > 0
    _no_stuck_runs(home)


VERDICT = json.dumps({"is_error": True, "category": "factual_error", "severity": "high",
                      "confidence": 0.85, "explanation": "The stated price is wrong."})


def test_provider_down_for_a_whole_run_fails_it_and_the_next_run_completes(tmp_path):
    home = tmp_path / "home"
    _generate(home, n=40)
    with FakeOpenAIServer(default=lambda _req: error(503, "upstream down")) as server:
        llm = {"LEARNLOOP_AUDITOR": "openai", "LEARNLOOP_AUDITOR_MODEL": "gpt-test",
               "LEARNLOOP_AUDITOR_BASE_URL": server.base_url,
               "LEARNLOOP_AUDITOR_API_KEY_ENV": "E2E_KEY", "E2E_KEY": "sk-test"}
        down = _run(home, **llm)
        # before the fix: exit 0 and "running audit_job ... ok"
        assert down.returncode == 1, down.stdout + down.stderr[-3000:]
        assert "running audit_job ... FAILED" in down.stdout
        assert "audited_errors: all " in down.stdout and " audits failed (llm:openai" in down.stdout
        status = subprocess.run(_cmd("status", "--json"), env=_env(home, **llm), cwd=ROOT,
                                capture_output=True, text=True, timeout=120)
        assert status.returncode == 0, status.stderr
        attempts = json.loads(status.stdout)["audit_attempts"]
        assert attempts["pending"] > 0 and attempts["ok"] == 0
        assert attempts["last_failure"].startswith("[outage]")
        pending = attempts["pending"]

        server.default = lambda _req: ok(VERDICT)
        back = _run(home, **llm)
        assert back.returncode == 0, back.stdout + back.stderr[-3000:]
        assert "running audit_job ... ok" in back.stdout
        status = subprocess.run(_cmd("status", "--json"), env=_env(home, **llm), cwd=ROOT,
                                capture_output=True, text=True, timeout=120)
    attempts = json.loads(status.stdout)["audit_attempts"]
    assert attempts["pending"] == 0 and attempts["ok"] >= pending


@pytest.mark.postgres
def test_store_unreachable_mid_run_fails_clearly_and_the_rerun_is_consistent(tmp_path,
                                                                             pg_admin_url,
                                                                             pg_database):
    """The store (PostgreSQL) stops accepting connections once ingest is done: the audit fails
    with one line naming the step and the reason, exit 1; with the store back, the next run
    audits everything exactly once."""
    import psycopg

    home = tmp_path / "home"
    _generate(home, n=40)
    name = pg_database.rsplit("/", 1)[1]

    def connections(allowed: bool) -> None:
        with psycopg.connect(pg_admin_url, autocommit=True) as con:
            con.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {str(allowed).lower()}')
            if not allowed:
                con.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                            "WHERE datname = %s AND pid <> pg_backend_pid()", (name,))

    env = _env(home, LEARNLOOP_STORE_URL=pg_database)
    proc = subprocess.Popen(_cmd("run"), env=env, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None:
            if _ingest_finished(home):
                break
            time.sleep(0.2)
        connections(False)
        out, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
        connections(True)
    assert proc.returncode == 1, out + err[-3000:]
    assert "running audit_job ... FAILED" in out
    # before the fix: "run failed: (no message)"; now the store, the driver's reason, one line
    assert ("  run failed: resource store did not start: sqlalchemy.exc.OperationalError: "
            "(psycopg.OperationalError) connection failed: ") in out, out
    assert f'database "{name}" is not currently accepting connections' in out, out

    again = subprocess.run(_cmd("run"), env=env, cwd=ROOT, capture_output=True, text=True,
                           timeout=240)
    assert again.returncode == 0, again.stdout + again.stderr[-3000:]
    _no_stuck_runs(home)
    con = duckdb.connect(str(home / "warehouse.duckdb"), read_only=True)
    try:
        audited, keys = con.execute(
            "SELECT count(*), count(DISTINCT (tenant_id, interaction_id, auditor, prompt_version))"
            " FROM audited_errors").fetchone()
        flagged = con.execute("SELECT count(*) FROM audited_errors WHERE is_error").fetchone()[0]
    finally:
        con.close()
    engine = create_engine(pg_database.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.connect() as c:
            ok_attempts = c.execute(text("SELECT count(*) FROM audit_attempts WHERE status = 'ok'"
                                         )).scalar()
            flagged_items = c.execute(text("SELECT count(*) FROM review_items WHERE kind = "
                                           "'error' AND category IS NOT NULL")).scalar()
    finally:
        engine.dispose()
    assert audited == keys == ok_attempts > 0
    assert flagged_items == flagged


@pytest.mark.parametrize("signo", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_and_sigterm_stop_learnloop_run_promptly_and_leave_nothing_held(tmp_path, signo):
    home = tmp_path / "home"
    _generate(home, n=40)
    proc = subprocess.Popen(_cmd("run"), env=_env(home), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if _held_steps(home):
            break
        time.sleep(0.2)
    proc.send_signal(signo)
    sent = time.monotonic()
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, out + err[-3000:]
    assert time.monotonic() - sent < 15
    assert "interrupted" in err
    _no_stuck_runs(home)
