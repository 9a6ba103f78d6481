"""Router.complete_many: concurrent requests through the real SDKs against the stand-in servers,
which count the requests they are answering at once (``max_in_flight``)."""

from __future__ import annotations

import re
import threading

import pytest

from ml.llm import (
    ConfigError,
    LLMRequest,
    LLMResponse,
    MemoryCache,
    ProviderError,
    ResilientProvider,
    Router,
    build_router,
    env_config,
)
from tests.llm.fake_servers import FakeGeminiServer, FakeOpenAIServer, error, ok
from tests.llm.helpers import FAST_RETRY, KEY_ENV, make_provider

SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}


def req(n: int, schema: bool = False) -> LLMRequest:
    return LLMRequest([{"role": "user", "content": f"question {n}"}], max_tokens=20,
                      response_schema=SCHEMA if schema else None)


def number(recorded) -> int:
    """The request number ``question <n>`` in the body of either dialect."""
    return int(re.search(r"question (\d+)", str(recorded.body)).group(1))


def slot(server, concurrency: int, name: str | None = None, **kw) -> ResilientProvider:
    return ResilientProvider(make_provider(server, name=name), retry=FAST_RETRY,
                             concurrency=concurrency, **kw)


def test_never_more_than_the_limit_in_flight_and_they_overlap(server):
    server.default = lambda r: ok(f"answer {number(r)}", delay_s=0.15)
    provider = slot(server, 3)
    router = Router("auditor", [provider])
    results = router.complete_many([req(i) for i in range(10)])
    assert [r.text for r in results] == [f"answer {i}" for i in range(10)]
    assert server.calls == 10
    assert server.max_in_flight == 3  # overlapped, and never above the limit
    assert provider.peak_in_flight == 3 and provider.in_flight == 0


def test_limit_one_is_sequential(openai_server, api_key):
    openai_server.default = lambda r: ok(f"answer {number(r)}", delay_s=0.02)
    router = Router("auditor", [slot(openai_server, 1)])
    assert [r.text for r in router.complete_many([req(i) for i in range(5)])] == [
        f"answer {i}" for i in range(5)]
    assert openai_server.max_in_flight == 1


def test_results_keep_input_order_when_answers_finish_out_of_order(openai_server, api_key):
    # the first requests take longest, so they finish last
    openai_server.default = lambda r: ok(f"answer {number(r)}", delay_s=0.02 * (8 - number(r)))
    router = Router("auditor", [slot(openai_server, 8)])
    results = router.complete_many([req(i) for i in range(8)])
    assert [r.text for r in results] == [f"answer {i}" for i in range(8)]
    arrival = [number(r) for r in openai_server.requests]
    assert openai_server.max_in_flight > 1 and sorted(arrival) == list(range(8))


def test_one_failing_request_does_not_fail_the_others(server):
    server.default = lambda r: (error(400, "too long") if number(r) == 2
                                else ok(f"answer {number(r)}", delay_s=0.02))
    router = Router("auditor", [slot(server, 4)])
    results = router.complete_many([req(i) for i in range(6)])
    assert isinstance(results[2], ProviderError) and "400" in str(results[2])
    assert [r.text for i, r in enumerate(results) if i != 2] == [
        f"answer {i}" for i in (0, 1, 3, 4, 5)]
    s = router.stats
    assert (s.requests, s.successes, s.failures, s.provider_failures) == (6, 5, 1, 1)


def test_fallback_under_concurrency(api_key):
    with FakeOpenAIServer() as primary, FakeGeminiServer() as backup:
        primary.default = error(503, "overloaded")
        backup.default = lambda r: ok(f"answer {number(r)}", delay_s=0.05)
        p = ResilientProvider(make_provider(primary, name="primary"),
                              retry=FAST_RETRY.__class__(max_retries=0), concurrency=2)
        b = slot(backup, 3, name="backup")
        router = Router("teacher", [p, b])
        results = router.complete_many([req(i) for i in range(9)])
    assert [r.text for r in results] == [f"answer {i}" for i in range(9)]
    assert {r.provider for r in results} == {"backup"}
    s = router.stats
    assert s.successes == 9 and s.by_provider == {"backup": 9}
    # every request tried the primary (until its breaker opened) and then the backup
    assert s.provider_failures + s.breaker_skips == 9 and s.provider_failures == primary.calls
    assert primary.max_in_flight <= 2 and backup.max_in_flight == 3


def test_stats_add_up_under_concurrency(server):
    attempts: dict[int, int] = {}
    lock = threading.Lock()

    def answer(r):
        n = number(r)
        with lock:
            attempts[n] = attempts.get(n, 0) + 1
            first = attempts[n] == 1
        if n % 3 == 0 and first:
            return error(500, "hiccup")  # retried once
        if n % 4 == 1 and first:
            return ok("not json")  # one repair call
        return ok(f'{{"n": {n}}}', prompt_tokens=10 + n, completion_tokens=5, delay_s=0.02)

    server.default = answer
    router = Router("auditor", [slot(server, 4)],
                    prices={"gpt-test": {"input": 1.0, "output": 2.0},
                            "gemini-test": {"input": 1.0, "output": 2.0}})
    results = router.complete_many([req(i, schema=True) for i in range(12)])
    assert [r.parsed for r in results] == [{"n": i} for i in range(12)]
    s = router.stats
    assert (s.requests, s.successes, s.failures) == (12, 12, 0)
    assert s.retries == 4 and s.repairs == 2  # n in {0, 3, 6, 9}; n in {1, 5} (9 was retried)
    assert s.prompt_tokens == sum(r.usage.prompt_tokens for r in results)
    assert s.completion_tokens == sum(r.usage.completion_tokens for r in results)
    assert s.cost_usd == pytest.approx(sum(r.cost_usd for r in results))
    assert sum(r.attempts for r in results) == server.calls == 12 + 4 + 2


def test_duplicates_in_a_batch_are_sent_once_and_answered_from_the_cache(openai_server, api_key):
    openai_server.default = lambda r: ok(f"answer {number(r)}", delay_s=0.02)
    router = Router("auditor", [slot(openai_server, 4)], cache=MemoryCache())
    results = router.complete_many([req(0), req(1), req(0), req(2), req(1), req(0)])
    assert [r.text for r in results] == ["answer 0", "answer 1", "answer 0", "answer 2",
                                         "answer 1", "answer 0"]
    assert [r.cached for r in results] == [False, False, True, False, True, True]
    assert openai_server.calls == 3 and router.stats.cache_hits == 3


def test_an_error_that_is_not_a_provider_failure_is_raised(openai_server, api_key):
    class BrokenCache(MemoryCache):
        def get(self, key):
            raise OSError("cache disk gone")

    openai_server.default = ok("answer")
    router = Router("auditor", [slot(openai_server, 4)], cache=BrokenCache())
    with pytest.raises(OSError, match="cache disk gone"):
        router.complete_many([req(i) for i in range(6)])


def test_complete_many_checks_its_input(openai_server, api_key):
    router = Router("auditor", [slot(openai_server, 2)])
    assert router.complete_many([]) == []
    with pytest.raises(TypeError, match=r"requests\[1\] is a dict"):
        router.complete_many([req(0), {"messages": []}])
    with pytest.raises(ValueError, match="max_workers"):
        router.complete_many([req(0)], max_workers=0)


def test_single_calls_from_many_threads_share_the_limit(openai_server, api_key):
    openai_server.default = lambda r: ok(f"answer {number(r)}", delay_s=0.1)
    router = Router("auditor", [slot(openai_server, 2)])
    out: dict[int, LLMResponse] = {}
    threads = [threading.Thread(target=lambda i=i: out.__setitem__(i, router.complete(req(i))))
               for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert {i: r.text for i, r in out.items()} == {i: f"answer {i}" for i in range(6)}
    assert openai_server.max_in_flight == 2


# ---- configuration ----------------------------------------------------------------------------
def test_http_providers_default_to_eight_and_config_sets_the_limit(openai_server, gemini_server, api_key):
    router = build_router("auditor", {"providers": [
        {"kind": "openai", "model": "m", "base_url": openai_server.base_url, "api_key_env": KEY_ENV},
        {"kind": "gemini", "model": "g", "base_url": gemini_server.base_url, "api_key_env": KEY_ENV,
         "concurrency": 3},
    ], "cache_backend": "none"})
    assert [p.concurrency for p in router.providers] == [8, 3]
    router = build_router("auditor", {"providers": [
        {"kind": "openai", "model": "m", "base_url": openai_server.base_url, "api_key_env": KEY_ENV},
        {"kind": "gemini", "model": "g", "base_url": gemini_server.base_url, "api_key_env": KEY_ENV,
         "concurrency": "2"},
    ], "concurrency": 16, "cache_backend": "none"})
    assert [p.concurrency for p in router.providers] == [16, 2]


@pytest.mark.parametrize("value, match", [(0, "at least 1"), ("many", "must be an integer"),
                                          (2.5, "must be an integer"), (True, "must be an integer")])
def test_bad_concurrency_is_rejected_naming_the_provider(openai_server, api_key, value, match):
    with pytest.raises(ConfigError, match=f"openai.*{match}"):
        build_router("auditor", {"kind": "openai", "model": "m", "base_url": openai_server.base_url,
                                 "api_key_env": KEY_ENV, "concurrency": value})


def test_env_concurrency_most_specific_variable_wins(openai_server, gemini_server):
    base = {"LEARNLOOP_AUDITOR": "openai,gemini,transformers", "LEARNLOOP_AUDITOR_MODEL": "m",
            "LEARNLOOP_LLM_CACHE": "none"}

    def limits(**extra):
        return [p.get("concurrency") for p in env_config("auditor", {**base, **extra})["providers"]]

    assert limits() == [None, None, None]  # the providers' defaults
    assert limits(LEARNLOOP_LLM_CONCURRENCY="32") == [32, 32, None]  # not for a local model
    assert limits(LEARNLOOP_LLM_CONCURRENCY="32", LEARNLOOP_GEMINI_CONCURRENCY="4") == [32, 4, None]
    assert limits(LEARNLOOP_GEMINI_CONCURRENCY="4", LEARNLOOP_AUDITOR_CONCURRENCY="6") == [6, 6, None]
    assert limits(LEARNLOOP_AUDITOR_CONCURRENCY="6",
                  LEARNLOOP_AUDITOR_OPENAI_CONCURRENCY="12") == [12, 6, None]
    assert limits(LEARNLOOP_TRANSFORMERS_CONCURRENCY="2") == [None, None, 2]  # refused when built
    with pytest.raises(ConfigError, match="LEARNLOOP_AUDITOR_GEMINI_CONCURRENCY='x' is not an integer"):
        limits(LEARNLOOP_AUDITOR_GEMINI_CONCURRENCY="x")
    with pytest.raises(ConfigError, match="LEARNLOOP_LLM_CONCURRENCY='0'.*at least 1"):
        limits(LEARNLOOP_LLM_CONCURRENCY="0")


def test_from_env_builds_the_configured_limit(openai_server, api_key, monkeypatch, tmp_path):
    from ml.llm import from_env

    monkeypatch.setenv("LEARNLOOP_TEACHER", "openai")
    monkeypatch.setenv("LEARNLOOP_TEACHER_MODEL", "gpt-test")
    monkeypatch.setenv("LEARNLOOP_TEACHER_BASE_URL", openai_server.base_url)
    monkeypatch.setenv("LEARNLOOP_TEACHER_API_KEY_ENV", KEY_ENV)
    monkeypatch.setenv("LEARNLOOP_LLM_CACHE", "none")
    monkeypatch.setenv("LEARNLOOP_LLM_CONCURRENCY", "5")
    router = from_env("teacher", home=tmp_path)
    assert router.providers[0].concurrency == 5


def test_a_retrying_call_keeps_its_slot_through_the_backoff(openai_server, api_key):
    """Limit 1: request 0 fails once and waits 0.2 s before its retry; request 1 does not get
    in between (the slot is held through the wait), so request 0's attempts are adjacent."""
    seen: dict[int, int] = {}

    def answer(r):
        n = number(r)
        seen[n] = seen.get(n, 0) + 1
        return error(503, "busy") if n == 0 and seen[n] == 1 else ok(f"answer {n}")

    openai_server.default = answer
    retry = FAST_RETRY.__class__(max_retries=1, initial_backoff_s=0.2, max_backoff_s=0.2, jitter_s=0)
    router = Router("auditor", [ResilientProvider(make_provider(openai_server), retry=retry,
                                                  concurrency=1)])
    results = router.complete_many([req(0), req(1)], max_workers=2)
    assert [r.text for r in results] == ["answer 0", "answer 1"]
    order = [number(r) for r in openai_server.requests]
    assert order in ([0, 0, 1], [1, 0, 0]) and router.stats.retries == 1


def test_half_open_breaker_lets_one_trial_out_and_the_rest_fail_over(api_key):
    from ml.llm import CircuitBreaker
    from tests.llm.helpers import FakeClock

    clock = FakeClock()
    with FakeOpenAIServer() as primary, FakeGeminiServer() as backup:
        primary.default = lambda r: ok(f"primary {number(r)}", delay_s=0.6)  # the trial is slow
        backup.default = lambda r: ok(f"backup {number(r)}")
        breaker = CircuitBreaker("primary", 1, 10.0, clock=clock)
        breaker.record_failure()  # open
        p = ResilientProvider(make_provider(primary, name="primary"), retry=FAST_RETRY,
                              breaker=breaker, concurrency=4)
        router = Router("judge", [p, slot(backup, 4, name="backup")])
        assert [r.provider for r in router.complete_many([req(i) for i in range(4)])] == ["backup"] * 4
        assert primary.calls == 0 and router.stats.breaker_skips == 4
        clock.advance(10.0)  # half-open: one trial call
        results = router.complete_many([req(i) for i in range(4)])
    assert sorted(r.provider for r in results) == ["backup", "backup", "backup", "primary"]
    assert primary.calls == 1 and breaker.state == "closed"
    assert router.stats.breaker_skips == 4 + 3 and router.stats.successes == 8
