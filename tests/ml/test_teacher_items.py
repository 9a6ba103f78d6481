"""ml.teacher.items: what the teacher works on and the sample items it hands to review."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

import polars as pl
import pytest

from ml.conversation import RowInputError
from ml.tables import TABLES
from ml.teacher.items import (
    HUMAN_SOURCE,
    NO_ERROR_FOUND_FINDING,
    answer_index_entries,
    errors_to_teach,
    human_correction_specs,
    preference_frame,
    sample_item_specs,
    teacher_finding,
)
from ml.teacher.retrieval import Proposal


@dataclass
class Err:
    id: int
    interaction_id: str
    status: str = "pending"
    severity: str | None = "high"
    category: str | None = "factual_error"
    explanation: str | None = "the price is wrong"
    note: str | None = None
    tenant_id: str = "acme"


def test_teacher_finding_for_a_flag_a_confirmed_no_error_item_and_a_note():
    assert teacher_finding(Err(1, "i")) == "factual_error (high): the price is wrong"
    confirmed_clean = Err(2, "i", status="confirmed", category=None, severity=None,
                          explanation="No error found by the auditor", note=" it is 12 EUR ")
    assert teacher_finding(confirmed_clean) == (f"{NO_ERROR_FOUND_FINDING}. Reviewer's note: "
                                                "it is 12 EUR")
    assert "no specific error" in teacher_finding(Err(3, "i", category=None))


def test_errors_to_teach_confirmed_always_pending_by_severity_one_per_interaction():
    errors = [Err(1, "a", severity="low"), Err(2, "b", status="confirmed", severity="low"),
              Err(3, "c", severity="high"), Err(4, "c", severity="critical"),
              Err(5, "d", severity="medium")]
    wanted = errors_to_teach(errors, min_severity="medium", include_pending=True)
    assert [(w["error_id"], w["interaction_id"]) for w in wanted] == [(2, "b"), (3, "c"), (5, "d")]
    only_confirmed = errors_to_teach(errors, min_severity="medium", include_pending=False)
    assert [w["error_id"] for w in only_confirmed] == [2]
    assert len(errors_to_teach(errors, min_severity="low", include_pending=True, limit=2)) == 2
    with pytest.raises(ValueError, match="min_severity must be one of"):
        errors_to_teach(errors, min_severity="huge", include_pending=True)


ROW = {"interaction_id": "i1", "tenant_id": "acme", "session_id": "s", "error_id": 7,
       "messages": json.dumps([{"role": "user", "content": "price?"}]), "response": "10 EUR",
       "category": "factual_error", "severity": "high", "status": "pending"}


def test_sample_item_specs_only_for_rows_with_a_proposal():
    proposals = {"i1": Proposal("i1", "12 EUR", "retrieval", {"similarity": 0.91})}
    specs = sample_item_specs([ROW, {**ROW, "interaction_id": "i2"}], proposals,
                              prompt_version=None)
    assert len(specs) == 1
    [spec] = specs
    assert (spec["parent_id"], spec["proposed_response"], spec["original_response"],
            spec["source"], spec["tags"]) == (7, "12 EUR", "10 EUR", "retrieval",
                                              ["source:retrieval"])
    assert spec["extra"] == {"similarity": 0.91, "error_status": "pending",
                             "teacher_prompt_version": None}
    with pytest.raises(RowInputError, match="interaction i1"):
        sample_item_specs([{**ROW, "messages": "[broken"}], proposals, prompt_version="t1")


def test_human_correction_specs_skip_interactions_with_a_sample_and_find_the_parent():
    corrections = pl.DataFrame({
        "interaction_id": ["i1", "i2", "i3"], "tenant_id": ["acme"] * 3,
        "session_id": ["s"] * 3, "messages": [None] * 3, "response": ["bad"] * 3,
        "corrected_response": ["good 1", "good 2", "good 3"],
        "correction_category": ["factual_error", None, None],
        "correction_agent_id": ["agent-7", None, None], "correction_reason": ["price", None, None],
    })
    specs = human_correction_specs(corrections, parents={("acme", "i1"): 11, ("other", "i3"): 9},
                                   skip={("acme", "i2"), ("other", "i1")})
    assert [(s["interaction_id"], s["parent_id"]) for s in specs] == [("i1", 11), ("i3", None)]
    assert specs[0]["source"] == HUMAN_SOURCE and specs[0]["messages"] == []
    assert specs[0]["extra"] == {"agent_id": "agent-7", "reason": "price"}


APPROVED = [
    {"id": 1, "parent_id": 7, "interaction_id": "i1", "tenant_id": "acme",
     "messages": [{"role": "user", "content": "price?"}, {"role": "assistant", "content": "?"},
                  {"role": "user", "content": "the price of X?"}],
     "original_response": "10 EUR", "final_response": "12 EUR", "source": "retrieval",
     "status": "approved", "category": "factual_error", "decided_by": "ann",
     "decided_at": datetime(2026, 1, 3)},
    {"id": 2, "parent_id": None, "interaction_id": "i2", "tenant_id": "acme", "messages": [],
     "original_response": "same", "final_response": " same ", "source": "human_agent",
     "status": "approved", "category": None, "decided_by": "bob", "decided_at": None},
]


def test_answer_index_entries_from_approved_samples_and_corrections():
    corrections = pl.DataFrame({"interaction_id": ["i9", "i10"], "tenant_id": ["t", "t"],
                                "user_message": ["how?", "  "],
                                "corrected_response": ["like this", "x"]})
    entries = answer_index_entries(APPROVED, corrections)
    assert entries.select("interaction_id", "question", "answer", "origin").rows() == [
        ("i1", "the price of X?", "12 EUR", "sample_item"),
        ("i9", "how?", "like this", "human_correction")]  # i2: no question; i10: blank


def test_preference_frame_leaves_out_pairs_whose_replies_are_the_same():
    pairs = preference_frame(APPROVED, TABLES["preference_pairs"].polars_schema())
    assert pairs.columns == list(TABLES["preference_pairs"].types)
    assert pairs.select("sample_item_id", "prompt", "chosen", "rejected").rows() == [
        (1, "the price of X?", "12 EUR", "10 EUR")]
    assert json.loads(pairs["messages"][0])[0] == {"role": "user", "content": "price?"}


def test_sample_item_shows_how_sure_the_retrieval_teacher_is():
    """Issue 8.13: the item says how sure the teacher is (extra and a tag reviewers filter on)."""
    proposals = {"i1": Proposal("i1", "12 EUR", "retrieval",
                                {"similarity": 0.86, "confidence": "low",
                                 "confidence_score": 0.54})}
    [spec] = sample_item_specs([ROW], proposals, prompt_version=None)
    assert spec["tags"] == ["source:retrieval", "confidence:low"]
    assert spec["extra"]["confidence"] == "low" and spec["extra"]["confidence_score"] == 0.54
