"""ml.registry against real MLflow on a real SQLite tracking store (no mocks).

Creating a SQLite store runs MLflow's migrations (seconds), so the tests share one store per
module; each test uses its own registered model (and its own runs), so none sees another's
versions or aliases."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import pytest

from ml.registry import (
    MAX_PARAM_VALUE_LENGTH,
    VERSION_HASH_INPUT_TAG,
    Registry,
    VersionNotFound,
    flatten_params,
    git_commit,
)

VERSION_HASH = "0123456789abcdef" * 4  # 64 hex characters, like a dataset version hash


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> tuple[str, Path]:
    root = tmp_path_factory.mktemp("mlflow")
    return f"sqlite:///{root / 'mlflow.db'}", root / "mlartifacts"


@pytest.fixture()
def reg(store, request) -> Registry:
    uri, artifacts = store
    return Registry(uri, artifacts, "model-" + re.sub(r"\W", "-", request.node.name))


def _lineage(**extra) -> dict:
    return {"dataset_version": VERSION_HASH, "base_model": "tiny-qwen2", "parent_version": None,
            "git_commit": "abc123", "dagster_run_id": "dg-1", "method": "lora", **extra}


def test_two_versions_are_1_and_2_with_their_lineage_tags(reg, tmp_path):
    with reg.start_run("candidate-1") as run_a:
        pass
    with reg.start_run("candidate-2") as run_b:
        pass
    assert reg.register_version(str(tmp_path / "a"), run_a, _lineage(),
                                description="first") == "1"
    assert reg.register_version(str(tmp_path / "b"), run_b,
                                _lineage(parent_version="1", method="dpo")) == "2"
    listed = reg.versions()
    assert [v.version for v in listed] == ["2", "1"]  # newest first
    newest, first = listed
    assert newest.tags == {"dataset_version": VERSION_HASH, "base_model": "tiny-qwen2",
                           "parent_version": "1", "git_commit": "abc123",
                           "dagster_run_id": "dg-1", "method": "dpo"}
    assert "parent_version" not in first.tags  # None lineage values are left out
    assert (first.run_id, first.source, first.description) == (run_a, str(tmp_path / "a"),
                                                                "first")
    assert newest.run_status == "FINISHED" and newest.status == "READY"
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00$", newest.created)
    assert reg.version(1).to_dict()["tags"]["method"] == "lora"
    reg.set_version_tag("1", "gate_passed", True)
    assert reg.version("1").tags["gate_passed"] == "True"
    assert reg.summary() == {"name": reg.model_name, "versions": 2, "champion": None,
                             "challenger": None, "latest": "2"}


def test_aliases_set_move_and_delete(reg):
    run = reg.create_run("c")
    for _ in range(3):
        reg.register_version("/models/x", run, _lineage())
    reg.set_terminated(run, "FINISHED")
    assert reg.alias_version("champion") is None
    reg.set_alias("champion", "1")
    reg.set_alias("challenger", 2)
    assert (reg.alias_version("champion"), reg.alias_version("challenger")) == ("1", "2")
    reg.set_alias("champion", "3")  # moves
    assert reg.alias_version("champion") == "3"
    assert reg.version("3").aliases == ["champion"] and reg.version("1").aliases == []
    assert {v.version: v.aliases for v in reg.versions()} == {"3": ["champion"],
                                                              "2": ["challenger"], "1": []}
    assert reg.resolve("challenger").version == "2" and reg.resolve("1").version == "1"
    reg.delete_alias("challenger")
    assert reg.alias_version("challenger") is None
    with pytest.raises(VersionNotFound, match="has no alias 'challenger'"):
        reg.delete_alias("challenger")
    with pytest.raises(VersionNotFound, match="no version 9"):
        reg.set_alias("champion", "9")
    assert reg.summary()["champion"] == "3"


def test_alias_of_a_model_that_does_not_exist_is_none(reg):
    assert reg.alias_version("champion") is None and reg.versions() == []
    assert reg.summary()["versions"] == 0


def test_run_metrics_and_params_show_in_versions(reg):
    with reg.start_run("candidate", tags={"dagster_run_id": "dg-7"}) as run_id:
        logged = reg.log_params(run_id, {"lora": {"r": 8, "alpha": 16, "targets": ["q", "v"]},
                                         "lr": 2e-4, "note": None})
        reg.log_metrics(run_id, {"eval_rougeL": 0.41, "retention_rougeL": 0.38,
                                 "gate_passed": True})
        reg.log_metrics(run_id, {"eval_rougeL": 0.44}, step=1)  # the latest value wins
    assert logged == {"lora.r": "8", "lora.alpha": "16", "lora.targets": '["q", "v"]',
                      "lr": "0.0002", "note": "None"}
    v = reg.version(reg.register_version("/models/y", run_id, _lineage()))
    assert v.metrics == {"eval_rougeL": 0.44, "retention_rougeL": 0.38, "gate_passed": 1.0}
    assert v.params["lora.targets"] == '["q", "v"]'
    assert reg.client.get_run(run_id).data.tags["dagster_run_id"] == "dg-7"
    with pytest.raises(TypeError, match="metric 'bad' must be a number"):
        reg.log_metrics(run_id, {"bad": "0.3"})


def test_history_is_logged_per_step(reg):
    history = [{"step": s, "train_loss": 2.0 - s / 10, "val_loss": (1.5 - s / 20) if s % 5 == 0
                else None, "epoch": s / 10} for s in range(0, 11)]
    with reg.start_run("curves") as run_id:
        assert reg.log_history(run_id, history) == 11 + 3 + 11
    train = reg.client.get_metric_history(run_id, "train_loss")
    assert sorted((m.step, m.value) for m in train) == [(s, 2.0 - s / 10) for s in range(11)]
    assert sorted(m.step for m in reg.client.get_metric_history(run_id, "val_loss")) == [0, 5, 10]
    with pytest.raises(ValueError, match="history entry 1 needs an integer 'step'"):
        reg.log_history(run_id, [{"step": 0, "train_loss": 1.0}, {"train_loss": 0.5}])


def test_dataset_input_artifacts_and_failed_runs(reg, tmp_path):
    folder = tmp_path / "datasets" / VERSION_HASH
    folder.mkdir(parents=True)
    out = tmp_path / "adapter"
    (out / "sub").mkdir(parents=True)
    (out / "adapter_config.json").write_text("{}")
    (out / "sub" / "weights.bin").write_bytes(b"\0" * 16)
    with pytest.raises(RuntimeError, match="boom"), reg.start_run("fails") as run_id:
        reg.log_dataset_input(run_id, folder, "default", VERSION_HASH)
        reg.log_artifacts(run_id, out, "adapter")
        raise RuntimeError("boom")
    run = reg.client.get_run(run_id)
    assert run.info.status == "FAILED"
    [inp] = run.inputs.dataset_inputs
    assert (inp.dataset.name, inp.dataset.digest, inp.dataset.source_type) == \
        ("default", VERSION_HASH[:36], "local")
    assert str(folder) in inp.dataset.source
    assert {t.key: t.value for t in inp.tags} == {"mlflow.data.context": "training",
                                                  VERSION_HASH_INPUT_TAG: VERSION_HASH}
    assert run.info.artifact_uri.startswith(reg.artifact_root.as_uri() + "/learnloop-training/")
    assert [a.path for a in reg.client.list_artifacts(run_id)] == ["adapter"]
    assert {a.path for a in reg.client.list_artifacts(run_id, "adapter")} == \
        {"adapter/adapter_config.json", "adapter/sub"}
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        reg.log_artifacts(run_id, tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        reg.log_dataset_input(run_id, tmp_path / "nope", "default", VERSION_HASH)


def test_long_params_are_cut_with_a_marker(reg):
    long = "x" * 7000
    flat = flatten_params({"prompt": long, "short": "y" * MAX_PARAM_VALUE_LENGTH})
    assert len(flat["prompt"]) == MAX_PARAM_VALUE_LENGTH
    assert flat["prompt"].endswith("...[truncated, 7000 chars]")
    assert flat["prompt"].startswith("x" * 5000)
    assert flat["short"] == "y" * MAX_PARAM_VALUE_LENGTH  # at the limit: kept whole
    with reg.start_run("long") as run_id:
        reg.log_params(run_id, {"prompt": long})
    stored = reg.client.get_run(run_id).data.params["prompt"]
    assert stored == flat["prompt"]


def test_unknown_versions_are_clear_errors(reg):
    with pytest.raises(VersionNotFound, match=rf"'{reg.model_name}' has no version 4 "
                                              r"\(no versions yet\)"):
        reg.version("4")
    with reg.start_run("one") as run_id:
        reg.register_version("/m", run_id, _lineage())
    with pytest.raises(VersionNotFound, match=r"has no version 4 \(versions: 1\)"):
        reg.version(4)
    with pytest.raises(VersionNotFound, match="has no alias 'champion'"):
        reg.resolve("champion")
    with pytest.raises(ValueError, match="expected a positive integer"):
        reg.version("v1")


def test_concurrent_creates_of_the_experiment_and_model_both_succeed(reg):
    ids, errors = [], []
    barrier = threading.Barrier(2)

    def work() -> None:
        try:
            barrier.wait()
            ids.append(reg.experiment_id("race-" + reg.model_name[-20:]))
            reg.ensure_model()
        except Exception as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(ids) == 2 and ids[0] == ids[1]
    assert reg.summary()["versions"] == 0 and reg.client.get_registered_model(reg.model_name)


def test_reads_never_create_a_sqlite_store(tmp_path):
    db = tmp_path / "home" / "mlflow.db"
    reg = Registry(f"sqlite:///{db}", tmp_path / "art", "m")
    assert reg.store_exists() is False
    assert reg.versions() == [] and reg.alias_version("champion") is None
    assert reg.summary() == {"name": "m", "versions": 0, "champion": None, "challenger": None,
                             "latest": None}
    with pytest.raises(VersionNotFound, match="no tracking store"):
        reg.version("1")
    assert not db.exists() and reg._client is None


def test_bad_names_and_statuses_are_refused(reg):
    with pytest.raises(ValueError, match="single quote"):
        Registry("sqlite:///x.db", "/tmp/a", "it's")
    with pytest.raises(ValueError, match="names the artifact folder"):
        reg.experiment_id("../escape")
    with pytest.raises(ValueError, match="expected FINISHED, FAILED or KILLED"):
        reg.set_terminated("r", "DONE")


def test_git_commit(tmp_path):
    head = git_commit()
    assert head is not None and re.fullmatch(r"[0-9a-f]{40}", head)
    assert git_commit(tmp_path) is None  # tmp_path is outside any repository
    with pytest.raises(FileNotFoundError):
        git_commit(tmp_path / "missing")
