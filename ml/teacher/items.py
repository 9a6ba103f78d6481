"""What the teacher works on and what it hands to review: the errors that want a proposal, what
the teacher is told is wrong with each, the ``sample`` review items of its proposals and of human
agents' corrections, and the two products of approved samples (the answer index of the retrieval
teacher, and DPO preference pairs).

The ``teacher_samples`` and ``preference_pairs`` assets wire these to the warehouse and the
operational store (``store.teaching``); everything here is pure.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

import polars as pl

from ml.audit.taxonomy import SEVERITIES, severity_at_least
from ml.conversation import last_user_message, parse_messages
from ml.teacher.retrieval import Proposal

HUMAN_SOURCE = "human_agent"
NO_ERROR_FOUND_FINDING = "A reviewer marked this reply as wrong (the auditor had found no error)"


class ErrorItem(Protocol):
    """An open error item as ``store.teaching.open_errors`` returns it."""

    id: int
    interaction_id: str
    tenant_id: str
    category: str | None
    severity: str | None
    status: str
    explanation: str | None
    note: str | None


def teacher_finding(error: ErrorItem) -> str:
    """What the teacher is told is wrong with the reply of ``error``.

    A flagged error: its category, severity and the auditor's explanation. An item without a
    category (a "no error found" calibration item a reviewer confirmed) must not hand the
    auditor's "no error found" text to the teacher: it says a reviewer found the reply wrong.
    A reviewer's decision note, when there is one, is added either way."""
    if error.category:
        finding = (f"{error.category} ({error.severity or 'severity not given'}): "
                   f"{error.explanation}")
    elif error.status == "confirmed":
        finding = NO_ERROR_FOUND_FINDING
    else:
        finding = "The reply was flagged for review; no specific error was named"
    if error.note and error.note.strip():
        finding += f". Reviewer's note: {error.note.strip()}"
    return finding


def errors_to_teach(errors: Iterable[ErrorItem], *, min_severity: str, include_pending: bool,
                    limit: int = 0) -> list[dict[str, Any]]:
    """The errors that get a proposal: every confirmed one, and pending ones of at least
    ``min_severity`` (when ``include_pending``); one per interaction (the oldest error item is the
    parent); at most ``limit`` (0 = all)."""
    if min_severity not in SEVERITIES:
        raise ValueError(f"min_severity must be one of {SEVERITIES}, got {min_severity!r}")
    wanted: list[dict[str, Any]] = []
    seen: set[tuple[str, str]] = set()  # (tenant_id, interaction_id): ids are per tenant
    for e in errors:
        if (e.tenant_id, e.interaction_id) in seen:
            continue
        if e.status == "confirmed" or (include_pending and severity_at_least(e.severity,
                                                                             min_severity)):
            seen.add((e.tenant_id, e.interaction_id))
            wanted.append({"error_id": e.id, "interaction_id": e.interaction_id,
                           "tenant_id": e.tenant_id, "category": e.category,
                           "severity": e.severity, "status": e.status,
                           "finding": teacher_finding(e)})
    return wanted[:limit] if limit > 0 else wanted


def sample_item_specs(rows: Sequence[Mapping[str, Any]], proposals: Mapping[str, Proposal], *,
                      prompt_version: str | None) -> list[dict[str, Any]]:
    """The sample items (for ``store.teaching.create_samples``) of the teacher's proposals: one
    per row of ``rows`` (an error to teach joined with its interaction) that got a proposal; the
    parent is the error item. A proposal that says how sure it is (the retrieval teacher's
    ``extra.confidence``: high / medium / low) is also tagged ``confidence:<label>``, so
    reviewers can sort and filter on it; the score and the reasons stay in ``extra``."""
    specs = []
    for r in rows:
        p = proposals.get(r["interaction_id"])
        if p is None:
            continue
        specs.append(dict(
            actor=f"teacher:{p.source}"[:128], tenant_id=r["tenant_id"],
            interaction_id=r["interaction_id"], session_id=r.get("session_id"),
            parent_id=r["error_id"], messages=parse_messages(r.get("messages"), r["interaction_id"]),
            original_response=r.get("response"), proposed_response=p.response,
            source=p.source[:64], category=r["category"], severity=r["severity"],
            tags=[f"source:{p.source}"[:64]]
            + ([f"confidence:{p.extra['confidence']}"[:64]] if p.extra.get("confidence") else []),
            extra={**p.extra, "error_status": r["status"],
                   "teacher_prompt_version": prompt_version}))
    return specs


def human_correction_specs(corrections: pl.DataFrame, parents: Mapping[tuple[str, str], int],
                           skip: set[tuple[str, str]]) -> list[dict[str, Any]]:
    """A sample item per human agent's correction (``interactions`` rows with
    ``corrected_response``) whose interaction (tenant_id, interaction_id) is not in ``skip`` (has
    a sample already); the parent is the interaction's error item when there is one."""
    specs = []
    for r in corrections.iter_rows(named=True):
        key = (r["tenant_id"], r["interaction_id"])
        if key in skip:
            continue
        specs.append(dict(
            actor=f"teacher:{HUMAN_SOURCE}", tenant_id=r["tenant_id"],
            interaction_id=r["interaction_id"], session_id=r.get("session_id"),
            parent_id=parents.get(key),
            messages=parse_messages(r.get("messages"), r["interaction_id"]),
            original_response=r.get("response"), proposed_response=r["corrected_response"],
            source=HUMAN_SOURCE, category=r.get("correction_category"),
            tags=[f"source:{HUMAN_SOURCE}"],
            extra={"agent_id": r.get("correction_agent_id"),
                   "reason": r.get("correction_reason")}))
    return specs


ANSWER_ENTRY_SCHEMA = {"interaction_id": pl.String, "tenant_id": pl.String, "question": pl.String,
                       "answer": pl.String, "origin": pl.String, "item_id": pl.Int64}


def answer_index_entries(approved: Sequence[Mapping[str, Any]],
                         corrections: pl.DataFrame) -> pl.DataFrame:
    """Approved/edited sample items (``store.teaching.approved_sample_rows``) and human
    corrections as (question, answer) entries of the retrieval teacher's answer index."""
    rows = []
    for item in approved:
        q, a = last_user_message(item["messages"]), item["final_response"]
        if q and q.strip() and a and a.strip():
            rows.append({"interaction_id": item["interaction_id"], "tenant_id": item["tenant_id"],
                         "question": q, "answer": a, "origin": "sample_item",
                         "item_id": item["id"]})
    for r in corrections.iter_rows(named=True):
        q, a = r.get("user_message"), r.get("corrected_response")
        if q and q.strip() and a and a.strip():
            rows.append({"interaction_id": r["interaction_id"], "tenant_id": r["tenant_id"],
                         "question": q, "answer": a, "origin": "human_correction",
                         "item_id": None})
    return pl.DataFrame(rows, schema=ANSWER_ENTRY_SCHEMA)


def preference_frame(approved: Sequence[Mapping[str, Any]],
                     schema: Mapping[str, pl.DataType]) -> pl.DataFrame:
    """Preference pairs from approved/edited sample items: chosen = final reply, rejected =
    original reply (pairs where they are equal or either is empty are left out). ``schema``: the
    ``preference_pairs`` table's polars schema."""
    rows = []
    for item in approved:
        chosen, rejected = item["final_response"], item["original_response"]
        if not chosen or not chosen.strip() or rejected is None or \
                chosen.strip() == rejected.strip():
            continue
        rows.append({
            "sample_item_id": item["id"], "error_item_id": item["parent_id"],
            "interaction_id": item["interaction_id"], "tenant_id": item["tenant_id"],
            "prompt": last_user_message(item["messages"]),
            "messages": json.dumps(item["messages"] or [], ensure_ascii=False),
            "chosen": chosen, "rejected": rejected, "source": item["source"],
            "status": item["status"], "category": item["category"],
            "decided_by": item["decided_by"], "decided_at": item["decided_at"],
        })
    return pl.DataFrame(rows, schema=dict(schema))
