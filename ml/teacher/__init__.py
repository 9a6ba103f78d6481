"""The Teacher: the reply the assistant should have given.

Order of preference for one flagged interaction (``propose_corrections``):

1. a human agent's correction of that interaction (``source="human_agent"``);
2. an LLM teacher, when one is configured (``source="llm:<provider>"``);
3. otherwise the retrieval teacher: the best approved answer to the most similar past question
   (``source="retrieval"``), or no proposal when nothing is similar enough.

Provider failures of the LLM teacher are returned, not raised: no item is created for that
interaction, so the next run tries again. The caller records every LLM attempt (failed with its
reason, or ok) in the warehouse table ``teacher_attempts`` (:data:`TEACHER_ATTEMPT_COLUMNS`, rows
from :func:`attempt_rows`), one row per (interaction, teacher, prompt version) with an attempt count.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Sequence

import numpy as np
import polars as pl

from ml.teacher.llm import LLMTeacher
from ml.teacher.retrieval import Proposal, RetrievalTeacher

HUMAN_SOURCE = "human_agent"

TEACHER_ATTEMPTS_TABLE = "teacher_attempts"
TEACHER_ATTEMPT_COLUMNS: dict[str, str] = {
    "interaction_id": "VARCHAR",
    "tenant_id": "VARCHAR",
    "error_item_id": "BIGINT",  # the error review item the proposal was for
    "teacher": "VARCHAR",  # llm:<provider>/<model>,...
    "prompt_version": "VARCHAR",
    "status": "VARCHAR",  # failed | ok
    "reason": "VARCHAR",  # the provider error of the last failed attempt (NULL when ok)
    "attempts": "BIGINT",  # attempts so far (failed and ok)
    "first_attempt_at": "TIMESTAMP",
    "updated_at": "TIMESTAMP",
    "run_id": "VARCHAR",  # the Dagster run of the last attempt
}
TEACHER_ATTEMPT_KEYS = ("interaction_id", "teacher", "prompt_version")


@dataclass
class TeachResult:
    proposals: dict[str, Proposal] = field(default_factory=dict)
    no_proposal: list[str] = field(default_factory=list)  # nothing similar enough (retrieval)
    failures: dict[str, str] = field(default_factory=dict)  # interaction_id -> provider error

    def count_by_source(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for p in self.proposals.values():
            out[p.source] = out.get(p.source, 0) + 1
        return out


def human_proposal(row: dict[str, Any]) -> Proposal | None:
    text = row.get("corrected_response")
    if not text or not str(text).strip():
        return None
    return Proposal(str(row["interaction_id"]), str(text), HUMAN_SOURCE, {
        "agent_id": row.get("correction_agent_id"), "reason": row.get("correction_reason"),
        "category": row.get("correction_category"),
    })


def propose_corrections(rows: Sequence[dict[str, Any]], *, retrieval: RetrievalTeacher | None,
                        llm: LLMTeacher | None = None,
                        vectors: dict[str, np.ndarray] | None = None) -> TeachResult:
    """Proposals for ``rows`` (interaction_id, tenant_id, user_message, messages,
    original_response/response, corrected_response, finding)."""
    result = TeachResult()
    rest: list[dict[str, Any]] = []
    for row in rows:
        human = human_proposal(row)
        if human is not None:
            result.proposals[human.interaction_id] = human
        else:
            rest.append(row)
    if llm is not None:
        for row in rest:
            try:
                p = llm.propose(row, row.get("finding") or "")
            except LLMTeacher.ROW_FAILURES as exc:
                result.failures[str(row["interaction_id"])] = str(exc)
                continue
            result.proposals[p.interaction_id] = p
        return result
    found = retrieval.propose_many(rest, vectors) if retrieval is not None else [None] * len(rest)
    for row, p in zip(rest, found):
        if p is None:
            result.no_proposal.append(str(row["interaction_id"]))
        else:
            result.proposals[p.interaction_id] = p
    return result


def attempt_schema() -> dict[str, pl.DataType]:
    types = {"VARCHAR": pl.String(), "BIGINT": pl.Int64(), "TIMESTAMP": pl.Datetime("us")}
    return {c: types[t] for c, t in TEACHER_ATTEMPT_COLUMNS.items()}


def attempt_rows(rows: Sequence[dict[str, Any]], result: TeachResult, previous: pl.DataFrame, *,
                 teacher: str, prompt_version: str, now: datetime,
                 run_id: str = "") -> pl.DataFrame:
    """``teacher_attempts`` rows for the LLM teacher's attempts in ``result``: one per row of
    ``rows`` that failed (with its reason) or got an LLM proposal; ``attempts`` continues the
    count in ``previous`` (earlier rows of the same teacher and prompt version)."""
    before: dict[str, dict[str, Any]] = {}
    if previous.height:
        for p in previous.filter((pl.col("teacher") == teacher)
                                 & (pl.col("prompt_version") == prompt_version)).iter_rows(named=True):
            before[p["interaction_id"]] = p
    out = []
    for row in rows:
        iid = str(row["interaction_id"])
        proposal = result.proposals.get(iid)
        if iid in result.failures:
            status, reason = "failed", result.failures[iid][:4000]
        elif proposal is not None and proposal.source.startswith("llm:"):
            status, reason = "ok", None
        else:
            continue  # a human correction or no LLM attempt: nothing to record
        prev = before.get(iid)
        out.append({
            "interaction_id": iid, "tenant_id": row.get("tenant_id") or "default",
            "error_item_id": row.get("error_id"), "teacher": teacher,
            "prompt_version": prompt_version, "status": status, "reason": reason,
            "attempts": (int(prev["attempts"] or 0) if prev else 0) + 1,
            "first_attempt_at": prev["first_attempt_at"] if prev else now,
            "updated_at": now, "run_id": run_id,
        })
    return pl.DataFrame(out, schema=attempt_schema())


__all__ = ["HUMAN_SOURCE", "LLMTeacher", "Proposal", "RetrievalTeacher", "TEACHER_ATTEMPTS_TABLE",
           "TEACHER_ATTEMPT_COLUMNS", "TEACHER_ATTEMPT_KEYS", "TeachResult", "attempt_rows",
           "human_proposal", "propose_corrections"]
