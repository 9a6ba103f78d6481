"""Issue 9 items 1, 2 and 10: a crashed run never blocks later ones, and failure is never reported
as success. Real Dagster instances (the shipped dagster.yaml, on SQLite and on PostgreSQL), real
processes killed with SIGKILL, real SIGTERM/SIGINT; every wait is bounded by a timeout."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import dagster as dg
import pytest
from click.testing import CliRunner

from orchestration import runner

ROOT = Path(__file__).resolve().parents[2]

# A tiny code location whose one asset sits in the warehouse pool and sleeps: a stand-in for an
# ingest or audit step. `python holder.py HOME SECONDS MODE` runs it like `learnloop run` does
# (MODE guarded: RunGuard, owner tags, waits for the slot) or MODE bare (Dagster alone, no pre-
# wait: it waits inside Dagster's executor, where interrupts are held back).
HOLDER = textwrap.dedent("""\
    import os, sys, time
    import dagster as dg
    from orchestration import runner

    home, seconds, mode = sys.argv[1], float(sys.argv[2]), sys.argv[3]
    os.environ["DAGSTER_HOME"] = home

    @dg.asset(pool="warehouse")
    def slow() -> None:
        print("STEP STARTED", flush=True)
        time.sleep(seconds)

    defs = dg.Definitions(assets=[slow], jobs=[dg.define_asset_job("slow_job", selection=[slow])])
    instance = dg.DagsterInstance.get()
    guard = runner.RunGuard(instance, "test holder", say=lambda line: print(line, flush=True))
    if mode == "bare":  # no pre-wait: the run waits for the slot inside Dagster
        runner.wait_for_pool = lambda *a, **k: None
    try:
        with guard.interrupts():
            result = runner.run_job(defs, instance, "slow_job", guard=guard)
    except KeyboardInterrupt:
        print("INTERRUPTED", flush=True)
        sys.exit(130)
    print("RUN", result.run_id, "SUCCESS" if result.success else "FAILURE", flush=True)
    sys.exit(130 if guard.interrupted else 0)
""")


@pytest.fixture()
def dagster_home(tmp_path):
    """A Dagster home with the shipped dagster.yaml (SQLite)."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(runner.DAGSTER_YAML)
    return home


def _start(tmp_path, home: Path, seconds: float, mode: str = "guarded") -> subprocess.Popen:
    script = tmp_path / "holder.py"
    script.write_text(HOLDER)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DAGSTER_HOME": str(home)}
    return subprocess.Popen([sys.executable, str(script), str(home), str(seconds), mode],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            cwd=ROOT)


def _wait_for_line(proc: subprocess.Popen, needle: str, timeout: float = 60) -> list[str]:
    """The process's output lines up to the first one containing ``needle``."""
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            if proc.poll() is not None:
                break
            continue
        seen.append(line.rstrip())
        if needle in line:
            return seen
    proc.kill()
    raise AssertionError(f"{needle!r} not seen within {timeout} s: {seen[-20:]}")


def _instance(home: Path) -> dg.DagsterInstance:
    return dg.DagsterInstance.from_config(str(home))


def _finish(proc: subprocess.Popen, timeout: float = 60) -> tuple[int, str]:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError(f"still running after {timeout} s") from None
    return proc.returncode, out


# ---- item 1: the shipped instance -----------------------------------------------------------------
def _assert_monitors_and_frees_slots(instance: dg.DagsterInstance) -> None:
    assert instance.run_monitoring_enabled
    settings = instance.run_monitoring_settings
    assert settings["free_slots_after_run_end_seconds"] > 0
    assert settings["max_resume_run_attempts"] == 0  # the default launcher cannot resume
    assert instance.get_concurrency_config().pool_config.default_pool_limit == 1
    assert "MONITORING" in instance.get_required_daemon_types()


def test_shipped_instance_monitors_runs_and_frees_slots_of_ended_runs(dagster_home):
    with _instance(dagster_home) as instance:
        _assert_monitors_and_frees_slots(instance)


@pytest.mark.postgres
def test_postgres_variant_of_the_instance_monitors_runs_too(tmp_path, pg_database, monkeypatch):
    from ml.config import Settings

    url = pg_database.replace("postgresql://", "postgresql+psycopg2://", 1)
    monkeypatch.setenv("LEARNLOOP_HOME", str(tmp_path / "ll"))
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    monkeypatch.setenv("LEARNLOOP_DAGSTER_PG_URL", url)
    home = runner.prepare_dagster_home(Settings())
    assert (home / "dagster.yaml").read_text() == runner.DAGSTER_YAML_POSTGRES
    with _instance(home) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        _assert_monitors_and_frees_slots(instance)


def test_an_unedited_dagster_yaml_of_an_earlier_version_is_brought_up_to_date(tmp_path,
                                                                              monkeypatch):
    from ml.config import Settings

    monkeypatch.setenv("LEARNLOOP_HOME", str(tmp_path / "ll"))
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    monkeypatch.delenv("LEARNLOOP_DAGSTER_PG_URL", raising=False)
    cfg = Settings().dagster_home_dir / "dagster.yaml"
    cfg.parent.mkdir(parents=True)
    cfg.write_text(runner._EARLIER_DAGSTER_YAMLS[-1])
    runner.prepare_dagster_home(Settings())
    assert cfg.read_text() == runner.DAGSTER_YAML
    cfg.write_text(runner._EARLIER_DAGSTER_YAMLS[-1] + "# mine\n")  # edited: left alone
    runner.prepare_dagster_home(Settings())
    assert cfg.read_text().endswith("# mine\n")


# ---- item 1: a crash never blocks the next run ---------------------------------------------------
def test_a_run_killed_mid_step_is_failed_and_its_slot_released_by_the_next_run(tmp_path,
                                                                               dagster_home):
    killed = _start(tmp_path, dagster_home, seconds=120)
    _wait_for_line(killed, "STEP STARTED")
    killed.send_signal(signal.SIGKILL)
    killed.wait(10)
    with _instance(dagster_home) as instance:
        (stuck,) = instance.get_runs()
        assert stuck.status == dg.DagsterRunStatus.STARTED  # what a kill -9 leaves behind
        assert stuck.tags[runner.OWNER_PID_TAG] == str(killed.pid)
        assert {c.run_id for c in instance.event_log_storage.get_concurrency_info(
            "warehouse").claimed_slots} == {stuck.run_id}

    nxt = _start(tmp_path, dagster_home, seconds=0)
    code, out = _finish(nxt, timeout=60)  # before the fix: waits for ever at 0%
    assert code == 0, out
    assert (f"released the warehouse slot of run {stuck.run_id} (slow_job): it was STARTED with "
            f"its owner (pid {killed.pid}) gone: marked FAILURE") in out
    with _instance(dagster_home) as instance:
        assert instance.get_run_by_id(stuck.run_id).status == dg.DagsterRunStatus.FAILURE
        assert instance.event_log_storage.get_concurrency_info("warehouse").claimed_slots == []


def test_a_finished_run_that_still_holds_a_slot_has_it_freed(dagster_home):
    """What `dagster dev` leaves when its run worker is killed: FAILURE, slot still claimed."""
    with _instance(dagster_home) as instance:
        run = instance.create_run_for_job(dg.GraphDefinition(name="g").to_job())
        instance.event_log_storage.claim_concurrency_slot("warehouse", run.run_id, "step")
        instance.report_run_failed(run, "run worker killed")
        said = []
        runner.wait_for_pool(instance, "warehouse", said.append, poll_seconds=0.1)
        assert said == [f"released the warehouse slot of run {run.run_id} (g): it ended "
                        f"(FAILURE) without freeing its slot"]


def test_a_live_owner_makes_the_next_run_wait_and_say_which_run_holds_the_slot(tmp_path,
                                                                              dagster_home):
    holder = _start(tmp_path, dagster_home, seconds=4)
    _wait_for_line(holder, "STEP STARTED")
    with _instance(dagster_home) as instance:
        (held,) = instance.get_runs()
        said = []
        started = time.monotonic()
        runner.wait_for_pool(instance, "warehouse", said.append, poll_seconds=0.2)
        waited = time.monotonic() - started
    assert _finish(holder)[0] == 0
    assert waited > 1  # it waited for the live run instead of releasing it
    assert said == [f"waiting for the warehouse slot held by run {held.run_id} (slow_job, "
                    f"STARTED, pid {holder.pid}); if that run is dead, terminate it in the "
                    f"Dagster UI (Runs) and its slot is freed"]


@pytest.mark.parametrize("signo", [signal.SIGTERM, signal.SIGINT])
def test_a_run_waiting_for_the_slot_stops_on_sigterm_and_sigint(tmp_path, dagster_home, signo):
    holder = _start(tmp_path, dagster_home, seconds=60)
    _wait_for_line(holder, "STEP STARTED")
    waiter = _start(tmp_path, dagster_home, seconds=0)
    _wait_for_line(waiter, "waiting for the warehouse slot held by run")
    waiter.send_signal(signo)
    code, out = _finish(waiter, timeout=15)  # before the fix: ignored, waits for ever
    holder.kill()
    holder.wait(10)
    assert code == 130, out
    assert "INTERRUPTED" in out


def test_a_run_waiting_inside_dagster_is_canceled_and_frees_its_place_on_sigterm(tmp_path,
                                                                                dagster_home):
    """The slot wait inside Dagster's executor holds interrupts back; the watcher thread ends the
    run (CANCELED, its queue entry freed) and exits 130 after the grace period."""
    holder = _start(tmp_path, dagster_home, seconds=60)
    _wait_for_line(holder, "STEP STARTED")
    waiter = _start(tmp_path, dagster_home, seconds=0, mode="bare")
    with _instance(dagster_home) as instance:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not instance.event_log_storage.get_concurrency_info(
                "warehouse").pending_run_ids:
            time.sleep(0.2)
        (queued,) = instance.event_log_storage.get_concurrency_info("warehouse").pending_run_ids
    waiter.send_signal(signal.SIGTERM)
    code, out = _finish(waiter, timeout=20)
    holder.kill()
    holder.wait(10)
    assert code == 130, out
    assert f"interrupted: run {queued} marked CANCELED and its warehouse slot freed" in out
    with _instance(dagster_home) as instance:
        assert instance.get_run_by_id(queued).status == dg.DagsterRunStatus.CANCELED
        assert queued not in instance.event_log_storage.get_concurrency_info(
            "warehouse").pending_run_ids


# ---- item 2: failure is never reported as success ------------------------------------------------
def test_job_report_names_the_failed_step_and_its_error_first_line():
    @dg.asset
    def fine() -> None:
        pass

    @dg.asset(deps=[fine])
    def broken() -> None:
        raise ValueError("warehouse table 'interactions' is missing\nmore detail")

    defs = dg.Definitions(assets=[fine, broken],
                          jobs=[dg.define_asset_job("j", selection=[fine, broken])])
    with dg.instance_for_test() as instance:
        report = runner.job_report(runner.run_job(defs, instance, "j"))
    assert not report.ok
    assert report.problems == ["step broken failed: ValueError: warehouse table 'interactions' "
                               "is missing"]


class UnreachableStore(dg.ConfigurableResource):
    def setup_for_execution(self, context) -> None:
        raise RuntimeError("connection refused\nat 127.0.0.1")


@dg.asset
def needs_store(store: UnreachableStore) -> None:
    pass


def test_job_report_names_the_resource_that_did_not_start_and_the_reason():

    defs = dg.Definitions(assets=[needs_store], resources={"store": UnreachableStore()},
                          jobs=[dg.define_asset_job("j", selection=[needs_store])])
    with dg.instance_for_test() as instance:
        report = runner.job_report(runner.run_job(defs, instance, "j"))
    assert report.problems == ["run failed: resource store did not start: RuntimeError: "
                               "connection refused"]


def _audit_result(meta: dict) -> dg.ExecuteInProcessResult:
    @dg.asset(name="audited_errors")
    def audited_errors() -> dg.MaterializeResult:
        return dg.MaterializeResult(metadata=meta)

    defs = dg.Definitions(assets=[audited_errors],
                          jobs=[dg.define_asset_job("a", selection=[audited_errors])])
    with dg.instance_for_test() as instance:
        return runner.run_job(defs, instance, "a")


def test_an_audit_where_every_provider_call_failed_is_a_failure():
    report = runner.job_report(_audit_result({"audited": 0, "failures": 12, "retries": 24,
                                              "auditor": "llm:openai/gpt-test"}))
    assert not report.ok  # Dagster says SUCCESS; the CLI must not print ok
    assert report.problems == ["audited_errors: all 12 audits failed (llm:openai/gpt-test): "
                               "nothing was audited; they are retried by the next run"]
    assert report.retries == "24 LLM call retries, 12 failed items"


def test_a_partly_failed_audit_succeeds_with_the_failures_counted():
    report = runner.job_report(_audit_result({"audited": 30, "failures": 2, "retries": 3}))
    assert report.ok and report.problems == []
    assert report.warnings == ["audited_errors: 2 item(s) failed and are retried by the next run "
                               "(`learnloop status` shows them)"]


def test_status_counts_failed_and_given_up_audit_attempts(store_url):
    from store.audit import attempt_counts, record_attempt
    from store.db import session_scope

    with session_scope(store_url) as s:
        for i, status in enumerate(["ok", "ok", "failed", "failed"]):
            record_attempt(s, interaction_id=f"i{i}", tenant_id="t", auditor="a",
                           prompt_version="v", status=status, is_error=False if status == "ok"
                           else None, reason="[outage] 503 from openai\nbody" if status ==
                           "failed" else None)
        for _ in range(4):  # i3 reaches 5 counted failures: given up
            record_attempt(s, interaction_id="i3", tenant_id="t", auditor="a",
                           prompt_version="v", status="failed", is_error=None,
                           reason="[request] 400 bad request")
    with session_scope(store_url) as s:
        counts = attempt_counts(s, max_attempts=5)
    assert counts == {"ok": 2, "pending": 1, "given_up": 1,
                      "last_failure": "[request] 400 bad request"}


def test_status_counts_failed_and_given_up_teacher_attempts(tmp_path):
    import duckdb

    from orchestration.status import teacher_attempt_counts

    path = tmp_path / "warehouse.duckdb"
    assert teacher_attempt_counts(path, 5)["pending"] == 0  # no warehouse yet
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE teacher_attempts (interaction_id VARCHAR, status VARCHAR, "
                "reason VARCHAR, counted_attempts BIGINT, updated_at TIMESTAMP)")
    con.execute("INSERT INTO teacher_attempts VALUES ('a', 'ok', NULL, 0, '2026-01-01'), "
                "('b', 'failed', '[outage] 503', 0, '2026-01-02'), "
                "('c', 'failed', '[request] 400\nbody', 5, '2026-01-03')")
    con.close()
    assert teacher_attempt_counts(path, 5) == {"ok": 1, "pending": 1, "given_up": 1,
                                               "last_failure": "[request] 400"}


def test_status_is_one_line_when_the_store_is_unreachable(learnloop_home, monkeypatch):
    from cli.main import main

    monkeypatch.setenv("LEARNLOOP_STORE_URL", "postgresql://bob:s3cret@127.0.0.1:9/learnloop")
    res = CliRunner().invoke(main, ["status", "--json"])
    assert res.exit_code == 3
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.output
    assert lines[0].startswith("learnloop: the operational store "
                               "postgresql://bob:***@127.0.0.1:9/learnloop is unreachable: ")
    assert "s3cret" not in res.output


def test_status_is_one_line_when_the_warehouse_is_locked(learnloop_home):
    import duckdb

    from cli.main import main

    CliRunner().invoke(main, ["migrate"])
    script = (f"import duckdb, time; c = duckdb.connect({str(learnloop_home / 'warehouse.duckdb')!r}); "
              "c.execute('CREATE TABLE interactions (x INT)'); print('LOCKED', flush=True); "
              "time.sleep(60)")
    locker = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert locker.stdout.readline().strip() == "LOCKED"
        res = CliRunner().invoke(main, ["status"])
    finally:
        locker.kill()
        locker.wait(10)
    assert res.exit_code == 3, res.output
    assert res.output.startswith(f"learnloop: the warehouse {learnloop_home / 'warehouse.duckdb'} "
                                 f"cannot be opened: ")
    assert len(res.output.strip().splitlines()) == 1
    del duckdb


def test_status_json_lists_attempts(learnloop_home):
    from cli.main import main

    res = CliRunner().invoke(main, ["status", "--json"])
    assert res.exit_code == 0, res.output
    st = json.loads(res.output)
    assert st["audit_attempts"] == {"ok": 0, "pending": 0, "given_up": 0, "last_failure": None}
    assert st["teacher_attempts"] == {"ok": 0, "pending": 0, "given_up": 0, "last_failure": None}
