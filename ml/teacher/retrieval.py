"""The retrieval Teacher: the offline default (DESIGN.md, "Offline defaults").

For a flawed reply it proposes the best *approved* answer to the most similar past question. The
answers live in the LanceDB table ``interaction_embeddings`` as rows of ``kind = 'approved_reply'``
(next to the ``question`` rows of every interaction, see ``ml.embeddings``): one row per approved
or edited sample item (its final reply) and per human agent correction, with the MiniLM vector of
the question it answered (``vector``) and of the approved reply (``response_vector``). A
proposal needs a cosine similarity of at least ``threshold``; with nothing similar enough there
is no proposal (counted, never invented). Every proposal is marked
``source="retrieval"`` with ``extra = {similar_interaction_id, similarity, ...}`` so reviewers see
where it came from.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from ml import embeddings

APPROVED_TABLE = embeddings.EMBEDDINGS_TABLE  # approved replies: kind = 'approved_reply'
LEGACY_APPROVED_TABLE = "approved_answers"  # the earlier separate table, dropped on rebuild
APPROVED_FILTER = f"kind = '{embeddings.KIND_APPROVED_REPLY}'"
# order/booking/transfer references and card endings: specific to one conversation
REFERENCE = re.compile(r"\b[A-Z]{1,4}-?[0-9]{5,}\b|\b(?:ending in|last four|last 4)\s+[0-9]{4}\b")
DEFAULT_THRESHOLD = 0.80
SEARCH_K = 5


@dataclass
class Proposal:
    interaction_id: str
    response: str
    source: str  # human_agent | retrieval | llm:<provider>
    extra: dict[str, Any] = field(default_factory=dict)


def build_answer_index(db: Any, entries: pl.DataFrame,
                       known_vectors: dict[str, np.ndarray] | None = None) -> int:
    """(Re)write the ``approved_reply`` rows of ``interaction_embeddings`` from ``entries``
    (interaction_id, tenant_id, question, answer, origin, item_id). Question vectors come from
    ``known_vectors`` (the interactions' ``question`` rows) where present, else are embedded now;
    the approved replies are embedded now. Returns the row count.

    An entry without question or answer text is an error naming the interaction: the producer
    should have filtered it."""
    for col in ("interaction_id", "question", "answer", "origin"):
        if col not in entries.columns:
            raise ValueError(f"build_answer_index: entries lack column {col!r}")
    blank = entries.filter(pl.col("question").fill_null("").str.strip_chars().eq("")
                           | pl.col("answer").fill_null("").str.strip_chars().eq(""))
    if blank.height:
        raise ValueError(f"build_answer_index: entries without question or answer text: "
                         f"{blank['interaction_id'].head(5).to_list()}")
    entries = entries.unique(["interaction_id", "answer"], keep="last", maintain_order=True)
    known = known_vectors or {}
    ids, questions = entries["interaction_id"].to_list(), entries["question"].to_list()
    vecs = np.zeros((entries.height, embeddings.DIM), dtype=np.float32)
    todo = [i for i, iid in enumerate(ids) if iid not in known]
    for i, iid in enumerate(ids):
        if iid in known:
            vecs[i] = known[iid]
    if todo:
        vecs[todo] = embeddings.encode([questions[i] for i in todo])
    tenant = (entries["tenant_id"].fill_null("default").to_list() if "tenant_id" in entries.columns
              else ["default"] * entries.height)
    item = entries["item_id"].to_list() if "item_id" in entries.columns else [None] * entries.height
    answers = entries["answer"].to_list()
    avecs = embeddings.encode(answers) if answers else np.zeros((0, embeddings.DIM), np.float32)
    rel = embeddings.rowwise_cosine(vecs, avecs)
    n = entries.height
    rows = pa.table({
        "interaction_id": ids, "tenant_id": tenant,
        "partition_date": pa.nulls(n, pa.string()), "question": questions,
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(vecs.reshape(-1)), embeddings.DIM),
        "response_vector": pa.FixedSizeListArray.from_arrays(pa.array(avecs.reshape(-1)),
                                                             embeddings.DIM),
        "qa_relevance": pa.array([None if np.isnan(x) else float(x) for x in rel], pa.float64()),
        "model": [embeddings.MODEL_NAME] * n,
        "kind": [embeddings.KIND_APPROVED_REPLY] * n,
        "answer": answers, "origin": entries["origin"].to_list(),
        "item_id": pa.array(item, pa.int64()),
    }, schema=embeddings.embeddings_schema())
    table = embeddings.open_embeddings(db)
    table.delete(APPROVED_FILTER)  # derived from the store: rebuilt whole every run
    if n:
        table.add(rows)
    if LEGACY_APPROVED_TABLE in embeddings.table_names(db):
        db.drop_table(LEGACY_APPROVED_TABLE)
    return n


class RetrievalTeacher:
    """Nearest approved answer by question similarity (cosine on MiniLM vectors)."""

    source = "retrieval"

    def __init__(self, db: Any, *, threshold: float = DEFAULT_THRESHOLD,
                 same_tenant: bool = True) -> None:
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"retrieval threshold must be in (0, 1], got {threshold}")
        self.db = db
        self.threshold = threshold
        self.same_tenant = same_tenant
        self._table = (embeddings.open_embeddings(db)
                       if APPROVED_TABLE in embeddings.table_names(db) else None)

    @property
    def size(self) -> int:
        """Approved replies indexed."""
        return 0 if self._table is None else self._table.count_rows(APPROVED_FILTER)

    def propose_many(self, rows: Sequence[dict[str, Any]],
                     vectors: dict[str, np.ndarray] | None = None) -> list[Proposal | None]:
        """One proposal (or None) per row (``interaction_id``, ``user_message``, ``tenant_id``)."""
        if self._table is None or self.size == 0 or not rows:
            return [None] * len(rows)
        vectors = vectors or {}
        missing = [i for i, r in enumerate(rows) if r["interaction_id"] not in vectors]
        fresh = embeddings.encode([rows[i].get("user_message") for i in missing]) if missing else None
        out: list[Proposal | None] = []
        k = 0
        for row in rows:
            if row["interaction_id"] in vectors:
                vec = vectors[row["interaction_id"]]
            else:
                vec = fresh[k]  # type: ignore[index]
                k += 1
            out.append(self._best(row, vec))
        return out

    def _best(self, row: dict[str, Any], vec: np.ndarray) -> Proposal | None:
        if not np.any(vec):
            return None  # no question text to compare
        iid = row["interaction_id"]
        where = f"{APPROVED_FILTER} AND interaction_id != '{_sql_str(iid)}'"
        if self.same_tenant:
            tenant = row.get("tenant_id") or "default"
            where += f" AND tenant_id = '{_sql_str(tenant)}'"
        query = self._table.search(vec.astype(np.float32), vector_column_name="vector") \
            .distance_type("cosine") \
            .limit(SEARCH_K + 1).where(where, prefilter=True)
        hits = query.to_list()
        best = None
        for hit in hits:
            similarity = 1.0 - float(hit["_distance"])
            if similarity >= self.threshold and (best is None or similarity > best[0]):
                best = (similarity, hit)
        if best is None:
            return None
        similarity, hit = best
        answer, adapted, warning = adapt_references(hit["answer"], hit["question"],
                                                    row.get("user_message") or "")
        return Proposal(iid, answer, self.source, {
            "similar_interaction_id": hit["interaction_id"],
            "similarity": round(similarity, 4),
            "similar_question": hit["question"],
            "answer_origin": hit["origin"],
            "answer_item_id": hit["item_id"],
            "threshold": self.threshold,
            "adapted_references": adapted,
            **({"warning": warning} if warning else {}),
        })


def adapt_references(answer: str, similar_question: str, question: str
                     ) -> tuple[str, dict[str, str], str | None]:
    """Carry conversation-specific references (order numbers, card endings) over from the similar
    question to this one: with exactly one reference on each side, the old one is replaced in the
    answer; otherwise an answer that still quotes the other conversation's reference gets a
    warning for the reviewer. Returns (answer, {old: new}, warning)."""
    old = list(dict.fromkeys(REFERENCE.findall(similar_question)))
    new = list(dict.fromkeys(REFERENCE.findall(question)))
    quoted = [r for r in old if r in answer]
    if not quoted:
        return answer, {}, None
    if len(old) == 1 and len(new) == 1:
        return answer.replace(old[0], new[0]), {old[0]: new[0]}, None
    return answer, {}, (f"the answer quotes {quoted} from the similar conversation; "
                        "check them before approving")


def _sql_str(value: str) -> str:
    return str(value).replace("'", "''")
