"""Configuration: build_router from a dict, from_env from LEARNLOOP_* variables read at call time."""

from __future__ import annotations

import json

import pytest

from ml.llm import (
    ConfigError,
    LLMRequest,
    ProviderError,
    Router,
    SQLiteCache,
    build_router,
    from_env,
)
from ml.llm.openai_provider import OpenAIProvider
from tests.llm.fake_servers import error, ok
from tests.llm.helpers import KEY_ENV

MSGS = [{"role": "user", "content": "hello"}]


def test_build_router_from_a_provider_list(openai_server, gemini_server, api_key, tmp_path):
    config = {
        "providers": [
            {"kind": "openai", "model": "gpt-test", "base_url": openai_server.base_url,
             "api_key_env": KEY_ENV, "timeout_s": 1, "max_retries": 0},
            {"kind": "gemini", "model": "gemini-test", "base_url": gemini_server.base_url,
             "api_key_env": KEY_ENV, "timeout_s": "2.5", "breaker": {"failure_threshold": 7}},
        ],
        "prices": {"gemini-test": {"input": 1.0, "output": 2.0}},
        "retry": {"max_retries": 2, "initial_backoff_s": 0.01, "jitter_s": 0},
        "breaker": {"failure_threshold": 3, "reset_timeout_s": 5},
        "cache_backend": "sqlite",
        "cache_dir": str(tmp_path / "cache"),
    }
    router = build_router("auditor", config)
    assert isinstance(router, Router) and router.role == "auditor"
    first, second = router.providers
    assert (first.name, first.retry.max_retries, first.breaker.failure_threshold) == ("openai", 0, 3)
    assert (second.name, second.retry.max_retries, second.breaker.failure_threshold) == ("gemini", 2, 7)
    assert second.provider.timeout_s == 2.5
    assert isinstance(router.cache, SQLiteCache)

    openai_server.push(error(500))
    gemini_server.push(ok("hi", prompt_tokens=1_000_000, completion_tokens=0))
    response = router.complete(LLMRequest(MSGS))
    assert response.provider == "gemini" and response.cost_usd == pytest.approx(1.0)
    assert openai_server.calls == 1  # max_retries 0 on that provider


def test_build_router_reads_the_role_section(openai_server, api_key):
    config = {
        "prices": {"gpt-test": {"input": 1, "output": 1}},
        "auditor": {"kind": "openai", "model": "gpt-test", "base_url": openai_server.base_url,
                    "api_key_env": KEY_ENV},
        "teacher": {"kind": "rules"},
    }
    router = build_router("auditor", config)
    assert [p.name for p in router.providers] == ["openai"]
    assert router.prices.price_for("openai", "gpt-test") is not None
    assert build_router("teacher", config) is None  # offline default


@pytest.mark.parametrize("config, match", [
    ({"kind": "claude", "model": "x"}, "kind must be one of"),
    ({"kind": "openai", "model": "m", "base_url": "http://x", "temprature": 1}, r"unknown field\(s\) \['temprature'\]"),
    ({"providers": [{"kind": "openai", "model": "m", "base_url": "http://x"}], "retries": 3}, "unknown field"),
    ({"providers": [{"kind": "openai", "model": "m", "base_url": "http://x"},
                    {"kind": "openai", "model": "n", "base_url": "http://y"}]}, "names must be unique"),
    ({"providers": [{"kind": "openai", "model": "m", "base_url": "http://x"}, {"kind": "rules"}]}, "cannot be mixed"),
    ({"kind": "openai", "model": "m", "base_url": "http://x", "timeout_s": "soon"}, "timeout_s must be a number"),
    ({"kind": "openai", "model": "m", "base_url": "http://x", "max_retries": -1}, "max_retries"),
    ({"kind": "openai", "model": "m", "base_url": "http://x", "json_mode": "xml"}, "json_mode"),
    ({"kind": "transformers"}, "model_path"),
])
def test_bad_config_is_rejected_naming_the_field(config, match):
    with pytest.raises(ConfigError, match=match):
        build_router("auditor", config)


def test_missing_key_for_hosted_api_names_the_variable(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ConfigError, match="'OPENAI_API_KEY' is not set"):
        build_router("judge", {"kind": "openai", "model": "gpt-4o-mini"})


def test_keyless_local_server_needs_no_key(openai_server, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    router = build_router("judge", {"kind": "openai", "model": "llama3", "base_url": openai_server.base_url})
    openai_server.push(ok("local"))
    assert router.complete(LLMRequest(MSGS)).text == "local"


# ---- env --------------------------------------------------------------------------------------
def _clear(monkeypatch):
    import os

    for var in list(os.environ):
        if var.startswith(("LEARNLOOP_AUDITOR", "LEARNLOOP_TEACHER", "LEARNLOOP_JUDGE", "LEARNLOOP_LLM_")):
            monkeypatch.delenv(var)


def test_from_env_offline_default(monkeypatch):
    _clear(monkeypatch)
    assert from_env("auditor") is None
    monkeypatch.setenv("LEARNLOOP_AUDITOR", "rules")
    assert from_env("auditor") is None
    monkeypatch.setenv("LEARNLOOP_TEACHER", "retrieval")
    assert from_env("teacher") is None


def test_from_env_reads_variables_at_call_time(openai_server, api_key, monkeypatch, tmp_path):
    _clear(monkeypatch)
    monkeypatch.setenv("LEARNLOOP_HOME", str(tmp_path / "home"))
    # set after ml.llm was imported: nothing is read at import time
    monkeypatch.setenv("LEARNLOOP_AUDITOR", "openai")
    monkeypatch.setenv("LEARNLOOP_AUDITOR_MODEL", "gpt-test")
    monkeypatch.setenv("LEARNLOOP_AUDITOR_BASE_URL", openai_server.base_url)
    monkeypatch.setenv("LEARNLOOP_AUDITOR_API_KEY_ENV", KEY_ENV)
    monkeypatch.setenv("LEARNLOOP_AUDITOR_TIMEOUT_S", "1.5")
    monkeypatch.setenv("LEARNLOOP_LLM_PRICES", json.dumps({"gpt-test": {"input": 3, "output": 0}}))
    router = from_env("auditor")
    provider = router.providers[0].provider
    assert isinstance(provider, OpenAIProvider)
    assert provider.timeout_s == 1.5 and provider.model == "gpt-test"
    assert isinstance(router.cache, SQLiteCache)
    assert router.cache.path == tmp_path / "home" / "llm_cache" / "llm_cache.sqlite"

    openai_server.push(ok("via env", prompt_tokens=1_000_000, completion_tokens=0))
    response = router.complete(LLMRequest(MSGS))
    assert response.text == "via env" and response.cost_usd == pytest.approx(3.0)
    assert openai_server.requests[0].api_key == api_key


def test_from_env_failover_list_with_per_kind_variables(openai_server, gemini_server, api_key, monkeypatch, tmp_path):
    _clear(monkeypatch)
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"gemini-test": {"input": 0, "output": 0}}))
    monkeypatch.setenv("LEARNLOOP_JUDGE", "openai,gemini")
    monkeypatch.setenv("LEARNLOOP_JUDGE_API_KEY_ENV", KEY_ENV)  # shared
    monkeypatch.setenv("LEARNLOOP_JUDGE_OPENAI_MODEL", "gpt-test")
    monkeypatch.setenv("LEARNLOOP_JUDGE_OPENAI_BASE_URL", openai_server.base_url)
    monkeypatch.setenv("LEARNLOOP_JUDGE_GEMINI_MODEL", "gemini-test")
    monkeypatch.setenv("LEARNLOOP_JUDGE_GEMINI_BASE_URL", gemini_server.base_url)
    monkeypatch.setenv("LEARNLOOP_JUDGE_MAX_RETRIES", "0")
    monkeypatch.setenv("LEARNLOOP_LLM_PRICES", str(prices))
    monkeypatch.setenv("LEARNLOOP_LLM_CACHE", "none")
    router = from_env("judge")
    assert [p.name for p in router.providers] == ["openai", "gemini"]
    assert router.cache is None
    openai_server.push(error(503))
    gemini_server.push(ok("second"))
    assert router.complete(LLMRequest(MSGS)).provider == "gemini"
    assert openai_server.calls == 1


@pytest.mark.parametrize("env, match", [
    ({"LEARNLOOP_AUDITOR": "openai"}, "needs LEARNLOOP_AUDITOR_MODEL"),
    ({"LEARNLOOP_AUDITOR": "mistral"}, "unknown kind 'mistral'"),
    ({"LEARNLOOP_AUDITOR": "openai,openai", "LEARNLOOP_AUDITOR_MODEL": "m"}, "twice"),
    ({"LEARNLOOP_AUDITOR": "transformers", "LEARNLOOP_AUDITOR_MODEL": "/nonexistent/dir"}, "not a directory"),
    ({"LEARNLOOP_AUDITOR": "openai", "LEARNLOOP_AUDITOR_MODEL": "m", "LEARNLOOP_AUDITOR_BASE_URL": "http://x",
      "LEARNLOOP_LLM_PRICES": "{not json"}, "not valid JSON"),
])
def test_from_env_errors_name_the_variable(monkeypatch, env, match):
    _clear(monkeypatch)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ConfigError, match=match):
        from_env("auditor")


def test_from_env_rejects_unknown_role():
    with pytest.raises(ConfigError, match="role must be one of"):
        from_env("critic")


def test_configured_key_env_missing_is_an_error_without_value(monkeypatch, api_key):
    _clear(monkeypatch)
    monkeypatch.setenv("LEARNLOOP_AUDITOR", "gemini")
    monkeypatch.setenv("LEARNLOOP_AUDITOR_MODEL", "gemini-2.5-flash")
    monkeypatch.setenv("LEARNLOOP_AUDITOR_API_KEY_ENV", "LEARNLOOP_TEST_UNSET_KEY")
    monkeypatch.delenv("LEARNLOOP_TEST_UNSET_KEY", raising=False)
    with pytest.raises(ConfigError, match="LEARNLOOP_TEST_UNSET_KEY") as info:
        from_env("auditor")
    assert api_key not in str(info.value)


def test_router_requires_a_provider():
    with pytest.raises(ValueError, match="at least one provider"):
        Router("auditor", [])


def test_provider_error_when_router_has_only_dead_providers(openai_server, api_key):
    openai_server.default = error(500)
    router = build_router("teacher", {"kind": "openai", "model": "m", "base_url": openai_server.base_url,
                                      "api_key_env": KEY_ENV, "max_retries": 0})
    with pytest.raises(ProviderError, match="role 'teacher'"):
        router.complete(LLMRequest(MSGS))


def test_cache_dir_follows_the_settings_home(monkeypatch, tmp_path):
    """The default cache directory is ``<home>/llm_cache`` with home from ml.config.Settings (the
    same ``LEARNLOOP_HOME`` the stores use), from an explicit environ mapping, or from the caller."""
    from ml.config import Settings
    from ml.llm import env_config

    _clear(monkeypatch)
    base = {"LEARNLOOP_AUDITOR": "openai", "LEARNLOOP_AUDITOR_MODEL": "m"}
    for k, v in base.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("LEARNLOOP_HOME", str(tmp_path / "from-env"))
    assert env_config("auditor")["cache_dir"] == str(Settings().home / "llm_cache")
    assert env_config("auditor")["cache_dir"] == str(tmp_path / "from-env" / "llm_cache")
    # an explicit environ mapping is read instead of os.environ
    mapping = {**base, "LEARNLOOP_HOME": str(tmp_path / "from-mapping")}
    assert env_config("auditor", mapping)["cache_dir"] == str(tmp_path / "from-mapping" / "llm_cache")
    # a mapping without LEARNLOOP_HOME gets the settings default (.learnloop), not os.environ's
    monkeypatch.chdir(tmp_path)
    assert env_config("auditor", base)["cache_dir"] == str(tmp_path / ".learnloop" / "llm_cache")
    # the caller's home wins; "~" is expanded as Settings does
    assert env_config("auditor", home=tmp_path / "given")["cache_dir"] == str(tmp_path / "given" / "llm_cache")
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    assert env_config("auditor", mapping, home="~/ll")["cache_dir"] == str(tmp_path / "user" / "ll" / "llm_cache")
    # LEARNLOOP_LLM_CACHE_DIR still wins over any home
    monkeypatch.setenv("LEARNLOOP_LLM_CACHE_DIR", str(tmp_path / "explicit"))
    assert env_config("auditor", home=tmp_path / "given")["cache_dir"] == str(tmp_path / "explicit")


def test_from_env_passes_home_through(openai_server, api_key, monkeypatch, tmp_path):
    _clear(monkeypatch)
    monkeypatch.setenv("LEARNLOOP_AUDITOR", "openai")
    monkeypatch.setenv("LEARNLOOP_AUDITOR_MODEL", "gpt-test")
    monkeypatch.setenv("LEARNLOOP_AUDITOR_BASE_URL", openai_server.base_url)
    monkeypatch.setenv("LEARNLOOP_AUDITOR_API_KEY_ENV", KEY_ENV)
    router = from_env("auditor", home=tmp_path / "run-home")
    assert router.cache.path == tmp_path / "run-home" / "llm_cache" / "llm_cache.sqlite"
