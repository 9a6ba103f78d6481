"""Embeddings (offline backends, loaded once per process) and the incremental LanceDB table."""

from __future__ import annotations

from datetime import date

import numpy as np
import polars as pl
import pytest

from ml import embedding_backends as backends
from ml import embeddings

QUESTIONS = ["How much is the laptop?", "What does the laptop cost?", "Bananas are yellow."]


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
    # replies are not embedded for every interaction: relevance is computed where it is read
    assert rel["qa_relevance"].null_count() == 2
    scored, computed = embeddings.with_qa_relevance(more, rel)
    assert computed == 3 and scored.filter(pl.col("interaction_id") == "a")[
        "qa_relevance"].item() > 0.3
    assert scored.height == more.height
    vecs = embeddings.read_question_vectors(db, [("t", "b"), ("t", "zzz"), ("u", "a")])
    assert set(vecs) == {("t", "b")} and vecs[("t", "b")].shape == (embeddings.DIM,)
    # ids are per tenant: tenant u's "a" is a new interaction, embedded on its own
    other = frame.head(1).with_columns(pl.lit("u").alias("tenant_id"))
    assert embeddings.add_new_embeddings(db, other) == (1, 0)
    assert ("u", "a") in embeddings.embedded_ids(embeddings.open_embeddings(db))


def _day(ids, day="2026-01-01", tenant="t"):
    return pl.DataFrame({"tenant_id": [tenant] * len(ids), "interaction_id": ids,
                         "user_message": [f"Where is my parcel number {i}?" for i in ids]}), day


def test_days_are_embedded_incrementally_and_recorded(tmp_path):
    db = embeddings.connect(str(tmp_path / "lancedb"))
    model = embeddings.model_for("question")
    frame, day = _day(["a", "b", "c"])
    r = embeddings.embed_day(db, day, frame)
    assert (r.added, r.kept, r.removed) == (3, 0, 0)
    assert embeddings.embedded_days(db, model) == {day: 3}
    # only days whose count changed (or named as changed) are looked at
    assert embeddings.days_to_embed({day: 3, "2026-01-02": 2}, {day: 3}) == ["2026-01-02"]
    assert embeddings.days_to_embed({day: 3}, {day: 3}, changed=[day]) == [day]
    assert embeddings.days_to_embed({}, {day: 3}) == [day]  # deleted from the warehouse
    # the day again: b is gone, d is new; a and c are kept as they are
    again, _ = _day(["a", "c", "d"])
    r = embeddings.embed_day(db, day, again)
    assert (r.added, r.kept, r.removed) == (1, 2, 1)
    table = embeddings.open_embeddings(db)
    assert embeddings.embedded_ids(table) == {("t", "a"), ("t", "c"), ("t", "d")}
    assert table.count_rows(f"partition_date = '{day}'") == 3
    # another day is untouched; an emptied day is forgotten
    other, day2 = _day(["x"], "2026-01-02")
    assert embeddings.embed_day(db, day2, other).added == 1
    r = embeddings.embed_day(db, day, again.clear())
    assert r.removed == 3 and embeddings.embedded_days(db, model) == {day2: 1}
    assert embeddings.embedded_ids(embeddings.open_embeddings(db)) == {("t", "x")}
    with pytest.raises(ValueError, match="2026-13-01"):
        embeddings.embed_day(db, "2026-13-01", other)


def test_backend_setting_per_stage_and_bad_values():
    assert backends.backend_name("question", {}) == backends.DEFAULT_BACKENDS["question"]
    env = {"LEARNLOOP_EMBEDDINGS_BACKEND": "static",
           "LEARNLOOP_EMBEDDINGS_RELEVANCE_BACKEND": "MiniLM-int8"}
    assert backends.backend_name("question", env) == "static"
    assert backends.backend_name("relevance", env) == "minilm-int8"
    with pytest.raises(ValueError, match="LEARNLOOP_EMBEDDINGS_BACKEND='onnx'.*known"):
        backends.backend_name("question", {"LEARNLOOP_EMBEDDINGS_BACKEND": "onnx"})
    with pytest.raises(ValueError, match="unknown embeddings stage"):
        backends.backend_name("answers", {})


def test_int8_backend_agrees_with_minilm():
    ref = backends.get_backend("minilm").encode(QUESTIONS)
    q = backends.get_backend("minilm-int8")
    assert q.model == "all-MiniLM-L6-v2+int8" and q is backends.get_backend("minilm-int8")
    vecs = q.encode(QUESTIONS)
    assert vecs.shape == (3, embeddings.DIM) and vecs.dtype == np.float32
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-4)
    assert (np.einsum("ij,ij->i", ref, vecs) > 0.9).all()
    assert float(vecs[0] @ vecs[1]) > 0.7 > float(vecs[0] @ vecs[2])


def test_precision_setting_and_bad_values(monkeypatch):
    assert backends.precision({"LEARNLOOP_EMBEDDINGS_PRECISION": " FP32 "}) == "fp32"
    assert backends.precision({"LEARNLOOP_EMBEDDINGS_PRECISION": "bf16"}) == "bf16"
    monkeypatch.setattr(backends, "cpu_has_fast_bf16", lambda: True)
    assert backends.precision({}) == "bf16"
    assert backends.precision({"LEARNLOOP_EMBEDDINGS_PRECISION": "auto"}) == "bf16"
    monkeypatch.setattr(backends, "cpu_has_fast_bf16", lambda: False)
    assert backends.precision({}) == "fp32"
    with pytest.raises(ValueError, match="LEARNLOOP_EMBEDDINGS_PRECISION='fp16'.*known"):
        backends.precision({"LEARNLOOP_EMBEDDINGS_PRECISION": "fp16"})
    with pytest.raises(ValueError, match="dtype 'fp8'"):
        backends.MiniLM(dtype="fp8")


def test_bf16_minilm_is_the_same_model_within_rounding():
    """bfloat16 autocast really computes differently (the vectors are not bit-equal) yet stays
    at cosine >= 0.999 of fp32, on a long reply too; rows record the same ``model``."""
    reply = ("Thanks for waiting. I checked your order 4411: the parcel left our warehouse on "
             "Monday and the courier shows it in transit. " * 4)
    texts = [*QUESTIONS, reply]
    fp32, bf16 = backends.MiniLM(dtype="fp32"), backends.MiniLM(dtype="bf16")
    assert (fp32.dtype, bf16.dtype, fp32.model) == ("fp32", "bf16", bf16.model)
    a, b = fp32.encode(texts), bf16.encode(texts)
    assert b.dtype == np.float32 and np.allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-4)
    assert np.abs(a - b).max() > 0  # autocast took effect
    assert (np.einsum("ij,ij->i", a, b) > 0.999).all()
    assert float(b[0] @ b[1]) > 0.7 > float(b[0] @ b[2])


# a few hundred tokens of the MiniLM vocabulary: a real distillation in seconds
_TINY_VOCAB = ("how much is the laptop what does cost are yellow banana ##s where my parcel "
               "number order price refund").split()
_TINY = r"^(?!(?:" + "|".join(w.replace("#", r"\#") for w in _TINY_VOCAB) + r")$).*$"


@pytest.fixture
def tiny_static(tmp_path, monkeypatch):
    folder = tmp_path / "models" / "static"
    backends.distill_static(folder, token_remove_pattern=_TINY)
    monkeypatch.setenv("LEARNLOOP_EMBEDDINGS_STATIC_DIR", str(folder))
    backends.get_backend.cache_clear()
    embeddings._caches.clear()
    yield folder
    backends.get_backend.cache_clear()
    embeddings._caches.clear()


def test_static_model_is_distilled_offline_and_loaded_from_its_folder(tiny_static):
    assert {p.name for p in tiny_static.iterdir()} >= {"config.json", "model.safetensors",
                                                      "tokenizer.json"}
    static = backends.get_backend("static")
    assert static.model == "all-MiniLM-L6-v2+model2vec-384"
    vecs = static.encode(QUESTIONS)
    assert vecs.shape == (3, embeddings.DIM)
    assert float(vecs[0] @ vecs[1]) > float(vecs[0] @ vecs[2])


def test_a_folder_without_a_model_is_a_clear_error(tmp_path):
    folder = tmp_path / "static"
    folder.mkdir()
    (folder / "notes.txt").write_text("not a model")
    with pytest.raises(RuntimeError, match=f"{folder} exists but holds no static"):
        backends.ensure_static_model(folder)


def test_rows_of_another_model_are_never_compared_and_get_replaced(tmp_path, tiny_static,
                                                                    monkeypatch):
    db = embeddings.connect(str(tmp_path / "lancedb"))
    frame, day = _day(["a", "b"])
    embeddings.embed_day(db, day, frame)  # the default question model
    minilm = embeddings.model_for("question")
    assert set(embeddings.read_question_vectors(db, [("t", "a"), ("t", "b")])) == {
        ("t", "a"), ("t", "b")}
    monkeypatch.setenv("LEARNLOOP_EMBEDDINGS_QUESTION_BACKEND", "static")
    static = embeddings.model_for("question")
    assert static != minilm
    # the MiniLM rows are not handed to a reader that now encodes with the static model
    assert embeddings.read_question_vectors(db, [("t", "a"), ("t", "b")]) == {}
    # the days recorded for MiniLM are not the static model's: every day is looked at again
    assert embeddings.days_to_embed({day: 2}, embeddings.embedded_days(db, static)) == [day]
    r = embeddings.embed_day(db, day, frame)
    assert (r.added, r.removed) == (2, 2)
    table = embeddings.open_embeddings(db)
    assert table.count_rows() == 2 and embeddings.question_count(table, static) == 2
    vecs = embeddings.read_question_vectors(db, [("t", "a")])
    [fresh] = embeddings.encode([frame["user_message"][0]])
    assert np.allclose(vecs[("t", "a")], fresh, atol=1e-5)
    # add_new_embeddings replaces another model's row too (one row per interaction)
    monkeypatch.setenv("LEARNLOOP_EMBEDDINGS_QUESTION_BACKEND", "minilm")
    assert embeddings.add_new_embeddings(db, frame.head(1)) == (1, 0)
    assert embeddings.open_embeddings(db).count_rows() == 2
    assert embeddings.question_count(embeddings.open_embeddings(db), minilm) == 1


def test_stored_relevance_is_used_only_for_the_relevance_model(tmp_path, monkeypatch):
    """Question rows of earlier versions carry qa_relevance; it is read only while the relevance
    stage uses the model that measured it."""
    import pyarrow as pa

    db = embeddings.connect(str(tmp_path / "lancedb"))
    vec = pa.FixedSizeListArray.from_arrays(pa.array([0.1] * 2 * embeddings.DIM, pa.float32()),
                                            embeddings.DIM)
    table = embeddings.open_embeddings(db)
    table.add(pa.table({
        "interaction_id": ["x", "x"], "tenant_id": ["t", "t"], "partition_date": [None, None],
        "question": ["q", "q"], "vector": vec, "response_vector": vec,
        "qa_relevance": [0.42, None], "model": ["all-MiniLM-L6-v2", "other"],
        "kind": ["question"] * 2, "answer": [None] * 2, "origin": [None] * 2,
        "item_id": pa.nulls(2, pa.int64())}, schema=embeddings.embeddings_schema()))
    monkeypatch.delenv("LEARNLOOP_EMBEDDINGS_BACKEND", raising=False)
    monkeypatch.setenv("LEARNLOOP_EMBEDDINGS_RELEVANCE_BACKEND", "minilm")
    cols = ["tenant_id", "interaction_id", "qa_relevance"]
    assert embeddings.read_relevance(db, ["x", "y"]).select(cols).rows() == [
        ("t", "x", 0.42)]  # one row
    monkeypatch.setenv("LEARNLOOP_EMBEDDINGS_RELEVANCE_BACKEND", "minilm-int8")
    assert embeddings.read_relevance(db, ["x"]).rows() == [("t", "x", None)]


def test_relevance_reuses_the_stored_question_vector(tmp_path):
    """Both stages on one model: an audit candidate's question is not embedded again, its
    stored vector is used (here: the vector of another text, to see which one was used)."""
    db = embeddings.connect(str(tmp_path / "lancedb"))
    stored = pl.DataFrame({"tenant_id": ["t"], "interaction_id": ["a"],
                           "user_message": [QUESTIONS[0]]})
    embeddings.embed_day(db, "2026-01-01", stored)
    rel = embeddings.read_relevance(db, ["a", "b"])
    assert rel.columns == ["tenant_id", "interaction_id", "qa_relevance", "question_vector"]
    frame = pl.DataFrame({"tenant_id": ["t", "t"], "interaction_id": ["a", "b"],
                          "user_message": [QUESTIONS[2]] * 2,
                          "response": ["The laptop costs $1,299."] * 2})
    scored, computed = embeddings.with_qa_relevance(frame, rel)
    assert computed == 2 and scored.columns == [*frame.columns, "qa_relevance"]
    q = embeddings.encode([QUESTIONS[0], QUESTIONS[2]], stage="relevance")
    [reply] = embeddings.encode(["The laptop costs $1,299."], stage="relevance")
    assert scored["qa_relevance"].to_list() == pytest.approx(
        [float(q[0] @ reply), float(q[1] @ reply)], abs=1e-5)


def test_scalar_indexes_from_a_size_on(tmp_path):
    db = embeddings.connect(str(tmp_path / "lancedb"))
    frame, day = _day(["a", "b", "c"])
    embeddings.embed_day(db, day, frame)
    table = embeddings.open_embeddings(db)
    assert embeddings.ensure_scalar_indexes(table) == []  # below SCALAR_INDEX_MIN_ROWS
    assert embeddings.ensure_scalar_indexes(table, min_rows=3) == ["partition_date",
                                                                    "interaction_id"]
    assert embeddings.ensure_scalar_indexes(table, min_rows=3) == []
    # the day's rows are still found (through the index)
    assert embeddings.embed_day(db, day, frame).kept == 3
