"""MiniLM embeddings (offline, loaded once per process) and the incremental LanceDB table."""

from __future__ import annotations

from datetime import date

import numpy as np
import polars as pl

from ml import embeddings


def test_vectors_are_normalised_and_semantic():
    v = embeddings.encode(["How much is the laptop?", "What does the laptop cost?",
                           "Bananas are yellow.", None, "  "])
    assert v.shape == (5, embeddings.DIM) and v.dtype == np.float32
    assert np.allclose(np.linalg.norm(v[:3], axis=1), 1.0, atol=1e-4)
    assert not v[3].any() and not v[4].any()
    assert float(v[0] @ v[1]) > 0.7 > float(v[0] @ v[2])
    assert embeddings.load_model() is embeddings.load_model()  # cached per process


def test_qa_relevance_separates_answers_from_unrelated_replies():
    rel = embeddings.qa_relevance(
        ["How much is the Pro laptop?", "How much is the Pro laptop?", "Where is my order?"],
        ["The Pro laptop costs $1,299.", "Honey never spoils.", None])
    assert rel[0] > 0.5 and rel[1] < 0.2 and np.isnan(rel[2])


def test_table_is_incremental_on_interaction_id(tmp_path):
    db = embeddings.connect(str(tmp_path / "lancedb"))
    frame = pl.DataFrame({"interaction_id": ["a", "b"], "tenant_id": ["t", "t"],
                          "partition_date": [date(2026, 1, 1)] * 2,
                          "user_message": ["How much is the laptop?", "Where is my parcel?"],
                          "response": ["It costs $1,299.", "It ships tomorrow."]})
    assert embeddings.add_new_embeddings(db, frame) == (2, 0)
    more = pl.concat([frame, frame.head(1).with_columns(pl.lit("c").alias("interaction_id"))])
    assert embeddings.add_new_embeddings(db, more) == (1, 2)
    table = embeddings.open_embeddings(db)
    assert table.count_rows() == 3
    rel = embeddings.read_relevance(db, ["a", "c"])
    assert sorted(rel["interaction_id"].to_list()) == ["a", "c"]
    assert rel["qa_relevance"].min() > 0.3
    vecs = embeddings.read_question_vectors(db, [("t", "b"), ("t", "zzz"), ("u", "a")])
    assert set(vecs) == {("t", "b")} and vecs[("t", "b")].shape == (embeddings.DIM,)
    # ids are per tenant: tenant u's "a" is a new interaction, embedded on its own
    other = frame.head(1).with_columns(pl.lit("u").alias("tenant_id"))
    assert embeddings.add_new_embeddings(db, other) == (1, 0)
    assert ("u", "a") in embeddings.embedded_ids(embeddings.open_embeddings(db))
