"""`learnloop models promote | rollback | history | experiment` and the deployment block of
`learnloop status`, through click's CliRunner under a fresh LEARNLOOP_HOME with a real MLflow
registry (SQLite), the operational store and a DuckDB warehouse of served interactions."""

from __future__ import annotations

import getpass
import json
from pathlib import Path

import dagster as dg
import pytest
from click.testing import CliRunner

from assets import deployment as d
from assets import lifecycle as lc
from cli.main import main
from ml.config import Settings
from ml.registry import Registry
from store.db import session_scope, upgrade
from tests.deploykit import copy_mlflow, mlflow_template, served, write
from tests.stores import resources_for

ACTOR = f"cli:{getpass.getuser()}"


def _run(*args):
    return CliRunner().invoke(main, list(args))


@pytest.fixture(scope="module")
def mlflow_db(tmp_path_factory) -> Path:
    return mlflow_template(tmp_path_factory.mktemp("mlflow"))


@pytest.fixture()
def reg(learnloop_home, mlflow_db, tmp_path) -> Registry:
    copy_mlflow(mlflow_db, learnloop_home / "mlflow.db")
    upgrade(Settings().store)
    reg = Registry.from_settings(Settings())
    for _ in range(3):
        reg.register_version(str(tmp_path), None, {"learnloop.role": "candidate"})
    return reg


def test_promote_rollback_and_history_move_the_aliases_and_record_each_change(reg):
    res = _run("models", "promote", "1", "--reason", "first champion")
    assert res.exit_code == 0, res.output
    assert "learnloop-assistant v1 is the champion (was -)" in res.output
    res = _run("models", "promote", "2", "--reason", "better on the eval suite")
    assert res.exit_code == 0, res.output
    assert "v2 is the champion (was v1); deployable: v2, v1" in res.output
    assert reg.aliases() == {"champion": "2"}

    res = _run("models", "rollback", "--reason", "users complain")
    assert res.exit_code == 0, res.output
    assert "v1 serves everyone again; v2 rolled back" in res.output
    assert reg.aliases() == {"champion": "1"}
    assert reg.version("2").tags[lc.DEPLOYMENT_TAG] == "rolled_back"

    rows = json.loads(_run("models", "history", "--json").output)
    assert [(r["alias"], r["model_version"], r["action"], r["status"], r["actor"], r["reason"])
            for r in rows] == [
        ("champion", "1", "rollback", "active", ACTOR, "users complain"),
        ("champion", "2", "promote", "rolled_back", ACTOR, "better on the eval suite"),
        ("champion", "1", "promote", "retired", ACTOR, "first champion")]
    assert rows[0]["previous_version"] == "2"
    text = _run("models", "history").output.splitlines()
    assert text[0].split()[:3] == ["when", "alias", "version"]
    assert "rollback" in text[1] and "users complain" in text[1] and ACTOR[:26] in text[1]

    for args, words in ((("rollback", "2", "--reason", "x"),
                         "v2 is not deployable: a rollback goes to one of the last 3 champions "
                         "(v1)"),
                        (("rollback", "--reason", "x"), "v1 is the only deployable champion"),
                        (("promote", "9", "--reason", "x"), "has no version 9 (versions: 1, 2, 3)"),
                        (("promote", "1", "--reason", "x"), "v1 is already the champion"),
                        (("promote", "3", "--reason", "  "), "--reason must say why"),
                        (("promote", "3"), "Missing option '--reason'")):
        res = _run("models", *args)
        assert res.exit_code == 2 and words in res.output, (args, res.output)
    assert reg.aliases() == {"champion": "1"}
    assert len(json.loads(_run("models", "history", "--json").output)) == 3  # nothing recorded


def _look(res) -> dict:
    result = dg.materialize([d.ab_experiment], resources=res, run_config={"ops": {
        "ab_experiment": {"config": {"min_samples_per_arm": 60, "min_stage_samples": 20}}}})
    assert result.success
    return {k: v.value for k, v in
            result.asset_materializations_for_node("ab_experiment")[0].metadata.items()}


def test_experiments_in_status_and_the_experiment_commands(reg, learnloop_home):
    assert _run("models", "promote", "1", "--reason", "base").exit_code == 0
    res = resources_for(learnloop_home)
    status = json.loads(_run("status", "--json").output)["deployment"]
    assert status == {"champion": "1", "challenger": None, "deployable": ["1"],
                      "experiment": None, "last_experiment": None}
    assert "no experiments of learnloop-assistant yet" in _run("models", "experiment").output

    # a challenger, its experiment, a planted regression: rolled back by ab_experiment
    with session_scope(Settings().store) as s:
        lc.set_challenger(reg, s, "2", actor="asset:candidate_evaluation", reason="gate passed")
    exp_id = _look(res)["experiment_id"]
    running = json.loads(_run("status", "--json").output)["deployment"]
    assert running["challenger"] == "2" and running["experiment"]["id"] == exp_id
    assert running["experiment"]["traffic_split"] == pytest.approx(0.1)
    write(Settings().warehouse,
          served(exp_id, "control", "1", 80, quality=0.8, thumbs_up=0.8, seed=1,
                 model_name="learnloop-assistant"),
          served(exp_id, "treatment", "2", 70, quality=0.5, thumbs_up=0.3, seed=2,
                 model_name="learnloop-assistant"))
    assert _look(res)["decision"] == "rollback"

    out = _run("status", "--json")
    assert out.exit_code == 0, out.output
    dep_status = json.loads(out.output)["deployment"]
    assert (dep_status["champion"], dep_status["challenger"], dep_status["experiment"]) == \
        ("1", None, None)
    last = dep_status["last_experiment"]
    assert (last["id"], last["decision"], last["champion_version"],
            last["challenger_version"], last["primary_metric"]) == \
        (exp_id, "rollback", "1", "2", "quality_score")
    assert last["arms"]["control"]["primary"] > last["arms"]["treatment"]["primary"] + 0.2
    assert last["arms"]["treatment"]["n"] == 70 and "worse by more than 5%" in last["reason"]
    line = [x for x in _run("status").output.splitlines() if x.startswith("  deploy")]
    assert line == [f"  deploy     champion v1 · challenger - · deployable v1 · last #{exp_id} "
                    f"rollback"]

    shown = json.loads(_run("models", "experiment", "show", str(exp_id), "--json").output)
    assert shown["status"] == "rolled_back" and shown["summary"]["decision"] == "rollback"
    assert [x["action"] for x in shown["decisions"]] == ["rollback"]
    text = _run("models", "experiment").output  # no running one: the last one
    assert text.startswith(f"experiment #{exp_id} ") and ": rolled_back (rollback:" in text
    arms = {line.split()[0]: line.split()[1:] for line in text.splitlines()
            if line.strip().startswith(("control", "treatment"))}
    assert arms["treatment"][:2] == ["v2", "70"] and arms["control"][:2] == ["v1", "80"]

    # a second challenger, stopped by a person
    with session_scope(Settings().store) as s:
        lc.set_challenger(reg, s, "3", actor="asset:candidate_evaluation", reason="gate passed")
    second = _look(res)["experiment_id"]
    shown = json.loads(_run("models", "experiment", "--json").output)
    assert (shown["id"], shown["status"], shown["stage"]) == (second, "running", 0)
    res_stop = _run("models", "experiment", "stop", "--reason", "enough of this")
    assert res_stop.exit_code == 0, res_stop.output
    assert f"experiment #{second} stopped; challenger v3 cleared" in res_stop.output
    assert reg.aliases() == {"champion": "1"}
    last = json.loads(_run("status", "--json").output)["deployment"]["last_experiment"]
    assert (last["id"], last["decision"], last["reason"]) == (second, "stop", "enough of this")
    for args, words in ((("experiment", "stop", "--reason", "x"), "has no running experiment"),
                        (("experiment", "show", "99"), "experiment #99 does not exist")):
        out = _run("models", *args)
        assert out.exit_code == 2 and words in out.output, (args, out.output)


def test_retrain_runs_datasets_then_training_with_the_reason_as_a_tag(learnloop_home,
                                                                      monkeypatch):
    """On an empty home the dataset is too small: datasets_job fails and training does not
    start (exit status 1); the run carries the reason and who asked."""
    monkeypatch.setenv("DAGSTER_HOME", str(learnloop_home / "dagster_home"))  # undone after
    res = _run("retrain")
    assert res.exit_code == 2 and "Missing option '--reason'" in res.output
    res = _run("retrain", "--reason", "quality dropped after the pricing change")
    assert res.exit_code == 1, res.output
    assert "running datasets_job ... FAILED" in res.output
    assert "datasets_job failed: not training" in res.output
    assert "training_job" not in res.output
    with dg.DagsterInstance.get() as instance:
        (run,) = instance.get_runs()
    assert run.job_name == "datasets_job"
    assert run.tags["learnloop/reason"] == "quality dropped after the pricing change"
    assert run.tags["learnloop/trigger"] == ACTOR
