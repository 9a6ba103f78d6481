"""Pure unit tests: request validation, cache keys and stores, prices, Retry-After, JSON checks,
the circuit breaker."""

from __future__ import annotations

import json

import pytest
from pydantic import BaseModel

from ml.llm import (
    CircuitBreaker,
    JsonlCache,
    LLMRequest,
    LLMResponse,
    MemoryCache,
    PriceTable,
    SQLiteCache,
    Usage,
    request_key,
)
from ml.llm._http import retry_after_seconds
from ml.llm.errors import ConfigError
from ml.llm.structured import SchemaViolation, parse_and_validate, repair_request

MSGS = [{"role": "user", "content": "hi"}]


class Verdict(BaseModel):
    error: bool
    category: str


# ---- request --------------------------------------------------------------------------------
@pytest.mark.parametrize("messages, field", [
    ([], "non-empty"),
    ([{"role": "robot", "content": "x"}], "messages[0].role"),
    ([{"role": "user", "content": 3}], "messages[0].content"),
    ([{"role": "user", "content": "x", "name": "y"}], "messages[0]"),
])
def test_request_rejects_bad_messages_naming_the_field(messages, field):
    with pytest.raises(ValueError, match=field.replace("[", r"\[").replace("]", r"\]")):
        LLMRequest(messages)


def test_request_json_schema_from_pydantic_and_dict():
    assert LLMRequest(MSGS, response_schema=Verdict).json_schema()["properties"]["category"]["type"] == "string"
    assert LLMRequest(MSGS, response_schema={"type": "object"}).json_schema() == {"type": "object"}
    with pytest.raises(ValueError, match="response_schema"):
        LLMRequest(MSGS, response_schema="json")


def test_response_round_trips_through_dict():
    r = LLMResponse("t", "p", "m", Usage(3, 4), 1.5, 0.01, {"a": 1}, False, "stop", 2)
    assert LLMResponse.from_dict(json.loads(r.to_json())) == r


# ---- cache ----------------------------------------------------------------------------------
def test_cache_key_covers_content_but_not_metadata():
    base = request_key("openai", "m", LLMRequest(MSGS))
    assert base == request_key("openai", "m", LLMRequest(MSGS, metadata={"interaction_id": "x"}))
    assert len(base) == 64
    others = {
        request_key("gemini", "m", LLMRequest(MSGS)),
        request_key("openai", "m2", LLMRequest(MSGS)),
        request_key("openai", "m", LLMRequest([{"role": "user", "content": "hi!"}])),
        request_key("openai", "m", LLMRequest(MSGS, temperature=0.5)),
        request_key("openai", "m", LLMRequest(MSGS, max_tokens=7)),
        request_key("openai", "m", LLMRequest(MSGS, response_schema=Verdict)),
    }
    assert base not in others and len(others) == 6


@pytest.mark.parametrize("cls", [SQLiteCache, JsonlCache])
def test_disk_caches_persist_across_instances(cls, tmp_path):
    value = LLMResponse("t", "p", "m", Usage(1, 2)).to_dict()
    cache = cls(tmp_path / "c")
    assert cache.get("k") is None
    cache.put("k", value)
    cache.put("k2", {**value, "text": "other"})
    reopened = cls(tmp_path / "c")
    assert reopened.get("k") == value
    assert reopened.get("k2")["text"] == "other"
    assert len(reopened) == 2


def test_jsonl_cache_rejects_a_corrupt_line_loudly(tmp_path):
    (tmp_path / "llm_cache.jsonl").write_text('{"key": "a", "response": {}}\nnot json\n')
    with pytest.raises(ValueError, match=r"llm_cache.jsonl:2"):
        JsonlCache(tmp_path)


def test_memory_cache_returns_copies():
    cache = MemoryCache()
    cache.put("k", {"a": [1]})
    cache.get("k")["a"].append(2)
    assert cache.get("k") == {"a": [1]}


# ---- prices ---------------------------------------------------------------------------------
def test_price_table_costs_per_million_tokens():
    table = PriceTable({"m": {"input": 2.0, "output": 8.0}, "p/m": (1.0, 1.0)})
    assert table.cost("x", "m", Usage(1_000, 500)) == pytest.approx(0.006)
    assert table.cost("p", "m", Usage(1_000_000, 0)) == pytest.approx(1.0)  # qualified key wins
    assert table.cost("x", "unknown", Usage(10, 10)) is None


@pytest.mark.parametrize("bad", [{"input": 1}, {"input": "a", "output": 1}, {"input": -1, "output": 1}, 5])
def test_price_table_rejects_bad_entries(bad):
    with pytest.raises(ConfigError, match=r"prices\['m'\]"):
        PriceTable({"m": bad})


# ---- Retry-After ----------------------------------------------------------------------------
def test_retry_after_forms():
    assert retry_after_seconds({"retry-after": "3"}) == 3.0
    assert retry_after_seconds({"retry-after": "0.5"}) == 0.5
    assert retry_after_seconds({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert retry_after_seconds({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0  # in the past
    assert retry_after_seconds({"retry-after": "soon"}) is None
    assert retry_after_seconds({}) is None


# ---- structured output ----------------------------------------------------------------------
def test_parse_and_validate_pydantic_dict_schema_and_fences():
    req = LLMRequest(MSGS, response_schema=Verdict)
    assert parse_and_validate('```json\n{"error": true, "category": "tone"}\n```', req) == {
        "error": True, "category": "tone"}
    with pytest.raises(SchemaViolation, match="category"):
        parse_and_validate('{"error": true}', req)
    schema = {"type": "object", "required": ["n"], "properties": {"n": {"type": "integer"}}}
    req2 = LLMRequest(MSGS, response_schema=schema)
    assert parse_and_validate('{"n": 2}', req2) == {"n": 2}
    with pytest.raises(SchemaViolation, match="at n: 'x' is not of type 'integer'"):
        parse_and_validate('{"n": "x"}', req2)


def test_truncated_json_is_reported_as_cut_off():
    req = LLMRequest(MSGS, response_schema=Verdict)
    with pytest.raises(SchemaViolation, match="cut off at max_tokens"):
        parse_and_validate('{"error": tr', req, finish_reason="length")


def test_repair_request_carries_bad_output_and_error():
    req = LLMRequest(MSGS, response_schema=Verdict, metadata={"id": 1})
    fixed = repair_request(req, "{bad", "not valid JSON")
    assert fixed.messages[:-2] == MSGS
    assert fixed.messages[-2] == {"role": "assistant", "content": "{bad"}
    assert "not valid JSON" in fixed.messages[-1]["content"]
    assert '"category"' in fixed.messages[-1]["content"]
    assert fixed.response_schema is Verdict


# ---- circuit breaker ------------------------------------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_breaker_opens_after_threshold_and_half_opens_after_cooldown():
    clock = Clock()
    b = CircuitBreaker("p", failure_threshold=3, reset_timeout_s=10, clock=clock)
    for _ in range(2):
        assert b.allow_request()
        b.record_failure()
    assert b.state == "closed"
    b.record_failure()
    assert b.state == "open" and not b.allow_request()
    assert b.retry_in_s() == pytest.approx(10)
    clock.t = 9.9
    assert not b.allow_request()
    clock.t = 10.0
    assert b.state == "half_open"
    assert b.allow_request()          # the one trial call
    assert not b.allow_request()      # no second trial while the first is out
    b.record_success()
    assert b.state == "closed" and b.failures == 0 and b.allow_request()


def test_breaker_trial_failure_reopens_for_another_cooldown():
    clock = Clock()
    b = CircuitBreaker("p", failure_threshold=1, reset_timeout_s=5, clock=clock)
    b.record_failure()
    clock.t = 5
    assert b.allow_request()
    b.record_failure()
    assert b.state == "open"
    clock.t = 9
    assert not b.allow_request()
    clock.t = 10
    assert b.allow_request()
    assert b.opened_count == 2


def test_breaker_success_resets_consecutive_failures():
    b = CircuitBreaker("p", failure_threshold=2)
    b.record_failure()
    b.record_success()
    b.record_failure()
    assert b.state == "closed"


def test_breaker_validates_settings():
    with pytest.raises(ValueError, match="failure_threshold"):
        CircuitBreaker("p", failure_threshold=0)
