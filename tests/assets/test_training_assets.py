"""The training and evaluation stages over real small parts: a tiny Qwen2 chat model as the base
(LEARNLOOP_BASE_MODEL-style), a dataset version and an evaluation suite on disk and in the
operational store, a real MLflow registry (SQLite) and the warehouse. base_model registers the
champion; candidate_model trains a LoRA candidate and registers it with its lineage;
candidate_evaluation scores both, passes or fails the blocking gate, sets the challenger alias
only on a pass, and writes model_evaluations (store and warehouse)."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pytest

from assets.evaluation import GATE_CHECK, candidate_evaluation
from assets.resources import ModelRegistryResource
from assets.training import base_model, candidate_model
from ml import warehouse as wh
from store.alerts import list_alerts
from store.datasets import record_dataset
from store.db import session_scope
from store.deployments import deployment_history
from store.training import latest_evaluation, list_evaluations, list_training_runs
from tests.ml.training.tiny import (
    FACTS,
    TINY_CONVERSATIONS,
    conversation,
    fit_until,
    make_tiny_model,
)
from tests.stores import resources_for

# the tiny facts alone (the safety mix is tested on its own below)
LORA = {"method": "lora", "epochs": 40, "learning_rate": 0.03, "batch_size": 4,
        "early_stopping_patience": 0, "rank": 8, "alpha": 16, "safety_mix": False}
# what the production bot said before its replies were corrected: wrong prices and a wrong policy
WRONG = [conversation(q, a.replace("129", "99").replace("39.99", "59")
                      .replace("30 days", "two years")) for q, a in FACTS]


def _jsonl(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """A tiny chat model pretrained (full fine-tune) on the bot's wrong replies: the champion
    the corrected candidate must beat."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    rand = make_tiny_model(tmp_path_factory.mktemp("tiny") / "random")
    tokenizer = AutoTokenizer.from_pretrained(rand, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(rand, local_files_only=True)
    # stopped by its loss, not a step count: the candidate's margin over this champion was
    # +0.39 to +0.53 rougeL for champions stopped at 0.5 to 0.3, and the gate failed at 0.2
    fit_until(model, tokenizer, WRONG, target_loss=0.45)
    out = rand.parent / "base"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture()
def home(tmp_path, tiny):
    res = resources_for(tmp_path / "home")
    models = res["models"]
    res["models"] = ModelRegistryResource(tracking_uri=models.tracking_uri,
                                          artifact_root=models.artifact_root,
                                          models_dir=models.models_dir, base_model=str(tiny),
                                          model_name="tiny-assistant")
    train = tmp_path / "home/datasets/training/default" / ("cd" * 32)
    _jsonl(train / "openai/train.jsonl", [{"messages": c} for c in TINY_CONVERSATIONS])
    _jsonl(train / "openai/validation.jsonl", [{"messages": c} for c in TINY_CONVERSATIONS[:3]])
    suite = tmp_path / "home/datasets/eval_suite/default" / ("ef" * 32)
    # held-out items whose right replies the candidate learns from the training split
    _jsonl(suite / "eval.jsonl", [{"messages": c} for c in TINY_CONVERSATIONS[:4]])
    _jsonl(suite / "retention.jsonl", [{"messages": c} for c in TINY_CONVERSATIONS[4:]])
    (suite / "manifest.json").write_text(json.dumps({"items": {
        "eval": [{"category": "wrong_price" if i < 2 else "hallucinated_policy"}
                 for i in range(4)],
        "retention": [{"intent": "status"} for _ in TINY_CONVERSATIONS[4:]]}}))
    with session_scope(res["store"].get_url()) as s:
        record_dataset(s, kind="training", name="default", version_hash="cd" * 32,
                       items=[{"item_key": "sample:1", "split": "train", "prompt_hash": "p",
                               "example_hash": "e"}], path=str(train), n_train=8,
                       n_validation=3, status="ready")
        record_dataset(s, kind="eval_suite", name="default", version_hash="ef" * 32,
                       items=[{"item_key": "sample:9", "split": "eval", "prompt_hash": "q",
                               "example_hash": "f"}], path=str(suite), n_eval=4)
    return res


def _meta(result, node):
    return {k: v.value for k, v in result.asset_materializations_for_node(node)[0].metadata.items()}


def test_base_candidate_evaluation_and_gate(home):
    res = home
    result = dg.materialize([base_model, candidate_model, candidate_evaluation], resources=res,
                            run_config={"ops": {"candidate_model": {"config": LORA}}})
    assert result.success
    base, cand, ev = (_meta(result, n) for n in ("base_model", "candidate_model",
                                                   "candidate_evaluation"))
    assert base["registered_version"] == "1" and base["champion"] == "1"
    assert cand["model_version"] == "2" and cand["val_loss_after"] < cand["val_loss_before"]
    (check,) = result.get_asset_check_evaluations()
    assert check.check_name == GATE_CHECK and check.passed, check.metadata
    assert ev["gate_passed"] == 1.0 and ev["eval_rougeL"] > ev["champion_eval_rougeL"] + 0.01

    registry = res["models"].registry()
    assert registry.alias_version("champion") == "1"
    assert registry.alias_version("challenger") == "2"
    v2 = registry.version("2")
    for tag in ("dataset_version", "base_model", "parent_version", "git_commit",
                "dagster_run_id", "training_run_id"):
        assert tag in v2.tags, tag
    assert v2.tags["dataset_version"] == "cd" * 32 and v2.tags["parent_version"] == "1"
    assert v2.tags["gate"] == "passed"
    assert v2.metrics["eval_rougeL"] == pytest.approx(ev["eval_rougeL"])
    history = registry.client.get_metric_history(v2.run_id, "train_loss")
    assert len(history) >= 2  # a per-step loss curve
    run = registry.client.get_run(v2.run_id)
    assert [d.dataset.digest for d in run.inputs.dataset_inputs] == [("cd" * 32)[:36]]
    assert {a.path for a in registry.client.list_artifacts(v2.run_id)} == {"adapter"}

    with session_scope(res["store"].get_url()) as s:
        (run_row,) = list_training_runs(s)
        assert (run_row.status, run_row.model_version) == ("succeeded", "2")
        row = latest_evaluation(s, "tiny-assistant", "2")
        assert row.passed and row.champion_version == "1"
        # both alias moves are recorded: the first champion and the challenger
        moves = [(r.alias, r.model_version, r.action, r.status, r.actor) for r in
                 reversed(deployment_history(s, "tiny-assistant"))]
        assert moves == [("champion", "1", "promote", "active", "asset:base_model"),
                         ("challenger", "2", "set_challenger", "active",
                          "asset:candidate_evaluation")]
    assert registry.version("1").tags["learnloop.deployment"] == "champion"
    with res["warehouse"].get_connection() as con:
        rows = wh.query(con, "SELECT model_role, eval_set, rouge_l, refusal_rate FROM "
                             "model_evaluations ORDER BY ALL")
    assert rows.height == 6  # candidate and champion x eval, retention, must_refuse


def test_a_failing_gate_names_the_threshold_and_keeps_the_challenger_unset(home):
    res = home
    first = dg.materialize([base_model, candidate_model], resources=res,
                           run_config={"ops": {"candidate_model": {"config": LORA}}})
    assert first.success
    result = dg.materialize(
        [candidate_evaluation], resources=res, raise_on_error=False,
        run_config={"ops": {"candidate_evaluation": {"config": {"min_margin": 0.99}}}})
    (check,) = result.get_asset_check_evaluations()
    assert not check.passed
    summary = check.metadata["summary"].value
    assert "margin" in summary and "short by" in summary
    registry = res["models"].registry()
    assert registry.alias_version("challenger") is None
    assert registry.version("2").tags["gate"] == "failed"
    with session_scope(res["store"].get_url()) as s:
        (alert,) = list_alerts(s)
        assert (alert.kind, alert.dedupe_key) == ("gate_failed", "gate_failed:tiny-assistant:v2")
        assert "margin" in alert.message and alert.details["candidate_version"] == "2"
    # the champion's scores are reused by the next evaluation of the same suite and settings
    again = dg.materialize([candidate_evaluation], resources=res, raise_on_error=False)
    (passed,) = again.get_asset_check_evaluations()
    assert passed.passed and registry.alias_version("challenger") == "2"
    with session_scope(res["store"].get_url()) as s:
        evs = list_evaluations(s, "tiny-assistant")
        assert [e.passed for e in evs] == [True, False]
        assert evs[0].champion["eval"]["rougeL"] == evs[1].champion["eval"]["rougeL"]


def test_the_safety_mix_joins_the_train_split_by_default(home):
    from ml.training.safety import load_safety_mix

    res = home
    result = dg.materialize([base_model, candidate_model], resources=res, run_config={
        "ops": {"candidate_model": {"config": {"epochs": 1, "batch_size": 8}}}})
    assert result.success
    cand = _meta(result, "candidate_model")
    n_mix = len(load_safety_mix())
    assert cand["train_examples"] == len(TINY_CONVERSATIONS) + n_mix
    with session_scope(res["store"].get_url()) as s:
        (run_row,) = list_training_runs(s)
        assert run_row.params["safety_mix_examples"] == n_mix
        assert run_row.params["target_modules"] == "all-linear"
    params = res["models"].registry().client.get_run(cand["mlflow_run_id"]).data.params
    assert params["safety_mix_examples"] == str(n_mix)
