"""The Teacher: the reply the assistant should have given.

Order of preference for one flagged interaction (``propose_corrections``):

1. a human agent's correction of that interaction (``source="human_agent"``);
2. an LLM teacher, when one is configured (``source="llm:<provider>"``);
3. otherwise the retrieval teacher: the best approved answer to the most similar past question
   (``source="retrieval"``), or no proposal when nothing is similar enough.

Provider failures of the LLM teacher are returned, not raised: no item is created for that
interaction, so the next run tries again. The caller records every LLM attempt (failed with its
reason, or ok) in the warehouse table ``teacher_attempts`` (:data:`TEACHER_ATTEMPT_COLUMNS`, rows
from :func:`attempt_rows`), one row per (interaction, teacher, prompt version) with an attempt count
and a count of request-specific failures (``counted_attempts``, :mod:`ml.audit.failures`): only
those bring an interaction to the retry cap; a failure during an outage never does.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import polars as pl

from ml import warehouse
from ml.audit.failures import classify_failure, tag_reason
from ml.llm import from_env
from ml.tables import TABLES, TEACHER_ATTEMPT_COLUMNS
from ml.teacher.items import HUMAN_SOURCE
from ml.teacher.llm import LLMTeacher
from ml.teacher.retrieval import Proposal, RetrievalTeacher

TEACHER_ATTEMPTS_TABLE = "teacher_attempts"
TEACHER_ATTEMPT_KEYS = TABLES[TEACHER_ATTEMPTS_TABLE].key


@dataclass
class TeachResult:
    proposals: dict[str, Proposal] = field(default_factory=dict)
    no_proposal: list[str] = field(default_factory=list)  # nothing similar enough (retrieval)
    # interaction_id -> reason, prefixed "[request] " or "[outage] " (ml.audit.failures)
    failures: dict[str, str] = field(default_factory=dict)
    counted: set[str] = field(default_factory=set)  # failures that were request-specific

    def merge(self, other: TeachResult, tenant: str) -> None:
        """Add ``other`` (one tenant's result) with its keys written ``<tenant>/<id>``: ids are
        per tenant, so a run over several tenants keeps them apart."""
        self.proposals.update({f"{tenant}/{k}": v for k, v in other.proposals.items()})
        self.no_proposal += [f"{tenant}/{k}" for k in other.no_proposal]
        self.failures.update({f"{tenant}/{k}": v for k, v in other.failures.items()})
        self.counted |= {f"{tenant}/{k}" for k in other.counted}

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
        # the LLM requests go out side by side (LLMTeacher.propose_many); results in row order
        answers = llm.propose_many(rest, [row.get("finding") or "" for row in rest])
        for row, p in zip(rest, answers, strict=True):
            if isinstance(p, LLMTeacher.ROW_FAILURES):
                iid, kind = str(row["interaction_id"]), classify_failure(p)
                result.failures[iid] = tag_reason(str(p), kind.counted)
                if kind.counted:
                    result.counted.add(iid)
                continue
            result.proposals[p.interaction_id] = p
        return result
    found = retrieval.propose_many(rest, vectors) if retrieval is not None else [None] * len(rest)
    for row, p in zip(rest, found, strict=True):
        if p is None:
            result.no_proposal.append(str(row["interaction_id"]))
        else:
            result.proposals[p.interaction_id] = p
    return result


ROLE = "teacher"


def teacher_from_env(override: str = "") -> LLMTeacher | None:
    """The configured LLM teacher (``LEARNLOOP_TEACHER``, read now), or None for the offline
    default (human corrections, then retrieval). ``override`` replaces the variable for this
    call."""
    env = dict(os.environ)
    if override.strip():
        env["LEARNLOOP_TEACHER"] = override.strip()
    router = from_env(ROLE, env)
    return LLMTeacher(router) if router is not None else None


def teacher_name(llm: LLMTeacher) -> str:
    """Stable identity of an LLM teacher: its providers and models, in order."""
    return "llm:" + ",".join(f"{p.name}/{getattr(p, 'model', '?')}" for p in llm.router.providers)


def read_teacher_attempts(con, teacher: str | None = None) -> pl.DataFrame:
    """``teacher_attempts`` rows (of one teacher when given); the table is created when missing
    and an older one gets the columns it lacks."""
    ensure_attempts_table(con)
    if teacher is None:
        return warehouse.query(con, f"SELECT * FROM {TEACHER_ATTEMPTS_TABLE}")
    return warehouse.query(con, f"SELECT * FROM {TEACHER_ATTEMPTS_TABLE} WHERE teacher = ?",
                           [teacher])


def ensure_attempts_table(con) -> None:
    """``teacher_attempts`` with every column of :data:`TEACHER_ATTEMPT_COLUMNS`: created when
    missing; a table from before a column existed gets it (NULL on its old rows)."""
    warehouse.ensure_table(con, TEACHER_ATTEMPTS_TABLE, TEACHER_ATTEMPT_COLUMNS)


def given_up_ids(previous: pl.DataFrame, prompt_version: str, max_attempts: int) -> set[str]:
    """Interactions whose LLM proposal (this prompt version) failed request-specifically
    ``max_attempts`` times and failed last: no more calls. 0 = never give up."""
    if max_attempts <= 0 or previous.height == 0:
        return set()
    counted = (pl.col("counted_attempts").fill_null(0) if "counted_attempts" in previous.columns
               else pl.lit(0))
    return set(previous.filter(
        (pl.col("status") == "failed") & (pl.col("prompt_version") == prompt_version)
        & (counted >= max_attempts))["interaction_id"].to_list())


def attempt_schema() -> dict[str, pl.DataType]:
    return TABLES[TEACHER_ATTEMPTS_TABLE].polars_schema()


def attempt_rows(rows: Sequence[dict[str, Any]], result: TeachResult, previous: pl.DataFrame, *,
                 teacher: str, prompt_version: str, now: datetime,
                 run_id: str = "") -> pl.DataFrame:
    """``teacher_attempts`` rows for the LLM teacher's attempts in ``result``: one per row of
    ``rows`` that failed (with its reason) or got an LLM proposal; ``attempts`` continues the
    count in ``previous`` (earlier rows of the same teacher and prompt version), and so does
    ``counted_attempts`` for a request-specific failure (``result.counted``)."""
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
        counted_before = int(prev.get("counted_attempts") or 0) if prev else 0
        out.append({
            "interaction_id": iid, "tenant_id": row.get("tenant_id") or "default",
            "error_item_id": row.get("error_id"), "teacher": teacher,
            "prompt_version": prompt_version, "status": status, "reason": reason,
            "attempts": (int(prev["attempts"] or 0) if prev else 0) + 1,
            "first_attempt_at": prev["first_attempt_at"] if prev else now,
            "updated_at": now, "run_id": run_id,
            "counted_attempts": counted_before + int(status == "failed" and iid in result.counted),
        })
    return pl.DataFrame(out, schema=attempt_schema())


__all__ = ["HUMAN_SOURCE", "LLMTeacher", "Proposal", "RetrievalTeacher", "TEACHER_ATTEMPTS_TABLE",
           "TEACHER_ATTEMPT_COLUMNS", "TEACHER_ATTEMPT_KEYS", "TeachResult", "attempt_rows",
           "ensure_attempts_table", "given_up_ids", "human_proposal", "propose_corrections",
           "read_teacher_attempts", "teacher_from_env", "teacher_name"]
