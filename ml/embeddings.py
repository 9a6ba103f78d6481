"""Sentence embeddings and the LanceDB table ``interaction_embeddings``.

The vectors come from a backend of ``ml.embedding_backends`` (MiniLM, MiniLM int8, or a static
model distilled from MiniLM), chosen per *stage*: ``question`` (question vectors: the retrieval
teacher, the dataset builder's near-duplicates) and ``relevance`` (the rules auditor's
``qa_relevance``). Each backend loads once per process. Vectors are L2-normalised, so a dot
product is the cosine. ``encode`` embeds each distinct text once (support logs repeat
themselves a lot), many texts per call (the backends sort by length, so batches pad little), and
keeps a bounded per-process cache of recent texts per model.

What is embedded (docs/embeddings.md has the reasoning): the **question** of every interaction,
by the ``interaction_embeddings`` asset, because its readers may want any interaction's: the
retrieval teacher (error questions and human corrections), the dataset builder (approved samples
and the replay of historical interactions). The **reply** is embedded only where it is read: the
rules auditor's ``qa_relevance`` of the audit candidates (a few % to ~20% of interactions), by
:func:`with_qa_relevance` inside ``audited_errors``. So question rows written now carry no
``response_vector`` and no ``qa_relevance`` (rows of earlier versions may).

``interaction_embeddings`` holds user questions and approved replies, told apart by ``kind``:

* ``question`` (:data:`KIND_QUESTION`): one row per interaction and model: the vector of the
  user's question (``vector``). Grows incrementally, one landing day at a time
  (:func:`days_to_embed`, :func:`embed_day`): only days whose interactions changed are looked at,
  and in them only the interactions without a row of the current model are embedded.
* ``approved_reply`` (:data:`KIND_APPROVED_REPLY`): one row per approved or edited sample item and
  per human agent correction (``answer``, ``origin``, ``item_id``): ``vector`` is the question it
  answered (what the retrieval teacher searches), ``response_vector`` the approved reply. Rewritten
  by ``ml.teacher.retrieval.build_answer_index`` on every teacher run.

Every row records its embedding model in ``model`` (``embedding_backends.Backend.model``). Vectors
of two models are never compared: the readers here (:func:`read_question_vectors`,
:func:`read_relevance`) return only rows of the model the stage uses now, so a row of another
model reads as missing and the caller embeds that text afresh with the current model.

A table written before ``kind`` existed gets the new columns on open (its rows become
``question`` rows). The companion table ``interaction_embedding_days`` (:data:`DAYS_TABLE`)
records, per landing day and model, how many interactions were embedded: what lets a run skip
the days that did not change without reading their ids.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from threading import Lock
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from ml import embedding_backends as backends

DIM = backends.DIM
MAX_SEQ_LENGTH = backends.MAX_SEQ_LENGTH
MODEL_NAME = backends.MINILM  # the reference model every backend derives from
EMBEDDINGS_TABLE = "interaction_embeddings"
DAYS_TABLE = "interaction_embedding_days"
KIND_QUESTION = "question"
KIND_APPROVED_REPLY = "approved_reply"
QUESTION, RELEVANCE = "question", "relevance"  # the stages (ml.embedding_backends.STAGES)
BATCH_SIZE = 256  # texts per forward pass
EMBED_BATCH_ROWS = 5_000  # interactions embedded per LanceDB append
SCALAR_INDEX_MIN_ROWS = 50_000  # from this size the table gets scalar indexes on its keys
_CACHE_SIZE = 50_000
_IN_CHUNK = 500  # ids per IN (...) filter


def load_model() -> Any:
    """The sentence-transformers MiniLM model (the ``minilm`` backend), loaded offline once per
    process."""
    return backends.get_backend("minilm").st


def model_for(stage: str = QUESTION) -> str:
    """The ``model`` value of the rows ``stage`` writes and reads now."""
    return backends.model_for_stage(stage)


_caches: dict[str, OrderedDict[str, np.ndarray]] = {}
_cache_lock = Lock()


def encode(texts: Sequence[str | None], *, stage: str = QUESTION,
           batch_size: int = BATCH_SIZE) -> np.ndarray:
    """Normalised float32 vectors, shape (len(texts), 384), by the backend of ``stage``
    (``question``: what the stored ``vector`` column holds; ``relevance``: ``qa_relevance``);
    None or blank text -> zero vector."""
    backend = backends.for_stage(stage)
    out = np.zeros((len(texts), DIM), dtype=np.float32)
    todo: dict[str, list[int]] = {}
    with _cache_lock:
        cache = _caches.setdefault(backend.model, OrderedDict())
        for i, t in enumerate(texts):
            if t is None or not str(t).strip():
                continue
            hit = cache.get(t)
            if hit is not None:
                out[i] = hit
                cache.move_to_end(t)
            else:
                todo.setdefault(t, []).append(i)
    if todo:
        distinct = list(todo)
        vecs = backend.encode(distinct, batch_size=batch_size)
        with _cache_lock:
            for t, v in zip(distinct, vecs, strict=True):
                out[todo[t]] = v
                cache[t] = v
            while len(cache) > _CACHE_SIZE:
                cache.popitem(last=False)
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
    """Cosine between each question and its answer by the ``relevance`` backend (NaN where
    either is missing)."""
    if len(questions) != len(answers):
        raise ValueError(f"{len(questions)} questions but {len(answers)} answers")
    return rowwise_cosine(encode(questions, stage=RELEVANCE), encode(answers, stage=RELEVANCE))


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
    "vector": f"Embedding of the question ({DIM} floats, L2-normalized) by the model in `model`.",
    "response_vector": f"Embedding of the reply ({DIM} floats): approved replies, and question "
                       "rows of earlier versions (replies are now embedded only for audit "
                       "candidates, inside audited_errors).",
    "qa_relevance": "Cosine of question and reply vectors (question rows of earlier versions).",
    "model": "The embedding model (MiniLM, its int8 quantization or the static model distilled "
             "from it): vectors of different models are never compared.",
    "kind": "question (every interaction) or approved_reply (the teacher's answer index).",
    "answer": "approved_reply rows: the approved text.",
    "origin": "approved_reply rows: sample_item or human_correction.",
    "item_id": "approved_reply rows: the sample review item.",
}


def days_schema() -> pa.Schema:
    return pa.schema([
        pa.field("partition_date", pa.string()),
        pa.field("model", pa.string()),
        pa.field("interactions", pa.int64()),  # the day's interactions, all embedded
        pa.field("embedded_at", pa.string()),  # ISO timestamp (UTC)
    ])


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


def ensure_scalar_indexes(table: Any, *, min_rows: int = SCALAR_INDEX_MIN_ROWS) -> list[str]:
    """Scalar indexes on ``partition_date`` (bitmap) and ``interaction_id`` (btree) once the
    table has ``min_rows`` rows, so a day's or an id list's rows are found without scanning the
    table. Returns the columns indexed now. (Rows appended later are scanned until the table is
    optimized, which folds them into the indexes.)"""
    if table.count_rows() < min_rows:
        return []
    from lancedb.index import Bitmap, BTree

    have = {c for idx in table.list_indices() for c in idx.columns}
    made = []
    for column, config in (("partition_date", Bitmap()), ("interaction_id", BTree())):
        if column not in have:
            table.create_index(column, config=config, replace=False)
            made.append(column)
    return made


def _sql(value: str) -> str:
    return "'" + str(value).replace("'", "''") + "'"


def _is(kind: str) -> str:
    return f"kind = '{kind}'"


def _rows(table: Any, columns: list[str], where: str | None = None) -> pa.Table:
    """Only ``columns`` of every row matching ``where`` (the vectors stay on disk)."""
    q = table.search()
    if where:
        q = q.where(where)
    return q.select(columns).limit(None).to_arrow()


def _rows_of_ids(table: Any, columns: list[str], ids: Iterable[str], where: str) -> pa.Table:
    """``columns`` of the rows matching ``where`` whose interaction_id is in ``ids`` (filtered
    reads of ``_IN_CHUNK`` ids each: only those rows are read)."""
    ids = sorted(set(ids))
    parts = []
    for i in range(0, len(ids), _IN_CHUNK):
        chunk = ", ".join(_sql(x) for x in ids[i:i + _IN_CHUNK])
        parts.append(_rows(table, columns, f"{where} AND interaction_id IN ({chunk})"))
    if not parts:
        return _rows(table, columns, "false")
    return pa.concat_tables(parts)


def question_count(table: Any, model: str | None = None) -> int:
    """Question rows (of ``model``, all models when None)."""
    where = _is(KIND_QUESTION) + (f" AND model = {_sql(model)}" if model else "")
    return table.count_rows(where)


def embedded_ids(table: Any) -> set[tuple[str, str]]:
    """(tenant_id, interaction_id) of every interaction with a ``question`` row, of any model.
    Reads every id of the table: for tools and tests, not for the asset."""
    if question_count(table) == 0:
        return set()
    cols = _rows(table, ["tenant_id", "interaction_id"], _is(KIND_QUESTION))
    return set(zip(cols.column("tenant_id").to_pylist(), cols.column("interaction_id").to_pylist(),
                   strict=True))


def embed_interactions(frame: pl.DataFrame) -> pa.Table:
    """Question rows for ``interaction_embeddings`` from interactions (interaction_id,
    tenant_id, user_message, optional partition_date): the question vector by the ``question``
    backend; no reply vector, no relevance (see the module docstring)."""
    for col in ("interaction_id", "tenant_id", "user_message"):
        if col not in frame.columns:
            raise ValueError(f"embed_interactions: input frame lacks column {col!r}")
    questions = frame["user_message"].to_list()
    qv = encode(questions, stage=QUESTION)
    dates = (frame["partition_date"].cast(pl.String).to_list() if "partition_date" in frame.columns
             else [None] * frame.height)
    n = frame.height
    return pa.table({
        "interaction_id": frame["interaction_id"].to_list(),
        "tenant_id": frame["tenant_id"].to_list(),
        "partition_date": dates,
        "question": questions,
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(qv.reshape(-1)), DIM),
        "response_vector": pa.nulls(n, pa.list_(pa.float32(), DIM)),
        "qa_relevance": pa.nulls(n, pa.float64()),
        "model": [model_for(QUESTION)] * n,
        "kind": [KIND_QUESTION] * n,
        "answer": pa.nulls(n, pa.string()),
        "origin": pa.nulls(n, pa.string()),
        "item_id": pa.nulls(n, pa.int64()),
    }, schema=embeddings_schema())


def _key_frame(arrow: pa.Table) -> pl.DataFrame:
    return pl.DataFrame(pl.from_arrow(arrow))


def _append(table: Any, frame: pl.DataFrame) -> int:
    for offset in range(0, frame.height, EMBED_BATCH_ROWS):
        table.add(embed_interactions(frame.slice(offset, EMBED_BATCH_ROWS)))
    return frame.height


def add_new_embeddings(db: Any, frame: pl.DataFrame) -> tuple[int, int]:
    """Embed the questions of the interactions of ``frame`` that have no question row of the
    current model (rows of another model for them are replaced); return (added,
    already_there). Reads only the rows of ``frame``'s ids, not the table's history."""
    key = ["tenant_id", "interaction_id"]
    table = open_embeddings(db)
    model = model_for(QUESTION)
    frame = frame.unique(key, keep="first", maintain_order=True) if frame.height else frame
    have = _key_frame(_rows_of_ids(table, ["tenant_id", "interaction_id", "model"],
                                   frame["interaction_id"].to_list(), _is(KIND_QUESTION)))
    have = have.join(frame.select(key), on=key, how="semi")
    done = have.filter(pl.col("model") == model).select(key).unique()
    other = have.filter(pl.col("model") != model).select(key).unique()
    _delete_keys(table, other, f"{_is(KIND_QUESTION)} AND model != {_sql(model)}")
    new = frame.join(done, on=key, how="anti", maintain_order="left")
    _append(table, new)
    return new.height, frame.height - new.height


def _delete_keys(table: Any, keys: pl.DataFrame, where: str) -> int:
    """Delete the rows matching ``where`` of ``keys`` (tenant_id, interaction_id)."""
    for (tenant,), part in keys.partition_by("tenant_id", as_dict=True).items():
        ids = sorted(part["interaction_id"].to_list())
        for i in range(0, len(ids), _IN_CHUNK):
            chunk = ", ".join(_sql(x) for x in ids[i:i + _IN_CHUNK])
            table.delete(f"{where} AND tenant_id = {_sql(tenant)} AND interaction_id IN ({chunk})")
    return keys.height


# ---- incremental by landing day ---------------------------------------------------------------
def open_days(db: Any) -> Any:
    """The ``interaction_embedding_days`` table (created empty when missing)."""
    if DAYS_TABLE not in table_names(db):
        return db.create_table(DAYS_TABLE, schema=days_schema())
    return db.open_table(DAYS_TABLE)


def embedded_days(db: Any, model: str) -> dict[str, int]:
    """Landing day -> interactions embedded with ``model`` (as recorded by :func:`embed_day`)."""
    rows = _rows(open_days(db), ["partition_date", "interactions"], f"model = {_sql(model)}")
    return dict(zip(rows.column("partition_date").to_pylist(),
                    rows.column("interactions").to_pylist(), strict=True))


def days_to_embed(warehouse_days: dict[str, int], embedded: dict[str, int],
                  changed: Iterable[str] = ()) -> list[str]:
    """The landing days to look at: those whose interaction count in the warehouse differs from
    what was embedded (new, grown, shrunk, deleted days), and the ``changed`` ones (e.g. days
    ingested again since the last run, whatever their count)."""
    days = {d for d in set(warehouse_days) | set(embedded)
            if warehouse_days.get(d, 0) != embedded.get(d, 0)}
    days |= {d for d in changed if d in warehouse_days or d in embedded}
    return sorted(days)


@dataclass(frozen=True)
class DayResult:
    day: str
    interactions: int  # the day's interactions in the warehouse
    added: int  # embedded now
    kept: int  # already embedded with the current model
    removed: int  # rows of interactions the day no longer has, or of another model


def embed_day(db: Any, day: str, interactions: pl.DataFrame) -> DayResult:
    """Bring the question rows of landing day ``day`` in line with ``interactions`` (the day's
    interactions in the warehouse: tenant_id, interaction_id, user_message): embed those without
    a row of the current model, delete the rows of interactions the day no longer has and of
    other models, and record the day (:data:`DAYS_TABLE`). Reads only this day's rows."""
    key = ["tenant_id", "interaction_id"]
    day = datetime.strptime(day, "%Y-%m-%d").date().isoformat()  # a clear error on a bad day
    model = model_for(QUESTION)
    table = open_embeddings(db)
    in_day = f"{_is(KIND_QUESTION)} AND partition_date = {_sql(day)}"
    have = _key_frame(_rows(table, ["tenant_id", "interaction_id", "model"], in_day))
    wanted = interactions.unique(key, keep="first", maintain_order=True) \
        .with_columns(pl.lit(day).alias("partition_date"))
    current = have.filter(pl.col("model") == model).select(key)
    stale = current.join(wanted.select(key), on=key, how="anti")
    removed = have.height - current.height  # other models' rows: replaced by this model's
    if removed:
        table.delete(f"{in_day} AND model != {_sql(model)}")
    if stale.height:
        _delete_keys(table, stale, f"{in_day} AND model = {_sql(model)}")
    new = wanted.join(current, on=key, how="anti", maintain_order="left")
    _append(table, new)
    record_day(db, day, model, interactions.height)  # as the warehouse counts the day
    return DayResult(day, wanted.height, new.height, wanted.height - new.height,
                     removed + stale.height)


def record_day(db: Any, day: str, model: str, interactions: int) -> None:
    """Record that ``day``'s ``interactions`` interactions are embedded with ``model`` (a day
    without interactions is forgotten)."""
    days = open_days(db)
    days.delete(f"partition_date = {_sql(day)} AND model = {_sql(model)}")
    if interactions:
        days.add(pa.table({"partition_date": [day], "model": [model],
                           "interactions": [interactions],
                           "embedded_at": [datetime.now(UTC).isoformat(timespec="seconds")]},
                          schema=days_schema()))


# ---- readers ----------------------------------------------------------------------------------
def read_relevance(db: Any, interaction_ids: Sequence[str] | None = None) -> pl.DataFrame:
    """(tenant_id, interaction_id, qa_relevance) of the embedded interactions (one row each)
    with an id in ``interaction_ids`` (all when None; only those ids' rows are read).
    ``qa_relevance`` is the stored one where the row's model is the ``relevance`` stage's
    model, else null (not measured by that model: :func:`with_qa_relevance` computes it).
    When both stages use one model, a fourth column ``question_vector`` carries the stored
    question vector (null where there is none of that model), so that the question need not be
    embedded again."""
    key = ["tenant_id", "interaction_id"]
    empty = pl.DataFrame(schema={"tenant_id": pl.String, "interaction_id": pl.String,
                                 "qa_relevance": pl.Float64})
    if EMBEDDINGS_TABLE not in table_names(db):
        return empty
    table = open_embeddings(db)
    model = model_for(RELEVANCE)
    same = model == model_for(QUESTION)
    cols = ["tenant_id", "interaction_id", "qa_relevance", "model"] + (["vector"] if same else [])
    if interaction_ids is None:
        arrow = _rows(table, cols, _is(KIND_QUESTION))
    else:
        arrow = _rows_of_ids(table, cols, interaction_ids, _is(KIND_QUESTION))
    if arrow.num_rows == 0:
        return empty
    ours = pl.col("model") == model
    out = _key_frame(arrow).with_columns(
        pl.when(ours).then(pl.col("qa_relevance")).otherwise(None).cast(pl.Float64)
        .alias("qa_relevance"))
    aggs = [pl.col("qa_relevance").max()]
    if same:
        out = out.with_columns(pl.when(ours).then(pl.col("vector")).otherwise(None)
                               .alias("question_vector"))
        aggs.append(pl.col("question_vector").sort_by(ours, descending=True).first())
    return out.group_by(key, maintain_order=True).agg(aggs)


def read_question_vectors(db: Any, keys: Sequence[tuple[str, str]]
                          ) -> dict[tuple[str, str], np.ndarray]:
    """Question vectors of the current ``question`` model stored for ``keys`` ((tenant_id,
    interaction_id)); keys without one (not embedded, or only by another model) are left out,
    for the caller to embed afresh."""
    if not keys or EMBEDDINGS_TABLE not in table_names(db):
        return {}
    table = open_embeddings(db)
    wanted = set(keys)
    where = f"{_is(KIND_QUESTION)} AND model = {_sql(model_for(QUESTION))}"
    arrow = _rows_of_ids(table, ["tenant_id", "interaction_id", "vector"],
                         [i for _, i in wanted], where)
    if arrow.num_rows == 0:
        return {}
    vecs = arrow.column("vector").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    vecs = vecs.reshape(-1, DIM)
    out: dict[tuple[str, str], np.ndarray] = {}
    for k, key in enumerate(zip(arrow.column("tenant_id").to_pylist(),
                                arrow.column("interaction_id").to_pylist(), strict=True)):
        if key in wanted:
            out[key] = vecs[k]
    return out


def with_qa_relevance(frame: pl.DataFrame, relevance: pl.DataFrame) -> tuple[pl.DataFrame, int]:
    """``frame`` with ``qa_relevance`` from the embeddings table (``read_relevance``), computed
    here (``relevance`` backend) for interactions without a stored one: the audit candidates'
    replies are embedded here, not for every interaction; their questions too, unless
    ``relevance`` carries their stored vector (``question_vector``). Returns (frame, how many
    were computed here)."""
    key = ["tenant_id", "interaction_id"]
    has_vec = "question_vector" in relevance.columns
    relevance = relevance.select(*key, "qa_relevance", *(["question_vector"] if has_vec else []))
    frame = frame.join(relevance.unique(key, keep="first"), on=key, how="left")
    missing = frame.filter(pl.col("qa_relevance").is_null()
                           & pl.col("user_message").is_not_null()
                           & pl.col("response").is_not_null())
    if not missing.height:
        return frame.drop("question_vector", strict=False), 0
    qv = np.zeros((missing.height, DIM), dtype=np.float32)
    stored = (missing["question_vector"].is_not_null().to_numpy() if has_vec
              else np.zeros(missing.height, dtype=bool))
    if stored.any():
        qv[stored] = np.stack(missing["question_vector"].filter(pl.Series(stored)).to_list())
    if not stored.all():
        qv[~stored] = encode([q for q, s in zip(missing["user_message"].to_list(), stored,
                                                strict=True) if not s], stage=RELEVANCE)
    scores = rowwise_cosine(qv, encode(missing["response"].to_list(), stage=RELEVANCE))
    fill = missing.select(key).with_columns(pl.Series("_rel", scores, dtype=pl.Float64))
    frame = frame.join(fill, on=key, how="left").with_columns(
        pl.coalesce("qa_relevance", "_rel").alias("qa_relevance")).drop("_rel")
    return frame.drop("question_vector", strict=False), missing.height
