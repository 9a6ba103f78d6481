"""audit_candidates selection: reasons, seeded calibration sample, manual filters, idempotency
(audited OK = excluded, failed = retried)."""

from __future__ import annotations

from datetime import UTC, date, datetime

import polars as pl
import pytest

from ml.audit.candidates import (
    CandidateConfig,
    calibration_draw,
    given_up,
    reason_counts,
    select_candidates,
)
from ml.tables import CANDIDATE_COLUMNS

A = dict(auditor="rules", prompt_version="rules-v1")


def interactions(n: int = 10) -> pl.DataFrame:
    rows = []
    for i in range(n):
        rows.append({
            "interaction_id": f"i{i}", "tenant_id": "t", "session_id": f"s{i // 2}",
            "ts": datetime(2026, 1, 1, 10, i), "partition_date": date(2026, 1, 1),
            "feedback_thumbs": "down" if i == 0 else None, "feedback_rating": 2 if i == 1 else 5,
            "requested_human": i == 2, "corrected_response": "fixed" if i == 3 else None,
            "quality_score": 0.2 if i == 4 else 0.9,
        })
    return pl.DataFrame(rows)


def ids(frame: pl.DataFrame) -> list[str]:
    return sorted(frame["interaction_id"].to_list())


def test_each_signal_selects_with_its_reason_and_nothing_else_without_calibration():
    out = select_candidates(interactions(), None, config=CandidateConfig(calibration_rate=0.0), **A)
    assert out.columns == list(CANDIDATE_COLUMNS)
    reasons = dict(zip(out["interaction_id"], out["reasons"].to_list(), strict=True))
    assert reasons == {"i0": ["negative_feedback"], "i1": ["negative_feedback"],
                       "i2": ["handoff"], "i3": ["human_correction"], "i4": ["low_quality"]}
    assert set(out["auditor"]) == {"rules"} and set(out["prompt_version"]) == {"rules-v1"}


def test_quality_threshold_is_configurable():
    out = select_candidates(interactions(), None, **A,
                            config=CandidateConfig(calibration_rate=0.0, quality_threshold=0.1))
    assert "i4" not in ids(out)


def test_calibration_sample_is_seeded_stable_and_near_the_rate():
    big = pl.DataFrame({"interaction_id": [f"x{i}" for i in range(4000)]})
    cfg = CandidateConfig(calibration_rate=0.1, seed=7)
    first = select_candidates(big, None, config=cfg, **A)
    again = select_candidates(big, None, config=cfg, **A)
    other = select_candidates(big, None, config=CandidateConfig(calibration_rate=0.1, seed=8), **A)
    assert ids(first) == ids(again)
    assert ids(first) != ids(other)
    assert 320 <= first.height <= 480  # 10% of 4000, binomial sd ~19
    assert reason_counts(first)["calibration"] == first.height
    # a row keeps its draw when the frame changes (stable per id, not per position)
    half = select_candidates(big.tail(2000), None, config=cfg, **A)
    assert set(ids(half)) == {i for i in ids(first) if int(i[1:]) >= 2000}


def test_calibration_never_double_counts_signalled_rows():
    out = select_candidates(interactions(), None, **A,
                            config=CandidateConfig(calibration_rate=1.0))
    reasons = dict(zip(out["interaction_id"], out["reasons"].to_list(), strict=True))
    assert reasons["i0"] == ["negative_feedback"]
    assert reasons["i9"] == ["calibration"]
    assert out.height == 10


def test_audited_ok_is_excluded_and_failed_is_retried():
    attempts = pl.DataFrame({"interaction_id": ["i0", "i1", "i7"], "tenant_id": ["t"] * 3,
                             "status": ["ok", "failed", "failed"]})
    out = select_candidates(interactions(), attempts, **A,
                            config=CandidateConfig(calibration_rate=0.0))
    reasons = dict(zip(out["interaction_id"], out["reasons"].to_list(), strict=True))
    assert "i0" not in reasons
    assert reasons["i1"] == ["negative_feedback", "retry"]
    assert reasons["i7"] == ["retry"]


def test_failed_max_attempts_times_is_given_up_except_for_a_manual_run():
    attempts = pl.DataFrame({"interaction_id": ["i1", "i7", "i8"], "tenant_id": ["t"] * 3,
                             "status": ["failed", "failed", "failed"], "attempts": [5, 4, 9]})
    cfg = CandidateConfig(calibration_rate=0.0)  # max_attempts defaults to 5
    assert given_up(attempts, cfg.max_attempts) == ["i1", "i8"]
    out = select_candidates(interactions(), attempts, **A, config=cfg)
    reasons = dict(zip(out["interaction_id"], out["reasons"].to_list(), strict=True))
    # i1 has negative feedback too, but it is given up: the schedule stops asking
    assert "i1" not in reasons and "i8" not in reasons
    assert reasons["i7"] == ["retry"]
    # a higher cap retries them again
    more = select_candidates(interactions(), attempts, **A,
                             config=CandidateConfig(calibration_rate=0.0, max_attempts=10))
    assert {"i1", "i7", "i8"} <= set(more["interaction_id"])
    # a manual run naming a given-up interaction audits it
    manual = select_candidates(interactions(), attempts, **A,
                               config=CandidateConfig(interaction_ids=["i8"]))
    assert manual["interaction_id"].to_list() == ["i8"]
    assert manual["reasons"][0].to_list() == ["manual"]
    # an ok attempt is never given up, whatever its count
    ok = pl.DataFrame({"interaction_id": ["i9"], "tenant_id": ["t"], "status": ["ok"],
                       "attempts": [7]})
    assert given_up(ok) == [] and given_up(None) == []
    with pytest.raises(ValueError, match="max_attempts"):
        CandidateConfig(max_attempts=0)


def test_rows_carry_the_selecting_run():
    out = select_candidates(interactions(), None, **A, run_id="run-42",
                            config=CandidateConfig(calibration_rate=0.0))
    assert list(out.columns) == list(CANDIDATE_COLUMNS) and out.height
    assert set(out["run_id"]) == {"run-42"}


def test_selection_is_idempotent_once_everything_is_audited():
    cfg = CandidateConfig(calibration_rate=0.3)
    first = select_candidates(interactions(), None, config=cfg, **A)
    attempts = first.select("tenant_id", "interaction_id").with_columns(
        pl.lit("ok").alias("status"))
    assert select_candidates(interactions(), attempts, config=cfg, **A).height == 0


def test_manual_selection_by_ids_sessions_and_time_range():
    df = interactions()
    by_id = select_candidates(df, None, **A, config=CandidateConfig(interaction_ids=["i8", "i9"]))
    assert ids(by_id) == ["i8", "i9"] and by_id["reasons"][0].to_list() == ["manual"]
    by_session = select_candidates(df, None, **A, config=CandidateConfig(session_ids=["raw-s3"]),
                                   session_aliases={"raw-s3": "s3"})
    assert ids(by_session) == ["i6", "i7"]
    by_time = select_candidates(df, None, **A, config=CandidateConfig(
        since=datetime(2026, 1, 1, 10, 2, tzinfo=UTC),
        until=datetime(2026, 1, 1, 10, 4)))
    assert ids(by_time) == ["i2", "i3"]
    assert by_time.filter(pl.col("interaction_id") == "i2")["reasons"][0].to_list() == \
        ["handoff", "manual"]


def test_manual_selection_still_skips_audited_ok():
    attempts = pl.DataFrame({"interaction_id": ["i8"], "tenant_id": ["t"], "status": ["ok"]})
    out = select_candidates(interactions(), attempts, **A,
                            config=CandidateConfig(interaction_ids=["i8", "i9"]))
    assert ids(out) == ["i9"]


def test_bad_config_is_rejected():
    with pytest.raises(ValueError, match="calibration_rate"):
        CandidateConfig(calibration_rate=1.5)
    with pytest.raises(ValueError, match="since"):
        CandidateConfig(since=datetime(2026, 2, 1), until=datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="status"):
        select_candidates(interactions(), pl.DataFrame({"interaction_id": ["i0"]}), **A)


def test_calibration_draw_is_uniformish():
    draws = calibration_draw([f"id{i}" for i in range(2000)], 0)
    assert all(0 <= d < 1 for d in draws)
    assert 0.45 < sum(draws) / len(draws) < 0.55


# ---- which failures count toward max_attempts (ml.audit.failures) --------------------------------
def _frame() -> pl.DataFrame:
    return pl.DataFrame({"interaction_id": ["i1"], "tenant_id": ["t"], "messages": [None],
                         "user_message": ["How much is it?"], "response": ["10 euros."]},
                        schema={"interaction_id": pl.String, "tenant_id": pl.String,
                                "messages": pl.String, "user_message": pl.String,
                                "response": pl.String})


def _audit_once(tmp_path, behaviour):
    """One row audited by LEARNLOOP_AUDITOR=openai (real router and openai client) against the
    stand-in server answering ``behaviour``; returns the AuditFailure."""
    from ml.audit.llm import LLMAuditor
    from ml.llm import from_env
    from tests.llm.fake_servers import FakeOpenAIServer

    with FakeOpenAIServer(default=behaviour) as server:
        env = {"LEARNLOOP_HOME": str(tmp_path), "LEARNLOOP_AUDITOR": "openai",
               "LEARNLOOP_AUDITOR_MODEL": "gpt-test", "LEARNLOOP_AUDITOR_BASE_URL": server.base_url,
               "LEARNLOOP_AUDITOR_API_KEY_ENV": "K", "K": "sk-test-abcdef0123456789",
               "LEARNLOOP_AUDITOR_MAX_RETRIES": "0", "LEARNLOOP_AUDITOR_TIMEOUT_S": "0.3",
               "LEARNLOOP_LLM_CACHE": "none"}
        outcome = LLMAuditor(from_env("auditor", env)).audit_frame(_frame())
    [failure] = outcome.failures
    assert outcome.verdicts.height == 0 and failure.interaction_id == "i1"
    return failure


@pytest.mark.parametrize("name,counted", [
    ("400", True), ("413", True), ("422", True), ("not json", True), ("bad json twice", True),
    ("503", False), ("500", False), ("429", False), ("401", False), ("403", False),
    ("404", False), ("timeout", False), ("disconnect", False),
])
def test_failures_are_classified_request_specific_or_outage(tmp_path, name, counted):
    from tests.llm.fake_servers import disconnect, error, hang, malformed, rate_limited, raw

    behaviour = {"400": error(400, "too long"), "413": error(413, "too large"),
                 "422": error(422, "bad params"), "not json": raw(b"<html>oops</html>"),
                 "bad json twice": malformed(), "503": error(503, "unavailable"),
                 "500": error(500, "boom"), "429": rate_limited(1), "401": error(401, "bad key"),
                 "403": error(403, "forbidden"), "404": error(404, "no such model"),
                 "timeout": hang(1.0), "disconnect": disconnect()}[name]
    failure = _audit_once(tmp_path, behaviour)
    assert failure.counted is counted
    assert "sk-test" not in failure.reason and failure.reason


def test_a_mix_of_rejection_and_outage_or_an_open_breaker_is_an_outage():
    from ml.audit.failures import OUTAGE, REQUEST, classify_failure
    from ml.conversation import RowInputError
    from ml.llm import LLMRequest, ProviderError, RetryPolicy, Router
    from ml.llm.errors import PermanentProviderError, TransientProviderError
    from ml.llm.reliability import ResilientProvider

    class Stub:
        def __init__(self, name, exc):
            self.name, self.model, self.exc = name, "m", exc

        def complete(self, request):
            raise self.exc

    def fail(*errors) -> ProviderError:
        router = Router("auditor", [ResilientProvider(Stub(f"p{i}", e), RetryPolicy(max_retries=0),
                                                      sleep=lambda s: None)
                                    for i, e in enumerate(errors)])
        with pytest.raises(ProviderError) as info:
            router.complete(LLMRequest(messages=[{"role": "user", "content": "hi"}]))
        return info.value

    rejected = PermanentProviderError("p0", "too long", status_code=400, kind="rejected")
    down = TransientProviderError("p1", "unavailable", status_code=503, kind="server error")
    assert classify_failure(fail(rejected, PermanentProviderError(
        "p1", "too long", status_code=413, kind="rejected"))) == REQUEST
    assert classify_failure(fail(rejected, down)) == OUTAGE  # the backup may answer next run
    # the router keeps kind and status as fields: classification never depends on message text
    f0, f1 = fail(rejected, down).failures
    assert (f0.kind, f0.status_code, f1.kind, f1.status_code) == (
        "rejected", 400, "server error", 503)
    from ml.audit.failures import provider_failure_counted
    from ml.llm.errors import ProviderFailure
    renamed = ProviderFailure("p0", "PermanentProviderError", "reworded text", "rejected", 422)
    assert provider_failure_counted(renamed)
    # built by hand without fields: the message is read instead
    assert provider_failure_counted(ProviderFailure(
        "p0", "PermanentProviderError", "p0: rejected (HTTP 400): too long"))
    assert not provider_failure_counted(ProviderFailure(
        "p0", "PermanentProviderError", "unparseable"))
    assert classify_failure(fail(PermanentProviderError(
        "p0", "ValueError: boom", kind="unexpected error"))) == OUTAGE
    assert classify_failure(RowInputError("interaction i1: messages is not valid JSON")) == REQUEST
    assert classify_failure(ProviderError("auditor", [])) == OUTAGE
    # an open breaker: the router skips the provider without calling it
    stub = ResilientProvider(Stub("p0", down), RetryPolicy(max_retries=0), sleep=lambda s: None)
    router = Router("auditor", [stub])
    for _ in range(10):
        with pytest.raises(ProviderError) as info:
            router.complete(LLMRequest(messages=[{"role": "user", "content": "hi"}]))
    assert info.value.failures[0].error_type == "CircuitOpenError"
    assert classify_failure(info.value) == OUTAGE


def test_only_a_last_request_specific_failure_at_the_cap_is_given_up():
    attempts = pl.DataFrame({
        "interaction_id": ["i1", "i2", "i3", "i7", "i5"], "tenant_id": ["t"] * 5,
        "status": ["failed", "failed", "failed", "failed", "ok"],
        "attempts": [2, 2, 1, 7, 3],
        "reason": ["[request] 400 too long", "[outage] 503", "[request] 400",
                   "all providers failed: 503 (written before failures were classified)", None]})
    assert given_up(attempts, 2) == ["i1"]
    out = select_candidates(interactions(), attempts, **A,
                            config=CandidateConfig(calibration_rate=0.0, max_attempts=2))
    reasons = dict(zip(out["interaction_id"], out["reasons"].to_list(), strict=True))
    assert "i1" not in reasons and "i5" not in reasons  # given up / audited ok
    assert reasons["i2"] == ["handoff", "retry"] and reasons["i3"] == ["human_correction", "retry"]
    assert reasons["i7"] == ["retry"]  # a count from before the fix may include outages: retried


def test_an_id_audited_for_one_tenant_is_still_a_candidate_for_another():
    """Ids are per tenant (issue 8, item 4): tenant t's ok attempt on i0 says nothing about
    tenant u's i0."""
    two = pl.concat([interactions(2), interactions(2).with_columns(pl.lit("u").alias("tenant_id"))])
    attempts = pl.DataFrame({"interaction_id": ["i0"], "tenant_id": ["t"], "status": ["ok"]})
    out = select_candidates(two, attempts, **A, config=CandidateConfig(calibration_rate=0.0))
    assert sorted(zip(out["tenant_id"], out["interaction_id"], strict=True)) == [
        ("t", "i1"), ("u", "i0"), ("u", "i1")]


def test_low_conversation_rating_selects_turns_not_rated_well():
    """Issue 8.5: a conversation-level rating; a turn the user rated well is not selected for it."""
    df = interactions(4).with_columns(
        pl.Series("conversation_rating", [1, 1, 2, 3], dtype=pl.Int64),
        pl.Series("feedback_thumbs", [None, "up", None, None], dtype=pl.String),
        pl.Series("feedback_rating", [None, None, None, None], dtype=pl.Int64),
        pl.lit(False).alias("requested_human"), pl.lit(None, dtype=pl.String)
        .alias("corrected_response"), pl.lit(0.9).alias("quality_score"))
    out = select_candidates(df, None, config=CandidateConfig(calibration_rate=0.0), **A)
    reasons = dict(zip(out["interaction_id"], out["reasons"].to_list(), strict=True))
    assert reasons == {"i0": ["low_conversation_rating"], "i2": ["low_conversation_rating"]}
    assert reason_counts(out)["low_conversation_rating"] == 2


def test_selection_reads_conversation_rating_when_the_table_has_it(tmp_path):
    from ml import warehouse
    from ml.audit.tables import read_interactions_for_selection

    con = warehouse.connect(tmp_path / "w.duckdb")
    try:
        warehouse.ensure_table(con, "interactions")
        con.execute("INSERT INTO interactions (interaction_id, tenant_id) VALUES ('a', 't')")
        pool = read_interactions_for_selection(con)
        assert pool["conversation_rating"].to_list() == [None]
        con.execute("UPDATE interactions SET conversation_rating = 1")
        pool = read_interactions_for_selection(con)
        assert pool["conversation_rating"].to_list() == [1]
        out = select_candidates(pool, None, config=CandidateConfig(calibration_rate=0.0), **A)
        assert out["reasons"].to_list() == [["low_conversation_rating"]]
    finally:
        con.close()
