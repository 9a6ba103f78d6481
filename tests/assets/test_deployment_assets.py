"""The deployment stage over real parts: an MLflow registry (SQLite) whose versions point at a
tiny model folder, the operational store (SQLite and PostgreSQL), and a DuckDB warehouse holding
served interactions of an experiment's two arms (tests/served.py).

The lifecycle functions (promote, rollback, set/clear challenger, keep and archive) move the
aliases and record every change; ab_experiment starts an experiment for a new challenger and
decides it from the planted data: a regression is rolled back automatically, an improvement goes
10% -> 50% -> promoted."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from assets import deployment as d
from assets import lifecycle as lc
from assets.resources import ModelRegistryResource, OperationalStoreResource
from ml.registry import Registry, VersionNotFound
from store import deployments as dep
from store.db import session_scope
from tests.deploykit import copy_mlflow, mlflow_template
from tests.ml.training.tiny import make_tiny_model
from tests.stores import resources_for

MODEL = "tiny-assistant"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def mlflow_db(tmp_path_factory) -> Path:
    return mlflow_template(tmp_path_factory.mktemp("mlflow"))


@pytest.fixture()
def reg(tmp_path, mlflow_db) -> Registry:
    return Registry(copy_mlflow(mlflow_db, tmp_path / "mlflow.db"), tmp_path / "mlartifacts",
                    MODEL)


def register(reg: Registry, tiny: Path, n: int) -> list[str]:
    return [reg.register_version(str(tiny), None, {"learnloop.role": "candidate"})
            for _ in range(n)]


def _tags(reg: Registry) -> dict[str, str | None]:
    return {v.version: v.tags.get(lc.DEPLOYMENT_TAG) for v in reg.versions()}


def _rows(s) -> list[tuple]:
    return [(r.alias, r.model_version, r.action, r.status)
            for r in reversed(dep.deployment_history(s, MODEL, limit=100))]


# ---- lifecycle ---------------------------------------------------------------------------------
def test_promote_keeps_the_last_three_champions_and_rollback_returns_to_one(reg, tiny,
                                                                            store_url):
    register(reg, tiny, 5)
    with session_scope(store_url) as s:
        first = lc.promote(reg, s, "1", actor="asset:base_model", reason="base model")
        assert (first["champion"], first["previous_champion"]) == ("1", None)
        lc.set_challenger(reg, s, "2", actor="asset:candidate_evaluation", reason="gate passed")
    assert reg.aliases() == {"champion": "1", "challenger": "2"}
    with session_scope(store_url) as s:
        out = lc.promote(reg, s, "2", actor="cli:ann", reason="looks good")
        assert out["challenger"] is None and out["deployable"] == ["2", "1"]
        assert _rows(s) == [("champion", "1", "promote", "retired"),
                            ("challenger", "2", "set_challenger", "retired"),
                            ("champion", "2", "promote", "active"),
                            ("challenger", "2", "clear_challenger", "retired")]
    assert reg.aliases() == {"champion": "2"}
    assert _tags(reg) == {"5": None, "4": None, "3": None, "2": "champion", "1": "deployable"}

    with session_scope(store_url) as s:
        lc.promote(reg, s, "3", actor="cli:ann", reason="r3")
        fourth = lc.promote(reg, s, "4", actor="cli:ann", reason="r4")
    # a fourth champion: the oldest is archived (tag and an archive row), once
    assert fourth["deployable"] == ["4", "3", "2"] and fourth["archived_now"] == ["1"]
    assert _tags(reg)["1"] == "archived"
    with session_scope(store_url) as s:
        assert lc.enforce_keep(reg, s, actor="asset:model_deployment")["archived_now"] == []
        archive = [r for r in dep.deployment_history(s, MODEL) if r.action == "archive"]
        assert [(r.model_version, r.actor) for r in archive] == [("1", "cli:ann")]
        assert "older than the last 3 champions (v4, v3, v2)" in archive[0].reason

    with session_scope(store_url) as s:
        back = lc.rollback(reg, s, actor="cli:bob", reason="complaints")
    assert (back["champion"], back["rolled_back_version"]) == ("3", "4")
    assert reg.aliases() == {"champion": "3"}
    tags = _tags(reg)
    assert (tags["4"], tags["3"], tags["2"], tags["1"]) == ("rolled_back", "champion",
                                                            "deployable", "archived")
    with session_scope(store_url) as s:
        row = dep.deployment_history(s, MODEL, limit=1)[0]
        assert (row.action, row.model_version, row.previous_version, row.actor, row.reason) == \
            ("rollback", "3", "4", "cli:bob", "complaints")
        assert dep.champion_lineage(s, MODEL)[:2] == ["3", "2"]  # v4 rolled back: left out
        assert lc.deployable_versions(reg, s) == ["3", "2"]  # v1 stays archived
        for target, words in (("1", "v1 is not deployable: a rollback goes to one of the last "
                                    "3 champions (v3, v2)"),
                              ("4", "v4 is not deployable"),
                              ("x", "expected a positive integer")):
            with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)")):
                lc.rollback(reg, s, target, actor="cli:bob", reason="r")
        with pytest.raises(ValueError, match="already the champion"):
            lc.promote(reg, s, "3", actor="cli:bob", reason="r")
        with pytest.raises(VersionNotFound, match="has no version 9"):
            lc.promote(reg, s, "9", actor="cli:bob", reason="r")
    assert reg.aliases() == {"champion": "3"}  # refused moves moved nothing


def test_lifecycle_changes_end_the_experiment_they_make_meaningless(reg, tiny, store_url):
    register(reg, tiny, 3)
    with session_scope(store_url) as s:
        lc.promote(reg, s, "1", actor="asset:base_model", reason="base")
        lc.set_challenger(reg, s, "2", actor="asset:candidate_evaluation", reason="gate")
        exp = dep.start_experiment(s, model_name=MODEL, champion_version="1",
                                   challenger_version="2", stages=[0.1, 0.5, 1.0], policy={},
                                   subject_key="user", started_by="test")
        first = exp.id
    # a new challenger: the running experiment of the old one stops
    with session_scope(store_url) as s:
        out = lc.set_challenger(reg, s, "3", actor="asset:candidate_evaluation", reason="gate v3")
        assert out["stopped_experiment"] == first
        ended = dep.get_experiment(s, first)
        assert (ended.status, ended.decision) == ("stopped", "stop")
        assert "the challenger moved from v2 to v3" in ended.reason
        assert [x.action for x in dep.experiment_decisions(s, first)] == ["stop"]
        second = dep.start_experiment(s, model_name=MODEL, champion_version="1",
                                      challenger_version="3", stages=[0.1, 1.0], policy={},
                                      subject_key="user", started_by="test").id
    # a person rolls the challenger back: experiment rolled back, challenger cleared
    with session_scope(store_url) as s:
        out = lc.rollback(reg, s, "1", actor="cli:ann", reason="users complain")
        assert (out["champion"], out["rolled_back_version"], out["stopped_experiment"]) == \
            ("1", "3", second)
        exp = dep.get_experiment(s, second)
        assert (exp.status, exp.decision, exp.reason) == ("rolled_back", "rollback",
                                                          "users complain")
        tail = _rows(s)[-3:]
        assert tail == [("challenger", "3", "set_challenger", "rolled_back"),
                        ("challenger", "3", "rollback", "retired"),
                        ("challenger", "3", "clear_challenger", "retired")]
        assert dep.active_version(s, MODEL, "challenger") is None
        assert dep.active_version(s, MODEL, "champion") == "1"
    assert reg.aliases() == {"champion": "1"}
    assert _tags(reg)["3"] == "rolled_back"
    with session_scope(store_url) as s:
        with pytest.raises(ValueError, match="no challenger is set"):
            lc.rollback(reg, s, "1", actor="cli:ann", reason="again")
        with pytest.raises(ValueError, match="no running experiment"):
            lc.stop_experiment(reg, s, actor="cli:ann", reason="r")
        assert lc.clear_challenger(reg, s, actor="cli:ann", reason="r") is None


# ---- the assets --------------------------------------------------------------------------------
# a small experiment: decisions after 60 scored interactions per arm, 20 per stage
POLICY = {"min_samples_per_arm": 60, "min_stage_samples": 20, "early_stop_min_samples": 30,
          "min_audited": 20}


@pytest.fixture()
def home(tmp_path, tiny, mlflow_db, store_url, monkeypatch):
    """Resources on a fresh home (the operational store: SQLite or PostgreSQL), v1 the champion
    and v2 the challenger, as base_model and a passing candidate_evaluation leave them."""
    root = tmp_path / "home"
    monkeypatch.setenv("LEARNLOOP_HOME", str(root))
    for var in ("LEARNLOOP_STORE_URL", "LEARNLOOP_WAREHOUSE_PATH",
                "LEARNLOOP_MLFLOW_TRACKING_URI", *[v for v in __import__("os").environ
                                                    if v.startswith("LEARNLOOP_AB_")]):
        monkeypatch.delenv(var, raising=False)
    res = resources_for(root)
    models = res["models"]
    res["store"] = OperationalStoreResource(url=store_url)
    res["models"] = ModelRegistryResource(
        tracking_uri=copy_mlflow(mlflow_db, root / "mlflow.db"),
        artifact_root=models.artifact_root, models_dir=models.models_dir, model_name=MODEL)
    reg = res["models"].registry()
    register(reg, tiny, 2)
    with session_scope(store_url) as s:
        lc.promote(reg, s, "1", actor="asset:base_model", reason="base model")
        lc.set_challenger(reg, s, "2", actor="asset:candidate_evaluation", reason="gate passed")
    return res


def _meta(result, node: str) -> dict:
    return {k: v.value for k, v in result.asset_materializations_for_node(node)[0].metadata.items()}


def _look(res, **config):
    result = dg.materialize([d.ab_experiment, d.model_deployment], resources=res,
                            run_config={"ops": {"ab_experiment": {"config": config}}})
    assert result.success
    return _meta(result, "ab_experiment"), _meta(result, "model_deployment"), result


def _alerts(url: str) -> list[tuple]:
    from sqlalchemy import select

    from store.models import Alert

    with session_scope(url) as s:
        return [(a.kind, a.severity, a.dedupe_key, a.occurrences)
                for a in s.scalars(select(Alert).order_by(Alert.id))]


def test_a_planted_regression_is_rolled_back_automatically(home, store_url):
    from tests.deploykit import served, write

    res = home
    reg = res["models"].registry()
    started, state, _ = _look(res, **POLICY)
    assert started["decision"] == "start" and started["traffic_split"] == pytest.approx(0.1)
    exp_id = started["experiment_id"]
    with session_scope(store_url) as s:
        exp = dep.get_experiment(s, exp_id)
        assert (exp.champion_version, exp.challenger_version, exp.status) == ("1", "2", "running")
        assert exp.policy["min_samples_per_arm"] == 60 and exp.stages == [0.1, 0.5, 1.0]
    assert state["champion"] == "1" and state["challenger"] == "2"

    # the challenger is clearly worse: lower quality scores, more thumbs down
    write(res["warehouse"].path(),
          served(exp_id, "control", "1", 90, quality=0.78, thumbs_up=0.8, seed=1),
          served(exp_id, "treatment", "2", 80, quality=0.52, thumbs_up=0.35, seed=2,
                 audited=25, errors=3))
    meta, state, result = _look(res)
    assert meta["decision"] == "rollback" and meta["rule"] == "primary_regression"
    assert (meta["control_n"], meta["treatment_n"]) == (90, 80)
    assert meta["control_quality_score"] > meta["treatment_quality_score"] + 0.2
    assert meta["p_value"] < 0.001 and meta["p_thumbs_up_rate"] < 0.05
    assert "| quality_score |" in meta["arms"] and "treatment" in meta["arms"]
    assert reg.aliases() == {"champion": "1"}  # the challenger is gone, v1 serves everyone
    assert reg.version("2").tags[lc.DEPLOYMENT_TAG] == "rolled_back"
    assert state["champion"] == "1" and state["challenger"] == ""
    assert state["last_decision"] == "rollback"
    (check,) = result.get_asset_check_evaluations()
    assert check.check_name == d.DEPLOYABLE_CHECK and check.passed, check.description
    with session_scope(store_url) as s:
        exp = dep.get_experiment(s, exp_id)
        assert (exp.status, exp.decision) == ("rolled_back", "rollback")
        assert "worse by more than 5%" in exp.reason
        (decision,) = dep.experiment_decisions(s, exp_id)
        assert (decision.action, decision.actor) == ("rollback", "asset:ab_experiment")
        assert decision.figures["primary_test"]["p_value"] < 0.001
        assert decision.figures["arms"]["treatment"]["n"] == 80
        assert decision.figures["treatment"]["errors"] == 3
        actions = [(r.alias, r.model_version, r.action) for r in
                   reversed(dep.deployment_history(s, MODEL))]
        assert actions[-2:] == [("challenger", "2", "rollback"),
                                ("challenger", "2", "clear_challenger")]
    assert _alerts(store_url) == [("rollback", "critical", f"experiment-{exp_id}-rollback", 1)]

    # nothing left to test: no new experiment for the rolled-back pair
    idle, _, _ = _look(res)
    assert idle["decision"] == "idle" and "no challenger" in idle["reason"]


def test_a_planted_improvement_goes_10_then_50_percent_then_is_promoted(home, store_url, tiny):
    from tests.deploykit import served, write

    res = home
    reg = res["models"].registry()
    exp_id = _look(res, **POLICY)[0]["experiment_id"]
    write(res["warehouse"].path(),
          served(exp_id, "control", "1", 90, quality=0.62, thumbs_up=0.6, seed=3),
          served(exp_id, "treatment", "2", 70, quality=0.72, thumbs_up=0.75, seed=4))
    meta, _, _ = _look(res)
    assert meta["decision"] == "advance" and meta["traffic_split"] == pytest.approx(0.1)
    with session_scope(store_url) as s:
        exp = dep.get_experiment(s, exp_id)
        assert (exp.stage, exp.traffic_split, exp.status) == (1, 0.5, "running")
    write(res["warehouse"].path(),
          served(exp_id, "control", "1", 40, quality=0.62, thumbs_up=0.6, seed=5),
          served(exp_id, "treatment", "2", 40, quality=0.72, thumbs_up=0.75, seed=6))
    meta, state, _ = _look(res)
    assert meta["decision"] == "promote" and meta["stage"] == 1
    assert meta["stage_treatment_n"] == 40 and meta["treatment_n"] == 110
    assert reg.aliases() == {"champion": "2"}
    assert (state["champion"], state["deployable"]) == ("2", ["2", "1"])
    assert reg.version("1").tags[lc.DEPLOYMENT_TAG] == "deployable"
    with session_scope(store_url) as s:
        exp = dep.get_experiment(s, exp_id)
        assert (exp.status, exp.decision) == ("promoted", "promote")
        assert [x.action for x in dep.experiment_decisions(s, exp_id)] == ["advance", "promote"]
        promoted = dep.deployment_history(s, MODEL, limit=3)
        champion_row = next(r for r in promoted if r.alias == "champion")
        assert (champion_row.action, champion_row.previous_version,
                champion_row.experiment_id) == ("promote", "1", exp_id)
    assert _alerts(store_url) == [("experiment_decided", "info",
                                   f"experiment-{exp_id}-promote", 1)]

    # more champions than `keep`: model_deployment archives the oldest
    register(reg, tiny, 2)
    with session_scope(store_url) as s:
        lc.promote(reg, s, "3", actor="cli:ann", reason="r3")
        lc.promote(reg, s, "4", actor="cli:ann", reason="r4")
    result = dg.materialize([d.model_deployment], resources=res)
    state = _meta(result, "model_deployment")
    assert state["deployable"] == ["4", "3", "2"] and state["archived"] == ["1"]
    assert reg.version("1").tags[lc.DEPLOYMENT_TAG] == "archived"


def test_a_decision_that_lost_the_race_is_reported_not_applied(home, store_url):
    """Compare-and-set: a person stops the experiment while the run reads the warehouse; the
    run's decision is reported as stale and the person's stands."""
    from assets.resources import WarehouseResource
    from tests.deploykit import served, write

    res = home
    exp_id = _look(res, **POLICY)[0]["experiment_id"]
    write(res["warehouse"].path(),
          served(exp_id, "control", "1", 70, quality=0.7, thumbs_up=0.7, seed=7),
          served(exp_id, "treatment", "2", 70, quality=0.4, thumbs_up=0.3, seed=8))
    reg = res["models"].registry()

    class PersonStopsMeanwhile(WarehouseResource):
        store_url: str

        def get_read_connection(self):
            with session_scope(self.store_url) as s:
                lc.stop_experiment(reg, s, actor="cli:ann", reason="stopping by hand")
            return super().get_read_connection()

    raced = {**res, "warehouse": PersonStopsMeanwhile(database=res["warehouse"].database,
                                                      store_url=store_url)}
    result = dg.materialize([d.ab_experiment], resources=raced)
    meta = _meta(result, "ab_experiment")
    assert meta["decision"] == "rollback" and "changed meanwhile" in meta["stale"]
    with session_scope(store_url) as s:
        exp = dep.get_experiment(s, exp_id)
        assert (exp.status, exp.decision, exp.reason) == ("stopped", "stop", "stopping by hand")
        assert [x.action for x in dep.experiment_decisions(s, exp_id)] == ["stop"]
    assert reg.aliases() == {"champion": "1"}
    assert _alerts(store_url) == []

    # the challenger comes back: the pair was decided, so only the action "start" tests it again
    with session_scope(store_url) as s:
        lc.set_challenger(reg, s, "2", actor="asset:candidate_evaluation", reason="gate again")
    idle, _, _ = _look(res)
    assert idle["decision"] == "idle" and f"decided by experiment #{exp_id}" in idle["reason"]
    again, _, _ = _look(res, action="start", reason="a second look", stages=[0.2, 1.0])
    assert again["experiment_id"] != exp_id and again["traffic_split"] == pytest.approx(0.2)
    stopped, state, _ = _look(res, action="stop", reason="no traffic this week")
    assert (stopped["decision"], stopped["experiment_id"]) == ("stop", again["experiment_id"])
    assert reg.aliases() == {"champion": "1"} and state["challenger"] == ""
    with session_scope(store_url) as s:
        exp = dep.get_experiment(s, again["experiment_id"])
        assert (exp.status, exp.reason, exp.started_by) == ("stopped", "no traffic this week",
                                                            "asset:ab_experiment")
    assert _alerts(store_url) == [("experiment_decided", "info",
                                   f"experiment-{again['experiment_id']}-stop", 1)]
    bad = dg.materialize([d.ab_experiment], resources=res, raise_on_error=False, run_config={
        "ops": {"ab_experiment": {"config": {"action": "promote"}}}})
    assert not bad.success
    (failure,) = [e for e in bad.all_events if e.is_step_failure]
    assert "action must be one of ['decide', 'start', 'stop'], got 'promote'" in \
        failure.step_failure_data.error.to_string()
