"""Quality scoring: sub-signal and dimension renormalization, confidence, layout."""

from __future__ import annotations

from datetime import date

import polars as pl
import pytest

from ml.ingest import INTERACTION_SCHEMA
from ml.quality import SCORER_VERSION, quality_weights, score_interactions
from ml.tables import QUALITY_COLUMNS


def frame(*rows: dict) -> pl.DataFrame:
    base = {c: None for c in INTERACTION_SCHEMA}
    full = []
    for i, r in enumerate(rows):
        row = dict(base, interaction_id=f"i{i}", tenant_id="t", partition_date=date(2024, 3, 1),
                   tags=[], pii_types=[], messages="[]")
        row.update(r)
        full.append(row)
    return pl.DataFrame(full, schema=INTERACTION_SCHEMA)


def one(**r) -> dict:
    return score_interactions(frame(r)).row(0, named=True)


def test_layout_and_version():
    out = score_interactions(frame({"latency_ms": 1000.0}, {"feedback_rating": 5}))
    assert list(out.columns) == list(QUALITY_COLUMNS)
    assert out["scorer_version"].to_list() == [SCORER_VERSION] * 2
    assert out.height == 2


def test_weights_documented():
    w = quality_weights()
    assert w == {"user_satisfaction": 0.30, "functional_correctness": 0.25,
                 "context_relevance": 0.15, "efficiency": 0.10}


def test_only_latency_scores_from_efficiency_alone():
    r = one(latency_ms=4000.0)  # 4 s -> 1 - (4 - 2) / 10 = 0.8
    assert r["efficiency"] == pytest.approx(0.8)
    assert r["quality_score"] == pytest.approx(0.8)
    assert r["dimensions_present"] == 1
    assert r["user_satisfaction"] is None and r["context_relevance"] is None
    assert r["functional_correctness"] is None


def test_latency_clamped():
    assert one(latency_ms=500.0)["efficiency"] == pytest.approx(1.0)
    assert one(latency_ms=60_000.0)["efficiency"] == pytest.approx(0.0)


def test_efficiency_combines_time_and_tokens():
    r = one(latency_ms=4000.0, tokens_completion=1200)  # time 0.8 (w .4), tokens 0.5 (w .3)
    assert r["efficiency"] == pytest.approx((0.4 * 0.8 + 0.3 * 0.5) / 0.7)


def test_user_satisfaction_subsignals_renormalized():
    assert one(feedback_rating=4)["user_satisfaction"] == pytest.approx(0.8)
    assert one(feedback_thumbs="down")["user_satisfaction"] == pytest.approx(0.0)
    # explicit 1.0 (w .5) + implicit modified 0.7 (w .3) + temporal 120 s -> 0.5 (w .2)
    r = one(feedback_rating=5, modified=True, time_to_first_use_s=120.0)
    assert r["user_satisfaction"] == pytest.approx(0.5 * 1.0 + 0.3 * 0.7 + 0.2 * 0.5)
    # implicit + temporal only: renormalized over 0.3 + 0.2
    r = one(accepted=True, time_to_first_use_s=10.0)
    assert r["user_satisfaction"] == pytest.approx(1.0)
    r = one(abandoned=True, time_to_first_use_s=10.0)
    assert r["user_satisfaction"] == pytest.approx(0.2 / 0.5)
    assert one(requested_human=True)["user_satisfaction"] == pytest.approx(0.0)
    assert one(user_continued=True)["user_satisfaction"] == pytest.approx(0.6)


def test_quality_weighted_over_present_dimensions():
    r = one(feedback_rating=5, latency_ms=4000.0)  # satisfaction 1.0 (.30), efficiency .8 (.10)
    assert r["quality_score"] == pytest.approx((0.30 * 1.0 + 0.10 * 0.8) / 0.40)
    assert r["dimensions_present"] == 2


def test_functional_correctness_signals():
    assert one(corrected_response="fixed", response="x")["functional_correctness"] == pytest.approx(0.1)
    assert one(completed_action=True)["functional_correctness"] == pytest.approx(1.0)
    assert one(response="   ")["functional_correctness"] == pytest.approx(0.0)
    assert one(response="I'm sorry, I can't help with that.")["functional_correctness"] == \
        pytest.approx(0.2)
    assert one(response="Here is the answer and it goes on and on " * 3 + "and then")[
        "functional_correctness"] == pytest.approx(0.5)
    assert one(response="Here is the answer and it goes on and on " * 3 + "with the")[
        "functional_correctness"] == pytest.approx(0.5)
    assert one(response="Your parcel arrives tomorrow.")["functional_correctness"] is None


def test_a_long_reply_without_a_final_full_stop_is_not_truncated():
    """Issue 8.12: lists, code, sign-offs end without a full stop; that is no evidence of a cut."""
    for reply in ("Here are three options that many people like:\n- Luna\n- Milo\n- Oliver",
                  "Many of the world's most successful companies use PHP, and it keeps "
                  "evolving with each release of the language",
                  "Run this in your terminal to install it:\n\npip install gspread oauth2client",
                  "You're welcome! If you think of something else, let me know 😊"):
        assert one(response=reply)["functional_correctness"] is None, reply


def test_as_an_ai_disclaimer_followed_by_an_answer_is_not_a_refusal():
    answer = ("As an AI language model, I don't have personal preferences, but here are some "
              "popular choices. Paris is loved for its museums and food. Rome has ancient history "
              "on every corner. Kyoto offers temples and gardens. Lisbon is sunny and affordable.")
    assert one(response=answer)["functional_correctness"] is None
    assert one(response="As an AI, I cannot process this kind of request.")[
        "functional_correctness"] == pytest.approx(0.2)


def test_open_domain_reply_sharing_no_word_is_not_low_relevance():
    """Issue 8.12: word overlap marked most open-domain chat as low quality."""
    r = one(user_message="What's a good name for my new kitten?",
            response="How about Luna, Milo or Oliver? All three are popular and easy to call.")
    assert r["context_relevance"] is None
    assert one(user_message="Write a short poem about autumn.",
               response="Leaves drift down in amber light, / the evening cools.")[
        "context_relevance"] is None


def test_context_relevance_lexical():
    hi = one(user_message="How do I reset my password?",
             response="To reset your password open settings and choose reset password.")
    lo = one(user_message="How do I reset my password?",
             response="Our shop sells shoes and hats in many colours.")
    assert hi["context_relevance"] == pytest.approx(1.0)
    assert lo["context_relevance"] == pytest.approx(0.0)
    assert one(user_message=None, response="x")["context_relevance"] is None


def test_confidence_lower_without_feedback():
    with_fb = one(feedback_rating=4, latency_ms=1000.0, response="ok", user_message="hi there")
    implicit = one(accepted=True, latency_ms=1000.0, response="ok", user_message="hi there")
    none = one(latency_ms=1000.0, response="ok", user_message="hi there")
    assert with_fb["confidence"] > implicit["confidence"] > none["confidence"]
    assert none["confidence"] == pytest.approx((0.3 + 0.5 + 2 / 3) / 3)
    objective = one(completed_action=True, feedback_rating=4, response="ok", user_message="hi",
                    intent="billing")
    assert objective["confidence"] == pytest.approx(1.0)


def test_scores_in_range_on_mixed_rows():
    out = score_interactions(frame(
        {"feedback_rating": 1, "abandoned": True, "latency_ms": 99999.0, "response": ""},
        {"feedback_rating": 5, "accepted": True, "latency_ms": 10.0, "tokens_completion": 10},
        {},
    ))
    q = out["quality_score"].drop_nulls()
    assert ((q >= 0) & (q <= 1)).all()
    assert ((out["confidence"] >= 0) & (out["confidence"] <= 1)).all()
    assert out["quality_score"][2] is None and out["dimensions_present"][2] == 0


def test_missing_column_is_loud():
    with pytest.raises(ValueError, match="latency_ms"):
        score_interactions(frame({}).drop("latency_ms"))
