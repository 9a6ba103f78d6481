"""The retrieval teacher's batched search (one LanceDB search per tenant and batch of rows) finds
exactly what one search per row finds, on a real small LanceDB table in tmp_path: the same hits
in the same order, hence the same proposals; with the table's scalar indexes and with an ANN
index on the vectors (the teacher searches its few approved replies exactly)."""

from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow as pa
import pytest

from ml import embeddings, vector_index
from ml.teacher import retrieval
from ml.teacher.retrieval import RetrievalTeacher, build_answer_index

DIM = embeddings.DIM
TEXTS = ["How do I reset my password?", "Where is my order 5?", "Where is my order 7?",
         "Can I return the Aura speaker?", "How much is express delivery?"]


def _unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)


@pytest.fixture()
def setup(tmp_path, monkeypatch):
    """30 approved replies of 2 tenants around 5 question clusters (a2 has two replies), and 25
    rows to teach: one is an interaction with approved replies itself, one has no question
    text, one a tenant without replies."""
    monkeypatch.setattr(retrieval, "QUERY_BATCH", 4)  # several batches per tenant
    rng = np.random.default_rng(5)
    centres = _unit(rng.normal(size=(len(TEXTS), DIM)))
    ids = [f"a{i}" for i in range(29)] + ["a2"]
    cluster = [i % len(TEXTS) for i in range(30)]
    cluster[-1] = cluster[2]
    entries = pl.DataFrame({
        "interaction_id": ids,
        "tenant_id": ["acme" if i % 3 else "globex" for i in range(30)],
        "question": [TEXTS[c] for c in cluster],
        "answer": [f"Answer {i} for: {TEXTS[c]}" for i, c in enumerate(cluster)],
        "origin": ["sample_item"] * 29 + ["human_correction"],
        "item_id": list(range(30)),
    })
    known = {}
    for iid, c in zip(ids, cluster, strict=True):
        known.setdefault(iid, _unit(centres[c] + 0.04 * rng.normal(size=DIM)))
    db = embeddings.connect(str(tmp_path / "lancedb"))
    assert build_answer_index(db, entries, known) == 30
    rows, vectors = [], {}
    for i in range(25):
        c = i % len(TEXTS)
        rows.append({"interaction_id": f"q{i}", "tenant_id": "acme" if i % 2 else "globex",
                     "user_message": TEXTS[c]})
        vectors[f"q{i}"] = _unit(centres[c] + 0.05 * rng.normal(size=DIM))
    rows[3]["interaction_id"] = "a2"  # an interaction that has approved replies itself
    rows[3]["tenant_id"] = entries.filter(pl.col("interaction_id") == "a2")["tenant_id"][0]
    vectors["a2"] = vectors.pop("q3")
    rows[4] = {"interaction_id": "q4", "tenant_id": "acme", "user_message": None}
    vectors.pop("q4")  # no question text: zero vector, no search
    rows[5]["tenant_id"] = "nobody"
    return db, rows, vectors


def test_batched_hits_equal_one_search_per_row(setup):
    db, rows, vectors = setup
    teacher = RetrievalTeacher(db, threshold=0.5)
    vecs = teacher._vectors(rows, vectors)
    batched = teacher._search_batched(rows, vecs)
    single = [teacher._search_one(r, v) for r, v in zip(rows, vecs, strict=True)]
    assert batched == single
    assert batched[4] is None and batched[5] == []  # no text; a tenant without replies
    assert all(len(h) == retrieval.SEARCH_K + 1 for i, h in enumerate(batched) if i not in (4, 5))
    assert "a2" not in {h["interaction_id"] for h in batched[3]}  # its own replies left out
    for hits in batched:
        distances = [h["_distance"] for h in hits or []]
        assert distances == sorted(distances)


def test_batched_proposals_equal_the_per_row_path(setup):
    db, rows, vectors = setup
    teacher = RetrievalTeacher(db, threshold=0.5)
    many = teacher.propose_many(rows, vectors)
    assert many == teacher.propose_one_by_one(rows, vectors)
    assert sum(p is not None for p in many) >= 15
    assert many[4] is None and many[5] is None
    # "order 5" is never answered by "order 7" (numbers differ): the rejection is recorded
    order5 = [p for r, p in zip(rows, many, strict=True) if r["user_message"] == TEXTS[1]]
    assert order5 and all(p.extra["similar_question"] == TEXTS[1] for p in order5 if p)


def test_results_stay_exact_with_an_ann_index_on_the_table(setup):
    """Question rows past the ANN size get an index on ``vector``; the teacher's search of the
    approved replies bypasses it and finds what it found without one."""
    db, rows, vectors = setup
    teacher = RetrievalTeacher(db, threshold=0.5)
    before = teacher._search_batched(rows, teacher._vectors(rows, vectors))
    rng = np.random.default_rng(9)
    n = 400
    qv = _unit(rng.normal(size=(n, DIM)))
    flat = pa.FixedSizeListArray.from_arrays(pa.array(qv.reshape(-1)), DIM)
    table = embeddings.open_embeddings(db)
    table.add(pa.table({
        "interaction_id": [f"z{i}" for i in range(n)], "tenant_id": ["acme"] * n,
        "partition_date": ["2026-12-01"] * n, "question": ["q"] * n, "vector": flat,
        "response_vector": flat, "qa_relevance": pa.array([0.5] * n, pa.float64()),
        "model": [embeddings.MODEL_NAME] * n, "kind": [embeddings.KIND_QUESTION] * n,
        "answer": pa.nulls(n, pa.string()), "origin": pa.nulls(n, pa.string()),
        "item_id": pa.nulls(n, pa.int64())}, schema=embeddings.embeddings_schema()))
    policy = vector_index.IndexPolicy(ann_min_rows=256, index_type="IVF_PQ",
                                      bitmap_columns=("kind",),
                                      btree_columns=("tenant_id", "interaction_id"))
    done = vector_index.maintain_embeddings(table, policy)
    assert done["ann_index"] == "built"
    fresh = RetrievalTeacher(db, threshold=0.5)
    after = fresh._search_batched(rows, fresh._vectors(rows, vectors))
    assert [[h["interaction_id"] for h in x or []] for x in after] == \
        [[h["interaction_id"] for h in x or []] for x in before]
    assert after == before


def test_build_answer_index_maintains_the_table(tmp_path):
    db = embeddings.connect(str(tmp_path / "lancedb"))
    entries = pl.DataFrame({"interaction_id": ["a1"], "tenant_id": ["acme"],
                            "question": [TEXTS[0]], "answer": ["Open Settings."],
                            "origin": ["sample_item"], "item_id": [1]})
    done: dict = {}
    assert build_answer_index(db, entries, maintenance=done) == 1
    assert sorted(done["scalar_indexes_created"]) == ["interaction_id", "kind", "partition_date",
                                                      "tenant_id"]
    assert done["ann_index"] == "none" and done["rows"] == 1
    table = embeddings.open_embeddings(db)
    assert {ix.columns[0] for ix in table.list_indices()} == {"kind", "tenant_id",
                                                              "interaction_id", "partition_date"}
    again: dict = {}  # a rebuild: the replaced rows are folded into the indexes
    build_answer_index(db, entries, maintenance=again)
    assert again["scalar_indexes_created"] == [] and again["optimized"]
    table = embeddings.open_embeddings(db)
    assert table.index_stats("kind_idx").num_unindexed_rows == 0
