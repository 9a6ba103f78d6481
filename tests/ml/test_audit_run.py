"""ml.audit.run: the pure parts of one audit run (selection checks, what is left, labels, review
item specs, failure rows, totals)."""

from __future__ import annotations

import json
from datetime import date, datetime

import polars as pl
import pytest

from ml.audit.llm import AuditFailure
from ml.audit.run import (
    AuditTotals,
    SelectionMismatch,
    check_selection,
    failure_rows,
    labelled_verdicts,
    review_item_specs,
    still_to_audit,
    with_reason,
)
from ml.conversation import RowInputError
from ml.tables import TABLES

CANDS = pl.DataFrame({
    "interaction_id": ["a", "b", "c"], "tenant_id": ["acme"] * 3, "auditor": ["rules"] * 3,
    "prompt_version": ["rules-v1"] * 3,
    "reasons": [["negative_feedback"], ["calibration"], ["retry", "handoff"]],
})


def _verdicts(rows: list[dict]) -> pl.DataFrame:
    base = {"tenant_id": "acme", "partition_date": date(2026, 1, 2), "auditor": "rules",
            "prompt_version": "rules-v1", "category": None, "severity": None,
            "confidence": 0.8, "explanation": "because", "signals": ["s"], "answered_by": "rules",
            "audited_at": datetime(2026, 1, 2), "in_calibration": None, "label_weight": None}
    return pl.DataFrame([{**base, **r} for r in rows],
                        schema=TABLES["audited_errors"].polars_schema())


def _interactions(ids: list[str], messages: str | None = None) -> pl.DataFrame:
    msgs = messages or json.dumps([{"role": "user", "content": "where is my order?"}])
    return pl.DataFrame({"interaction_id": ids, "tenant_id": ["acme"] * len(ids),
                         "session_id": [f"s-{i}" for i in ids],
                         "messages": [msgs] * len(ids), "response": [f"reply {i}" for i in ids]})


def test_check_selection_names_both_auditors():
    check_selection(CANDS, "rules", "rules-v1")
    with pytest.raises(SelectionMismatch, match=r"'rules' prompt 'rules-v1'.*'llm:openai/x' 'v2'"):
        check_selection(CANDS, "llm:openai/x", "v2")


def test_still_to_audit_skips_what_was_audited_since_and_honours_the_limit():
    assert still_to_audit(CANDS, [("acme", "b")])["interaction_id"].to_list() == ["a", "c"]
    assert still_to_audit(CANDS, [], limit=2)["interaction_id"].to_list() == ["a", "b"]
    assert still_to_audit(CANDS, [("acme", "a")], limit=1)["interaction_id"].to_list() == ["b"]
    # another tenant's id is another interaction
    assert still_to_audit(CANDS, [("other", "b")])["interaction_id"].to_list() == ["a", "b", "c"]
    assert with_reason(CANDS, "retry") == {("acme", "c")}
    assert with_reason(CANDS.head(0), "retry") == set()


def test_labelled_verdicts_weight_flags_and_put_clean_calibration_verdicts_to_review():
    verdicts = _verdicts([{"interaction_id": f"clean{i}", "is_error": False} for i in range(200)]
                         + [{"interaction_id": "flag", "is_error": True,
                             "category": "factual_error", "severity": "high"}])
    calibration = {("acme", f"clean{i}") for i in range(100)} | {("acme", "flag")}
    out, clean_items = labelled_verdicts(verdicts, calibration, 0.25)
    assert clean_items and clean_items <= calibration - {("acme", "flag")}
    assert 10 <= len(clean_items) <= 45  # a hash draw below 0.25 of 100 clean verdicts
    weights = dict(zip(out["interaction_id"], out["label_weight"], strict=True))
    assert weights["flag"] == 1.0
    assert all(weights[i] == 4.0 for _, i in clean_items)
    assert weights["clean150"] is None  # outside the calibration sample
    assert labelled_verdicts(verdicts, calibration, 0.0)[1] == set()


def test_review_item_specs_for_a_flag_and_a_no_error_found_item():
    verdicts = _verdicts([
        {"interaction_id": "f", "is_error": True, "category": "factual_error", "severity": "high"},
        {"interaction_id": "c", "is_error": False},
        {"interaction_id": "quiet", "is_error": False},
    ])
    specs = review_item_specs(verdicts, _interactions(["f", "c", "quiet"]), auditor="rules",
                              prompt_version="rules-v1", clean_items={("acme", "c")})
    assert [s["interaction_id"] for s in specs] == ["f", "c"]
    flag, clean = specs
    assert (flag["category"], flag["severity"], flag["tags"]) == ("factual_error", "high",
                                                                  ["auditor:rules"])
    assert flag["messages"] == [{"role": "user", "content": "where is my order?"}]
    assert flag["original_response"] == "reply f" and flag["session_id"] == "s-f"
    assert flag["extra"]["partition_date"] == "2026-01-02"
    assert clean["category"] is None and clean["extra"]["is_error"] is False
    assert "no_error_found" in clean["tags"] and "No error found" in clean["explanation"]
    assert "kind" not in flag and "dedup_key" not in flag  # the store sets both


def test_review_item_specs_name_the_interaction_with_malformed_messages():
    verdicts = _verdicts([{"interaction_id": "f", "is_error": True,
                           "category": "factual_error", "severity": "high"}])
    with pytest.raises(RowInputError, match="interaction f: messages is not valid JSON"):
        review_item_specs(verdicts, _interactions(["f"], "{not json"), auditor="rules",
                          prompt_version="rules-v1", clean_items=set())


def test_failure_rows_carry_the_class_prefix_and_totals_add_up():
    failures = [AuditFailure("x", "acme", "HTTP 400", True), AuditFailure("y", "acme", "503")]
    rows = failure_rows(failures)
    assert [(r["reason"], r["counted"]) for r in rows] == [("[request] HTTP 400", True),
                                                           ("[outage] 503", False)]
    totals = AuditTotals()
    totals.add(_verdicts([{"interaction_id": "f", "is_error": True, "category": "off_topic",
                           "severity": "low"}, {"interaction_id": "c", "is_error": False}]),
               failures, created=1, clean_created=0, given_up=["x"])
    totals.add(_verdicts([]), [], created=0, clean_created=0, given_up=[])
    assert (totals.audited, totals.errors, totals.error_rate, totals.given_up) == (2, 1, 0.5, ["x"])
    assert dict(totals.by_category) == {"off_topic": 1} and len(totals.failures) == 2
    assert AuditTotals().error_rate == 0.0
