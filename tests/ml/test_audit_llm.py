"""The LLM auditor and LLM teacher driven through the real ``ml.llm`` OpenAI provider (the
``openai`` client) against the stand-in OpenAI server on loopback."""

from __future__ import annotations

import json
import re
from datetime import date, datetime

import polars as pl
import pytest

from ml.audit.llm import LLMAuditor
from ml.conversation import RowInputError, render_conversation
from ml.llm import build_router
from ml.prompts import PromptError, load_prompt
from ml.tables import AUDITED_COLUMNS
from ml.teacher import propose_corrections
from ml.teacher.llm import LLMTeacher
from tests.llm.fake_servers import FakeGeminiServer, FakeOpenAIServer, error, malformed, ok, raw

KEY_ENV = "LEARNLOOP_TEST_AUDIT_KEY"
ERROR_VERDICT = json.dumps({"is_error": True, "category": "refusal_of_valid_request",
                            "severity": "medium", "confidence": 0.9,
                            "explanation": "The reply refuses a simple address change."})
CLEAN_VERDICT = json.dumps({"is_error": False, "category": None, "severity": None,
                            "confidence": 0.8, "explanation": "The reply answers the question."})


@pytest.fixture()
def server(monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-test-audit-0123456789abcdef")
    with FakeOpenAIServer() as srv:
        yield srv


def router(server, **extra):
    return build_router("auditor", {"kind": "openai", "model": "gpt-test",
                                    "base_url": server.base_url, "api_key_env": KEY_ENV,
                                    "timeout_s": 5, "max_retries": 0, "cache_backend": "none",
                                    **extra})


def frame(n: int = 2) -> pl.DataFrame:
    rows = []
    for i in range(n):
        rows.append({
            "interaction_id": f"it-{i}", "tenant_id": "acme", "partition_date": date(2026, 1, 2),
            "messages": json.dumps([{"role": "system", "content": "You are SupportBot."},
                                    {"role": "user", "content": f"Please change my address {i}"}]),
            "user_message": f"Please change my address {i}",
            "response": "I'm sorry, I can't help with that.",
            "feedback_thumbs": "down", "feedback_rating": None, "feedback_comment": None,
            "requested_human": True, "corrected_response": None,
        })
    return pl.DataFrame(rows)


def by_row(behaviours: dict[int, object]):
    """A server default answering each request by the row it is about (``address <i>`` in the
    conversation), whatever order concurrent requests arrive in; an unlisted row gets a 400."""
    def answer(recorded):
        text = " ".join(m["content"] for m in recorded.body["messages"])
        row = int(re.search(r"change my address (\d+)", text).group(1))
        behaviour = behaviours.get(row, error(400, f"no behaviour for row {row}"))
        return behaviour(recorded) if callable(behaviour) else behaviour
    return answer


def test_prompt_is_versioned_and_rendered_into_the_request(server):
    server.push(ok(ERROR_VERDICT))
    auditor = LLMAuditor(router(server))
    out = auditor.audit_frame(frame(1))
    assert out.failures == []
    v = out.verdicts.row(0, named=True)
    assert out.verdicts.columns == list(AUDITED_COLUMNS)
    assert v["is_error"] and v["category"] == "refusal_of_valid_request"
    assert v["auditor"] == "llm:openai/gpt-test" and v["prompt_version"] == "auditor-v1"
    assert v["answered_by"] == "openai"
    body = server.requests[0].body
    system, user = body["messages"][0]["content"], body["messages"][1]["content"]
    assert system.startswith("You are the Auditor") and "pii_leak" in system
    assert "user: Please change my address 0" in user
    assert "I'm sorry, I can't help with that." in user
    assert "thumbs down" in user and "asked for a human" in user
    assert body["response_format"]["type"] == "json_schema"  # structured output requested


def test_clean_verdict_and_repair_of_malformed_json(server):
    server.push(malformed(), ok(CLEAN_VERDICT))
    out = LLMAuditor(router(server)).audit_frame(frame(1))
    assert out.failures == [] and out.verdicts["is_error"].to_list() == [False]
    assert server.calls == 2  # one repair call


def test_provider_failure_is_returned_with_the_reason_not_lost(server):
    server.default = by_row({0: ok(ERROR_VERDICT), 1: error(500, "boom")})
    seen = []
    out = LLMAuditor(router(server)).audit_frame(frame(2), on_item=lambda i, ok_: seen.append((i, ok_)))
    assert out.verdicts["interaction_id"].to_list() == ["it-0"]
    assert [f.interaction_id for f in out.failures] == ["it-1"]
    assert "500" in out.failures[0].reason and "openai" in out.failures[0].reason
    assert "sk-test-audit" not in out.failures[0].reason
    assert seen == [("it-0", True), ("it-1", False)]


def test_schema_violation_after_repair_is_a_failure(server):
    bad = json.dumps({"is_error": True, "category": "made_up", "severity": "medium",
                      "confidence": 0.5, "explanation": "x"})
    server.push(ok(bad), ok(bad))
    out = LLMAuditor(router(server)).audit_frame(frame(1))
    assert out.verdicts.height == 0 and len(out.failures) == 1
    assert "category" in out.failures[0].reason


def test_bad_messages_json_names_the_interaction():
    with pytest.raises(RowInputError, match="it-9"):
        render_conversation("{not json", None, "it-9")
    with pytest.raises(RowInputError, match="it-9: messages must be a JSON string, got list"):
        render_conversation([{"role": "user", "content": "hi"}], None, "it-9")


def test_one_bad_row_or_garbage_reply_fails_that_row_only(server):
    """A row with broken ``messages`` JSON and a row answered with a garbage envelope become
    AuditFailures with their reasons; the rows around them are audited."""
    rows = frame(4).with_columns(
        pl.when(pl.col("interaction_id") == "it-1").then(pl.lit("{not json"))
        .otherwise(pl.col("messages")).alias("messages"))
    server.default = by_row({0: ok(ERROR_VERDICT), 2: raw('{"choices": [{"message": null}]}'),
                             3: ok(CLEAN_VERDICT)})
    seen = []
    out = LLMAuditor(router(server)).audit_frame(rows, on_item=lambda i, ok_: seen.append((i, ok_)))
    assert out.verdicts["interaction_id"].to_list() == ["it-0", "it-3"]
    assert out.verdicts["is_error"].to_list() == [True, False]
    assert server.calls == 3  # no request for the unreadable row
    failures = {f.interaction_id: f for f in out.failures}
    assert set(failures) == {"it-1", "it-2"} and failures["it-1"].tenant_id == "acme"
    assert failures["it-1"].reason.startswith("RowInputError: interaction it-1: messages is not valid JSON")
    assert "unusable response" in failures["it-2"].reason
    assert "choices[0].message is null" in failures["it-2"].reason
    assert "sk-test-audit" not in failures["it-2"].reason
    assert seen == [("it-0", True), ("it-1", False), ("it-2", False), ("it-3", True)]


def test_garbage_reply_fails_over_to_the_gemini_backup(server):
    server.default = raw('{"choices": "nope"}')
    with FakeGeminiServer() as backup:
        backup.default = ok(ERROR_VERDICT)
        auditor = LLMAuditor(build_router("auditor", {"providers": [
            {"kind": "openai", "model": "gpt-test", "base_url": server.base_url, "api_key_env": KEY_ENV,
             "max_retries": 0, "breaker": {"failure_threshold": 1, "reset_timeout_s": 60},
             "concurrency": 1},  # one at a time: the breaker opens before the second request
            {"kind": "gemini", "model": "gemini-test", "base_url": backup.base_url, "api_key_env": KEY_ENV},
        ], "cache_backend": "none"}))
        out = auditor.audit_frame(frame(3))
    assert out.failures == []
    assert out.verdicts["answered_by"].to_list() == ["gemini"] * 3
    assert server.calls == 1 and backup.calls == 3  # the breaker opened after the first garbage
    stats = auditor.router.stats
    assert stats.provider_failures == 1 and stats.breaker_skips == 2 and stats.successes == 3


def test_llm_teacher_row_failures_are_the_ones_a_loop_records(server):
    """LLMTeacher.ROW_FAILURES covers a bad row and a garbage reply; the next row proceeds."""
    server.push(raw("[]"), ok(json.dumps({"corrected_response": "Done.", "rationale": "Do it."})))
    teacher = LLMTeacher(build_router("teacher", {
        "kind": "openai", "model": "gpt-test", "base_url": server.base_url,
        "api_key_env": KEY_ENV, "max_retries": 0, "cache_backend": "none"}))
    rows = list(frame(3).iter_rows(named=True))
    rows[0]["messages"] = '{"role": "user"}'  # JSON, but not a list
    proposals, failures = {}, {}
    for row in rows:
        try:
            proposals[row["interaction_id"]] = teacher.propose(row, "refused")
        except LLMTeacher.ROW_FAILURES as exc:
            failures[row["interaction_id"]] = str(exc)
    assert list(proposals) == ["it-2"] and proposals["it-2"].response == "Done."
    assert "it-0: messages must be a JSON list" in failures["it-0"]
    assert "unusable response" in failures["it-1"] and "not a chat completion object" in failures["it-1"]


def test_prompt_loader_versions():
    p = load_prompt("auditor", "v1")
    assert p.version == "auditor-v1" and len(p.sha) == 64
    assert load_prompt("auditor", "auditor-v1") == p
    with pytest.raises(PromptError, match="v99"):
        load_prompt("auditor", "v99")
    with pytest.raises(PromptError, match="placeholder"):
        p.render(conversation="x")


def test_llm_teacher_proposes_through_the_router(server):
    server.push(ok(json.dumps({"corrected_response": "Sure, I have updated your address.",
                               "rationale": "Do the requested change instead of refusing."})))
    teacher = LLMTeacher(build_router("teacher", {
        "kind": "openai", "model": "gpt-test", "base_url": server.base_url,
        "api_key_env": KEY_ENV, "max_retries": 0, "cache_backend": "none"}))
    rows = [{**r, "finding": "refusal_of_valid_request (medium): refused"}
            for r in frame(1).iter_rows(named=True)]
    human = {**rows[0], "interaction_id": "it-h", "corrected_response": "Done by a human."}
    result = propose_corrections(rows + [human], retrieval=None, llm=teacher)
    assert result.proposals["it-0"].source == "llm:openai"
    assert result.proposals["it-0"].response == "Sure, I have updated your address."
    assert result.proposals["it-0"].extra["prompt_version"] == "teacher-v1"
    assert result.proposals["it-h"].source == "human_agent"  # humans first, no LLM call
    assert server.calls == 1
    assert "refusal_of_valid_request (medium)" in server.requests[0].body["messages"][1]["content"]


def test_llm_teacher_failure_is_counted_not_raised(server):
    server.push(error(503, "overloaded"))
    teacher = LLMTeacher(build_router("teacher", {
        "kind": "openai", "model": "gpt-test", "base_url": server.base_url,
        "api_key_env": KEY_ENV, "max_retries": 0, "cache_backend": "none"}))
    result = propose_corrections(list(frame(1).iter_rows(named=True)), retrieval=None, llm=teacher)
    assert result.proposals == {} and "503" in result.failures["it-0"]


def test_propose_corrections_records_a_bad_row_and_goes_on(server):
    """One row with unreadable messages must not stop the teaching loop: it is a failure with
    its reason, the next row gets its proposal."""
    server.push(ok(json.dumps({"corrected_response": "Updated.", "rationale": "Do it."})))
    teacher = LLMTeacher(build_router("teacher", {
        "kind": "openai", "model": "gpt-test", "base_url": server.base_url,
        "api_key_env": KEY_ENV, "max_retries": 0, "cache_backend": "none"}))
    rows = list(frame(2).iter_rows(named=True))
    rows[0]["messages"] = "{not json"
    result = propose_corrections(rows, retrieval=None, llm=teacher)
    assert list(result.proposals) == ["it-1"] and result.proposals["it-1"].response == "Updated."
    assert "it-0: messages is not valid JSON" in result.failures["it-0"]
    assert server.calls == 1


def test_audit_frame_concurrent_output_is_the_sequential_output(server):
    """Rows audited side by side give the verdicts, failures and on_item calls of a one-at-a-time
    run, in row order; the server never sees more requests at once than the limit."""
    behaviours = {i: ok(ERROR_VERDICT if i % 3 else CLEAN_VERDICT, delay_s=0.05) for i in range(12)}
    behaviours[4] = error(400, "too long")  # a request-specific failure
    behaviours[7] = error(503, "overloaded")  # an outage
    behaviours[9] = raw('{"choices": [{"message": null}]}')
    server.default = by_row(behaviours)
    rows = frame(12).with_columns(
        pl.when(pl.col("interaction_id") == "it-10").then(pl.lit("{not json"))
        .otherwise(pl.col("messages")).alias("messages"))
    now = datetime(2026, 1, 3, 12, 0)
    outcomes = {}
    for limit in (1, 4):
        seen = []
        auditor = LLMAuditor(router(server, concurrency=limit))
        out = auditor.audit_frame(rows, now=now, on_item=lambda i, ok_, seen=seen: seen.append((i, ok_)))
        outcomes[limit] = (out, seen, server.max_in_flight, auditor.router.stats)
        server.reset()
    (seq, seq_seen, seq_flight, _), (par, par_seen, par_flight, stats) = outcomes[1], outcomes[4]
    assert seq_flight == 1 and par_flight == 4
    assert par.verdicts.equals(seq.verdicts)
    assert par.failures == seq.failures
    assert par_seen == seq_seen == [(f"it-{i}", i not in (4, 7, 9, 10)) for i in range(12)]
    assert [f.interaction_id for f in par.failures] == ["it-4", "it-7", "it-9", "it-10"]
    assert [f.counted for f in par.failures] == [True, False, True, True]
    assert par.verdicts["interaction_id"].to_list() == [f"it-{i}" for i in (0, 1, 2, 3, 5, 6, 8, 11)]
    assert (stats.requests, stats.successes, stats.failures) == (11, 8, 3)  # it-10 never sent


def test_llm_teacher_propose_many_keeps_row_order_and_row_failures(server):
    def answer(i):
        return ok(json.dumps({"corrected_response": f"Fixed {i}.", "rationale": "Do it."}),
                  delay_s=0.05 * (6 - i))  # the first rows answer last

    behaviours = {i: answer(i) for i in range(6)}
    behaviours[3] = error(503, "overloaded")
    server.default = by_row(behaviours)
    teacher = LLMTeacher(build_router("teacher", {
        "kind": "openai", "model": "gpt-test", "base_url": server.base_url,
        "api_key_env": KEY_ENV, "max_retries": 0, "cache_backend": "none", "concurrency": 3}))
    rows = list(frame(6).iter_rows(named=True))
    rows[1]["messages"] = "{not json"
    out = teacher.propose_many(rows, ["refused"] * 6)
    assert [type(p).__name__ for p in out] == ["Proposal", "RowInputError", "Proposal",
                                               "ProviderError", "Proposal", "Proposal"]
    assert [p.response for p in out if type(p).__name__ == "Proposal"] == [
        "Fixed 0.", "Fixed 2.", "Fixed 4.", "Fixed 5."]
    assert server.max_in_flight == 3
    with pytest.raises(ValueError, match="6 rows but 1 findings"):
        teacher.propose_many(rows, ["refused"])
    server.reset()
    result = propose_corrections([{**r, "finding": "refused"} for r in rows], retrieval=None,
                                 llm=teacher)
    assert list(result.proposals) == ["it-0", "it-2", "it-4", "it-5"]
    assert list(result.failures) == ["it-1", "it-3"] and result.counted == {"it-1"}
    assert result.failures["it-3"].startswith("[outage] ") and "503" in result.failures["it-3"]
