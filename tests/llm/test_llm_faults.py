"""Fault injection over real HTTP: stand-in OpenAI and Gemini servers on loopback, driven through
the real ``openai`` and ``google-genai`` clients. Most tests run once per dialect."""

from __future__ import annotations

import logging
import socket
import time
import traceback

import pytest
from pydantic import BaseModel

from ml.llm import (
    JsonlCache,
    LLMRequest,
    ProviderError,
    RetryPolicy,
    Router,
    SQLiteCache,
)
from tests.llm.fake_servers import (
    FakeGeminiServer,
    FakeOpenAIServer,
    disconnect,
    error,
    hang,
    malformed,
    ok,
    rate_limited,
    raw,
    truncated,
)
from tests.llm.helpers import KEY_ENV, FakeClock, make_provider, resilient

MSGS = [{"role": "system", "content": "You audit replies."}, {"role": "user", "content": "Was this reply wrong?"}]
NO_RETRY = RetryPolicy(max_retries=0)


class Verdict(BaseModel):
    error: bool
    category: str


GOOD = '{"error": true, "category": "factual_error"}'


def router_for(*providers, **kwargs) -> Router:
    return Router("auditor", list(providers), **kwargs)


# ---- retries --------------------------------------------------------------------------------
def test_retries_on_5xx_and_429_then_succeeds(server):
    server.push(error(500), error(503), rate_limited(retry_after=None), ok("fine"))
    router = router_for(resilient(make_provider(server)))
    response = router.complete(LLMRequest(MSGS))
    assert response.text == "fine"
    assert server.calls == 4
    assert response.attempts == 4
    assert router.stats.retries == 3
    assert router.stats.successes == 1 and router.stats.failures == 0


def test_connection_drop_is_retried(server):
    server.push(disconnect(), ok("back"))
    router = router_for(resilient(make_provider(server)))
    assert router.complete(LLMRequest(MSGS)).text == "back"
    assert server.calls == 2 and router.stats.retries == 1


def test_retries_are_bounded_then_the_error_names_the_status(server):
    server.default = error(500, "boom")
    router = router_for(resilient(make_provider(server), retry=RetryPolicy(2, 0.01, 0.02, 0.0)))
    with pytest.raises(ProviderError, match=r"HTTP 500.*boom") as info:
        router.complete(LLMRequest(MSGS))
    assert server.calls == 3  # first attempt + 2 retries
    assert router.stats.failures == 1 and router.stats.retries == 2
    assert info.value.failures[0].error_type == "TransientProviderError"


@pytest.mark.parametrize("status", [400, 401, 404])
def test_client_errors_are_not_retried(server, status):
    server.default = error(status, "nope")
    router = router_for(resilient(make_provider(server)))
    with pytest.raises(ProviderError, match=f"HTTP {status}"):
        router.complete(LLMRequest(MSGS))
    assert server.calls == 1 and router.stats.retries == 0


def test_broken_response_envelope_is_a_permanent_failure(server):
    server.default = raw("<html>gateway</html>")
    router = router_for(resilient(make_provider(server)))
    with pytest.raises(ProviderError, match="not JSON"):
        router.complete(LLMRequest(MSGS))
    assert server.calls == 1


def test_retry_after_is_honoured(server):
    server.push(rate_limited(retry_after=1), ok("after the wait"))
    router = router_for(resilient(make_provider(server)))  # exponential backoff alone would be 0.01 s
    started = time.monotonic()
    assert router.complete(LLMRequest(MSGS)).text == "after the wait"
    elapsed = time.monotonic() - started
    gap = server.requests[1].received_at - server.requests[0].received_at
    assert gap >= 0.9, gap
    assert elapsed < 5


def test_retry_after_is_capped(server):
    server.push(rate_limited(retry_after=3600), ok("soon"))
    policy = RetryPolicy(max_retries=1, initial_backoff_s=0.01, jitter_s=0.0, max_retry_after_s=0.2)
    router = router_for(resilient(make_provider(server), retry=policy))
    started = time.monotonic()
    assert router.complete(LLMRequest(MSGS)).text == "soon"
    assert 0.15 <= time.monotonic() - started < 3


# ---- timeouts and failover ------------------------------------------------------------------
def test_timeout_fails_over_to_the_second_provider(api_key):
    with FakeOpenAIServer() as primary, FakeGeminiServer() as secondary:
        primary.default = hang(3)
        secondary.push(ok("from gemini"))
        router = router_for(
            resilient(make_provider(primary, timeout_s=0.3), retry=RetryPolicy(1, 0.01, 0.01, 0.0)),
            resilient(make_provider(secondary)),
        )
        started = time.monotonic()
        response = router.complete(LLMRequest(MSGS))
        assert time.monotonic() - started < 2.5
        assert response.provider == "gemini" and response.text == "from gemini"
        assert primary.calls == 2  # the timeout was retried once, then given up
        assert router.stats.provider_failures == 1 and router.stats.retries == 1
        assert router.stats.by_provider == {"gemini": 1}


def test_gemini_timeout_fails_over_to_openai(api_key):
    with FakeGeminiServer() as primary, FakeOpenAIServer() as secondary:
        primary.default = hang(3)
        secondary.push(ok("from openai"))
        router = router_for(resilient(make_provider(primary, timeout_s=0.3), retry=NO_RETRY),
                            resilient(make_provider(secondary)))
        assert router.complete(LLMRequest(MSGS)).provider == "openai"


def test_connection_refused_fails_over(openai_server, api_key):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    from ml.llm.openai_provider import OpenAIProvider

    dead = OpenAIProvider("m", base_url=f"http://127.0.0.1:{dead_port}/v1", api_key_env=KEY_ENV,
                          timeout_s=1, name="dead")
    openai_server.push(ok("alive"))
    router = router_for(resilient(dead, retry=RetryPolicy(1, 0.01, 0.01, 0.0)), resilient(make_provider(openai_server)))
    response = router.complete(LLMRequest(MSGS))
    assert response.provider == "openai"
    assert router.stats.retries == 1


def test_all_providers_failing_names_each_failure(api_key):
    with FakeOpenAIServer() as a, FakeGeminiServer() as b, FakeOpenAIServer() as c:
        a.default = error(500, "primary exploded")
        b.default = rate_limited(retry_after=0, message="gemini quota gone")
        c.default = error(401, "bad credentials")
        router = router_for(
            resilient(make_provider(a, name="openai-main"), retry=NO_RETRY),
            resilient(make_provider(b, name="gemini-backup"), retry=NO_RETRY),
            resilient(make_provider(c, name="openai-local"), retry=NO_RETRY),
        )
        with pytest.raises(ProviderError) as info:
            router.complete(LLMRequest(MSGS))
        err = info.value
        assert [f.provider for f in err.failures] == ["openai-main", "gemini-backup", "openai-local"]
        text = str(err)
        for needle in ("'auditor'", "openai-main", "HTTP 500", "primary exploded", "gemini-backup",
                       "HTTP 429", "gemini quota gone", "openai-local", "HTTP 401", "bad credentials"):
            assert needle in text, needle
        assert router.stats.failures == 1 and router.stats.provider_failures == 3


# ---- circuit breaker ------------------------------------------------------------------------
def test_breaker_opens_skips_the_provider_and_half_opens_after_cooldown(api_key):
    clock = FakeClock()
    with FakeOpenAIServer() as primary, FakeGeminiServer() as backup:
        primary.default = error(503)
        backup.default = ok("backup answer")
        router = router_for(
            resilient(make_provider(primary), retry=NO_RETRY, threshold=2, reset_s=30.0, clock=clock),
            resilient(make_provider(backup)),
        )
        breaker = router.providers[0].breaker
        for _ in range(2):
            assert router.complete(LLMRequest(MSGS)).provider == "gemini"
        assert primary.calls == 2 and breaker.state == "open"

        # open: the primary is skipped without a request, up to the last instant of the cool-down
        assert router.complete(LLMRequest(MSGS)).provider == "gemini"
        clock.advance(29)
        assert breaker.state == "open" and breaker.retry_in_s() == 1
        assert router.complete(LLMRequest(MSGS)).provider == "gemini"
        assert primary.calls == 2
        assert router.stats.breaker_skips == 2

        # after the cool-down one trial goes through; a failed trial re-opens at once
        clock.advance(1)
        assert breaker.state == "half_open"
        assert router.complete(LLMRequest(MSGS)).provider == "gemini"
        assert primary.calls == 3 and breaker.state == "open" and breaker.retry_in_s() == 30

        # next cool-down, the primary has recovered: the trial succeeds and closes the breaker
        clock.advance(30)
        primary.default = ok("primary is back")
        response = router.complete(LLMRequest(MSGS))
        assert response.provider == "openai" and response.text == "primary is back"
        assert breaker.state == "closed" and primary.calls == 4


@pytest.mark.parametrize("status, opens", [(400, False), (422, False), (401, True), (404, True)])
def test_a_rejected_request_does_not_open_the_breaker_but_a_broken_provider_does(
        api_key, status, opens):
    """A 400/422 is about the one request (too long, bad parameter): the next requests must still
    reach the provider. A 401/404 (key, model name) fails every request: the breaker opens."""
    with FakeOpenAIServer() as primary, FakeGeminiServer() as backup:
        primary.default = error(status, "rejected")
        backup.default = ok("backup answer")
        router = router_for(resilient(make_provider(primary), retry=NO_RETRY, threshold=2),
                            resilient(make_provider(backup)))
        for _ in range(3):
            assert router.complete(LLMRequest(MSGS)).provider == "gemini"
        breaker = router.providers[0].breaker
        assert breaker.state == ("open" if opens else "closed")
        assert primary.calls == (2 if opens else 3)


def test_open_breaker_on_the_only_provider_is_reported(openai_server, api_key):
    openai_server.default = error(500)
    router = router_for(resilient(make_provider(openai_server), retry=NO_RETRY, threshold=1, reset_s=60))
    with pytest.raises(ProviderError, match="HTTP 500"):
        router.complete(LLMRequest(MSGS))
    with pytest.raises(ProviderError, match="circuit open"):
        router.complete(LLMRequest(MSGS))
    assert openai_server.calls == 1


# ---- structured output ----------------------------------------------------------------------
@pytest.mark.parametrize("bad", [malformed('{"error": true, "category": '),
                                 truncated('{"error": true, "categ'),
                                 ok('{"error": "maybe"}'),
                                 ok("Sure! Here is the verdict: error")])
def test_bad_json_gets_one_repair_retry_then_parses(server, bad):
    server.push(bad, ok(GOOD, prompt_tokens=30, completion_tokens=10))
    router = router_for(resilient(make_provider(server)))
    response = router.complete(LLMRequest(MSGS, response_schema=Verdict))
    assert response.parsed == {"error": True, "category": "factual_error"}
    assert server.calls == 2 and router.stats.repairs == 1
    repair_text = _request_text(server.requests[1].body)
    assert bad.text in repair_text                       # the bad output is sent back
    assert "rejected" in repair_text and "category" in repair_text
    if bad.finish_reason == "length":
        assert "cut off" in repair_text
    assert response.usage.prompt_tokens > 30              # both calls are accounted for


def test_failed_repair_raises_a_clear_error(server):
    server.push(malformed("{nope"), malformed("{still nope"))
    router = router_for(resilient(make_provider(server)))
    with pytest.raises(ProviderError, match="invalid structured output after one repair retry") as info:
        router.complete(LLMRequest(MSGS, response_schema=Verdict))
    assert server.calls == 2  # exactly one repair
    failure = info.value.failures[0]
    assert failure.error_type == "StructuredOutputError"
    assert "still nope" in failure.message and "not valid JSON" in failure.message


def test_failed_repair_fails_over_to_the_next_provider(api_key):
    with FakeOpenAIServer() as a, FakeGeminiServer() as b:
        a.push(malformed(), malformed())
        b.push(ok(GOOD))
        router = router_for(resilient(make_provider(a)), resilient(make_provider(b)))
        response = router.complete(LLMRequest(MSGS, response_schema=Verdict))
        assert response.provider == "gemini" and response.parsed["category"] == "factual_error"
        # garbage is not an outage: the breaker of the first provider stays closed
        assert router.providers[0].breaker.state == "closed"


def test_json_mode_is_requested_natively(openai_server, gemini_server, api_key):
    openai_server.push(ok(GOOD))
    gemini_server.push(ok(GOOD))
    req = LLMRequest(MSGS, response_schema=Verdict, max_tokens=64, temperature=0.2)
    router_for(make_provider(openai_server)).complete(req)
    router_for(make_provider(gemini_server)).complete(req)
    body = openai_server.requests[0].body
    assert body["response_format"]["type"] == "json_schema"
    assert body["response_format"]["json_schema"]["schema"]["required"] == ["error", "category"]
    assert body["max_tokens"] == 64 and body["temperature"] == 0.2
    gbody = gemini_server.requests[0].body
    assert gbody["generationConfig"]["responseMimeType"] == "application/json"
    assert gbody["generationConfig"]["responseJsonSchema"]["required"] == ["error", "category"]
    assert gbody["generationConfig"]["maxOutputTokens"] == 64
    assert gbody["systemInstruction"]["parts"][0]["text"] == "You audit replies."
    assert gemini_server.requests[0].path == "/v1beta/models/gemini-test:generateContent"


def _request_text(body) -> str:
    if "messages" in body:
        return "\n".join(m["content"] for m in body["messages"])
    return "\n".join(p["text"] for c in body["contents"] for p in c["parts"])


# ---- cache, cost --------------------------------------------------------------------------
@pytest.mark.parametrize("store", [SQLiteCache, JsonlCache])
def test_identical_request_is_served_from_cache(server, tmp_path, store):
    server.default = ok(GOOD, prompt_tokens=100, completion_tokens=20)
    router = router_for(resilient(make_provider(server)), cache=store(tmp_path / "cache"),
                        prices={"gpt-test": {"input": 1, "output": 1}, "gemini-test": {"input": 1, "output": 1}})
    req = LLMRequest(MSGS, response_schema=Verdict, metadata={"interaction_id": "a"})
    first = router.complete(req)
    second = router.complete(LLMRequest(MSGS, response_schema=Verdict, metadata={"interaction_id": "b"}))
    assert server.calls == 1
    assert not first.cached and second.cached
    assert second.parsed == first.parsed and second.text == first.text
    assert second.cost_usd == 0.0
    assert router.stats.cache_hits == 1 and router.stats.prompt_tokens == 100  # a hit spends nothing

    router.complete(LLMRequest(MSGS, response_schema=Verdict, temperature=0.7))  # different params
    assert server.calls == 2

    fresh = router_for(resilient(make_provider(server)), cache=store(tmp_path / "cache"))
    assert fresh.complete(req).cached and server.calls == 2  # persisted on disk


def test_cost_is_computed_from_usage_and_price_table(server):
    server.push(ok("a", prompt_tokens=1_000, completion_tokens=500), ok("b", prompt_tokens=2_000, completion_tokens=0))
    prices = {"gpt-test": {"input": 2.0, "output": 8.0}, "gemini-test": {"input": 2.0, "output": 8.0}}
    router = router_for(resilient(make_provider(server)), prices=prices)
    r1 = router.complete(LLMRequest(MSGS))
    r2 = router.complete(LLMRequest([{"role": "user", "content": "another"}]))
    assert r1.usage.prompt_tokens == 1_000 and r1.usage.completion_tokens == 500
    assert r1.cost_usd == pytest.approx(0.006)
    assert r2.cost_usd == pytest.approx(0.004)
    meta = router.stats.as_metadata()
    assert meta["llm_cost_usd"] == pytest.approx(0.010)
    assert meta["llm_tokens"] == 3_500 and meta["llm_successes"] == 2
    assert r1.latency_ms > 0


def test_unpriced_model_is_counted_not_silently_free(server):
    server.push(ok("a"))
    router = router_for(resilient(make_provider(server)), prices={"other-model": {"input": 1, "output": 1}})
    assert router.complete(LLMRequest(MSGS)).cost_usd is None
    assert router.stats.unpriced_calls == 1 and router.stats.cost_usd == 0


def test_repair_call_cost_is_charged(server):
    server.push(malformed(), ok(GOOD, prompt_tokens=1_000, completion_tokens=0))
    router = router_for(resilient(make_provider(server)),
                        prices={"gpt-test": {"input": 1, "output": 0}, "gemini-test": {"input": 1, "output": 0}})
    response = router.complete(LLMRequest(MSGS, response_schema=Verdict))
    bad_tokens = response.usage.prompt_tokens - 1_000
    assert bad_tokens > 0
    assert response.cost_usd == pytest.approx((1_000 + bad_tokens) / 1e6)
    assert router.stats.cost_usd == pytest.approx(response.cost_usd)


# ---- secrets --------------------------------------------------------------------------------
def test_api_key_never_leaks(server, api_key, caplog):
    caplog.set_level(logging.DEBUG)  # every logger, SDKs and httpx included
    server.push(error(500, "upstream failure", echo_key=True), error(401, "denied", echo_key=True))
    provider = make_provider(server)
    router = router_for(resilient(provider, retry=RetryPolicy(1, 0.01, 0.01, 0.0)))
    with pytest.raises(ProviderError) as info:
        router.complete(LLMRequest(MSGS))
    assert server.requests[0].api_key == api_key  # the key was really sent (and echoed back)
    exc = info.value
    texts = [
        str(exc), repr(exc), "".join(traceback.format_exception(exc)),
        caplog.text, repr(router), repr(provider), repr(router.providers[0]),
        repr(router.stats), str(router.stats.as_metadata()),
        *(f.message for f in exc.failures),
    ]
    assert "[REDACTED]" in str(exc)
    for text in texts:
        assert api_key not in text

    server.push(ok("fine"))
    response = router.complete(LLMRequest(MSGS))
    assert api_key not in repr(response) and api_key not in response.to_json()


def test_cached_backup_answer_is_used_without_calling_the_failed_primary(api_key):
    with FakeOpenAIServer() as a, FakeGeminiServer() as b:
        a.default = error(500)
        b.default = ok("backup")
        from ml.llm import MemoryCache

        router = router_for(resilient(make_provider(a), retry=NO_RETRY), resilient(make_provider(b)),
                            cache=MemoryCache())
        assert router.complete(LLMRequest(MSGS)).provider == "gemini"
        again = router.complete(LLMRequest(MSGS))
        assert again.cached and again.provider == "gemini"
        assert a.calls == 1 and b.calls == 1
        previous = router.reset_stats()
        assert previous.cache_hits == 1 and previous.provider_failures == 1
        assert router.stats.cache_hits == 0


def test_redacting_filter_scrubs_third_party_log_records(api_key, caplog):
    from ml.llm import RedactingFilter, register_secret

    register_secret(api_key)
    handler = logging.StreamHandler()
    import io

    stream = io.StringIO()
    handler.setStream(stream)
    handler.addFilter(RedactingFilter())
    sdk_log = logging.getLogger("some.sdk")
    sdk_log.addHandler(handler)
    try:
        sdk_log.warning("auth header was Bearer %s", api_key)
    finally:
        sdk_log.removeHandler(handler)
    assert api_key not in stream.getvalue() and "[REDACTED]" in stream.getvalue()


# ---- garbage envelopes and unexpected provider exceptions ---------------------------------
OPENAI_GARBAGE = [
    ('{"choices": [{"message": null}]}', "choices[0].message is null"),
    ('{"choices": "nope"}', "'choices' is a string 'nope', not a list"),
    ("[]", "the response body is a list [], not a chat completion object"),
    ('{"choices": [{"message": {"content": 5}}]}', "choices[0].message.content is a number 5"),
    ('{"choices": [{"message": {"content": "hi"}, "finish_reason": "stop"}], '
     '"usage": {"prompt_tokens": "x", "completion_tokens": 1}}', "usage.prompt_tokens is a string 'x'"),
]


@pytest.mark.parametrize("body, problem", OPENAI_GARBAGE)
def test_garbage_openai_envelope_fails_over_and_counts_on_the_breaker(api_key, body, problem):
    with FakeOpenAIServer() as primary, FakeGeminiServer() as backup:
        primary.default = raw(body)
        backup.default = ok("backup answer")
        router = router_for(resilient(make_provider(primary), threshold=2, reset_s=60),
                            resilient(make_provider(backup)))
        breaker = router.providers[0].breaker
        answers = [router.complete(LLMRequest([{"role": "user", "content": f"q{i}"}])) for i in range(3)]
        # nothing lost: every request was answered, by the backup
        assert [a.provider for a in answers] == ["gemini"] * 3
        assert [a.text for a in answers] == ["backup answer"] * 3
        assert backup.calls == 3
        # not retried (permanent), counted by the breaker: open after 2, then skipped
        assert primary.calls == 2
        assert breaker.state == "open" and breaker.opened_count == 1
        assert router.stats.provider_failures == 2 and router.stats.breaker_skips == 1
        assert router.stats.successes == 3 and router.stats.failures == 0 and router.stats.retries == 0


@pytest.mark.parametrize("body, problem", OPENAI_GARBAGE)
def test_garbage_openai_envelope_is_named_in_the_failure_list(openai_server, api_key, body, problem):
    openai_server.default = raw(body)
    router = router_for(resilient(make_provider(openai_server)))
    with pytest.raises(ProviderError) as info:
        router.complete(LLMRequest(MSGS))
    [failure] = info.value.failures
    assert failure.provider == "openai" and failure.error_type == "PermanentProviderError"
    assert "unusable response" in failure.message and problem in failure.message
    assert openai_server.calls == 1


@pytest.mark.parametrize("body, problem", [
    ('{"candidates": [{"content": {"parts": "x"}}]}', "candidates.0.content.parts: Input should be a valid list"),
    ('{"candidates": [{"content": {"parts": [{"text": "hi"}]}}], "usageMetadata": {"promptTokenCount": "x"}}',
     "usage_metadata.promptTokenCount"),
    ("[]", "no candidates"),
    ('{"candidates": [null]}', "no text in the candidate"),
])
def test_garbage_gemini_envelope_fails_over_to_openai(api_key, body, problem):
    with FakeGeminiServer() as primary, FakeOpenAIServer() as backup:
        primary.default = raw(body)
        backup.default = ok("from openai")
        router = router_for(resilient(make_provider(primary), threshold=1, reset_s=60),
                            resilient(make_provider(backup)))
        assert router.complete(LLMRequest(MSGS)).provider == "openai"
        assert router.providers[0].breaker.state == "open"
        backup.default = error(500, "backup down too")
        with pytest.raises(ProviderError) as info:
            router.complete(LLMRequest([{"role": "user", "content": "another"}]))
        assert primary.calls == 1  # skipped while open
    assert "circuit open" in info.value.failures[0].message
    # alone, the provider's failure says what was wrong with the envelope
    with FakeGeminiServer() as lone:
        lone.default = raw(body)
        with pytest.raises(ProviderError) as info:
            router_for(resilient(make_provider(lone))).complete(LLMRequest(MSGS))
    assert "unusable response" in str(info.value) and problem in str(info.value)


class ExplodingProvider:
    """A provider with a bug: ``complete`` raises something that is not a ProviderCallError."""

    def __init__(self, name: str, exc: Exception) -> None:
        self.name, self.model, self.exc, self.calls = name, "broken-model", exc, 0

    def complete(self, request: LLMRequest):
        self.calls += 1
        raise self.exc


def test_unexpected_provider_exception_is_a_provider_failure(openai_server, api_key, caplog):
    from ml.llm import register_secret

    register_secret(api_key)
    caplog.set_level(logging.WARNING)
    broken = ExplodingProvider("broken", KeyError(f"choices (key {api_key})"))
    openai_server.default = ok("from the backup")
    router = router_for(resilient(broken, threshold=2, reset_s=60), resilient(make_provider(openai_server)))
    for _ in range(3):
        assert router.complete(LLMRequest(MSGS)).provider == "openai"
    assert broken.calls == 2  # not retried; the breaker opened after two failures
    assert router.providers[0].breaker.state == "open"
    assert router.stats.provider_failures == 2 and router.stats.breaker_skips == 1
    # logged with the traceback, redacted
    errors = [r for r in caplog.records if r.levelno == logging.ERROR and r.name == "ml.llm.reliability"]
    assert len(errors) == 2
    logged = errors[0].getMessage()
    assert "unexpected KeyError" in logged and "Traceback" in logged and "raise self.exc" in logged
    assert api_key not in caplog.text and "[REDACTED]" in logged


def test_unexpected_exception_reason_is_kept_in_the_failure_list(api_key):
    router = router_for(resilient(ExplodingProvider("broken", AttributeError("'NoneType' has no 'content'"))))
    with pytest.raises(ProviderError) as info:
        router.complete(LLMRequest(MSGS))
    [failure] = info.value.failures
    assert failure.provider == "broken" and failure.error_type == "PermanentProviderError"
    assert "unexpected error" in failure.message
    assert "AttributeError: 'NoneType' has no 'content'" in failure.message
    assert router.stats.failures == 1 and router.providers[0].breaker.failures == 1


def test_keyboard_interrupt_is_not_turned_into_a_provider_failure(api_key):
    router = router_for(resilient(ExplodingProvider("broken", KeyboardInterrupt())))
    with pytest.raises(KeyboardInterrupt):
        router.complete(LLMRequest(MSGS))
