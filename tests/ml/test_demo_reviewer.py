"""The demo reviewer (ml.demo.reviewer): a careful reviewer's decisions from the generator's
ground truth, with seeded slips and stylistic edits that depend on the item, not on call order."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from ml.demo.generate import generate
from ml.demo.reviewer import (
    NOTE_PREFIX,
    ItemFacts,
    Truth,
    decide_item,
    draw,
    reply_is_right,
    style_edit,
)
from ml.demo.truth import read_truth, read_truth_files

PRICE = Truth("wrong_price", "price",
              "Right now the Orbit fitness watch sells for $199.00. Shipping is free on orders "
              "over $50.")
STATUS = Truth("truncated", "order",
               "Card order FF3631311 was posted 2 days ago; delivery takes 3-5 business days.")
RIGHT = Truth(None, "policy", "You can return any item within 30 days of delivery.")


def _error(key="error:k", category="factual_error", calibration=False) -> ItemFacts:
    return ItemFacts(key=key, kind="error", category=None if calibration else category,
                     calibration=calibration, original_response="reply")


def _sample(proposed: str, key="sample:k", original="The Orbit fitness watch costs $99.00.",
            source="retrieval") -> ItemFacts:
    return ItemFacts(key=key, kind="sample", original_response=original,
                     proposed_response=proposed, source=source)


def _decide(item, truth, **kw):
    kw.setdefault("mistake_rate", 0.0)
    kw.setdefault("style_edit_rate", 0.0)
    return decide_item(item, truth, seed=1, **kw)


def test_errors_confirmed_when_the_truth_has_a_mistake_even_in_another_category():
    d = _decide(_error(category="factual_error"), PRICE)
    assert (d.decision, d.ideal, d.final_response) == ("confirm", "confirm", None)
    assert d.note.startswith(NOTE_PREFIX) and "wrong_price" in d.note
    other = _decide(_error(category="off_topic"), PRICE)
    assert other.decision == "confirm" and "the auditor called it off_topic" in other.note
    assert _decide(_error(), RIGHT).decision == "dismiss"


def test_no_error_found_items_confirmed_when_the_auditor_missed_a_mistake():
    missed = _decide(_error(calibration=True), STATUS)
    assert missed.decision == "confirm" and "the auditor missed it" in missed.note
    assert _decide(_error(calibration=True), RIGHT).decision == "dismiss"


@pytest.mark.parametrize("proposed", [
    PRICE.answer,
    "right now the Orbit fitness watch  sells for $199.00. Shipping is free on orders over $50",
    "The Orbit fitness watch is currently $199.00, and it is in stock.",  # same price, reworded
])
def test_a_right_proposal_is_approved(proposed):
    d = _decide(_sample(proposed), PRICE)
    assert (d.decision, d.final_response) == ("approve", None)


@pytest.mark.parametrize("proposed", [
    "The Orbit fitness watch costs $99.00.",  # the wrong price again
    "The Orbit fitness watch costs $199.00. The account on file is registered to [EMAIL].",
    "The Orbit fitness watch costs $199.00. Call Ann at +1 415-555-0123.",
    "The Orbit fitness watch costs $199.00 and",  # cut off
    "Returns are accepted within 30 days.",  # another question's answer
])
def test_a_wrong_proposal_is_edited_into_the_reference_reply(proposed):
    d = _decide(_sample(proposed), PRICE)
    assert (d.decision, d.final_response) == ("edit", PRICE.answer)
    assert "replaced by the reference reply" in d.note


def test_only_price_answers_may_be_reworded():
    reworded = "Your card order FF3631311 is on its way: delivery in 3-5 business days."
    assert reply_is_right(reworded, STATUS) is False
    assert _decide(_sample(reworded), STATUS).decision == "edit"


def test_a_wrong_proposal_for_a_right_reply_is_rejected():
    d = _decide(_sample("Returns are accepted for up to one year.", original=RIGHT.answer), RIGHT)
    assert (d.decision, d.ideal, d.final_response) == ("reject", "reject", None)
    assert "nothing to correct" in d.note


def test_without_a_reference_reply_only_the_right_original_is_approved():
    old = Truth(None)  # a truth file written before answers were recorded
    assert _decide(_sample("same", original="same"), old).decision == "approve"
    assert _decide(_sample("other", original="same"), old) is None
    assert _decide(_sample("x"), Truth("wrong_price")) is None
    # errors need no reference reply
    assert _decide(_error(), Truth("wrong_price")).decision == "confirm"


def test_the_generators_truth_judges_every_generated_reply(tmp_path: Path):
    """Every well-formed record's own reply is right exactly when no mistake was planted."""
    summary = generate(tmp_path, 3000, seed=11, days=2)
    truth = {r["interaction_id"]: Truth(r["mistake"], r["intent"], r["answer"])
             for r in read_truth(tmp_path / "truth.jsonl").iter_rows(named=True)}
    seen = 0
    for f in summary["files"]:
        for line in Path(f).read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            t = truth.get(rec.get("interaction_id"))
            if t is None:
                continue
            seen += 1
            assert reply_is_right(rec["response"], t) is (t.mistake is None), (t, rec["response"])
    assert seen >= summary["well_formed"]


def test_read_truth_reads_files_without_intent_and_answer(tmp_path: Path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "truth.jsonl").write_text(
        '{"interaction_id": "i1", "mistake": null}\n{"interaction_id": "i2", "mistake": "refusal"}\n')
    (tmp_path / "truth.jsonl").write_text(
        '{"interaction_id": "i2", "mistake": "off_topic", "intent": "price", "answer": "A."}\n')
    frame = read_truth_files(tmp_path)
    rows = {r["interaction_id"]: r for r in frame.iter_rows(named=True)}
    assert rows["i1"] == {"interaction_id": "i1", "mistake": None, "intent": None, "answer": None}
    assert rows["i2"]["mistake"] in ("refusal", "off_topic") and len(rows) == 2
    (tmp_path / "truth.jsonl").write_text('{"interaction_id": "i3", "answer": 5}\n')
    with pytest.raises(ValueError, match=r"truth.jsonl:1: answer must be a string"):
        read_truth(tmp_path / "truth.jsonl")
    assert read_truth_files(tmp_path / "nowhere").is_empty()


def test_slips_are_a_seeded_share_per_item_not_per_call_order():
    items = [_error(key=f"error:{i}") for i in range(4000)]
    decisions = [decide_item(i, PRICE, seed=5, mistake_rate=0.03) for i in items]
    slips = [d for d in decisions if d.simulated_mistake]
    assert 0.024 <= len(slips) / len(items) <= 0.036
    assert all(d.decision == "dismiss" and "deliberate reviewer slip" in d.note for d in slips)
    # the same item gets the same decision in any order; another seed slips on other items
    again = {i.key: decide_item(i, PRICE, seed=5, mistake_rate=0.03) for i in reversed(items)}
    assert [again[i.key] for i in items] == decisions
    other = [decide_item(i, PRICE, seed=6, mistake_rate=0.03).simulated_mistake for i in items]
    assert other != [d.simulated_mistake for d in decisions]
    with pytest.raises(ValueError, match="mistake_rate"):
        decide_item(items[0], PRICE, seed=5, mistake_rate=1.5)


def test_sample_slips_approve_the_wrong_proposal_or_reject_the_right_one():
    wrong = [decide_item(_sample("The Orbit fitness watch costs $99.00.", key=f"s:{i}"), PRICE,
                         seed=2, mistake_rate=0.5, style_edit_rate=0.0) for i in range(200)]
    slipped = [d for d in wrong if d.simulated_mistake]
    assert slipped and {d.decision for d in slipped} == {"approve"}
    assert {d.decision for d in wrong if not d.simulated_mistake} == {"edit"}
    right = [decide_item(_sample(PRICE.answer, key=f"s:{i}"), PRICE, seed=2, mistake_rate=0.5,
                         style_edit_rate=0.0) for i in range(200)]
    assert {d.decision for d in right if d.simulated_mistake} == {"reject"}


def test_a_share_of_approvals_become_small_stylistic_edits():
    proposals = [PRICE.answer, "I'm sorry about that. Please check the expiry date.",
                 "You can return any item within 30 days of delivery."]
    decisions = [decide_item(_sample(proposals[i % 3], key=f"s:{i}"),
                             Truth("wrong_price", "price", proposals[i % 3]), seed=3,
                             mistake_rate=0.0, style_edit_rate=0.1) for i in range(3000)]
    counts = Counter(d.decision for d in decisions)
    assert 0.08 <= counts["edit"] / len(decisions) <= 0.12
    assert set(counts) == {"approve", "edit"}
    for i, d in enumerate(decisions):
        if d.decision == "edit":
            proposed = proposals[i % 3]
            assert d.style_edit and d.ideal == "approve" and d.final_response != proposed
            assert "small wording change" in d.note
            # a small change: most of the words stay
            kept = set(proposed.split()) & set(d.final_response.split())
            assert len(kept) >= len(set(proposed.split())) - 2
    assert style_edit("Hi.", 1, "k") != "Hi."


def test_draw_is_uniform_and_stable():
    values = [draw(9, "p", str(i)) for i in range(10_000)]
    assert all(0 <= v < 1 for v in values)
    assert 0.48 <= sum(values) / len(values) <= 0.52
    assert draw(9, "p", "x") == draw(9, "p", "x") != draw(9, "q", "x")
