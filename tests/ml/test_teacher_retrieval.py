"""The retrieval teacher on a tiny LanceDB in tmp_path: the most similar approved answer above
the threshold, marked with its origin; nothing when nothing is similar enough; humans first."""

from __future__ import annotations

import polars as pl
import pytest

from ml import embeddings
from ml.teacher import propose_corrections
from ml.teacher.retrieval import APPROVED_TABLE, RetrievalTeacher, build_answer_index

ENTRIES = pl.DataFrame({
    "interaction_id": ["a1", "a2", "a3", "b1"],
    "tenant_id": ["acme", "acme", "acme", "other"],
    "question": ["How much does the Pro laptop cost?",
                 "Can I return a watch I don't like?",
                 "How do I reset my password?",
                 "How much does the Pro laptop cost?"],
    "answer": ["The Pro laptop costs $1,299.00.",
               "Yes, you can return any item within 30 days of delivery.",
               "Open Settings, choose Security, then Reset password.",
               "Other tenant's answer."],
    "origin": ["sample_item", "human_correction", "sample_item", "sample_item"],
    "item_id": [11, None, 13, 14],
})


@pytest.fixture()
def db(tmp_path):
    db = embeddings.connect(str(tmp_path / "lancedb"))
    assert build_answer_index(db, ENTRIES) == 4
    return db


def test_most_similar_approved_answer_is_proposed_with_its_origin(db):
    teacher = RetrievalTeacher(db, threshold=0.7)
    rows = [{"interaction_id": "q1", "tenant_id": "acme",
             "user_message": "What is the price of the Pro laptop?"},
            {"interaction_id": "q2", "tenant_id": "acme",
             "user_message": "I want to send back the watch, is that possible?"}]
    p1, p2 = teacher.propose_many(rows)
    assert p1.source == "retrieval" and p1.response == "The Pro laptop costs $1,299.00."
    assert p1.extra["similar_interaction_id"] == "a1" and p1.extra["answer_item_id"] == 11
    assert 0.7 <= p1.extra["similarity"] <= 1.0
    assert p2 is not None and p2.extra["similar_interaction_id"] == "a2"
    assert p2.extra["answer_origin"] == "human_correction"


def test_nothing_similar_enough_gives_no_proposal(db):
    teacher = RetrievalTeacher(db, threshold=0.8)
    result = propose_corrections([{"interaction_id": "q3", "tenant_id": "acme",
                                   "user_message": "Which airports do you fly to in winter?"}],
                                 retrieval=teacher)
    assert result.proposals == {} and result.no_proposal == ["q3"]


def test_own_interaction_and_other_tenants_are_never_proposed(db):
    teacher = RetrievalTeacher(db, threshold=0.5)
    [p] = teacher.propose_many([{"interaction_id": "a1", "tenant_id": "acme",
                                 "user_message": "How much does the Pro laptop cost?"}])
    assert p is None or p.extra["similar_interaction_id"] not in ("a1", "b1")
    [q] = teacher.propose_many([{"interaction_id": "x", "tenant_id": "other",
                                 "user_message": "How much does the Pro laptop cost?"}])
    assert q.response == "Other tenant's answer."


def test_human_correction_comes_first(db):
    teacher = RetrievalTeacher(db, threshold=0.7)
    result = propose_corrections([{"interaction_id": "q1", "tenant_id": "acme",
                                   "user_message": "What is the price of the Pro laptop?",
                                   "corrected_response": "It is $1,299.", "correction_agent_id": "ag"}],
                                 retrieval=teacher)
    assert result.proposals["q1"].source == "human_agent"
    assert result.proposals["q1"].extra["agent_id"] == "ag"


def test_empty_or_missing_index_proposes_nothing(tmp_path):
    db = embeddings.connect(str(tmp_path / "empty"))
    teacher = RetrievalTeacher(db)
    assert teacher.size == 0
    assert teacher.propose_many([{"interaction_id": "q", "user_message": "hi"}]) == [None]
    assert APPROVED_TABLE not in embeddings.table_names(db)


def test_index_rejects_blank_entries_and_bad_threshold(tmp_path):
    db = embeddings.connect(str(tmp_path / "l"))
    bad = ENTRIES.with_columns(pl.when(pl.col("interaction_id") == "a2").then(pl.lit(" "))
                               .otherwise(pl.col("answer")).alias("answer"))
    with pytest.raises(ValueError, match="a2"):
        build_answer_index(db, bad)
    with pytest.raises(ValueError, match="threshold"):
        RetrievalTeacher(db, threshold=0.0)


def test_references_of_the_similar_conversation_are_carried_over_or_flagged():
    from ml.teacher.retrieval import adapt_references

    answer, adapted, warning = adapt_references(
        "Your order ES-9118378 ships today.", "Where is order ES-9118378?",
        "Can you check the status of order ES-5336021?")
    assert answer == "Your order ES-5336021 ships today." and warning is None
    assert adapted == {"ES-9118378": "ES-5336021"}
    answer, adapted, warning = adapt_references(
        "Your order ES-9118378 ships today.", "Where is order ES-9118378?", "Where is my parcel?")
    assert answer == "Your order ES-9118378 ships today." and adapted == {}
    assert "ES-9118378" in warning
    assert adapt_references("It costs $10.", "Price?", "Cost?") == ("It costs $10.", {}, None)
