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

Similar is not the same question: "Who played the lion in The Wizard of Oz?" and "... the
scarecrow ..." are 0.82 apart in MiniLM and want different answers. So a hit must also *match*
(:func:`question_match`): the same intent when both questions have one (``metadata.intent``);
the same numbers and the same capitalised names (case-insensitively, references such as order
numbers aside: they are adapted); and, where the two questions share most of their words (a
template with one word swapped), every word only one of them has must have a synonym on the other
side (MiniLM cosine of the two words >= ``SYNONYM_COSINE``: "price"/"cost" pass, "lion"/"scarecrow"
and "cat"/"dog" do not). The best hit that matches is proposed, with ``extra.confidence``
(``high``/``medium``/``low``) and ``extra.confidence_score`` for the reviewer (:func:`confidence`).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from ml import embeddings, vector_index

APPROVED_TABLE = embeddings.EMBEDDINGS_TABLE  # approved replies: kind = 'approved_reply'
LEGACY_APPROVED_TABLE = "approved_answers"  # the earlier separate table, dropped on rebuild
APPROVED_FILTER = f"kind = '{embeddings.KIND_APPROVED_REPLY}'"
# order/booking/transfer references and card endings: specific to one conversation
REFERENCE = re.compile(r"\b[A-Z]{1,4}-?[0-9]{5,}\b|\b(?:ending in|last four|last 4)\s+[0-9]{4}\b")
DEFAULT_THRESHOLD = 0.80
SEARCH_K = 5
QUERY_BATCH = 256  # query vectors per LanceDB search
HIT_COLUMNS = ("interaction_id", "question", "answer", "origin", "item_id", "_distance")
SYNONYM_COSINE = 0.7  # two words are interchangeable at this MiniLM cosine or above
TEMPLATE_JACCARD = 0.3  # questions sharing this share of their content words are one template
_WORD = re.compile(r"[^\W_]{3,}")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)?")
_SENTENCE = re.compile(r"[^.!?]+")
_STOP = frozenset("""the and for are but not you your yours all any can had her was one our out has
have him his how its may new now see two who did get got let say she too use with this that from
they will would there their what about which when make like just know take into them than then
some could also want need please thanks thank hello does doesn don why where here been were being
should very much more is it in on at to of a an i me my do be""".split())


@dataclass(frozen=True)
class Match:
    ok: bool
    reason: str | None  # why not, for the record
    coverage: float  # share of this question's content words the similar question has (or a synonym)


def _content(text: str) -> set[str]:
    words = (m.lower() for m in _WORD.findall(REFERENCE.sub(" ", text or "")))
    return {w for w in words if w not in _STOP}


def _names(text: str) -> set[str]:
    """Capitalised words that are not the first word of a sentence (and not "I")."""
    out: set[str] = set()
    for sentence in _SENTENCE.findall(REFERENCE.sub(" ", text or "")):
        words = _WORD.findall(sentence)
        out |= {w.lower() for w in words[1:] if w[0].isupper() and w != "I"}
    return out


def _numbers(text: str) -> set[str]:
    return set(_NUMBER.findall(REFERENCE.sub(" ", text or "")))


def _synonyms(left: set[str], right: set[str]) -> tuple[set[str], set[str]]:
    """The words of ``left`` and of ``right`` without a counterpart on the other side (MiniLM
    cosine below ``SYNONYM_COSINE``)."""
    if not left or not right:
        return left, right
    lw, rw = sorted(left), sorted(right)
    vecs = embeddings.encode(lw + rw)
    sims = vecs[:len(lw)] @ vecs[len(lw):].T  # encode() gives unit vectors
    return ({w for i, w in enumerate(lw) if sims[i].max() < SYNONYM_COSINE},
            {w for j, w in enumerate(rw) if sims[:, j].max() < SYNONYM_COSINE})


def question_match(question: str, similar: str, *, intent: str | None = None,
                   similar_intent: str | None = None) -> Match:
    """Whether the answer to ``similar`` can answer ``question`` (see the module docstring)."""
    if intent and similar_intent and intent.strip().lower() != similar_intent.strip().lower():
        return Match(False, f"intent {intent!r} vs {similar_intent!r}", 0.0)
    q_words, s_words = _content(question), _content(similar)
    numbers, similar_numbers = _numbers(question), _numbers(similar)
    if numbers != similar_numbers:
        return Match(False, f"numbers differ: {sorted(numbers ^ similar_numbers)}", 0.0)
    q_all = {w.lower() for w in _WORD.findall(question or "")}
    s_all = {w.lower() for w in _WORD.findall(similar or "")}
    missing = sorted((_names(question) - s_all) | (_names(similar) - q_all))
    if missing:
        return Match(False, f"names only one question has: {missing}", 0.0)
    only_q, only_s = q_words - s_words, s_words - q_words
    union = q_words | s_words
    template = bool(union) and len(q_words & s_words) / len(union) >= TEMPLATE_JACCARD
    left, right = _synonyms(only_q, only_s)
    if template and (left or right):
        return Match(False, f"a word swapped: {sorted(left)} vs {sorted(right)}", 0.0)
    coverage = 1.0 if not q_words else (len(q_words) - len(left)) / len(q_words)
    return Match(True, None, round(coverage, 4))


def confidence(similarity: float, coverage: float) -> tuple[str, float]:
    """How sure the retrieval teacher is that the similar question's answer fits: a score
    ``similarity * (0.5 + 0.5 * coverage)`` and a label: ``high`` (similarity >= 0.92 and
    coverage >= 0.8), ``medium`` (similarity >= 0.85 and coverage >= 0.5), else ``low``."""
    score = round(similarity * (0.5 + 0.5 * coverage), 4)
    if similarity >= 0.92 and coverage >= 0.8:
        return "high", score
    if similarity >= 0.85 and coverage >= 0.5:
        return "medium", score
    return "low", score


@dataclass
class Proposal:
    interaction_id: str
    response: str
    source: str  # human_agent | retrieval | llm:<provider>
    extra: dict[str, Any] = field(default_factory=dict)


def build_answer_index(db: Any, entries: pl.DataFrame,
                       known_vectors: dict[str, np.ndarray] | None = None,
                       maintenance: dict[str, Any] | None = None) -> int:
    """(Re)write the ``approved_reply`` rows of ``interaction_embeddings`` from ``entries``
    (interaction_id, tenant_id, question, answer, origin, item_id). Question vectors come from
    ``known_vectors`` (the interactions' ``question`` rows) where present, else are embedded now;
    the approved replies are embedded now. Returns the row count. The table's indexes are then
    brought up to date (:func:`ml.vector_index.maintain_embeddings`); what that did goes into
    ``maintenance`` when given (Dagster metadata).

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
        "model": [embeddings.model_for(embeddings.QUESTION)] * n,
        "kind": [embeddings.KIND_APPROVED_REPLY] * n,
        "answer": answers, "origin": entries["origin"].to_list(),
        "item_id": pa.array(item, pa.int64()),
    }, schema=embeddings.embeddings_schema())
    table = embeddings.open_embeddings(db)
    table.delete(APPROVED_FILTER)  # derived from the store: rebuilt whole every run
    if n:
        table.add(rows)
    done = vector_index.maintain_embeddings(table)
    if maintenance is not None:
        maintenance.update(done)
    if LEGACY_APPROVED_TABLE in embeddings.table_names(db):
        db.drop_table(LEGACY_APPROVED_TABLE)
    return n


class RetrievalTeacher:
    """Nearest approved answer by question similarity (cosine on MiniLM vectors).

    The rows are searched in batches (:data:`QUERY_BATCH` query vectors per LanceDB search, one
    search per tenant and batch) by an exact search of the tenant's ``approved_reply`` rows
    (``bypass_vector_index``: the filter leaves a few thousand rows, where an ANN index over the
    whole table loses recall and gains nothing, docs/vector-search.md). The bitmap/btree indexes
    that :func:`ml.vector_index.maintain` keeps on ``kind`` and ``tenant_id`` let the filter skip
    the question rows. The results equal one search per row (:meth:`propose_one_by_one`)."""

    source = "retrieval"

    def __init__(self, db: Any, *, threshold: float = DEFAULT_THRESHOLD,
                 same_tenant: bool = True, intents: Mapping[str, str | None] | None = None) -> None:
        """``intents``: interaction id -> ``metadata.intent`` of the indexed answers' questions
        (optional; a question's own intent comes with its row as ``intent``)."""
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"retrieval threshold must be in (0, 1], got {threshold}")
        self.db = db
        self.threshold = threshold
        self.same_tenant = same_tenant
        self.intents = dict(intents or {})
        self._table = (embeddings.open_embeddings(db)
                       if APPROVED_TABLE in embeddings.table_names(db) else None)
        self._per_id: int | None = None

    @property
    def size(self) -> int:
        """Approved replies indexed."""
        return 0 if self._table is None else self._table.count_rows(APPROVED_FILTER)

    def _vectors(self, rows: Sequence[dict[str, Any]],
                 vectors: dict[str, np.ndarray] | None) -> list[np.ndarray]:
        vectors = vectors or {}
        missing = [i for i, r in enumerate(rows) if r["interaction_id"] not in vectors]
        fresh = embeddings.encode([rows[i].get("user_message") for i in missing]) if missing else None
        out: list[np.ndarray] = []
        k = 0
        for row in rows:
            if row["interaction_id"] in vectors:
                out.append(vectors[row["interaction_id"]])
            else:
                out.append(fresh[k])  # type: ignore[index]
                k += 1
        return out

    def propose_many(self, rows: Sequence[dict[str, Any]],
                     vectors: dict[str, np.ndarray] | None = None) -> list[Proposal | None]:
        """One proposal (or None) per row (``interaction_id``, ``user_message``, ``tenant_id``,
        optionally ``intent``), searched in batches."""
        if self._table is None or self.size == 0 or not rows:
            return [None] * len(rows)
        vecs = self._vectors(rows, vectors)
        hits = self._search_batched(rows, vecs)
        return [None if h is None else self._choose(row, h)
                for row, h in zip(rows, hits, strict=True)]

    def propose_one_by_one(self, rows: Sequence[dict[str, Any]],
                           vectors: dict[str, np.ndarray] | None = None
                           ) -> list[Proposal | None]:
        """:meth:`propose_many` with one LanceDB search per row (the reference path: tests and
        bench/vector_search.py compare the two)."""
        if self._table is None or self.size == 0 or not rows:
            return [None] * len(rows)
        out: list[Proposal | None] = []
        for row, vec in zip(rows, self._vectors(rows, vectors), strict=True):
            hits = self._search_one(row, vec)
            out.append(None if hits is None else self._choose(row, hits))
        return out

    def _where(self, row: dict[str, Any]) -> str:
        if not self.same_tenant:
            return APPROVED_FILTER
        return f"{APPROVED_FILTER} AND tenant_id = '{_sql_str(row.get('tenant_id') or 'default')}'"

    def _query(self, vecs: Any, where: str, limit: int) -> Any:
        return (self._table.search(vecs, vector_column_name="vector").distance_type("cosine")
                .bypass_vector_index().where(where, prefilter=True).limit(limit)
                .select(list(HIT_COLUMNS)))

    def _search_one(self, row: dict[str, Any], vec: np.ndarray) -> list[dict[str, Any]] | None:
        if not np.any(vec):
            return None  # no question text to compare
        where = f"{self._where(row)} AND interaction_id != '{_sql_str(row['interaction_id'])}'"
        hits = self._query(vec.astype(np.float32), where, SEARCH_K + 1).to_list()
        return sorted(hits, key=lambda h: float(h["_distance"]))

    def _rows_per_id(self) -> int:
        """The most approved rows one interaction id has (each row's own are dropped after a
        batched search, so a batch asks for that many more)."""
        if self._per_id is None:
            ids = (self._table.search().where(APPROVED_FILTER).select(["interaction_id"])
                   .limit(None).to_arrow().column("interaction_id").to_pylist())
            self._per_id = max(Counter(ids).values(), default=0)
        return self._per_id

    def _search_batched(self, rows: Sequence[dict[str, Any]], vecs: Sequence[np.ndarray]
                        ) -> list[list[dict[str, Any]] | None]:
        """Per row: the ``SEARCH_K + 1`` nearest approved replies of its tenant other than its own
        interaction's, nearest first (None for a row without question text): the hits
        :meth:`_search_one` finds, from one search per tenant and :data:`QUERY_BATCH` rows."""
        out: list[list[dict[str, Any]] | None] = [None] * len(rows)
        groups: dict[str, list[int]] = {}
        for i, (row, vec) in enumerate(zip(rows, vecs, strict=True)):
            if np.any(vec):
                groups.setdefault(self._where(row), []).append(i)
        limit = SEARCH_K + 1 + self._rows_per_id()
        for where, members in groups.items():
            for start in range(0, len(members), QUERY_BATCH):
                part = members[start:start + QUERY_BATCH]
                batch = [np.asarray(vecs[i], dtype=np.float32) for i in part]
                result = self._query(batch if len(batch) > 1 else batch[0], where, limit)
                found: list[list[dict[str, Any]]] = [[] for _ in part]
                for hit in result.to_list():
                    found[int(hit.pop("query_index", 0))].append(hit)
                for i, hits in zip(part, found, strict=True):
                    own = str(rows[i]["interaction_id"])
                    hits = sorted((h for h in hits if h["interaction_id"] != own),
                                  key=lambda h: float(h["_distance"]))
                    out[i] = hits[:SEARCH_K + 1]
        return out

    def _choose(self, row: dict[str, Any], hits: list[dict[str, Any]]) -> Proposal | None:
        iid = row["interaction_id"]
        question = row.get("user_message") or ""
        best = None
        rejected: list[dict[str, Any]] = []
        for hit in hits:
            similarity = 1.0 - float(hit["_distance"])
            if similarity < self.threshold:
                break
            match = question_match(question, hit["question"], intent=row.get("intent"),
                                   similar_intent=self.intents.get(hit["interaction_id"]))
            if match.ok:
                best = (similarity, hit, match)
                break
            rejected.append({"similar_interaction_id": hit["interaction_id"],
                             "similarity": round(similarity, 4), "reason": match.reason})
        if best is None:
            return None
        similarity, hit, match = best
        label, score = confidence(similarity, match.coverage)
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
            "confidence": label,
            "confidence_score": score,
            "question_coverage": match.coverage,
            **({"rejected_similar": rejected} if rejected else {}),
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
