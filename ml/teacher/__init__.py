"""The Teacher: the reply the assistant should have given.

Order of preference for one flagged interaction (``propose_corrections``):

1. a human agent's correction of that interaction (``source="human_agent"``);
2. an LLM teacher, when one is configured (``source="llm:<provider>"``);
3. otherwise the retrieval teacher: the best approved answer to the most similar past question
   (``source="retrieval"``), or no proposal when nothing is similar enough.

Provider failures of the LLM teacher are returned, not raised: no item is created for that
interaction, so the next run tries again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ml.llm import ProviderError
from ml.teacher.llm import LLMTeacher
from ml.teacher.retrieval import Proposal, RetrievalTeacher

HUMAN_SOURCE = "human_agent"


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
            except ProviderError as exc:
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


__all__ = ["HUMAN_SOURCE", "LLMTeacher", "Proposal", "RetrievalTeacher", "TeachResult",
           "human_proposal", "propose_corrections"]
