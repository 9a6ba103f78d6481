"""The landing zone on S3-compatible object storage (a real moto S3 server over HTTP), configured
by ``LEARNLOOP_LANDING_URL`` and the standard AWS variables alone: the collector's writes land as
objects (never overwriting another writer's), the landing sensor decides from listings, ingest
reads the bucket and writes the same rows as from a folder, `learnloop import`, archive and
delete work on the bucket, and a bad configuration is refused with a named error."""

from __future__ import annotations

import json
import multiprocessing
import os
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import boto3
import dagster as dg
import polars as pl
import pytest
from click.testing import CliRunner

from ml import landing
from ml.config import Settings
from ml.landing_store import (
    LandingConfigError,
    LandingStoreError,
    ObjectLandingStore,
    open_landing,
)
from tests.deploy.test_object_storage import BUCKET, _keys, s3  # noqa: F401 (fixture)

URL = f"s3://{BUCKET}/landing"
DAY = "2026-11-20"


@pytest.fixture()
def bucket(s3):  # noqa: F811
    """The ``s3`` server with an empty bucket (moto keeps its buckets in the process, from one
    test's server to the next)."""
    s3c = boto3.client("s3")
    keys = _keys("")
    for i in range(0, len(keys), 1000):
        s3c.delete_objects(Bucket=BUCKET, Delete={"Objects": [{"Key": k}
                                                              for k in keys[i:i + 1000]]})
    assert _keys("") == []
    return s3


def rec(i: int, day: str = DAY, **kw) -> dict:
    out = {"interaction_id": f"int-{i}", "session_id": f"s-{i % 7}",
           "timestamp": f"{day}T10:{i % 60:02d}:00Z",
           "messages": [{"role": "user", "content": f"question {i}"}],
           "response": f"answer {i}"}
    out.update(kw)
    return out


def jsonl(*records: dict) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in records).encode()


def _get_calls(store: ObjectLandingStore) -> list[str]:
    """The S3 operations the store's client makes from now on (botocore's own event hook)."""
    calls: list[str] = []
    store.client.meta.events.register(
        "before-call.s3", lambda model, **_: calls.append(model.name))
    return calls


# ---- configuration ----------------------------------------------------------------------------


@pytest.mark.parametrize(("url", "named"), [
    ("gs://bucket/landing", "unsupported scheme gs://"),
    ("/data/landing", "unsupported scheme (none)"),
    ("s3://", "names no bucket"),
    ("s3:///landing", "names no bucket"),
    ("s3://Not_A_Bucket/x", "not a valid bucket name"),
    ("s3://key:secret@bucket/x", "put no credentials"),
])
def test_a_bad_landing_url_is_refused_naming_the_setting_and_what_is_wrong(url, named):
    with pytest.raises(ValueError, match="LEARNLOOP_LANDING_URL") as info:
        Settings(landing_url=url)
    assert named in str(info.value)


def test_a_missing_secret_key_or_two_landing_zones_are_named(monkeypatch, tmp_path):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "only-the-id")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    with pytest.raises(LandingConfigError, match="AWS_SECRET_ACCESS_KEY is not"):
        Settings(landing_url=URL).landing_store  # noqa: B018 - opening it is the check
    with pytest.raises(ValueError, match="LEARNLOOP_LANDING_URL .* or LEARNLOOP_LANDING_DIR"):
        Settings(landing_url=URL, landing_dir=tmp_path)
    # code that needs a folder says so instead of writing to a local "s3:" folder
    with pytest.raises(LandingConfigError, match="on object storage"):
        Settings(landing_url=URL).landing  # noqa: B018
    with pytest.raises(TypeError, match="not a folder"):
        landing.write_landing_file(URL, DAY, "t", [rec(1)])  # type: ignore[arg-type]


def test_a_missing_bucket_is_named_and_no_secret_is_shown(bucket, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "a-secret-never-shown")
    store = open_landing("s3://no-such-bucket/landing")
    with pytest.raises(LandingStoreError, match="'no-such-bucket' does not exist") as info:
        store.scan_days()
    assert "a-secret-never-shown" not in str(info.value) + repr(store) + str(store)


# ---- writers -----------------------------------------------------------------------------------


def _collector_app(home: Path, **service_kw):
    from service.app import create_app
    from service.config import ServiceSettings
    from store.db import upgrade

    settings = Settings(home=home, store_url=f"sqlite:///{home / 'store.db'}")
    home.mkdir(parents=True, exist_ok=True)
    upgrade(settings.store)
    return settings, create_app(settings, ServiceSettings(
        secret_key="test-secret-key-0123456789", **service_kw), migrate=False)


def test_the_collector_writes_objects_from_threads_and_worker_processes(bucket, tmp_path,
                                                                        monkeypatch):
    from fastapi.testclient import TestClient

    from store import collector_keys
    from store.db import session_scope

    monkeypatch.setenv("LEARNLOOP_LANDING_URL", URL)
    # bodies of 2 KiB and more go to the worker process: the store travels there pickled
    settings, app = _collector_app(tmp_path / "home", collector_workers=1,
                                   collector_process_min_bytes=2048)
    with session_scope(settings.store) as s:
        key = collector_keys.create_key(s, "acme").key
    with TestClient(app) as c:
        small = c.post("/v1/interactions", json=rec(1), headers={"X-API-Key": key})
        big = c.post("/v1/interactions", json=[rec(i, day="2026-11-21") for i in range(2, 40)]
                     + [rec(40)], headers={"X-API-Key": key})
    assert small.status_code == 200 and big.status_code == 200, (small.text, big.text)
    files = small.json()["files"] + big.json()["files"]
    assert len(files) == 3 and all(f.startswith("date=2026-11-2") for f in files)
    keys = sorted(_keys("landing/"))
    assert keys == sorted(f"landing/{f}" for f in files)
    assert not (tmp_path / "home" / "landing").exists()  # nothing went to the local default
    store = settings.landing_store
    got = {json.loads(line)["interaction_id"] for day in store.scan_days()[0]
           for e in store.files(day) for line in store.read_bytes(e.ref).splitlines()}
    assert got == {f"int-{i}" for i in range(1, 41)}


def _write_rounds(writers: list[int], rounds: int, start_at: float) -> None:
    """One process's writers (threads, sharing the process's client), each writing ``rounds``
    objects of DAY, all starting at ``start_at`` (time.time())."""
    store = ObjectLandingStore.from_url(URL)
    errors: list[BaseException] = []

    def write(w: int) -> None:
        try:
            time.sleep(max(0.0, start_at - time.time()))
            for r in range(rounds):
                store.write("collector-acme", {DAY: jsonl(rec(w * 100 + r))})
        except BaseException as exc:  # noqa: BLE001 - raised below, in the process's result
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(w,)) for w in writers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def test_concurrent_writers_of_one_day_lose_nothing(bucket):
    """Eight writers in two processes (as collector pods are: each process its own client)
    write the same day at once, in the same second: every object is kept, and a second PUT of a
    name is refused."""
    writers, rounds = 8, 6
    start_at = time.time() + 8  # both processes are up by then (spawn imports this module)
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        done = [pool.submit(_write_rounds, list(range(p, writers, 2)), rounds, start_at)
                for p in range(2)]
        for f in done:
            f.result()
    store = open_landing(URL)
    entries = store.files(DAY)
    assert len(entries) == writers * rounds
    ids = sorted(json.loads(store.read_bytes(e.ref))["interaction_id"] for e in entries)
    assert ids == sorted(f"int-{w * 100 + r}" for w in range(writers) for r in range(rounds))
    # a name is never written twice: the store refuses the PUT, the first object stays
    with pytest.raises(LandingStoreError, match="PreconditionFailed"):
        store._put_new(store._key_of_ref(entries[0].ref), b"overwritten\n")
    assert store.read_bytes(entries[0].ref) != b"overwritten\n"


def test_a_write_of_several_days_checks_every_day_before_the_first_put(bucket):
    store = open_landing(URL)
    with pytest.raises(ValueError, match="out of range"):
        store.write("t", {DAY: jsonl(rec(1)), "2026-02-30": jsonl(rec(2))})
    assert _keys("landing/") == []
    refs = store.write("t", {DAY: jsonl(rec(1)), "2026-11-21": jsonl(rec(2))})
    assert [store.relative(r).split("/")[0] for r in refs] == ["date=2026-11-20",
                                                                "date=2026-11-21"]


def test_import_writes_objects_and_its_registry_to_the_bucket(bucket, tmp_path):
    from ml.importers import import_to_landing

    src = tmp_path / "chats.jsonl"
    src.write_text("".join(json.dumps({"messages": [
        {"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}) + "\n"
        for i in range(5)) + "not json\n")
    first = import_to_landing("openai-chat", src, URL, "acme")
    assert first["accepted"] == 5 and first["quarantined"] == 1
    assert all(f.startswith(f"{URL}/date=") for f in first["files"])
    data = [k for k in _keys("landing/") if not k.startswith("landing/_imports/")]
    assert sorted(data) == sorted(f[len(f"s3://{BUCKET}/"):] for f in first["files"])
    assert len(_keys("landing/_imports/")) == 1  # the timestamp registered for this content
    os.utime(src, (1, 1))  # a new mtime: the registry keeps the first import's timestamp
    again = import_to_landing("openai-chat", src, URL, "acme")
    assert again["days"] == first["days"]
    # the second copy is seen in the first import's objects of the same day
    assert again["ingest_outlook"]["in_other_landing_files"]["exact"] == 5


# ---- readers -----------------------------------------------------------------------------------


def test_the_sensor_decides_from_listings_and_reports_bad_folders(bucket, learnloop_home,
                                                                  monkeypatch):
    from assets.resources import LandingZoneResource
    from orchestration.sensors import landing_file_sensor

    monkeypatch.setenv("LEARNLOOP_LANDING_URL", URL)
    store = Settings().landing_store
    store.write("t", {"2026-11-01": jsonl(rec(1)), "2026-11-02": jsonl(rec(2))})
    boto3.client("s3").put_object(Bucket=BUCKET, Key="landing/date=2026-02-30/x.jsonl", Body=b"")
    boto3.client("s3").put_object(Bucket=BUCKET, Key="landing/date=2026-11-01/.x.jsonl.tmp",
                                  Body=b"")
    calls = _get_calls(store)
    days, bad = landing.scan_partitions(store)
    fps = landing.day_fingerprints(store, days)
    assert days == ["2026-11-01", "2026-11-02"]
    assert [b.folder for b in bad] == ["date=2026-02-30"]
    assert set(calls) == {"ListObjectsV2"}  # nothing downloaded, nothing HEADed
    # the fingerprint is the listing's names, sizes and ETags
    listed = boto3.client("s3").list_objects_v2(Bucket=BUCKET, Prefix="landing/date=2026-11-01/")
    (obj,) = [o for o in listed["Contents"] if not o["Key"].endswith(".tmp")]
    assert fps["2026-11-01"] == store.fingerprint([store.files("2026-11-01")[0]])
    assert store.files("2026-11-01")[0].version == obj["ETag"].strip('"')
    with dg.instance_for_test() as instance:
        ctx = dg.build_sensor_context(instance=instance,
                                      resources={"landing_zone": LandingZoneResource()})
        first = landing_file_sensor(ctx)
        assert sorted(r.partition_key for r in first.run_requests) == days
        assert json.loads(first.cursor)["bad"] == ["date=2026-02-30"]
        # a new object on one day: that day again, with another fingerprint
        store.write("t", {"2026-11-02": jsonl(rec(3))})
        assert landing.day_fingerprints(store)["2026-11-02"] != fps["2026-11-02"]


def _ingested(home: Path, day: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    from tests.stores import warehouse_connect

    con = warehouse_connect(home, read_only=True)
    try:
        good = con.execute("SELECT * FROM interactions WHERE partition_date = ?::DATE "
                           "ORDER BY tenant_id, interaction_id", [day]).pl()
        bad = con.execute("SELECT * FROM quarantined_interactions WHERE partition_date = ?::DATE "
                          "ORDER BY quarantine_key", [day]).pl()
    finally:
        con.close()
    return good, bad


def _by_name(frame: pl.DataFrame) -> pl.DataFrame:
    """The frame with ``source_file`` reduced to the file name (a path in one, a key in the
    other)."""
    return frame.with_columns(pl.col("source_file").str.split("/").list.last())


def _staging_folders() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("learnloop-landing-*")}


@pytest.mark.slow
def test_ingest_reads_the_bucket_and_writes_the_rows_a_folder_gives(bucket, learnloop_home,
                                                                    monkeypatch):
    """The shipped definitions (`ingest_job`, `learnloop run`'s runner), configured by the
    environment alone: the same demo day ingested from a folder and from the bucket gives the
    same interactions and quarantine rows; the sensor then finds the day done; archive and
    delete on the bucket (`learnloop landing`) keep and remove what they should."""
    from cli.main import main as cli
    from ml.demo.generate import generate
    from orchestration import runner
    from orchestration.definitions import defs
    from orchestration.sensors import days_to_ingest

    folder_home, bucket_home = learnloop_home / "folder", learnloop_home / "bucket"
    summary = generate(folder_home / "landing", 400, seed=5, days=1)
    (day,) = summary["days"]
    s3c = boto3.client("s3")
    for f in sorted((folder_home / "landing" / f"date={day}").iterdir()):
        s3c.upload_file(str(f), BUCKET, f"landing/date={day}/{f.name}")

    def ingest(home: Path) -> None:
        home.mkdir(exist_ok=True)
        monkeypatch.setenv("LEARNLOOP_HOME", str(home))
        from store.db import upgrade

        upgrade(Settings().store)
        with dg.instance_for_test() as instance:
            assert runner.run_ingest(defs, instance, [day]) == []
            assert days_to_ingest(instance, Settings().landing_store)[0] == []

    ingest(folder_home)
    before = _staging_folders()
    monkeypatch.setenv("LEARNLOOP_LANDING_URL", URL)
    ingest(bucket_home)
    assert _staging_folders() == before  # the staging copies are gone
    assert not (bucket_home / "landing").exists()
    (good_f, bad_f), (good_b, bad_b) = _ingested(folder_home, day), _ingested(bucket_home, day)
    assert good_f.height > 300 and bad_f.height > 0
    assert good_b["source_file"].str.starts_with(f"{URL}/date={day}/").all()
    assert _by_name(good_b).equals(_by_name(good_f))
    assert _by_name(bad_b).equals(_by_name(bad_f))

    # archive: the objects move below _archive/, the day's rows stay, the sensor stops seeing
    # the day, and ingesting the archived day again writes the same rows
    runner_env = {"LEARNLOOP_HOME": str(bucket_home), "LEARNLOOP_LANDING_URL": URL}
    out = CliRunner().invoke(cli, ["landing", "archive", "--day", day, "--actor", "t"],
                             env=runner_env)
    assert out.exit_code == 0, out.output
    assert f"archived to {URL}/_archive/date={day}" in out.output
    assert _keys(f"landing/date={day}/") == []
    assert len(_keys(f"landing/_archive/date={day}/")) == len(list(
        (folder_home / "landing" / f"date={day}").iterdir()))
    assert Settings().landing_store.scan_days()[0] == []
    with dg.instance_for_test() as instance:
        assert runner.run_ingest(defs, instance, [day]) == []
    assert _ingested(bucket_home, day)[0].equals(good_b)
    # delete: the objects and the rows go, recorded
    out = CliRunner().invoke(cli, ["landing", "delete", "--day", day, "--reason", "test",
                                   "--yes", "--actor", "t"], env=runner_env)
    assert out.exit_code == 0, out.output
    assert _keys(f"landing/_archive/date={day}/") == [] and _keys(f"landing/date={day}/") == []
    assert _ingested(bucket_home, day)[0].height == 0


def test_the_demo_truth_file_is_found_on_the_bucket(bucket, tmp_path):
    from ml.demo.truth import find_truth_files, read_truth_files

    assert find_truth_files(URL) == []
    boto3.client("s3").put_object(Bucket=BUCKET, Key="landing/truth.jsonl", Body=jsonl(
        {"interaction_id": "int-1", "mistake": "refusal"}, {"interaction_id": "int-2"}))
    assert find_truth_files(URL) == [f"{URL}/truth.jsonl"]
    truth = read_truth_files(URL)
    assert truth["interaction_id"].to_list() == ["int-1", "int-2"]
    assert truth["mistake"].to_list() == ["refusal", None]
