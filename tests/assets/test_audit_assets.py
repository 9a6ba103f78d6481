"""The audit and teaching assets materialized for real: generated demo logs landed and ingested by
the ingest assets, then interaction_embeddings -> audit_candidates -> audited_errors ->
teacher_samples -> preference_pairs on a SQLite store, twice (no duplicates the second time)."""

from __future__ import annotations

import json

import dagster as dg
import duckdb
import pytest
from sqlalchemy import func, select

from assets.audit import (
    audit_candidates,
    audit_job,
    audited_errors,
    daily_teacher_schedule,
    hourly_audit_schedule,
    manual_audit_job,
    manual_audit_run_config,
    teaching_job,
)
from assets.embeddings import interaction_embeddings
from assets.ingest import ingest_interactions, raw_interactions
from assets.quality import interaction_quality
from assets.teaching import preference_pairs, teacher_samples
from ml.generate import generate
from orchestration.resources import LearnloopResource
from store.db import session_scope
from store.models import AuditAttempt, ReviewItem
from store.repo import decide

N_RECORDS = 400
CHAIN = [interaction_embeddings, audit_candidates, audited_errors, teacher_samples,
         preference_pairs]


@pytest.fixture()
def demo_home(learnloop_home, monkeypatch):
    """A few hundred generated records, landed and ingested (2 days)."""
    for var in ("LEARNLOOP_AUDITOR", "LEARNLOOP_TEACHER"):
        monkeypatch.delenv(var, raising=False)
    summary = generate(learnloop_home / "landing", N_RECORDS, seed=3, days=2)
    days = sorted(summary["per_day"]) if "per_day" in summary else sorted(
        p.name[5:] for p in (learnloop_home / "landing").glob("date=*"))
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("landing_date", days)
        for day in days:
            result = dg.materialize([raw_interactions, ingest_interactions, interaction_quality],
                                    partition_key=day, instance=instance,
                                    resources={"learnloop": LearnloopResource(home=str(learnloop_home))})
            assert result.success
    return learnloop_home


def _rows(home, sql):
    con = duckdb.connect(str(home / "warehouse.duckdb"), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def _materialize(home, assets=CHAIN, run_config=None):
    with dg.instance_for_test() as instance:
        result = dg.materialize(assets, instance=instance, run_config=run_config,
                                resources={"learnloop": LearnloopResource(home=str(home))})
    assert result.success
    return {m.materialization.asset_key.to_user_string(): m.materialization.metadata
            for m in result.get_asset_materialization_events()}


def _counts(url):
    with session_scope(url) as s:
        return dict(s.execute(select(ReviewItem.kind, func.count()).group_by(ReviewItem.kind)).all())


def test_chain_creates_review_items_and_is_idempotent(demo_home):
    meta = _materialize(demo_home)
    url = f"sqlite:///{demo_home / 'store.db'}"
    n_interactions = _rows(demo_home, "SELECT count(*) FROM interactions")[0][0]
    assert meta["interaction_embeddings"]["added"].value == n_interactions

    cands = meta["audit_candidates"]["dagster/row_count"].value
    assert 0 < cands < n_interactions
    audit = meta["audited_errors"]
    assert audit["audited"].value == cands and audit["failures"].value == 0
    assert audit["errors"].value > 0
    assert audit["auditor"].value == "rules" and audit["prompt_version"].value == "rules-v1"
    # demo truth.jsonl sits in the landing root. Measured on this fixture (generate seed=3, 400
    # records, 2 days; rules-v1): precision 0.8158 (31 of 38 flags), recall 0.6078 (31 of 51
    # labelled mistakes). The floors allow two flips each (float noise of MiniLM near the
    # relevance threshold), so losing a rule or a signal fails here.
    assert audit["demo_only/precision"].value >= 0.76
    assert audit["demo_only/recall"].value >= 0.56
    assert set(json.loads(json.dumps(audit["errors_by_category"].value))) <= {
        "factual_error", "hallucinated_policy", "refusal_of_valid_request", "pii_leak",
        "incomplete", "off_topic", "tone", "formatting"}

    counts = _counts(url)
    clean = audit["clean_review_items_created"].value
    assert counts["error"] == audit["errors"].value + clean
    with session_scope(url) as s:
        err = s.scalars(select(ReviewItem).where(ReviewItem.kind == "error")).first()
        assert err.status == "pending" and err.auditor == "rules"
        assert err.dedup_key == f"{err.interaction_id}:rules:rules-v1"
        assert err.messages and err.original_response is not None and err.explanation
        assert err.category and err.severity and 0 < err.confidence <= 1
        samples = list(s.scalars(select(ReviewItem).where(ReviewItem.kind == "sample")))
        sources = {x.source for x in samples}
        assert "human_agent" in sources
        assert all(x.proposed_response for x in samples)
        assert any(x.parent_id is not None for x in samples)
        n_ok = s.scalar(select(func.count()).select_from(AuditAttempt)
                        .where(AuditAttempt.status == "ok"))
        assert n_ok == cands
    n_human = _rows(demo_home,
                    "SELECT count(*) FROM interactions WHERE corrected_response IS NOT NULL")[0][0]
    assert sum(1 for x in samples if x.source == "human_agent") == n_human
    assert meta["preference_pairs"]["dagster/row_count"].value == 0  # nothing approved yet

    # reviewers approve one sample and edit another -> preference pairs
    with session_scope(url) as s:
        first, second = samples[0], samples[1]
        decide(s, first.id, decision="approve", expected_version=first.version, actor="rev")
        decide(s, second.id, decision="edit", expected_version=second.version, actor="rev",
               final_response="An edited, better answer.")

    # second run: nothing new to audit, no duplicate items; pairs appear
    meta2 = _materialize(demo_home)
    assert meta2["interaction_embeddings"]["added"].value == 0
    assert meta2["audit_candidates"]["dagster/row_count"].value == 0
    assert meta2["audited_errors"]["review_items_created"].value == 0
    assert meta2["teacher_samples"]["samples_created"].value == 0
    assert _counts(url) == counts
    pairs = _rows(demo_home, "SELECT chosen, rejected, status FROM preference_pairs ORDER BY 3")
    assert len(pairs) == 2
    assert ("An edited, better answer.", second.original_response, "edited") in pairs
    assert all(c != r for c, r, _ in pairs)
    n_verdicts = _rows(demo_home, "SELECT count(*) FROM audited_errors")[0][0]
    assert n_verdicts == cands

    # a manual audit of named interactions already audited OK selects nothing new
    iid = samples[0].interaction_id
    meta3 = _materialize(demo_home, [audit_candidates, audited_errors],
                         manual_audit_run_config(interaction_ids=[iid, "no-such-id"]))
    assert meta3["audit_candidates"]["manual"].value is True
    expected = 0 if _rows(demo_home, f"SELECT count(*) FROM audited_errors "
                                     f"WHERE interaction_id = '{iid}'")[0][0] else 1
    assert meta3["audit_candidates"]["dagster/row_count"].value == expected


def test_jobs_and_schedules_are_defined():
    defs = dg.Definitions(
        assets=[raw_interactions, ingest_interactions, interaction_quality, *CHAIN],
        jobs=[audit_job, teaching_job, manual_audit_job],
        schedules=[hourly_audit_schedule, daily_teacher_schedule],
        resources={"learnloop": LearnloopResource()},
    )
    dg.Definitions.validate_loadable(defs)
    assert hourly_audit_schedule.cron_schedule == "0 * * * *"
    job = defs.resolve_job_def("manual_audit_job")
    assert {n.name for n in job.nodes} == {"audit_candidates", "audited_errors"}
    groups = {k.to_user_string(): g for k, g in
              [(a.key, a.group_names_by_key[a.key]) for a in CHAIN]}
    assert groups == {"interaction_embeddings": "quality", "audit_candidates": "audit",
                      "audited_errors": "audit", "teacher_samples": "teaching",
                      "preference_pairs": "teaching"}


def test_llm_auditor_failures_are_recorded_and_retried_next_run(learnloop_home, monkeypatch):
    """LEARNLOOP_AUDITOR=openai against the stand-in server: the first 3 calls fail (HTTP 500),
    are recorded as failed AuditAttempts with the reason, and the next run audits exactly them."""
    from tests.llm.fake_servers import FakeOpenAIServer, error, ok

    verdict = json.dumps({"is_error": True, "category": "factual_error", "severity": "high",
                          "confidence": 0.8, "explanation": "The price is wrong."})
    summary = generate(learnloop_home / "landing", 60, seed=9, days=1)
    day = sorted(summary["days"])[0]
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("landing_date", [day])
        assert dg.materialize([raw_interactions, ingest_interactions, interaction_quality],
                              partition_key=day, instance=instance,
                              resources={"learnloop": LearnloopResource(home=str(learnloop_home))}
                              ).success
    calls = {"n": 0}

    def behaviour(_request):
        calls["n"] += 1
        return error(500, "upstream exploded") if calls["n"] <= 3 else ok(verdict)

    with FakeOpenAIServer(default=behaviour) as server:
        monkeypatch.setenv("LEARNLOOP_TEST_AUDIT_KEY", "sk-test-secret-abcdef0123456789")
        for k, v in {"LEARNLOOP_AUDITOR": "openai", "LEARNLOOP_AUDITOR_MODEL": "gpt-test",
                     "LEARNLOOP_AUDITOR_BASE_URL": server.base_url,
                     "LEARNLOOP_AUDITOR_API_KEY_ENV": "LEARNLOOP_TEST_AUDIT_KEY",
                     "LEARNLOOP_AUDITOR_MAX_RETRIES": "0", "LEARNLOOP_LLM_CACHE": "none"}.items():
            monkeypatch.setenv(k, v)
        first = _materialize(learnloop_home, [audit_candidates, audited_errors])
        n_cands = first["audit_candidates"]["dagster/row_count"].value
        a1 = first["audited_errors"]
        assert a1["auditor"].value == "llm:openai/gpt-test"
        assert a1["failures"].value == 3 and a1["audited"].value == n_cands - 3
        assert a1["tokens"].value > 0
        url = f"sqlite:///{learnloop_home / 'store.db'}"
        with session_scope(url) as s:
            failed = list(s.scalars(select(AuditAttempt).where(AuditAttempt.status == "failed")))
            assert len(failed) == 3
            assert all("500" in f.reason and "sk-test-secret" not in f.reason for f in failed)
            failed_ids = {f.interaction_id for f in failed}
            n_items = s.scalar(select(func.count()).select_from(ReviewItem))
            assert n_items == n_cands - 3
            item = s.scalars(select(ReviewItem)).first()
            assert item.dedup_key.endswith(":llm:openai/gpt-test:auditor-v1")

        second = _materialize(learnloop_home, [audit_candidates, audited_errors])
        assert second["audit_candidates"]["dagster/row_count"].value == 3
        assert second["audit_candidates"]["reason/retry"].value == 3
        assert second["audited_errors"]["failures"].value == 0
        assert second["audited_errors"]["retried_items"].value == 3
        with session_scope(url) as s:
            rows = list(s.scalars(select(AuditAttempt).where(
                AuditAttempt.interaction_id.in_(failed_ids))))
            assert {(r.status, r.attempts) for r in rows} == {("ok", 2)}
            assert s.scalar(select(func.count()).select_from(ReviewItem)) == n_cands
        third = _materialize(learnloop_home, [audit_candidates, audited_errors])
        assert third["audit_candidates"]["dagster/row_count"].value == 0
        assert server.calls == n_cands + 3
