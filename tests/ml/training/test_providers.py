"""ml.training.providers against real HTTP stand-ins (tests/ml/training/fake_finetune_servers.py)."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import pytest
from google.genai import tunings as genai_tunings
from google.genai import types

from ml.training.providers import (
    FineTuneConfigError,
    FineTuneError,
    FineTuneProvider,
    GeminiFineTuner,
    JobState,
    OpenAIFineTuner,
    cost_usd,
    gemini_example,
)
from tests.ml.training.fake_finetune_servers import FakeGeminiTuningServer, FakeOpenAIFineTuneServer

KEY = "sk-test-5ecret-finetune-key"
ENV = "LEARNLOOP_TEST_FT_KEY"

SYSTEM = "You are the support assistant of a small shop."
CHATS = [
    [("user", "How much is the Nova headset?"), ("assistant", "The Nova headset costs $129.")],
    [("user", "Do you ship abroad?"), ("assistant", "Only within the EU."),
     ("user", "And to Norway?"), ("assistant", "Norway too, for a fee of 9 EUR.")],
]


def _openai_line(chat, system=True):
    messages = ([{"role": "system", "content": SYSTEM}] if system else []) + [
        {"role": r, "content": c} for r, c in chat]
    return {"messages": messages}


def _gemini_line(chat, system=True):
    line = {"systemInstruction": {"role": "system", "parts": [{"text": SYSTEM}]}} if system else {}
    line["contents"] = [{"role": "model" if r == "assistant" else "user", "parts": [{"text": c}]}
                        for r, c in chat]
    return line


def _write(path: Path, lines) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines), encoding="utf-8")


@pytest.fixture()
def dataset(tmp_path) -> Path:
    """A tiny dataset version folder: openai/ and gemini/ train + validation files."""
    root = tmp_path / "v1"
    _write(root / "openai/train.jsonl", [_openai_line(CHATS[0]), _openai_line(CHATS[1])])
    _write(root / "openai/validation.jsonl", [_openai_line(CHATS[0], system=False)])
    _write(root / "gemini/train.jsonl", [_gemini_line(CHATS[0], system=False), _gemini_line(CHATS[1])])
    _write(root / "gemini/validation.jsonl", [_gemini_line(CHATS[0])])
    return root


@pytest.fixture()
def key(monkeypatch) -> str:
    monkeypatch.setenv(ENV, KEY)
    return KEY


@pytest.fixture()
def openai_server():
    with FakeOpenAIFineTuneServer() as server:
        yield server


@pytest.fixture()
def gemini_server():
    with FakeGeminiTuningServer() as server:
        yield server


@pytest.fixture()
def vertex_server():
    with FakeGeminiTuningServer(vertex=True, billable_tokens=1500) as server:
        yield server


def _no_key_in(*texts: object) -> None:
    for text in texts:
        assert KEY not in str(text)


# ---- common types -----------------------------------------------------------------------------

def test_job_state_is_frozen_and_checks_its_status():
    state = JobState("openai", "ftjob-1", "running", "running")
    with pytest.raises(dataclasses.FrozenInstanceError):
        state.status = "succeeded"  # type: ignore[misc]
    with pytest.raises(ValueError, match="status must be one of"):
        JobState("openai", "ftjob-1", "validating_files", "validating_files")
    assert not state.finished
    assert JobState("openai", "ftjob-1", "cancelled", "cancelled").finished


def test_cost_is_none_without_tokens_and_scales_with_them():
    assert cost_usd(JobState("gemini", "j", "succeeded", "ACTIVE"), 8.0) is None
    assert cost_usd(JobState("openai", "j", "succeeded", "succeeded", trained_tokens=250_000), 8.0) \
        == pytest.approx(2.0)
    with pytest.raises(ValueError, match="negative"):
        cost_usd(JobState("openai", "j", "succeeded", "succeeded", trained_tokens=1), -1)


# ---- OpenAI -----------------------------------------------------------------------------------

def test_openai_submit_uploads_the_export_files_and_creates_a_queued_job(openai_server, dataset, key):
    tuner = OpenAIFineTuner(base_url=openai_server.base_url, api_key_env=ENV, max_retries=0)
    assert isinstance(tuner, FineTuneProvider)
    state = tuner.submit(dataset, "gpt-4o-mini-2024-07-18", suffix="support",
                         hyperparameters={"n_epochs": 3, "learning_rate_multiplier": 0.5})

    assert (state.provider, state.status, state.raw_status) == ("openai", "queued", "validating_files")
    assert state.model_id is None and state.trained_tokens is None and state.error is None
    uploads = {f.filename: f for f in openai_server.files.values()}
    assert uploads["train.jsonl"].content == (dataset / "openai/train.jsonl").read_bytes()
    assert uploads["validation.jsonl"].content == (dataset / "openai/validation.jsonl").read_bytes()
    assert {f.purpose for f in uploads.values()} == {"fine-tune"}

    (create,) = openai_server.requests_to("POST", "/v1/fine_tuning/jobs")
    assert create.body["training_file"] == uploads["train.jsonl"].id
    assert create.body["validation_file"] == uploads["validation.jsonl"].id
    assert create.body["model"] == "gpt-4o-mini-2024-07-18"
    assert create.body["suffix"] == "support"
    assert create.body["method"] == {"type": "supervised", "supervised": {
        "hyperparameters": {"n_epochs": 3, "learning_rate_multiplier": 0.5}}}
    assert state.job_id == openai_server.job(state.job_id).id
    assert all(r.headers["authorization"] == f"Bearer {KEY}" for r in openai_server.requests)


def test_openai_empty_validation_file_is_not_uploaded(openai_server, dataset, key):
    (dataset / "openai/validation.jsonl").write_text("", encoding="utf-8")
    tuner = OpenAIFineTuner(base_url=openai_server.base_url, api_key_env=ENV, max_retries=0)
    tuner.submit(dataset, "gpt-4o-mini")
    assert [f.filename for f in openai_server.files.values()] == ["train.jsonl"]
    (create,) = openai_server.requests_to("POST", "/v1/fine_tuning/jobs")
    assert "validation_file" not in create.body
    assert "hyperparameters" not in create.body["method"]["supervised"]


def test_openai_polls_walk_to_succeeded_with_model_and_tokens(openai_server, dataset, key):
    openai_server.script("validating_files", "queued", "running",
                         {"status": "succeeded", "trained_tokens": 125_000})
    tuner = OpenAIFineTuner(base_url=openai_server.base_url, api_key_env=ENV, max_retries=0)
    job_id = tuner.submit(dataset, "gpt-4o-mini", suffix="support").job_id

    seen = [tuner.poll(job_id) for _ in range(3)]
    assert [s.status for s in seen] == ["queued", "running", "succeeded"]
    done = seen[-1]
    assert done.model_id == f"ft:gpt-4o-mini:support:{job_id}"
    assert done.trained_tokens == 125_000
    assert done.finished and done.finished_at == 1_700_003_600 and done.created_at == 1_700_000_000
    assert [s.model_id for s in seen[:2]] == [None, None]
    assert cost_usd(done, 3.0) == pytest.approx(0.375)
    # a finished job stays finished
    assert tuner.poll(job_id).status == "succeeded"


def test_openai_failed_job_reports_its_error(openai_server, dataset, key):
    openai_server.script("running", {"status": "failed", "error": {
        "code": "invalid_training_file", "message": "line 2: too many tokens", "param": "training_file"}})
    tuner = OpenAIFineTuner(base_url=openai_server.base_url, api_key_env=ENV, max_retries=0)
    job_id = tuner.submit(dataset, "gpt-4o-mini").job_id
    state = tuner.poll(job_id)
    assert state.status == "failed" and state.model_id is None
    assert state.error == "invalid_training_file: line 2: too many tokens"
    assert cost_usd(state, 3.0) is None


def test_openai_cancel_moves_a_running_job_to_cancelled(openai_server, dataset, key):
    openai_server.script("running", "running", "succeeded")
    tuner = OpenAIFineTuner(base_url=openai_server.base_url, api_key_env=ENV, max_retries=0)
    job_id = tuner.submit(dataset, "gpt-4o-mini").job_id
    assert tuner.poll(job_id).status == "running"
    state = tuner.cancel(job_id)
    assert (state.status, state.raw_status) == ("cancelled", "cancelled")
    assert openai_server.requests_to("POST", rf"/v1/fine_tuning/jobs/{job_id}/cancel")
    assert tuner.poll(job_id).status == "cancelled"  # the scripted success never comes
    with pytest.raises(FineTuneError) as info:  # the API refuses to cancel a finished job
        tuner.cancel(job_id)
    assert info.value.status_code == 400 and "already cancelled" in str(info.value)


def test_openai_api_error_raises_without_leaking_the_key(openai_server, dataset, key, caplog):
    caplog.set_level(logging.DEBUG)
    tuner = OpenAIFineTuner(base_url=openai_server.base_url, api_key_env=ENV, max_retries=0)
    openai_server.fail_next(401, "Incorrect API key provided", echo_key=True)
    with pytest.raises(FineTuneError) as info:
        tuner.submit(dataset, "gpt-4o-mini")
    assert info.value.status_code == 401 and info.value.provider == "openai"
    assert "Incorrect API key provided" in str(info.value) and "[REDACTED]" in str(info.value)
    _no_key_in(info.value, repr(info.value), info.value.args, repr(tuner), caplog.text)
    assert openai_server.jobs == {}  # nothing was created

    openai_server.fail_next(500, "boom")
    with pytest.raises(FineTuneError) as info:
        tuner.poll("ftjob-anything")
    assert info.value.status_code == 500


def test_openai_max_retries_reaches_the_sdk(openai_server, dataset, key):
    tuner = OpenAIFineTuner(base_url=openai_server.base_url, api_key_env=ENV, max_retries=1)
    job_id = tuner.submit(dataset, "gpt-4o-mini").job_id
    before = len(openai_server.requests)
    openai_server.fail_next(503, "overloaded")
    assert tuner.poll(job_id).status == "queued"  # the SDK's one retry got through
    assert len(openai_server.requests) - before == 2


def test_openai_unknown_job_and_unreachable_server(openai_server, key):
    tuner = OpenAIFineTuner(base_url=openai_server.base_url, api_key_env=ENV, max_retries=0)
    with pytest.raises(FineTuneError) as info:
        tuner.poll("ftjob-nope")
    assert info.value.status_code == 404
    dead = OpenAIFineTuner(base_url="http://127.0.0.1:9/v1", api_key_env=ENV, max_retries=0,
                           timeout_s=5)
    with pytest.raises(FineTuneError, match="connection error") as info:
        dead.poll("ftjob-1")
    assert info.value.status_code is None


def test_openai_config_errors(openai_server, dataset, key, monkeypatch, tmp_path):
    monkeypatch.delenv("LEARNLOOP_TEST_FT_MISSING", raising=False)
    with pytest.raises(FineTuneConfigError, match="'LEARNLOOP_TEST_FT_MISSING' is not set"):
        OpenAIFineTuner(base_url=openai_server.base_url, api_key_env="LEARNLOOP_TEST_FT_MISSING")
    tuner = OpenAIFineTuner(base_url=openai_server.base_url, api_key_env=ENV, max_retries=0)
    with pytest.raises(FineTuneConfigError, match=r"unknown hyperparameters \['epochs'\]"):
        tuner.submit(dataset, "gpt-4o-mini", hyperparameters={"epochs": 3})
    with pytest.raises(FineTuneConfigError, match="n_epochs must be a positive integer"):
        tuner.submit(dataset, "gpt-4o-mini", hyperparameters={"n_epochs": 0})
    with pytest.raises(FineTuneConfigError, match="train.jsonl does not exist"):
        tuner.submit(tmp_path / "empty", "gpt-4o-mini")
    assert openai_server.requests == []  # refused before any request


# ---- Gemini Developer API ---------------------------------------------------------------------

def test_gemini_example_flattens_conversations():
    single = gemini_example(_gemini_line(CHATS[0], system=False))
    assert (single.text_input, single.output) == ("How much is the Nova headset?",
                                                  "The Nova headset costs $129.")
    multi = gemini_example(_gemini_line(CHATS[1]))
    assert multi.output == "Norway too, for a fee of 9 EUR."
    assert multi.text_input == (f"System: {SYSTEM}\n\nUser: Do you ship abroad?\n\n"
                                "Model: Only within the EU.\n\nUser: And to Norway?")
    with pytest.raises(FineTuneConfigError, match="last turn must be a non-empty model turn"):
        gemini_example({"contents": [{"role": "model", "parts": [{"text": "a"}]},
                                     {"role": "user", "parts": [{"text": "b"}]}]})


def test_the_sdk_still_drops_developer_api_examples():
    """Why GeminiFineTuner posts tunedModels itself: google-genai 3.6.1's request converter
    loses the inline examples and the learning-rate multiplier. When this fails, the SDK was
    fixed and ``tunings.tune`` can be used for the Developer API too."""
    params = types._CreateTuningJobParametersPrivate(
        base_model="models/gemini-1.5-flash-001-tuning",
        training_dataset=types.TuningDataset(examples=[types.TuningExample(text_input="a", output="b")]),
        config=types.CreateTuningJobConfig(learning_rate_multiplier=0.5, epoch_count=2))
    body = genai_tunings._CreateTuningJobParametersPrivate_to_mldev(params, None, params)
    assert "trainingData" not in body["tuningTask"]
    assert "learningRateMultiplier" not in body["tuningTask"]["hyperparameters"]


def test_gemini_submit_sends_the_export_as_examples(gemini_server, dataset, key):
    tuner = GeminiFineTuner(base_url=gemini_server.base_url, api_key_env=ENV, max_retries=0)
    assert isinstance(tuner, FineTuneProvider)
    state = tuner.submit(dataset, "models/gemini-1.5-flash-001-tuning", suffix="support-v1",
                         hyperparameters={"n_epochs": 4, "batch_size": 2, "learning_rate_multiplier": 0.5})
    assert (state.provider, state.status) == ("gemini", "queued")
    assert state.job_id == "tunedModels/fake-model-1" and state.progress == {"total_steps": 10}

    (body,) = gemini_server.created_bodies()
    lines = [json.loads(x) for x in (dataset / "gemini/train.jsonl").read_text().splitlines()]
    expected = []
    for line in lines:
        turns = [(c["role"], c["parts"][0]["text"]) for c in line["contents"]]
        system = line.get("systemInstruction")
        blocks = ([f"System: {system['parts'][0]['text']}"] if system else []) + [
            f"{role.capitalize()}: {text}" for role, text in turns[:-1]]
        text_input = turns[0][1] if len(turns) == 2 and not system else "\n\n".join(blocks)
        expected.append({"textInput": text_input, "output": turns[-1][1]})
    assert body["tuningTask"]["trainingData"]["examples"]["examples"] == expected
    assert body["tuningTask"]["hyperparameters"] == {"epochCount": 4, "batchSize": 2,
                                                     "learningRateMultiplier": 0.5}
    assert body["baseModel"] == "models/gemini-1.5-flash-001-tuning"
    assert body["displayName"] == "support-v1"
    assert all(r.headers["x-goog-api-key"] == KEY for r in gemini_server.requests)


def test_gemini_polls_walk_to_succeeded(gemini_server, dataset, key):
    gemini_server.script("CREATING", {"status": "CREATING", "snapshots": [
        {"step": 5, "epoch": 1, "meanLoss": 0.75, "computeTime": "2024-05-01T10:10:00Z"}]}, "ACTIVE")
    tuner = GeminiFineTuner(base_url=gemini_server.base_url, api_key_env=ENV, max_retries=0)
    job_id = tuner.submit(dataset, "models/gemini-1.5-flash-001-tuning",
                          hyperparameters={"n_epochs": 2}).job_id
    running = tuner.poll(job_id)
    assert (running.status, running.raw_status, running.model_id) == ("running", "CREATING", None)
    assert running.progress == {"step": 5, "epoch": 1, "mean_loss": 0.75, "epoch_count": 2}
    assert running.created_at == 1714557600.0 and running.finished_at is None
    done = tuner.poll(job_id)
    assert (done.status, done.raw_status, done.model_id) == ("succeeded", "ACTIVE", job_id)
    assert done.finished_at == 1714561200.0
    assert done.trained_tokens is None and cost_usd(done, 2.0) is None  # the API gives no tokens
    assert [r.path for r in gemini_server.requests][-2:] == [f"/v1beta/{job_id}"] * 2


def test_gemini_failed_and_cancelled(gemini_server, dataset, key):
    gemini_server.script("CREATING", "FAILED")
    tuner = GeminiFineTuner(base_url=gemini_server.base_url, api_key_env=ENV, max_retries=0)
    failed = tuner.poll(tuner.submit(dataset, "models/gemini-1.5-flash-001-tuning").job_id)
    assert failed.status == "failed" and failed.model_id is None
    assert "FAILED" in failed.error

    gemini_server.script("CREATING", "CREATING", "ACTIVE")
    job_id = tuner.submit(dataset, "models/gemini-1.5-flash-001-tuning").job_id
    assert tuner.poll(job_id).status == "running"
    state = tuner.cancel(job_id)
    assert (state.status, state.raw_status) == ("cancelled", "JOB_STATE_CANCELLED")
    assert gemini_server.requests_to("POST", rf"/v1beta/{job_id}:cancel")
    with pytest.raises(FineTuneError) as info:
        tuner.cancel(job_id)
    assert info.value.status_code == 400


def test_gemini_api_error_raises_without_leaking_the_key(gemini_server, dataset, key, caplog):
    caplog.set_level(logging.DEBUG)
    tuner = GeminiFineTuner(base_url=gemini_server.base_url, api_key_env=ENV, max_retries=0)
    gemini_server.fail_next(401, "API key not valid", echo_key=True)
    with pytest.raises(FineTuneError) as info:
        tuner.submit(dataset, "models/gemini-1.5-flash-001-tuning")
    assert info.value.status_code == 401 and "API key not valid" in str(info.value)
    assert "[REDACTED]" in str(info.value)
    _no_key_in(info.value, repr(info.value), repr(tuner), caplog.text)
    gemini_server.fail_next(500, "internal")
    with pytest.raises(FineTuneError) as info:
        tuner.poll("tunedModels/whatever")
    assert info.value.status_code == 500
    with pytest.raises(FineTuneError) as info:
        tuner.poll("tunedModels/unknown")
    assert info.value.status_code == 404
    assert gemini_server.jobs == {}


def test_gemini_config_errors(gemini_server, dataset, key, monkeypatch):
    monkeypatch.delenv("LEARNLOOP_TEST_FT_MISSING", raising=False)
    with pytest.raises(FineTuneConfigError, match="'LEARNLOOP_TEST_FT_MISSING' is not set"):
        GeminiFineTuner(base_url=gemini_server.base_url, api_key_env="LEARNLOOP_TEST_FT_MISSING")
    tuner = GeminiFineTuner(base_url=gemini_server.base_url, api_key_env=ENV, max_retries=0)
    with pytest.raises(FineTuneConfigError, match="gcs_uri is for Vertex"):
        tuner.submit(dataset, "models/x", gcs_uri="gs://b/t.jsonl")
    with pytest.raises(FineTuneConfigError, match="'auto'"):
        tuner.submit(dataset, "models/x", hyperparameters={"n_epochs": "auto"})
    _write(dataset / "gemini/train.jsonl", [_gemini_line(CHATS[0]),
                                            {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}])
    with pytest.raises(FineTuneConfigError, match="train.jsonl line 2"):
        tuner.submit(dataset, "models/x")
    assert gemini_server.requests == []


# ---- Vertex AI --------------------------------------------------------------------------------

def test_vertex_needs_a_gcs_uri(vertex_server, dataset, key):
    tuner = GeminiFineTuner(base_url=vertex_server.base_url, api_key_env=ENV, vertex=True, max_retries=0)
    with pytest.raises(FineTuneConfigError, match="vertex=True needs gcs_uri"):
        tuner.submit(dataset, "gemini-2.5-flash")
    with pytest.raises(FineTuneConfigError, match="must be a gs:// URI"):
        tuner.submit(dataset, "gemini-2.5-flash", gcs_uri="/local/train.jsonl")
    assert vertex_server.requests == []


def test_vertex_submit_and_walk_to_succeeded(vertex_server, dataset, key):
    vertex_server.script("JOB_STATE_PENDING", "JOB_STATE_RUNNING", "JOB_STATE_SUCCEEDED")
    tuner = GeminiFineTuner(base_url=vertex_server.base_url, api_key_env=ENV, vertex=True, max_retries=0)
    state = tuner.submit(dataset, "gemini-2.5-flash", suffix="support-v1",
                         hyperparameters={"n_epochs": 3, "learning_rate_multiplier": 0.5},
                         gcs_uri="gs://bucket/v1/gemini/train.jsonl",
                         validation_gcs_uri="gs://bucket/v1/gemini/validation.jsonl")
    assert (state.status, state.raw_status) == ("queued", "JOB_STATE_PENDING")
    (body,) = vertex_server.created_bodies()
    assert body["supervisedTuningSpec"] == {
        "trainingDatasetUri": "gs://bucket/v1/gemini/train.jsonl",
        "validationDatasetUri": "gs://bucket/v1/gemini/validation.jsonl",
        "hyperParameters": {"epochCount": 3, "learningRateMultiplier": 0.5}}
    assert body["tunedModelDisplayName"] == "support-v1"

    assert tuner.poll(state.job_id).status == "running"
    done = tuner.poll(state.job_id)
    assert done.status == "succeeded"
    assert done.model_id == "projects/fake-project/locations/us-central1/endpoints/888"
    assert done.trained_tokens == 1500 * 3  # the dataset's billable tokens, once per epoch
    assert cost_usd(done, 2.0) == pytest.approx(0.009)
    assert done.progress["tuning_step_count"] == 12


def test_vertex_failed_and_cancelled(vertex_server, dataset, key):
    tuner = GeminiFineTuner(base_url=vertex_server.base_url, api_key_env=ENV, vertex=True, max_retries=0)
    vertex_server.script("JOB_STATE_RUNNING", {"status": "JOB_STATE_FAILED",
                                               "error": {"code": 3, "message": "dataset row 7 is invalid"}})
    job_id = tuner.submit(dataset, "gemini-2.5-flash", gcs_uri="gs://b/t.jsonl").job_id
    failed = tuner.poll(job_id)
    assert (failed.status, failed.error, failed.model_id) == ("failed", "dataset row 7 is invalid", None)

    job_id = tuner.submit(dataset, "gemini-2.5-flash", gcs_uri="gs://b/t.jsonl").job_id
    vertex_server.set_status(job_id, "JOB_STATE_RUNNING")
    assert tuner.cancel(job_id).status == "cancelled"
