"""The `learnloop` command line, run as a user runs it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from click.testing import CliRunner

from cli.main import main

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "data"
LEARNLOOP = Path(sys.executable).with_name("learnloop")


def test_import_reports_accepted_and_quarantined(learnloop_home, tmp_path):
    bad = tmp_path / "mixed.jsonl"
    good = {"interaction_id": "x1", "session_id": "s", "timestamp": "2026-11-01T10:00:00Z",
            "response": "hello"}
    bad.write_text(json.dumps(good) + "\n{broken\n" + json.dumps({**good, "interaction_id": ""}) + "\n")
    res = CliRunner().invoke(main, ["import", "native", str(bad), "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output)
    assert (summary["accepted"], summary["quarantined"]) == (1, 2)
    assert all(Path(f).exists() for f in summary["files"])


def test_import_hh_rlhf_sample_lands_every_pair(learnloop_home):
    res = CliRunner().invoke(main, ["import", "hh-rlhf", str(SHARED / "hh-rlhf-helpful-base" /
                                                             "test.jsonl.gz"), "--tenant", "hh"])
    assert res.exit_code == 0, res.output
    assert "2,354 accepted, 0 quarantined" in res.output


def test_import_timestamp_puts_undated_records_on_that_day(learnloop_home):
    src = SHARED / "hh-rlhf-helpful-base" / "test.jsonl.gz"
    res = CliRunner().invoke(main, ["import", "hh-rlhf", str(src), "--timestamp", "2025-02-03",
                                    "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output)
    assert summary["days"] == {"2025-02-03": 2354}
    assert all("date=2025-02-03" in f for f in summary["files"])


def test_import_rejects_unknown_format_by_name(learnloop_home, tmp_path):
    f = tmp_path / "x.jsonl"
    f.write_text("{}\n")
    res = CliRunner().invoke(main, ["import", "csv", str(f)])
    assert res.exit_code != 0
    assert "'csv' is not one of" in res.output and "openai-chat" in res.output


def test_status_json_on_an_empty_home_reports_zeros(learnloop_home):
    res = CliRunner().invoke(main, ["status", "--json"])
    assert res.exit_code == 0, res.output
    st = json.loads(res.output)
    assert st["interactions"] == 0 and st["quarantined"] == 0
    assert st["errors"] == {"pending": 0, "confirmed": 0, "dismissed": 0}
    assert st["calibration"] == {"pending": 0, "confirmed": 0, "dismissed": 0}
    assert st["samples"] == {"pending": 0, "approved": 0, "rejected": 0}
    assert st["datasets"] == 0
    assert st["models"] == {"name": "learnloop-assistant", "versions": 0, "champion": None,
                            "challenger": None, "latest": None}




def test_run_job_output_goes_to_its_log_and_a_failure_is_readable(tmp_path, capfd):
    """The CLI keeps dbt's and the libraries' chatter out of the terminal by writing a job's
    output to a log file; all of it must be in that file (not just what Dagster's tail mirror
    copied before it was stopped), and a failed run's reason must be where `tail` looks."""
    import sys

    import dagster as dg

    from orchestration import runner

    @dg.asset
    def talkative() -> None:
        print("line from a library")
        print("warning from a library", file=sys.stderr)

    @dg.asset(deps=[talkative])
    def broken() -> None:
        raise ValueError("warehouse table 'interactions' is missing")

    defs = dg.Definitions(assets=[talkative, broken],
                          jobs=[dg.define_asset_job("both", selection=["talkative", "broken"])])
    out = tmp_path / "logs" / "both.log"
    capfd.readouterr()
    with dg.instance_for_test() as instance:
        result = runner.run_job(defs, instance, "both", output=out)
    terminal = capfd.readouterr()
    assert not result.success
    assert "line from a library" not in terminal.out + terminal.err
    text = out.read_text()
    stdout_part = text.split("===== stdout of talkative, broken =====\n")[1].split("=====")[0]
    assert stdout_part == "line from a library\n"
    stderr_part = text.split("===== stderr of talkative, broken =====\n")[1].split("=====")[0]
    assert stderr_part.startswith("warning from a library\n")
    last = runner.tail(out)  # what the CLI shows: the default 20 lines
    assert "ValueError: warehouse table 'interactions' is missing" in last
    assert "RUN_FAILURE" in last
    assert runner.tail(tmp_path / "nope.log") == ""


def test_migrate_brings_a_new_store_to_head_once(learnloop_home):
    from store.db import current_revision, head_revision

    first = CliRunner().invoke(main, ["migrate"])
    assert first.exit_code == 0, first.output
    assert f"migrated from an empty store to revision {head_revision()}" in first.output
    assert current_revision(f"sqlite:///{learnloop_home / 'store.db'}") == head_revision()
    again = CliRunner().invoke(main, ["migrate"])
    assert again.exit_code == 0 and f"already at revision {head_revision()}" in again.output


def test_tables_lists_the_registry(learnloop_home):
    from ml.tables import TABLE_LIST

    res = CliRunner().invoke(main, ["tables", "--json"])
    assert res.exit_code == 0, res.output
    listed = json.loads(res.output)
    assert [t["name"] for t in listed] == [t.name for t in TABLE_LIST]
    assert listed[1]["columns"][0]["name"] == "interaction_id"


# ---- issue 9: landing days, bad folders, ranges, the sensor after `learnloop run` -------------

REC = {"interaction_id": "r1", "session_id": "s", "timestamp": "2026-11-01T10:00:00Z",
       "response": "hello"}


def _ingest_only(monkeypatch, learnloop_home):
    """`learnloop run` as a user runs it, but only the ingest part of the chain (audit, teaching
    and dbt are other tests' business), with a Dagster home that is put back afterwards."""
    from orchestration import cli as pipeline_cli

    monkeypatch.setattr(pipeline_cli, "post_ingest_jobs", lambda defs: [])
    home = learnloop_home / "dagster_home"
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    return home


def _ingested_days(dagster_home) -> list[str]:
    import dagster as dg

    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        records = instance.fetch_materializations(dg.AssetKey("interactions"), limit=100).records
        return sorted(r.partition_key for r in records)


def test_run_skips_a_malformed_landing_folder_and_ingests_the_valid_day(learnloop_home,
                                                                        monkeypatch):
    """Issue 9 items 3 and 10: `date=2026-02-30` beside a valid new day: `learnloop run` says
    which folder it skipped and why, and ingests the valid day."""
    from ml.landing import write_landing_file

    dagster_home = _ingest_only(monkeypatch, learnloop_home)
    landing = learnloop_home / "landing"
    bad = landing / "date=2026-02-30"
    bad.mkdir(parents=True)
    (bad / "x.jsonl").write_text(json.dumps(REC) + "\n")
    write_landing_file(landing, "2026-11-02", "t", [REC])
    res = CliRunner().invoke(main, ["run"])
    assert res.exit_code == 0, res.output
    assert "date=2026-02-30 skipped: '2026-02-30' is not a calendar date" in res.output
    assert _ingested_days(dagster_home) == ["2026-11-02"]


def test_run_since_until_ingests_the_landing_dates_of_the_range_in_calendar_order(
        learnloop_home, monkeypatch):
    """Issue 9 item 4: a range means the dates in it (daily partitions), whatever order the day
    folders appeared in; a range with no landing day is a clear message, not a crash."""
    from ml.landing import write_landing_file

    dagster_home = _ingest_only(monkeypatch, learnloop_home)
    landing = learnloop_home / "landing"
    for day in ("2026-11-05", "2026-11-01", "2026-11-03", "2026-11-02"):  # arrival order
        write_landing_file(landing, day, "t", [{**REC, "interaction_id": f"id-{day}"}])
    res = CliRunner().invoke(main, ["run", "--since", "2026-11-02", "--until", "2026-11-04"])
    assert res.exit_code == 0, res.output
    assert _ingested_days(dagster_home) == ["2026-11-02", "2026-11-03"]
    empty = CliRunner().invoke(main, ["run", "--since", "2026-10-01", "--until", "2026-10-31"])
    assert empty.exit_code == 1
    assert "no landing day from 2026-10-01 to 2026-10-31" in empty.output
    assert "max()" not in empty.output


def test_run_rejects_dates_that_are_not_landing_days(learnloop_home):
    for args, said in ((["--date", "2026-02-30"], "'2026-02-30' is not a calendar date"),
                       (["--since", "1999-12-31"], "before the first landing day 2000-01-01"),
                       (["--until", "2031-01-01"], "2031-01-01 is in the future"),
                       (["--date", "yesterday"], "'yesterday' is not a day: expected YYYY-MM-DD"),
                       (["--since", "2026-11-03", "--until", "2026-11-01"], "is after --until")):
        res = CliRunner().invoke(main, ["run", *args])
        assert res.exit_code == 2, (args, res.output)
        assert said in res.output, (args, res.output)


def test_a_first_sensor_tick_after_learnloop_run_requests_nothing(learnloop_home, monkeypatch):
    """Issue 9 item 3: runs started by the CLI count for the sensor: a daemon started after
    `learnloop run` (no cursor) requests no day the CLI ingested, and only a changed day after."""
    import dagster as dg

    from ml.landing import write_landing_file
    from orchestration.sensors import landing_file_sensor
    from tests.stores import resources_for

    dagster_home = _ingest_only(monkeypatch, learnloop_home)
    landing = learnloop_home / "landing"
    write_landing_file(landing, "2026-11-01", "t", [REC])
    write_landing_file(landing, "2026-11-02", "t", [{**REC, "interaction_id": "r2"}])
    res = CliRunner().invoke(main, ["run"])
    assert res.exit_code == 0, res.output
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        ctx = dg.build_sensor_context(instance=instance, resources=resources_for(learnloop_home))
        first = landing_file_sensor(ctx)
        assert not first.run_requests
        assert "already ingested" in first.skip_reason.skip_message
        write_landing_file(landing, "2026-11-02", "t2", [{**REC, "interaction_id": "r3"}])
        ctx = dg.build_sensor_context(instance=instance, cursor=first.cursor,
                                      resources=resources_for(learnloop_home))
        assert [r.partition_key for r in landing_file_sensor(ctx).run_requests] == ["2026-11-02"]
