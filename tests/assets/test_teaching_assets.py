"""teacher_samples with an LLM teacher, for real: LEARNLOOP_TEACHER=openai (and an LLM auditor)
against the OpenAI stand-in server of tests/llm (real HTTP on loopback), over the real asset chain
interaction_embeddings -> audit_candidates -> audited_errors -> teacher_samples -> preference_pairs.

Mixed faults (HTTP 500, 429 with Retry-After, a timeout) hit both the auditor and the teacher on
the first run: the failed rows are recorded with their reasons (AuditAttempt rows in the store,
`teacher_attempts` in the warehouse), and the next run retries exactly them."""

from __future__ import annotations

import json

import dagster as dg
import duckdb
import polars as pl
import pytest
from sqlalchemy import func, select

from assets.audit import audit_candidates, audited_errors
from assets.embeddings import interaction_embeddings
from assets.teaching import preference_pairs, teacher_samples
from store.db import session_scope
from store.models import AuditAttempt, ReviewItem
from tests.assets.conftest import land_and_ingest, warehouse_rows
from tests.llm.fake_servers import FakeOpenAIServer, error, hang, ok, rate_limited
from tests.stores import materialize, resources_for

CHAIN = [interaction_embeddings, audit_candidates, audited_errors, teacher_samples,
         preference_pairs]
VERDICT = json.dumps({"is_error": True, "category": "factual_error", "severity": "high",
                      "confidence": 0.8, "explanation": "The price is wrong."})
FAULTS = [error(500, "upstream exploded"), rate_limited(1), hang(2.0)]


def _teacher_reply(n: int) -> str:
    return json.dumps({"corrected_response": f"The correct answer, number {n}.",
                       "rationale": "States the right price."})


@pytest.fixture()
def home(learnloop_home, monkeypatch):
    land_and_ingest(learnloop_home)
    return learnloop_home


class Script:
    """Per role: the first three calls fail (500, 429 + Retry-After, no reply within the
    timeout), every later one answers."""

    def __init__(self) -> None:
        self.calls = {"auditor": 0, "teacher": 0}

    def __call__(self, request):
        system = request.body["messages"][0]["content"]
        role = "teacher" if "You are the Teacher" in system else "auditor"
        self.calls[role] += 1
        n = self.calls[role]
        if n <= len(FAULTS):
            return FAULTS[n - 1]
        return ok(_teacher_reply(n) if role == "teacher" else VERDICT)


def _set_llm_env(monkeypatch, server, **role_settings: str) -> None:
    """Point the Auditor and the Teacher at ``server`` through the OpenAI provider, no retries
    and no cache; ``role_settings`` adds settings for both roles (``_TIMEOUT_S="0.5"``)."""
    monkeypatch.setenv("LEARNLOOP_TEST_LLM_KEY", "sk-test-secret-abcdef0123456789")
    for role in ("AUDITOR", "TEACHER"):
        for k, v in {"": "openai", "_MODEL": "gpt-test", "_BASE_URL": server.base_url,
                     "_API_KEY_ENV": "LEARNLOOP_TEST_LLM_KEY", "_MAX_RETRIES": "0",
                     **role_settings}.items():
            monkeypatch.setenv(f"LEARNLOOP_{role}{k}", v)
    monkeypatch.setenv("LEARNLOOP_LLM_CACHE", "none")


def _materialize(home, assets=CHAIN, run_config=None):
    """Materialize ``assets`` (default: the whole chain); metadata by asset key."""
    with dg.instance_for_test() as instance:
        result = materialize(assets, home, instance=instance, run_config=run_config,
                             resources=resources_for(home))
    assert result.success
    return {m.materialization.asset_key.to_user_string():
            {k: v.value for k, v in m.materialization.metadata.items()}
            for m in result.get_asset_materialization_events()}




def test_llm_teacher_chain_records_mixed_faults_and_retries_them(home, monkeypatch):
    script = Script()
    with FakeOpenAIServer(default=script) as server:
        _set_llm_env(monkeypatch, server, _TIMEOUT_S="0.5")
        url = f"sqlite:///{home / 'store.db'}"

        first = _materialize(home)
        audit, teach = first["audited_errors"], first["teacher_samples"]
        n_cands = first["audit_candidates"]["dagster/row_count"]
        assert audit["failures"] == 3 and audit["audited"] == n_cands - 3
        assert teach["teacher"] == "llm:openai/gpt-test"
        assert teach["failures"] == 3 and teach["attempts_recorded"] >= 3
        assert teach["failed_attempts_open"] == 3 and teach["retried"] == 0
        with session_scope(url) as s:
            failed = list(s.scalars(select(AuditAttempt).where(AuditAttempt.status == "failed")))
            samples = list(s.scalars(select(ReviewItem).where(ReviewItem.kind == "sample")))
        reasons = sorted(f.reason for f in failed)
        assert any("500" in r for r in reasons) and any("429" in r for r in reasons)
        assert any("no reply within" in r for r in reasons)
        assert not any("sk-test-secret" in r for r in reasons)
        t_failed = warehouse_rows(home, "SELECT interaction_id, reason, attempts FROM teacher_attempts "
                               "WHERE status = 'failed' ORDER BY reason")
        assert len(t_failed) == 3 and {a for _, _, a in t_failed} == {1}
        t_reasons = [r for _, r, _ in t_failed]
        assert any("500" in r for r in t_reasons) and any("429" in r for r in t_reasons)
        assert any("no reply within" in r for r in t_reasons)
        t_failed_ids = {i for i, _, _ in t_failed}
        # no sample item for a failed interaction; every LLM sample says who wrote it
        assert not t_failed_ids & {x.interaction_id for x in samples}
        llm_samples = [x for x in samples if x.source == "llm:openai"]
        assert llm_samples and all(x.proposed_response.startswith("The correct answer")
                                   for x in llm_samples)
        assert teach["samples_by_source"]["llm:openai"] == len(llm_samples)
        n_ok = warehouse_rows(home, "SELECT count(*) FROM teacher_attempts WHERE status = 'ok'")[0][0]
        assert n_ok == len(llm_samples)

        second = _materialize(home)
        a2, t2 = second["audited_errors"], second["teacher_samples"]
        assert a2["retried_items"] == 3 and a2["failures"] == 0 and a2["audited"] == 3
        assert t2["retried"] == 3 and t2["failures"] == 0
        assert t2["failed_attempts_open"] == 0
        retried = warehouse_rows(home, "SELECT interaction_id, status, attempts, reason "
                              "FROM teacher_attempts WHERE attempts > 1")
        assert {r[0] for r in retried} == t_failed_ids
        assert {(r[1], r[2], r[3]) for r in retried} == {("ok", 2, None)}
        with session_scope(url) as s:
            now_samples = {x.interaction_id for x in s.scalars(
                select(ReviewItem).where(ReviewItem.kind == "sample"))}
            n_items = s.scalar(select(func.count()).select_from(ReviewItem))
        assert t_failed_ids <= now_samples

        calls = server.calls
        third = _materialize(home)
        assert third["audit_candidates"]["dagster/row_count"] == 0
        assert third["teacher_samples"]["errors_needing_proposal"] == 0
        assert server.calls == calls  # nothing left to retry: no request at all
        with session_scope(url) as s:
            assert s.scalar(select(func.count()).select_from(ReviewItem)) == n_items


def test_teacher_gives_up_after_max_attempts(home, monkeypatch):
    """An error whose LLM proposal keeps failing (a 400 for that request) is retried on the next
    runs until max_attempts, then given up: no more calls, listed in the metadata."""
    calls = {"teacher": 0}

    def script(request):
        if "You are the Teacher" in request.body["messages"][0]["content"]:
            calls["teacher"] += 1
            return error(400, "prompt too long for this model")
        return ok(VERDICT)

    with FakeOpenAIServer(default=script) as server:
        _set_llm_env(monkeypatch, server)
        config = {"ops": {"teacher_samples": {"config": {"max_attempts": 2}}}}

        def run():
            return _materialize(home, CHAIN, config)["teacher_samples"]

        first = run()
        n = first["failures"]
        assert n > 0 and first["given_up"] == 0 and calls["teacher"] == n
        second = run()
        assert second["failures"] == n and second["retried"] == n and second["given_up"] == 0
        assert calls["teacher"] == 2 * n
        third = run()
        assert third["given_up"] == n and third["failures"] == 0
        assert calls["teacher"] == 2 * n  # given up: not called again
        assert len(third["given_up_ids"]) == min(n, 50)
    attempts = warehouse_rows(home, "SELECT DISTINCT status, attempts FROM teacher_attempts")
    assert attempts == [("failed", 2)]


def test_teacher_outage_longer_than_max_attempts_loses_nothing(home, monkeypatch):
    """The teacher's provider answers 503 for 3 daily runs (more than max_attempts=2), then
    recovers: each run records the failures with the outage reason, none is given up, and the
    first run after the outage writes a sample for every one of them."""
    state = {"down": True}
    calls = {"teacher": 0}

    def script(request):
        if "You are the Teacher" in request.body["messages"][0]["content"]:
            calls["teacher"] += 1
            if state["down"]:
                return error(503, "service unavailable")
            return ok(_teacher_reply(calls["teacher"]))
        return ok(VERDICT)

    with FakeOpenAIServer(default=script) as server:
        _set_llm_env(monkeypatch, server)
        config = {"ops": {"teacher_samples": {"config": {"max_attempts": 2}}}}
        n = None
        for run in range(3):
            teach = _materialize(home, CHAIN, config)["teacher_samples"]
            n = n or teach["failures"]
            assert n > 0 and teach["failures"] == n and teach["given_up"] == 0
            # the others have a human agent's correction (a sample without the LLM, first run)
            assert teach["errors_needing_proposal"] == n + teach["proposals"]
            assert "llm:openai" not in teach["samples_by_source"]
            assert teach["retried"] == (n if run else 0)
            rows = warehouse_rows(home, "SELECT status, attempts, counted_attempts, reason "
                               "FROM teacher_attempts")
            assert len(rows) == n
            assert {r[:3] for r in rows} == {("failed", run + 1, 0)}  # attempted, not counted
            assert all(r[3].startswith("[outage] ") for r in rows)
            assert any("503" in r[3] for r in rows)  # the rest: the breaker opened
        assert calls["teacher"] > 0

        state["down"] = False
        teach = _materialize(home, CHAIN, config)["teacher_samples"]
        assert teach["errors_needing_proposal"] == n and teach["retried"] == n
        assert teach["failures"] == 0 and teach["given_up"] == 0
        assert teach["samples_by_source"] == {"llm:openai": n}
    rows = warehouse_rows(home, "SELECT DISTINCT status, attempts, counted_attempts, reason "
                       "FROM teacher_attempts")
    assert rows == [("ok", 4, 0, None)]


def test_teacher_attempts_table_from_before_counted_attempts_is_read_and_extended(home):
    """A teacher_attempts table written before counted_attempts existed: readable, gets the
    column (NULL on old rows: not given up, so retried), and new rows can be written to it."""
    from ml import warehouse
    from ml.teacher import (
        TEACHER_ATTEMPT_COLUMNS,
        TEACHER_ATTEMPT_KEYS,
        TEACHER_ATTEMPTS_TABLE,
        given_up_ids,
        read_teacher_attempts,
    )

    old = {c: t for c, t in TEACHER_ATTEMPT_COLUMNS.items() if c != "counted_attempts"}
    con = duckdb.connect(str(home / "warehouse.duckdb"))
    try:
        warehouse.ensure_table(con, TEACHER_ATTEMPTS_TABLE, old)
        con.execute(f"INSERT INTO {TEACHER_ATTEMPTS_TABLE} VALUES ('i1', 'default', 1, 'llm:x', "
                    "'teacher-v1', 'failed', 'all providers failed: 503', 9, NULL, NULL, 'r1')")
        previous = read_teacher_attempts(con)
        assert previous["counted_attempts"].to_list() == [None]
        assert given_up_ids(previous, "teacher-v1", 2) == set()
        row = previous.with_columns(pl.lit(2, dtype=pl.Int64).alias("counted_attempts"),
                                    pl.lit("i2").alias("interaction_id"))
        warehouse.upsert_rows(con, TEACHER_ATTEMPTS_TABLE, row, TEACHER_ATTEMPT_KEYS,
                              TEACHER_ATTEMPT_COLUMNS)
        assert given_up_ids(read_teacher_attempts(con), "teacher-v1", 2) == {"i2"}
    finally:
        con.close()


def test_teacher_is_told_a_confirmed_no_error_found_item_is_wrong(home, monkeypatch):
    """A "no error found" calibration item a reviewer confirmed (category None) reaches the LLM
    teacher as a reviewer's finding with the decision note, not as "None (None): No error found
    ... dismiss if it is fine"."""
    from ml.teacher.items import NO_ERROR_FOUND_FINDING
    from store.repo import decide

    clean = json.dumps({"is_error": False, "category": None, "severity": None,
                        "confidence": 0.9, "explanation": "The reply looks fine."})

    def script(request):
        if "You are the Teacher" in request.body["messages"][0]["content"]:
            return ok(_teacher_reply(1))
        return ok(clean)

    with FakeOpenAIServer(default=script) as server:
        _set_llm_env(monkeypatch, server)
        audit_cfg = {"ops": {"audit_candidates": {"config": {"calibration_rate": 1.0}},
                             "audited_errors": {"config": {"clean_review_rate": 1.0}}}}
        _materialize(home, [interaction_embeddings, audit_candidates, audited_errors], audit_cfg)
        url = f"sqlite:///{home / 'store.db'}"
        with session_scope(url) as s:
            items = list(s.scalars(select(ReviewItem).where(ReviewItem.kind == "error")
                                   .order_by(ReviewItem.id)))
            assert items and all(i.category is None for i in items)
            target = items[0]
            decide(s, target.id, decision="confirm", expected_version=target.version,
                   actor="reviewer:ana", note="It quotes last year's price.")
        server.reset()
        teach = _materialize(home, [teacher_samples])["teacher_samples"]
        assert teach["errors_needing_proposal"] == 1 and teach["proposals"] == 1
    [request] = server.requests  # only the confirmed item: pending clean ones have no severity
    prompt = "\n".join(m["content"] for m in request.body["messages"])
    assert NO_ERROR_FOUND_FINDING in prompt
    assert "Reviewer's note: It quotes last year's price." in prompt
    assert "None (None)" not in prompt and "dismiss if it is fine" not in prompt
    assert "No error found by the auditor" not in prompt
