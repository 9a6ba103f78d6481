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


def test_approved_replies_live_in_interaction_embeddings_next_to_questions(tmp_path):
    """The stored layout the issue names: questions and approved replies in one LanceDB table
    ``interaction_embeddings``, told apart by ``kind``; rebuilding replaces only the replies,
    and the interaction-side readers see only question rows."""
    from datetime import date

    db = embeddings.connect(str(tmp_path / "lancedb"))
    frame = pl.DataFrame({"interaction_id": ["a1", "q9"], "tenant_id": ["acme", "acme"],
                          "partition_date": [date(2026, 1, 1)] * 2,
                          "user_message": ["How much does the Pro laptop cost?", "Hi?"],
                          "response": ["It is $999.", "Hello."]})
    assert embeddings.add_new_embeddings(db, frame) == (2, 0)
    assert build_answer_index(db, ENTRIES) == 4
    assert embeddings.table_names(db) == [embeddings.EMBEDDINGS_TABLE]
    table = embeddings.open_embeddings(db)
    kinds = pl.DataFrame(table.search().select(["interaction_id", "kind", "answer"])
                         .limit(None).to_arrow())
    assert kinds.group_by("kind").len().sort("kind").rows() == [("approved_reply", 4),
                                                                 ("question", 2)]
    a1 = kinds.filter((pl.col("interaction_id") == "a1") & (pl.col("kind") == "approved_reply"))
    assert a1["answer"].to_list() == ["The Pro laptop costs $1,299.00."]
    # question-side readers ignore approved replies (a1 has both kinds of row)
    assert embeddings.embedded_ids(table) == {("acme", "a1"), ("acme", "q9")}
    assert embeddings.add_new_embeddings(db, frame) == (0, 2)
    assert sorted(embeddings.read_relevance(db)["interaction_id"].to_list()) == ["a1", "q9"]
    assert set(embeddings.read_question_vectors(db, [("acme", "a1"), ("acme", "a2")])) == {
        ("acme", "a1")}
    # a rebuild replaces the approved replies and keeps the questions
    assert build_answer_index(db, ENTRIES.head(1)) == 1
    table = embeddings.open_embeddings(db)
    assert table.count_rows("kind = 'approved_reply'") == 1
    assert table.count_rows("kind = 'question'") == 2
    [p] = RetrievalTeacher(db, threshold=0.7).propose_many(
        [{"interaction_id": "q1", "tenant_id": "acme",
          "user_message": "What is the price of the Pro laptop?"}])
    assert p.response == "The Pro laptop costs $1,299.00."


def test_a_table_of_the_first_layout_is_migrated_and_the_old_table_dropped(tmp_path):
    """interaction_embeddings written before `kind` existed gets the columns (its rows become
    questions); the separate approved_answers table of the first layout is dropped on rebuild."""
    import pyarrow as pa

    db = embeddings.connect(str(tmp_path / "lancedb"))
    old = pa.schema([f for f in embeddings.embeddings_schema()
                     if f.name not in ("kind", "answer", "origin", "item_id")])
    vec = pa.FixedSizeListArray.from_arrays(pa.array([0.1] * embeddings.DIM, pa.float32()),
                                            embeddings.DIM)
    db.create_table(embeddings.EMBEDDINGS_TABLE, data=pa.table({
        "interaction_id": ["x"], "tenant_id": ["t"], "partition_date": ["2026-01-01"],
        "question": ["q"], "vector": vec, "response_vector": vec, "qa_relevance": [0.5],
        "model": ["m"]}, schema=old))
    db.create_table("approved_answers", data=pa.table({"interaction_id": ["y"]}))
    assert embeddings.embedded_ids(embeddings.open_embeddings(db)) == {("t", "x")}
    assert build_answer_index(db, ENTRIES) == 4
    assert "approved_answers" not in embeddings.table_names(db)
    assert embeddings.read_relevance(db)["interaction_id"].to_list() == ["x"]


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


# ---- issue 8.13: a similar question is not necessarily the same question -----------------------
OZ = pl.DataFrame({
    "interaction_id": ["oz1"], "tenant_id": ["acme"],
    "question": ["Who played the scarecrow in The Wizard of Oz?"],
    "answer": ["Ray Bolger played the Scarecrow in The Wizard of Oz (1939)."],
    "origin": ["sample_item"], "item_id": [21],
})


def test_the_answer_about_another_entity_is_not_proposed(tmp_path):
    """The scarecrow's actor is not the answer to a question about the lion, however similar the
    two questions are in MiniLM."""
    db = embeddings.connect(str(tmp_path / "oz"))
    build_answer_index(db, OZ)
    teacher = RetrievalTeacher(db, threshold=0.8)
    lion = {"interaction_id": "q", "tenant_id": "acme",
            "user_message": "Who played the lion in The Wizard of Oz?"}
    [vec] = embeddings.encode([lion["user_message"]])
    [old] = embeddings.encode([OZ["question"][0]])
    assert float(vec @ old) >= 0.8  # similar enough by the embedding alone
    assert teacher.propose_many([lion]) == [None]
    same = {"interaction_id": "q2", "tenant_id": "acme",
            "user_message": "Who played the Scarecrow in the Wizard of Oz?"}
    [p] = teacher.propose_many([same])
    assert p is not None and p.extra["confidence"] == "high"
    assert 0 < p.extra["confidence_score"] <= 1


def test_question_match_rules():
    from ml.teacher.retrieval import question_match

    assert not question_match("Who played the lion in The Wizard of Oz?",
                              "Who played the scarecrow in The Wizard of Oz?").ok
    assert question_match("What is the price of the Pro laptop?",
                          "How much does the Pro laptop cost?").ok  # price ~ cost
    assert not question_match("Can I return a watch after 40 days?",
                              "Can I return a watch after 30 days?").ok  # numbers
    assert not question_match("How much is the Aura speaker?",
                              "How much is the Volt charger?").ok  # names
    assert question_match("Where is my order ES-1234567?", "Where is my order ES-7654321?").ok
    assert not question_match("How do I pay?", "How do I pay?", intent="billing",
                              similar_intent="refund").ok
    assert question_match("How do I pay?", "How do I pay?", intent="billing").ok  # one unknown


def test_intent_of_the_indexed_question_must_match(db):
    teacher = RetrievalTeacher(db, threshold=0.7, intents={"a1": "pricing"})
    row = {"interaction_id": "q1", "tenant_id": "acme", "intent": "complaint",
           "user_message": "What is the price of the Pro laptop?"}
    assert teacher.propose_many([row]) == [None]
    row["intent"] = "pricing"
    [p] = teacher.propose_many([row])
    assert p.extra["similar_interaction_id"] == "a1" and p.extra["confidence"] in (
        "high", "medium", "low")


def test_confidence_labels():
    from ml.teacher.retrieval import confidence

    assert confidence(0.95, 1.0)[0] == "high"
    assert confidence(0.88, 0.6)[0] == "medium"
    assert confidence(0.81, 0.25)[0] == "low"
    assert confidence(0.95, 1.0)[1] > confidence(0.81, 0.25)[1]
