"""Deployments and A/B experiments in the operational store (store/deployments.py), on SQLite
and PostgreSQL."""

from __future__ import annotations

import json
import threading

import pytest
from sqlalchemy import select

from store.db import session_scope
from store.deployments import (
    ExperimentConflict,
    StaleExperiment,
    active_version,
    advance_experiment,
    champion_lineage,
    deployment_dict,
    deployment_history,
    experiment_decisions,
    experiment_dict,
    finish_experiment,
    get_experiment,
    last_decided_experiment,
    list_experiments,
    record_decision,
    record_deployment,
    running_experiment,
    start_experiment,
    update_result,
)
from store.models import ModelDeployment
from store.repo import NotFound

M = "assistant"


def deploy(s, version: str, alias: str = "champion", action: str = "promote", model: str = M,
           **kw) -> ModelDeployment:
    return record_deployment(s, model_name=model, model_version=version, alias=alias,
                             action=action, actor="test", **kw)


def rows(s, model: str = M) -> list[tuple[str, str, str, str]]:
    """(version, alias, action, status) of every deployment row, oldest first."""
    return [(r.model_version, r.alias, r.action, r.status) for r in s.scalars(
        select(ModelDeployment).where(ModelDeployment.model_name == model)
        .order_by(ModelDeployment.id))]


def start(s, model: str = M, champion: str = "1", challenger: str = "2",
          stages=(0.1, 0.5, 1.0), **kw):
    return start_experiment(s, model_name=model, champion_version=champion,
                            challenger_version=challenger, stages=stages,
                            policy={"alpha": 0.05}, subject_key=kw.pop("subject_key", "user"),
                            started_by="test", **kw)


# -- deployments ---------------------------------------------------------------------------------


def test_a_new_champion_retires_the_earlier_one_and_a_rollback_rolls_it_back(store_url):
    with session_scope(store_url) as s:
        deploy(s, "1")
        deploy(s, "7", model="other")  # another model's champion is left alone
    with session_scope(store_url) as s:
        deploy(s, 2, previous_version=1, reason="won the experiment", figures={"p": 0.01})
        assert active_version(s, M, "champion") == "2"
    with session_scope(store_url) as s:
        assert rows(s) == [("1", "champion", "promote", "retired"),
                           ("2", "champion", "promote", "active")]
        first = s.scalars(select(ModelDeployment).order_by(ModelDeployment.id)).first()
        assert first.ended_at is not None
        assert active_version(s, "other", "champion") == "7"
    with session_scope(store_url) as s:
        back = deploy(s, "1", action="rollback", previous_version="2", reason="quality drop")
        assert back.status == "active" and back.ended_at is None
    with session_scope(store_url) as s:
        assert rows(s) == [("1", "champion", "promote", "retired"),
                           ("2", "champion", "promote", "rolled_back"),
                           ("1", "champion", "rollback", "active")]
        assert active_version(s, M, "champion") == "1"
        assert rows(s, "other") == [("7", "champion", "promote", "active")]


def test_challenger_rows_end_on_a_new_challenger_and_on_clear(store_url):
    with session_scope(store_url) as s:
        deploy(s, "1")
        deploy(s, "2", alias="challenger", action="set_challenger")
        deploy(s, "3", alias="challenger", action="set_challenger")
        assert active_version(s, M, "challenger") == "3"
        cleared = deploy(s, "3", alias="challenger", action="clear_challenger", reason="lost")
        assert cleared.status == "retired" and cleared.ended_at is not None
        assert active_version(s, M, "challenger") is None
        deploy(s, "2", alias="archived", action="archive")
        assert active_version(s, M, "champion") == "1"  # challenger and archive rows: no effect
        assert rows(s) == [("1", "champion", "promote", "active"),
                           ("2", "challenger", "set_challenger", "retired"),
                           ("3", "challenger", "set_challenger", "retired"),
                           ("3", "challenger", "clear_challenger", "retired"),
                           ("2", "archived", "archive", "retired")]


def test_record_deployment_refuses_bad_values(store_url):
    with session_scope(store_url) as s:
        with pytest.raises(ValueError, match="alias must be one of"):
            deploy(s, "1", alias="canary")
        with pytest.raises(ValueError, match="action must be one of"):
            deploy(s, "1", action="deploy")
        with pytest.raises(ValueError, match="actor"):
            record_deployment(s, model_name=M, model_version="1", alias="champion",
                              action="promote", actor="")
        assert rows(s) == []


def test_history_and_dict(store_url):
    with session_scope(store_url) as s:
        for v in ("1", "2", "3"):
            deploy(s, v, figures={"v": v})
        deploy(s, "9", model="other")
    with session_scope(store_url) as s:
        assert [r.model_version for r in deployment_history(s, M)] == ["3", "2", "1"]
        assert [r.model_version for r in deployment_history(s, limit=2)] == ["9", "3"]
        d = deployment_dict(deployment_history(s, M)[0])
        assert (d["model_version"], d["alias"], d["status"], d["figures"]) == \
            ("3", "champion", "active", {"v": "3"})
        assert d["previous_version"] is None and d["ended_at"] is None
        json.dumps(d)


def test_champion_lineage_newest_first_without_rolled_back_versions(store_url):
    with session_scope(store_url) as s:
        assert champion_lineage(s, M) == []
        for v in ("1", "2", "3"):
            deploy(s, v)
        assert champion_lineage(s, M) == ["3", "2", "1"]
        deploy(s, "2", action="rollback", previous_version="3")
        assert champion_lineage(s, M) == ["2", "1"]  # 3 was rolled back; 2 listed once
        deploy(s, "4")
        deploy(s, "1", action="promote")  # a re-promoted old version moves to the front
        assert champion_lineage(s, M) == ["1", "4", "2"]
        deploy(s, "2", alias="challenger", action="set_challenger")  # not a champion row
        assert champion_lineage(s, M) == ["1", "4", "2"]
        assert champion_lineage(s, "other") == []


def test_a_version_rolled_back_after_an_earlier_tenure_leaves_the_lineage(store_url):
    with session_scope(store_url) as s:
        deploy(s, "1")
        deploy(s, "2")
        deploy(s, "1")  # 1 champion again
        assert champion_lineage(s, M) == ["1", "2"]
        deploy(s, "2", action="rollback", previous_version="1")  # 1's latest tenure: rolled back
        assert champion_lineage(s, M) == ["2"]
        deploy(s, "1")  # re-promoted after the rollback: back in
        assert champion_lineage(s, M) == ["1", "2"]


# -- experiments ---------------------------------------------------------------------------------


def test_start_experiment_at_stage_zero_and_refuse_a_second(store_url):
    with session_scope(store_url) as s:
        exp = start(s, subject_key="session")
        eid = exp.id
        assert (exp.status, exp.stage, exp.traffic_split, exp.version) == ("running", 0, 0.1, 1)
        assert exp.stages == [0.1, 0.5, 1.0] and exp.subject_key == "session"
        assert exp.name.startswith("assistant-v2-vs-v1-")
    with session_scope(store_url) as s, pytest.raises(ExperimentConflict, match=f"#{eid}"):
        start(s, challenger="3")
    with session_scope(store_url) as s:
        other = start(s, model="other")  # another model may run its own
        assert running_experiment(s, M).id == eid and running_experiment(s, "other").id == \
            other.id
        finish_experiment(s, eid, 1, "stop", "stopped by a person", {})
        assert running_experiment(s, M) is None
        again = start(s, challenger="3", name="second")
        assert again.name == "second" and running_experiment(s, M).id == again.id


@pytest.mark.parametrize("stages", [(), (0.5, 0.1), (0.0, 0.5), (0.5, 1.5), (0.1, 0.1),
                                    (-0.1, 1.0)])
def test_start_experiment_refuses_bad_stages(store_url, stages):
    with session_scope(store_url) as s:
        with pytest.raises(ValueError, match="stages must be increasing"):
            start(s, stages=stages)
        assert running_experiment(s, M) is None


def test_start_experiment_refuses_other_bad_values(store_url):
    with session_scope(store_url) as s:
        with pytest.raises(ValueError, match="nothing to test"):
            start(s, champion="2", challenger="2")
        with pytest.raises(ValueError, match="subject_key"):
            start(s, subject_key="device")
        with pytest.raises(NotFound, match="#999999"):
            get_experiment(s, 999999)


def test_advance_and_finish_by_compare_and_set(store_url):
    with session_scope(store_url) as s:
        eid = start(s).id
    with session_scope(store_url) as s:
        exp = advance_experiment(s, eid, 1, {"n": 100})
        assert (exp.stage, exp.traffic_split, exp.version, exp.result) == (1, 0.5, 2, {"n": 100})
        exp = update_result(s, eid, 2, {"n": 150})
        assert (exp.stage, exp.version, exp.result) == (1, 3, {"n": 150})
        exp = advance_experiment(s, eid, 3, {"n": 200})
        assert (exp.stage, exp.traffic_split, exp.version) == (2, 1.0, 4)
        with pytest.raises(ValueError, match="is at its last stage"):
            advance_experiment(s, eid, 4, {})
    with session_scope(store_url) as s:
        with pytest.raises(ValueError, match="decision must be one of"):
            finish_experiment(s, eid, 4, "advance", "", {})
        done = finish_experiment(s, eid, 4, "promote", "significantly better", {"p": 0.001})
        assert (done.status, done.decision, done.version) == ("promoted", "promote", 5)
        assert done.ended_at is not None and done.result == {"p": 0.001}
    with session_scope(store_url) as s:
        # a finished experiment moves no more, whatever version the caller holds
        with pytest.raises(StaleExperiment, match="status promoted"):
            finish_experiment(s, eid, 5, "rollback", "too late", {})
        with pytest.raises(StaleExperiment):
            update_result(s, eid, 5, {})
        assert get_experiment(s, eid).status == "promoted"


@pytest.mark.parametrize("decision,status", [("promote", "promoted"),
                                             ("rollback", "rolled_back"), ("stop", "stopped")])
def test_finish_statuses(store_url, decision, status):
    with session_scope(store_url) as s:
        eid = start(s).id
        assert finish_experiment(s, eid, 1, decision, "why", {}).status == status
        assert last_decided_experiment(s, M).id == eid


def test_a_stale_decider_in_another_session_gets_stale_experiment(store_url):
    with session_scope(store_url) as s:
        eid = start(s).id
    with session_scope(store_url) as a:
        seen = get_experiment(a, eid)  # the sensor reads version 1, stage 0
        assert (seen.version, seen.stage) == (1, 0)
        with session_scope(store_url) as b:  # meanwhile a person advances it
            advance_experiment(b, eid, 1, {"by": "person"})
        with pytest.raises(StaleExperiment, match="now version 2.*stage 1"):
            advance_experiment(a, eid, seen.version, {"by": "sensor"})
        with pytest.raises(StaleExperiment):
            finish_experiment(a, eid, 1, "rollback", "sensor", {"by": "sensor"})
        with pytest.raises(StaleExperiment):
            update_result(a, eid, 1, {"by": "sensor"})
    with session_scope(store_url) as s:
        exp = get_experiment(s, eid)
        assert (exp.status, exp.stage, exp.version, exp.result) == \
            ("running", 1, 2, {"by": "person"})
        # with the fresh version the sensor's move goes through
        assert finish_experiment(s, eid, exp.version, "rollback", "sensor", {}).version == 3


def test_advance_with_a_fresh_version_and_a_stale_copy_moves_one_stage_on(store_url):
    with session_scope(store_url) as s:
        eid = start(s).id
    with session_scope(store_url) as a:
        copy = get_experiment(a, eid)  # a copy of stage 0 held in this session
        assert copy.stage == 0
        with session_scope(store_url) as b:
            advance_experiment(b, eid, 1, {})
        # the caller got version 2 elsewhere (e.g. a fresh read by the UI) and asks to advance
        exp = advance_experiment(a, eid, 2, {"by": "person"})
        assert (exp.stage, exp.traffic_split, exp.version) == (2, 1.0, 3)
        assert copy is exp


def test_two_concurrent_deciders_never_both_win(store_url):
    with session_scope(store_url) as s:
        eid = start(s).id
    results: list[str] = []
    barrier = threading.Barrier(2)

    def decide(decision: str) -> None:
        barrier.wait()
        try:
            with session_scope(store_url) as s:
                finish_experiment(s, eid, 1, decision, decision, {})
            results.append(decision)
        except StaleExperiment:
            results.append("stale")
        except Exception as exc:  # SQLite may refuse the second writer while the first commits
            if "locked" not in str(exc):
                raise
            results.append("stale")

    threads = [threading.Thread(target=decide, args=(d,)) for d in ("promote", "rollback")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count("stale") == 1
    with session_scope(store_url) as s:
        exp = get_experiment(s, eid)
        assert exp.decision in results and exp.version == 2


def test_decisions_are_appended_and_read_back(store_url):
    with session_scope(store_url) as s:
        eid = start(s).id
        other = start(s, model="other").id
        record_decision(s, experiment_id=eid, action="continue", stage=0, traffic_split=0.1,
                        reason="too few", figures={"n": 10}, actor="sensor",
                        dagster_run_id="run-1")
        record_decision(s, experiment_id=other, action="continue", stage=0, traffic_split=0.1,
                        reason="other", figures={}, actor="sensor")
        record_decision(s, experiment_id=eid, action="advance", stage=0, traffic_split=0.1,
                        reason="not worse", figures={"n": 300}, actor="sensor")
        with pytest.raises(ValueError, match="action must be one of"):
            record_decision(s, experiment_id=eid, action="wait", stage=0, traffic_split=0.1,
                            reason="", figures={}, actor="sensor")
    with session_scope(store_url) as s:
        ds = experiment_decisions(s, eid)
        assert [(d.action, d.figures, d.dagster_run_id) for d in ds] == [
            ("continue", {"n": 10}, "run-1"), ("advance", {"n": 300}, None)]
        assert experiment_decisions(s, 999999) == []
        d = experiment_dict(get_experiment(s, eid), ds)
        assert (d["id"], d["status"], d["stage"], d["traffic_split"], d["version"]) == \
            (eid, "running", 0, 0.1, 1)
        assert d["stages"] == [0.1, 0.5, 1.0] and d["policy"] == {"alpha": 0.05}
        assert d["ended_at"] is None and d["started_at"] is not None
        assert [x["action"] for x in d["decisions"]] == ["continue", "advance"]
        assert d["decisions"][0]["reason"] == "too few"
        assert "decisions" not in experiment_dict(get_experiment(s, eid))
        json.dumps(d)


def test_list_and_last_decided(store_url):
    with session_scope(store_url) as s:
        first = start(s).id
        finish_experiment(s, first, 1, "rollback", "lost", {})
        second = start(s, challenger="3").id
        assert last_decided_experiment(s, M).id == first  # the running one is not decided
        finish_experiment(s, second, 1, "stop", "inconclusive", {})
        third = start(s, challenger="4").id
        assert [e.id for e in list_experiments(s, M)] == [third, second, first]
        assert [e.id for e in list_experiments(s, limit=1)] == [third]
        assert list_experiments(s, "other") == []
        assert last_decided_experiment(s, M).id == second
        assert last_decided_experiment(s, "other") is None
