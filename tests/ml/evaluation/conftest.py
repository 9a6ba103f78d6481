"""Fixtures of the evaluation tests: the tiny random chat model ("base") and the same model
briefly trained on a few of its conversations ("trained"), both real ``save_pretrained``
directories; a stand-in OpenAI-compatible server on loopback with an API key in the env."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

_ROOT = str(Path(__file__).resolve().parents[3])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from tests.llm.fake_servers import FakeOpenAIServer  # noqa: E402
from tests.ml.training.tiny import (  # noqa: E402
    TINY_CONVERSATIONS,
    fit_until,
    make_tiny_model,
)

KEY_ENV = "LEARNLOOP_TEST_EVAL_KEY"
# the conversations the "trained" model learns by heart: two facts and a refusal
TRAINED = [TINY_CONVERSATIONS[0], TINY_CONVERSATIONS[4], TINY_CONVERSATIONS[5]]


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    """Two cores shared by several people: one torch thread is much faster than many here."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def base_model(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("models") / "base")


@pytest.fixture(scope="session")
def trained_model(base_model, tmp_path_factory) -> Path:
    """The base model fully fine-tuned on :data:`TRAINED` until its loss is below 0.3 (about a
    second)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_model, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(base_model, local_files_only=True)
    fit_until(model, tokenizer, TRAINED, target_loss=0.3)
    out = tmp_path_factory.mktemp("models") / "trained"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture()
def openai_server(monkeypatch) -> Iterator[FakeOpenAIServer]:
    monkeypatch.setenv(KEY_ENV, "sk-test-eval-0123456789abcdef")
    with FakeOpenAIServer() as server:
        yield server



@pytest.fixture()
def make_router(openai_server):
    """``make_router(role)``: an ``ml.llm`` router of one OpenAI provider on the stand-in."""
    from ml.llm import build_router

    def make(role: str = "judge"):
        return build_router(role, {"kind": "openai", "model": "gpt-test",
                                   "base_url": openai_server.base_url, "api_key_env": KEY_ENV,
                                   "timeout_s": 5, "max_retries": 0, "cache_backend": "none"})

    return make
