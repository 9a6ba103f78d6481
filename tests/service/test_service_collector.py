"""The log collector: per-record answers, tenant keys, limits, and durability across kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import psutil
import pytest
from fastapi.testclient import TestClient
from servicekit import free_port, wait_until_serving

from ml import landing
from service.collector import check_records
from store import collector_keys
from store.db import session_scope, upgrade

ROOT = Path(__file__).resolve().parents[2]


def record(i: int, day: str = "2026-11-20", **kw) -> dict:
    rec = {"interaction_id": f"int-{i}", "session_id": f"s-{i % 7}",
           "timestamp": f"{day}T10:{i % 60:02d}:00Z",
           "messages": [{"role": "user", "content": f"question {i}"}],
           "response": f"answer {i}"}
    rec.update(kw)
    return rec


def landed(landing_dir: Path) -> dict[str, dict]:
    out = {}
    for day in landing.list_partitions(landing_dir):
        for f in landing.list_files(landing_dir, day):
            for line in f.read_text().splitlines():
                rec = json.loads(line)
                out[rec["interaction_id"]] = {**rec, "_day": day}
    return out


def test_check_records_forces_and_checks_the_tenant():
    results, by_day = check_records(
        [record(1), record(2, tenant_id="acme"), record(3, tenant_id="globex"),
         {"interaction_id": "bad"}, "not an object", record(1), record(4, day="2026-11-21")],
        "acme")
    assert [r["accepted"] for r in results] == [True, True, False, False, False, False, True]
    assert "does not match the API key's tenant 'acme'" in results[2]["reason"]
    assert "session_id" in results[3]["reason"] and "timestamp" in results[3]["reason"]
    assert results[3]["interaction_id"] == "bad"
    assert "expected an object" in results[4]["reason"]
    assert "duplicate interaction_id" in results[5]["reason"]
    assert sorted(by_day) == ["2026-11-20", "2026-11-21"]
    assert all(r["tenant_id"] == "acme" for rs in by_day.values() for r in rs)


@pytest.fixture()
def collector(sqlite_world, app_factory):
    with session_scope(sqlite_world.url) as s:
        key = collector_keys.create_key(s, "acme").key
        other = collector_keys.create_key(s, "globex").key
    app = app_factory(sqlite_world, collector_max_records=50, collector_max_bytes=64 * 1024)
    with TestClient(app) as c:
        yield c, key, other, sqlite_world.settings.landing


def test_needs_a_valid_key(collector):
    c, *_ = collector
    assert c.post("/v1/interactions", json=record(1)).status_code == 401
    assert c.post("/v1/interactions", json=record(1),
                  headers={"X-API-Key": "llc_wrong"}).status_code == 401


def test_accepts_one_a_list_or_records_and_lands_them(collector):
    c, key, other, landing_dir = collector
    h = {"X-API-Key": key}
    one = c.post("/v1/interactions", json=record(1), headers=h)
    assert one.status_code == 200 and one.json()["accepted"] == 1
    many = c.post("/v1/interactions", headers=h, json=[
        record(2), record(3, tenant_id="globex"), {"interaction_id": "x", "session_id": "s"},
        record(4, day="2026-11-21")])
    body = many.json()
    assert (body["accepted"], body["rejected"]) == (2, 2)
    assert [r["accepted"] for r in body["results"]] == [True, False, False, True]
    assert body["results"][1]["reason"].startswith("tenant_id 'globex' does not match")
    assert "timestamp" in body["results"][2]["reason"]
    assert sorted(f.split("/")[0] for f in body["files"]) == ["date=2026-11-20", "date=2026-11-21"]
    wrapped = c.post("/v1/interactions", json={"records": [record(5)]},
                     headers={"X-API-Key": other})
    assert wrapped.json()["results"][0]["accepted"] is True
    got = landed(landing_dir)
    assert set(got) == {"int-1", "int-2", "int-4", "int-5"}
    assert got["int-5"]["tenant_id"] == "globex" and got["int-2"]["tenant_id"] == "acme"
    assert got["int-4"]["_day"] == "2026-11-21"


def test_all_rejected_writes_no_file(collector):
    c, key, _, landing_dir = collector
    r = c.post("/v1/interactions", json=[{"nope": 1}], headers={"X-API-Key": key})
    assert r.status_code == 200 and r.json()["accepted"] == 0 and r.json()["files"] == []
    assert landed(landing_dir) == {}


def test_bad_bodies_and_limits(collector):
    c, key, _, landing_dir = collector
    h = {"X-API-Key": key, "Content-Type": "application/json"}
    assert c.post("/v1/interactions", content=b"{not json", headers=h).status_code == 400
    assert c.post("/v1/interactions", content=b"42", headers=h).status_code == 400
    assert c.post("/v1/interactions", content=b"[]", headers=h).status_code == 400
    too_many = c.post("/v1/interactions", json=[record(i) for i in range(51)], headers=h)
    assert too_many.status_code == 413 and "limit of 50" in too_many.json()["detail"]
    big = c.post("/v1/interactions", json=[record(1, response="x" * 70_000)], headers=h)
    assert big.status_code == 413 and "bytes" in big.json()["detail"]
    assert landed(landing_dir) == {}


@pytest.mark.slow
def test_acknowledged_records_survive_kill_9(tmp_path):
    """Start uvicorn, send acknowledged batches, SIGKILL right after the last answer, check disk."""
    home = tmp_path / "home"
    url = f"sqlite:///{home / 'store.db'}"
    upgrade(url)
    with session_scope(url) as s:
        key = collector_keys.create_key(s, "acme").key
    port = free_port()
    env = {**os.environ, "LEARNLOOP_HOME": str(home), "LEARNLOOP_SECRET_KEY": "k" * 32,
           "LEARNLOOP_COLLECTOR_PROCESS_MIN_BYTES": "0"}  # every body to the worker process
    env.pop("LEARNLOOP_STORE_URL", None)
    env.pop("LEARNLOOP_LANDING_DIR", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--factory", "service.app:create_app",
         "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    acknowledged: set[str] = set()
    rejected: set[str] = set()
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until_serving(f"{base}/healthz", proc, 30)
        with httpx.Client(base_url=base, headers={"X-API-Key": key}, timeout=30) as c:
            for batch in range(3):
                recs = [record(batch * 1000 + i, day=f"2026-11-{18 + i % 3}") for i in range(300)]
                recs.append({"interaction_id": f"broken-{batch}", "session_id": "s"})
                r = c.post("/v1/interactions", json=recs)
                if batch == 2:
                    workers = psutil.Process(proc.pid).children(recursive=True)
                    os.kill(proc.pid, signal.SIGKILL)  # immediately after the last answer
                assert r.status_code == 200, r.text
                for res in r.json()["results"]:
                    (acknowledged if res["accepted"] else rejected).add(res["interaction_id"])
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    assert proc.returncode == -signal.SIGKILL
    # the collector's worker process did the writes; it exits by itself with the server
    assert workers, "the batches did not go to a worker process"
    gone, alive = psutil.wait_procs(workers, timeout=20)
    assert not alive, f"worker processes outlived the server: {alive}"
    assert len(acknowledged) == 900 and len(rejected) == 3
    on_disk = landed(home / "landing")
    assert acknowledged <= set(on_disk), f"lost {len(acknowledged - set(on_disk))} records"
    assert not rejected & set(on_disk)
    assert not list((home / "landing").rglob("*.tmp"))


def test_landing_write_fsyncs_new_folders_and_cleans_up_a_failed_write(tmp_path, monkeypatch):
    import os

    from ml import landing

    synced: list = []
    real_fsync_dir = landing.fsync_dir
    monkeypatch.setattr(landing, "fsync_dir", lambda p: (synced.append(p), real_fsync_dir(p)))
    root = tmp_path / "landing"
    path = landing.write_landing_bytes(root, "2026-11-20", "collector-acme", b"{}\n")
    folder = root / "date=2026-11-20"
    # the new landing root and date= folder, each with its parent, then the folder after rename
    assert synced == [root, tmp_path, folder, root, folder]
    assert path.read_bytes() == b"{}\n"
    synced.clear()
    landing.write_landing_bytes(root, "2026-11-20", "collector-acme", b"{}\n")
    assert synced == [folder]  # nothing new to create: only the rename is fsynced

    import stat

    real_fsync, seen_tmp = os.fsync, []

    def failing_fsync(fd):  # the data file's fsync fails (e.g. the disk is full); folders sync
        if stat.S_ISREG(os.fstat(fd).st_mode):
            seen_tmp.extend(p.name for p in (root / "date=2026-11-21").iterdir())
            raise OSError(28, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="No space left"):
        landing.write_landing_bytes(root, "2026-11-21", "collector-acme", b"x" * 1000)
    assert len(seen_tmp) == 1 and seen_tmp[0].endswith(".tmp")  # it existed mid-write
    leftovers = sorted(p.name for p in (root / "date=2026-11-21").iterdir())
    assert leftovers == []  # removed: no temp file, no half file
    assert len(landing.list_files(root, "2026-11-20")) == 2


def test_start_up_removes_stale_temp_files_only(sqlite_world, app_factory):
    """A crash mid-write leaves ``.<name>.tmp``; the service removes it when it starts, unless it
    is fresh (a live writer may be using it) or not in a date= folder."""
    import time

    root = sqlite_world.settings.landing
    folder = root / "date=2026-11-20"
    folder.mkdir(parents=True)
    stale = folder / ".collector-acme-20261120T100000-0123456789ab.jsonl.tmp"
    fresh = folder / ".collector-acme-20261120T100001-0123456789ac.jsonl.tmp"
    done = folder / "collector-acme-20261120T100002-0123456789ad.jsonl"
    other = root / ".elsewhere.tmp"
    for p in (stale, fresh, done, other):
        p.write_text('{"half": ')
    old = time.time() - landing.STALE_TEMP_AGE_S - 60
    for p in (stale, done, other):
        os.utime(p, (old, old))
    app_factory(sqlite_world)
    assert not stale.exists()
    assert fresh.exists() and done.exists() and other.exists()
    assert landing.list_files(root, "2026-11-20") == [done]


def test_health_answers_while_a_batch_is_being_checked(sqlite_world, app_factory, monkeypatch):
    """The batch's validation is held (it waits for an event) until /healthz has answered: when
    the collector validated on the event loop, /healthz could not answer and this failed; not a
    timing test (the waits are only upper bounds)."""
    import threading

    from servicekit import LiveServer

    from service import collector

    entered, release = threading.Event(), threading.Event()
    real = collector.check_records

    def held_check_records(records, tenant_id):
        entered.set()
        release.wait(30)
        return real(records, tenant_id)

    monkeypatch.setattr(collector, "check_records", held_check_records)
    with session_scope(sqlite_world.url) as s:
        key = collector_keys.create_key(s, "acme").key
    answers: list = []
    with LiveServer(app_factory(sqlite_world, collector_workers=0)) as live:
        def send() -> None:
            with httpx.Client(base_url=live.url, timeout=60) as c:
                answers.append(c.post("/v1/interactions", headers={"X-API-Key": key},
                                      json=[record(i) for i in range(200)]))

        t = threading.Thread(target=send)
        t.start()
        try:
            assert entered.wait(30), "the batch never reached validation"
            health = httpx.get(f"{live.url}/healthz", timeout=10)
            assert health.status_code == 200 and health.json() == {"status": "ok"}
        finally:
            release.set()
            t.join(60)
    assert answers and answers[0].status_code == 200 and answers[0].json()["accepted"] == 200


def test_large_bodies_go_to_a_worker_process(sqlite_world, app_factory):
    """Bodies over collector_process_min_bytes are decoded, checked and written in another
    process (its own interpreter lock); the answers are the same as from a thread."""
    from servicekit import LiveServer

    with session_scope(sqlite_world.url) as s:
        key = collector_keys.create_key(s, "acme").key
    app = app_factory(sqlite_world, collector_workers=1, collector_process_min_bytes=4096)
    pool = app.state.ctx.collector_pool
    with LiveServer(app) as live, httpx.Client(base_url=live.url, timeout=60,
                                                headers={"X-API-Key": key}) as c:
        small = c.post("/v1/interactions", json=record(1))
        assert small.status_code == 200 and pool.pids() == []  # a thread did it
        big = c.post("/v1/interactions", json=[record(i) for i in range(2, 60)]
                     + [{"interaction_id": "bad"}])
        assert big.status_code == 200, big.text
        assert (big.json()["accepted"], big.json()["rejected"]) == (58, 1)
        workers = pool.pids()
        assert workers and os.getpid() not in workers
        bad = c.post("/v1/interactions", content=b"[" * 5000 + b" " * 4096,
                     headers={"Content-Type": "application/json"})
        assert bad.status_code == 400 and "nested too deeply" in bad.json()["detail"]
    pool.shutdown()
    assert set(landed(sqlite_world.settings.landing)) == {f"int-{i}" for i in range(1, 60)}


def test_landing_unit_write_leaves_nothing_when_a_later_day_fails(tmp_path, monkeypatch):
    """write_landing_files: the second day's fsync fails (disk full) after the first day's file
    was written and fsynced: neither day appears, no temporary file is left."""
    import stat

    root = tmp_path / "landing"
    real_fsync, files_synced = os.fsync, []

    def fsync(fd):
        if stat.S_ISREG(os.fstat(fd).st_mode):
            files_synced.append(fd)
            if len(files_synced) == 2:
                raise OSError(28, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(OSError, match="No space left"):
        landing.write_landing_files(root, "collector-acme",
                                    {"2026-11-20": b"{}\n", "2026-11-21": b"{}\n"})
    assert len(files_synced) == 2
    assert [p for p in root.rglob("*") if p.is_file()] == []
    monkeypatch.setattr(os, "fsync", real_fsync)
    paths = landing.write_landing_files(root, "collector-acme",
                                        {"2026-11-20": b"{}\n", "2026-11-21": b"{}\n"})
    assert [p.parent.name for p in paths] == ["date=2026-11-20", "date=2026-11-21"]
    assert len({p.name for p in paths}) == 1  # one unit: the same name in every day


def test_a_dead_worker_process_is_a_503_then_the_pool_restarts(sqlite_world, app_factory):
    from servicekit import LiveServer

    with session_scope(sqlite_world.url) as s:
        key = collector_keys.create_key(s, "acme").key
    app = app_factory(sqlite_world, collector_workers=1, collector_process_min_bytes=0)
    pool = app.state.ctx.collector_pool
    with LiveServer(app) as live, httpx.Client(base_url=live.url, timeout=60,
                                                headers={"X-API-Key": key}) as c:
        assert c.post("/v1/interactions", json=record(1)).status_code == 200
        (pid,) = pool.pids()
        os.kill(pid, signal.SIGKILL)
        broken = c.post("/v1/interactions", json=record(2))
        assert broken.status_code == 503 and "retry" in broken.json()["detail"]
        again = c.post("/v1/interactions", json=record(2))
        assert again.status_code == 200 and again.json()["accepted"] == 1
        assert pool.pids() and pool.pids() != [pid]
    pool.shutdown()


def test_check_records_rejects_future_and_too_old_timestamps():
    """Issue 9 item 4: the collector creates no day folder in the future (beyond the clock-skew
    tolerance) or before the first landing day: those records are answered as rejected, with
    the reason."""
    results, by_day = check_records(
        [record(1), record(2, day="2031-01-01"), record(3, day="1999-12-31")], "acme")
    assert [r["accepted"] for r in results] == [True, False, False]
    assert "is in the future" in results[1]["reason"]
    assert "before the first landing day 2000-01-01" in results[2]["reason"]
    assert sorted(by_day) == ["2026-11-20"]
