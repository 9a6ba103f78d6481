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
from assets.resources import ModelRegistryResource, OperationalStoreResource
from ml.registry import Registry, VersionNotFound
from store import deployments as dep
from store.db import session_scope
from tests.ml.training.tiny import make_tiny_model
from tests.stores import resources_for

MODEL = "tiny-assistant"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def _registry(root: Path) -> Registry:
    return Registry(f"sqlite:///{root / 'mlflow.db'}", root / "mlartifacts", MODEL)


def register(reg: Registry, tiny: Path, n: int) -> list[str]:
    return [reg.register_version(str(tiny), None, {"learnloop.role": "candidate"})
            for _ in range(n)]


def _tags(reg: Registry) -> dict[str, str | None]:
    return {v.version: v.tags.get(d.DEPLOYMENT_TAG) for v in reg.versions()}


def _rows(s) -> list[tuple]:
    return [(r.alias, r.model_version, r.action, r.status)
            for r in reversed(dep.deployment_history(s, MODEL, limit=100))]


# ---- lifecycle ---------------------------------------------------------------------------------
def test_promote_keeps_the_last_three_champions_and_rollback_returns_to_one(tmp_path, tiny,
                                                                            store_url):
    reg = _registry(tmp_path)
    register(reg, tiny, 5)
    with session_scope(store_url) as s:
        first = d.promote(reg, s, "1", actor="asset:base_model", reason="base model")
        assert (first["champion"], first["previous_champion"]) == ("1", None)
        d.set_challenger(reg, s, "2", actor="asset:candidate_evaluation", reason="gate passed")
    assert reg.aliases() == {"champion": "1", "challenger": "2"}
    with session_scope(store_url) as s:
        out = d.promote(reg, s, "2", actor="cli:ann", reason="looks good")
        assert out["challenger"] is None and out["deployable"] == ["2", "1"]
        assert _rows(s) == [("champion", "1", "promote", "retired"),
                            ("challenger", "2", "set_challenger", "retired"),
                            ("champion", "2", "promote", "active"),
                            ("challenger", "2", "clear_challenger", "retired")]
    assert reg.aliases() == {"champion": "2"}
    assert _tags(reg) == {"5": None, "4": None, "3": None, "2": "champion", "1": "deployable"}

    with session_scope(store_url) as s:
        d.promote(reg, s, "3", actor="cli:ann", reason="r3")
        fourth = d.promote(reg, s, "4", actor="cli:ann", reason="r4")
    # a fourth champion: the oldest is archived (tag and an archive row), once
    assert fourth["deployable"] == ["4", "3", "2"] and fourth["archived_now"] == ["1"]
    assert _tags(reg)["1"] == "archived"
    with session_scope(store_url) as s:
        assert d.enforce_keep(reg, s, actor="asset:model_deployment")["archived_now"] == []
        archive = [r for r in dep.deployment_history(s, MODEL) if r.action == "archive"]
        assert [(r.model_version, r.actor) for r in archive] == [("1", "cli:ann")]
        assert "older than the last 3 champions (v4, v3, v2)" in archive[0].reason

    with session_scope(store_url) as s:
        back = d.rollback(reg, s, actor="cli:bob", reason="complaints")
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
        assert d.deployable_versions(reg, s) == ["3", "2"]  # v1 stays archived
        for target, words in (("1", "v1 is not deployable: a rollback goes to one of the last "
                                    "3 champions (v3, v2)"),
                              ("4", "v4 is not deployable"),
                              ("x", "expected a positive integer")):
            with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)")):
                d.rollback(reg, s, target, actor="cli:bob", reason="r")
        with pytest.raises(ValueError, match="already the champion"):
            d.promote(reg, s, "3", actor="cli:bob", reason="r")
        with pytest.raises(VersionNotFound, match="has no version 9"):
            d.promote(reg, s, "9", actor="cli:bob", reason="r")
    assert reg.aliases() == {"champion": "3"}  # refused moves moved nothing


def test_lifecycle_changes_end_the_experiment_they_make_meaningless(tmp_path, tiny, store_url):
    reg = _registry(tmp_path)
    register(reg, tiny, 3)
    with session_scope(store_url) as s:
        d.promote(reg, s, "1", actor="asset:base_model", reason="base")
        d.set_challenger(reg, s, "2", actor="asset:candidate_evaluation", reason="gate")
        exp = dep.start_experiment(s, model_name=MODEL, champion_version="1",
                                   challenger_version="2", stages=[0.1, 0.5, 1.0], policy={},
                                   subject_key="user", started_by="test")
        first = exp.id
    # a new challenger: the running experiment of the old one stops
    with session_scope(store_url) as s:
        out = d.set_challenger(reg, s, "3", actor="asset:candidate_evaluation", reason="gate v3")
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
        out = d.rollback(reg, s, "1", actor="cli:ann", reason="users complain")
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
            d.rollback(reg, s, "1", actor="cli:ann", reason="again")
        with pytest.raises(ValueError, match="no running experiment"):
            d.stop_experiment(reg, s, actor="cli:ann", reason="r")
        assert d.clear_challenger(reg, s, actor="cli:ann", reason="r") is None
