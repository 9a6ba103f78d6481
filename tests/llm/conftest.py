"""Fixtures for the provider-layer tests: stand-in servers on loopback and a secret API key in an
env var. Helpers live in tests/llm/helpers.py, the servers in tests/llm/fake_servers.py."""

from __future__ import annotations

import secrets
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# `python -m pytest` (the Makefile's way) puts the repository root on sys.path; a bare `pytest`
# does not, and these tests import `tests.llm.*`.
_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from tests.llm.fake_servers import FakeGeminiServer, FakeOpenAIServer  # noqa: E402
from tests.llm.helpers import KEY_ENV  # noqa: E402


@pytest.fixture()
def openai_server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer() as server:
        yield server


@pytest.fixture()
def gemini_server() -> Iterator[FakeGeminiServer]:
    with FakeGeminiServer() as server:
        yield server


@pytest.fixture()
def api_key(monkeypatch) -> str:
    """A fresh, recognisable secret in ``$LEARNLOOP_TEST_LLM_KEY``."""
    key = "sk-test-" + secrets.token_hex(16)
    monkeypatch.setenv(KEY_ENV, key)
    return key


@pytest.fixture(params=["openai", "gemini"])
def server(request, api_key):
    """Each fault test runs once per API dialect, through its real SDK."""
    cls = FakeOpenAIServer if request.param == "openai" else FakeGeminiServer
    with cls() as srv:
        yield srv
