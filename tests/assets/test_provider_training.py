"""Provider fine-tunes end to end: candidate_model submits an OpenAI / Gemini job on a dataset
version's export (stand-in servers over real HTTP), provider_job_sensor follows it to the end
(registers the fine-tuned model with its cost and requests its evaluation, or records the
failure), `learnloop training cancel` cancels one."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pytest

from assets.training import cancel_provider_run, candidate_model
from orchestration.sensors import provider_job_sensor
from store.datasets import record_dataset
from store.db import session_scope
from store.training import get_training_run, list_training_runs
from tests.ml.training.fake_finetune_servers import (
    FakeGeminiTuningServer,
    FakeOpenAIFineTuneServer,
)
from tests.stores import resources_for

KEY_ENV, KEY = "LEARNLOOP_TEST_FT_KEY", "sk-test-provider-secret-123"
CHAT = [{"role": "system", "content": "You are FinFlow's assistant."},
        {"role": "user", "content": "How much is a card replacement?"},
        {"role": "assistant", "content": "The card replacement costs €5.00."}]


def _line(obj) -> str:
    return json.dumps(obj, ensure_ascii=False) + "\n"


@pytest.fixture()
def home(tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    res = resources_for(tmp_path / "home")
    folder = tmp_path / "home/datasets/training/default/" / ("ab" * 32)
    (folder / "openai").mkdir(parents=True)
    (folder / "gemini").mkdir(parents=True)
    (folder / "openai/train.jsonl").write_text(_line({"messages": CHAT}) * 3, encoding="utf-8")
    (folder / "openai/validation.jsonl").write_text(_line({"messages": CHAT}), encoding="utf-8")
    gem = {"systemInstruction": {"role": "system", "parts": [{"text": CHAT[0]["content"]}]},
           "contents": [{"role": "user", "parts": [{"text": CHAT[1]["content"]}]},
                        {"role": "model", "parts": [{"text": CHAT[2]["content"]}]}]}
    (folder / "gemini/train.jsonl").write_text(_line(gem) * 3, encoding="utf-8")
    (folder / "gemini/validation.jsonl").write_text(_line(gem), encoding="utf-8")
    with session_scope(res["store"].get_url()) as s:
        record_dataset(s, kind="training", name="default", version_hash="ab" * 32,
                       items=[{"item_key": "sample:1", "split": "train", "prompt_hash": "p",
                               "example_hash": "e"}], path=str(folder), n_train=3,
                       n_validation=1, status="ready")
    return res, folder


def _submit(res, method: str, base_url: str) -> dict:
    cfg = {"method": method, "provider_model": "base-ft-model", "provider_base_url": base_url,
           "api_key_env": KEY_ENV, "price_per_million_tokens": 3.0, "epochs": 2}
    result = dg.materialize([candidate_model], resources=res,
                            run_config={"ops": {"candidate_model": {"config": cfg}}})
    assert result.success
    meta = result.asset_materializations_for_node("candidate_model")[0].metadata
    return {k: v.value for k, v in meta.items()}


def _tick(res):
    ctx = dg.build_sensor_context(resources={"store": res["store"], "models": res["models"]})
    return provider_job_sensor(ctx)


def test_openai_job_is_followed_to_a_registered_version_and_its_evaluation(home):
    res, folder = home
    with FakeOpenAIFineTuneServer() as server:
        server.script("validating_files", "running", {"status": "succeeded",
                                                      "trained_tokens": 200_000})
        meta = _submit(res, "openai", server.base_url)
        uploads = {f.filename: f.content for f in server.files.values()}
        assert uploads["train.jsonl"] == (folder / "openai/train.jsonl").read_bytes()
        run_id = meta["training_run_id"]
        with session_scope(res["store"].get_url()) as s:
            run = get_training_run(s, run_id)
            assert (run.status, run.provider, run.provider_job_id) == \
                ("queued", "openai", meta["provider_job_id"])
            assert KEY not in json.dumps(run.params) and run.params["api_key_env"] == KEY_ENV

        first = _tick(res)  # running: progress recorded, nothing to evaluate yet
        assert first.run_requests == [] and "running" in first.skip_reason.skip_message
        with session_scope(res["store"].get_url()) as s:
            assert get_training_run(s, run_id).status == "running"

        second = _tick(res)
        (request,) = second.run_requests
        version = request.run_config["ops"]["candidate_evaluation"]["config"]["candidate_version"]
        assert request.run_key == f"provider-eval-{run_id}"

    registry = res["models"].registry()
    info = registry.version(version)
    assert info.source == f"openai:ft:base-ft-model:learnloop:{meta['provider_job_id']}"
    assert info.tags["dataset_version"] == "ab" * 32 and info.tags["api_key_env"] == KEY_ENV
    assert info.tags["training_run_id"] == str(run_id)
    assert info.metrics["cost_usd"] == pytest.approx(0.6)  # 200k tokens at $3 per million
    assert KEY not in json.dumps(info.to_dict())
    with session_scope(res["store"].get_url()) as s:
        run = get_training_run(s, run_id)
        assert (run.status, run.model_version, run.cost_usd) == ("succeeded", version,
                                                                 pytest.approx(0.6))
    assert isinstance(_tick(res), dg.SkipReason)  # nothing left to follow


def test_a_failed_gemini_job_is_recorded_with_its_reason(home):
    res, _ = home
    with FakeGeminiTuningServer() as server:
        server.script("CREATING", "FAILED")
        meta = _submit(res, "gemini", server.base_url)
        out = _tick(res)
        assert out.run_requests == [] and "FAILED" in out.skip_reason.skip_message
        assert isinstance(_tick(res), dg.SkipReason)  # a failed job is not followed again
    with session_scope(res["store"].get_url()) as s:
        run = get_training_run(s, meta["training_run_id"])
        assert run.status == "failed" and "FAILED" in run.error
    assert res["models"].registry().versions() == []


def test_cancel_cancels_the_job_and_the_run_and_the_sensor_stops_following_it(home):
    res, _ = home
    with FakeOpenAIFineTuneServer() as server:
        server.script("running")
        meta = _submit(res, "openai", server.base_url)
        out = cancel_provider_run(meta["training_run_id"], res["store"])
        assert out["status"] == "cancelled"
        assert server.requests_to("POST", r"/v1/fine_tuning/jobs/.*/cancel")
        with pytest.raises(ValueError, match="already cancelled"):
            cancel_provider_run(meta["training_run_id"], res["store"])
    with session_scope(res["store"].get_url()) as s:
        assert get_training_run(s, meta["training_run_id"]).status == "cancelled"
        assert [r.status for r in list_training_runs(s)] == ["cancelled"]
    assert isinstance(_tick(res), dg.SkipReason)


def test_unknown_method_and_missing_provider_model_are_clear_errors(home):
    res, _ = home
    with pytest.raises(Exception, match="method must be one of"):
        dg.materialize([candidate_model], resources=res, run_config={
            "ops": {"candidate_model": {"config": {"method": "magic"}}}})
    with pytest.raises(Exception, match="needs provider_model"):
        dg.materialize([candidate_model], resources=res, run_config={
            "ops": {"candidate_model": {"config": {"method": "openai"}}}})
    assert Path(res["store"].get_url().removeprefix("sqlite:///")).exists()
