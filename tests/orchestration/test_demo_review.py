"""The demo reviewer in the store (orchestration.demo_review): decisions through store.repo under
`demo-reviewer`, on SQLite and PostgreSQL; refused without demo ground truth; and the demo's
sequence over the real asset chain (audit -> review errors -> teaching -> review samples ->
teaching: approved and edited samples, preference pairs)."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pytest
from sqlalchemy import select

from assets.audit import audit_candidates, audited_errors
from assets.embeddings import interaction_embeddings
from assets.teaching import preference_pairs, teacher_samples
from ml.demo.reviewer import NOTE_PREFIX, ItemFacts, Truth, decide_item, draw
from ml.demo.truth import read_truth_files
from orchestration.demo_review import NotDemoData, review_demo_items
from store import repo
from store.db import session_scope
from store.models import ReviewEvent, ReviewItem
from tests.assets.conftest import land_and_ingest, warehouse_rows
from tests.stores import materialize, resources_for

PRICE_ANSWER = "The Nova X2 wireless headset costs $129.00."
TRUTH = [
    {"interaction_id": "i-wrong", "mistake": "wrong_price", "intent": "price",
     "answer": PRICE_ANSWER},
    {"interaction_id": "i-right", "mistake": None, "intent": "price", "answer": PRICE_ANSWER},
    {"interaction_id": "i-missed", "mistake": "truncated", "intent": "policy",
     "answer": "You can return any item within 30 days."},
    {"interaction_id": "i-old", "mistake": "refusal"},  # an old truth line: no answer
]


def _land_truth(landing: Path, rows=TRUTH) -> None:
    landing.mkdir(parents=True, exist_ok=True)
    (landing / "truth.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _item(s, kind: str, iid: str, **fields) -> int:
    item, _ = repo.create_item(s, kind=kind, dedup_key=f"acme/{iid}:{kind}:{len(fields)}",
                               tenant_id="acme", interaction_id=iid, actor="test", **fields)
    return item.id


def _seed_items(url: str) -> dict[str, int]:
    with session_scope(url) as s:
        ids = {
            "flag_right": _item(s, "error", "i-wrong", category="factual_error", severity="high",
                                original_response="The Nova X2 wireless headset costs $99.00."),
            "flag_wrong": _item(s, "error", "i-right", category="off_topic", severity="medium",
                                original_response=PRICE_ANSWER),
            "calibration": _item(s, "error", "i-missed", extra={"verdict": "no error found"},
                                 tags=["no_error_found"], original_response="You can return"),
            "stranger": _item(s, "error", "i-not-demo", category="tone", severity="low"),
        }
        ids["sample_right"] = _item(s, "sample", "i-wrong", source="human_agent",
                                    original_response="The Nova X2 wireless headset costs $99.00.",
                                    proposed_response=PRICE_ANSWER, parent_id=ids["flag_right"])
        ids["sample_wrong"] = _item(s, "sample", "i-missed", source="retrieval",
                                    original_response="You can return",
                                    proposed_response="Returns are accepted for a year.")
        ids["sample_nothing"] = _item(s, "sample", "i-right", source="retrieval",
                                      original_response=PRICE_ANSWER,
                                      proposed_response="We do not sell headsets.")
        ids["sample_old"] = _item(s, "sample", "i-old", source="retrieval",
                                  original_response="I can't help.", proposed_response="Sure.")
    return ids


def _status(url: str, ids: dict[str, int]) -> dict[str, tuple]:
    with session_scope(url) as s:
        return {name: (lambda i: (i.status, i.decided_by, i.final_response))(s.get(ReviewItem, i))
                for name, i in ids.items()}


@pytest.mark.postgres
def test_decides_items_through_the_store_as_demo_reviewer(store_url, tmp_path):
    landing = tmp_path / "landing"
    _land_truth(landing)
    ids = _seed_items(store_url)

    errors = review_demo_items(store_url, landing, seed=1, kinds=("error",), mistake_rate=0.0,
                               style_edit_rate=0.0)

    assert errors["decided"] == {"error": {"confirmed": 2, "dismissed": 1}}
    assert errors["skipped"] == {"not_in_truth": 1} and errors["decisions"] == 3
    st = _status(store_url, ids)
    assert st["flag_right"] == ("confirmed", "demo-reviewer", None)
    assert st["flag_wrong"][:2] == ("dismissed", "demo-reviewer")
    assert st["calibration"][0] == "confirmed"  # the auditor missed the truncated reply
    assert st["stranger"][0] == "pending" and st["sample_right"][0] == "pending"

    samples = review_demo_items(store_url, landing, seed=1, kinds=("sample",), mistake_rate=0.0,
                                style_edit_rate=0.0)

    assert samples["decided"] == {"sample": {"approved": 1, "edited": 1, "rejected": 1}}
    assert samples["skipped"] == {"no_reference": 1}
    st = _status(store_url, ids)
    assert st["sample_right"] == ("approved", "demo-reviewer", PRICE_ANSWER)
    assert st["sample_wrong"] == ("edited", "demo-reviewer", TRUTH[2]["answer"])
    assert st["sample_nothing"][0] == "rejected"
    assert st["sample_old"][0] == "pending"
    with session_scope(store_url) as s:
        events = list(s.scalars(select(ReviewEvent).where(ReviewEvent.action == "decide")))
    assert len(events) == 6
    assert all(e.actor == "demo-reviewer" and e.note.startswith(NOTE_PREFIX) for e in events)
    assert "the auditor called it off_topic" not in " ".join(e.note for e in events)
    assert any("the auditor missed it" in e.note for e in events)
    # the status counts the web app and `learnloop status` read
    with session_scope(store_url) as s:
        counts = repo.status_counts(s)
    assert counts["errors"]["confirmed"] == 1 and counts["calibration"]["confirmed"] == 1
    assert counts["samples"] == {"pending": 1, "approved": 2, "rejected": 1}

    again = review_demo_items(store_url, landing, seed=1)
    assert again["decisions"] == 0 and again["decided"] == {"error": {}, "sample": {}}
    assert again["skipped"] == {"no_reference": 1, "not_in_truth": 1}


def test_refuses_without_demo_ground_truth(tmp_path):
    url = f"sqlite:///{tmp_path / 'store.db'}"
    from store.db import upgrade

    upgrade(url)
    ids = _seed_items(url)
    landing = tmp_path / "real-landing"
    (landing / "date=2026-01-01").mkdir(parents=True)
    with pytest.raises(NotDemoData, match=f"no truth.jsonl under the landing root {landing}"):
        review_demo_items(url, landing, seed=1)
    assert {v[0] for v in _status(url, ids).values()} == {"pending"}
    with session_scope(url) as s:
        assert not list(s.scalars(select(ReviewEvent).where(ReviewEvent.action == "decide")))
    _land_truth(landing)
    with pytest.raises(ValueError, match="kinds must be among"):
        review_demo_items(url, landing, seed=1, kinds=("errors",))


def test_a_seeded_share_is_left_for_humans_the_same_on_every_run(tmp_path):
    from store.db import upgrade

    url = f"sqlite:///{tmp_path / 'store.db'}"
    upgrade(url)
    rows = [{"interaction_id": f"i{n}", "mistake": "refusal" if n % 2 else None}
            for n in range(200)]
    _land_truth(tmp_path / "landing", rows)
    with session_scope(url) as s:
        for r in rows:
            _item(s, "error", r["interaction_id"], category="refusal_of_valid_request")
    first = review_demo_items(url, tmp_path / "landing", seed=4, leave_for_humans=0.25,
                              mistake_rate=0.0)
    left = first["skipped"]["left_for_humans"]
    assert 30 <= left <= 70 and first["decisions"] == 200 - left
    with session_scope(url) as s:
        pending = {i.dedup_key for i in s.scalars(select(ReviewItem).where(
            ReviewItem.status == "pending"))}
    assert pending == {f"acme/i{n}:error:1" for n in range(200)
                       if draw(4, "leave", f"error:acme/i{n}:error:1") < 0.25}
    assert first["decided"]["error"] == {
        "confirmed": sum(1 for n in range(1, 200, 2) if f"acme/i{n}:error:1" not in pending),
        "dismissed": sum(1 for n in range(0, 200, 2) if f"acme/i{n}:error:1" not in pending)}
    again = review_demo_items(url, tmp_path / "landing", seed=4, leave_for_humans=0.25)
    assert again["decisions"] == 0 and again["skipped"] == {"left_for_humans": left}


# ---- the demo's sequence over the real asset chain ------------------------------------------------
CHAIN = [interaction_embeddings, audit_candidates, audited_errors, teacher_samples,
         preference_pairs]
MISTAKE_RATE = 0.1  # above the demo's 3% so "near the configured share" has data behind it


def _materialize(home: Path, assets) -> dict:
    with dg.instance_for_test() as instance:
        result = materialize(assets, home, instance=instance, resources=resources_for(home))
    assert result.success
    return {m.materialization.asset_key.to_user_string():
            {k: v.value for k, v in m.materialization.metadata.items()}
            for m in result.get_asset_materialization_events()}


@pytest.mark.slow
def test_demo_sequence_yields_approved_and_edited_samples(learnloop_home, monkeypatch):
    for var in ("LEARNLOOP_AUDITOR", "LEARNLOOP_TEACHER"):
        monkeypatch.delenv(var, raising=False)
    land_and_ingest(learnloop_home, n=600, seed=21)
    url, landing = f"sqlite:///{learnloop_home / 'store.db'}", learnloop_home / "landing"
    _materialize(learnloop_home, CHAIN)

    errors = review_demo_items(url, landing, seed=21, kinds=("error",), mistake_rate=MISTAKE_RATE)
    teach = _materialize(learnloop_home, [teacher_samples, preference_pairs])
    samples = review_demo_items(url, landing, seed=21, kinds=("sample",),
                                mistake_rate=MISTAKE_RATE)
    pairs = _materialize(learnloop_home, [teacher_samples, preference_pairs])

    assert errors["decided"]["error"]["confirmed"] > 20 and errors["decided"]["error"]["dismissed"]
    # the confirmed errors without a proposal yet are what the next teaching run works on
    assert teach["teacher_samples"]["errors_needing_proposal"] > 0
    decided = samples["decided"]["sample"]
    assert decided.get("approved", 0) > 10 and decided.get("edited", 0) > 0
    # every decision is demo-reviewer's, and the slips are near the configured share, counted
    # against what the truth says a careful reviewer decides
    truth = {r["interaction_id"]: Truth(r["mistake"], r["intent"], r["answer"])
             for r in read_truth_files(landing).iter_rows(named=True)}
    wrong = n = 0
    with session_scope(url) as s:
        items = list(s.scalars(select(ReviewItem).where(ReviewItem.status != "pending")))
        for item in items:
            assert item.decided_by == "demo-reviewer"
            facts = ItemFacts(key=f"{item.kind}:{item.dedup_key}", kind=item.kind,
                              category=item.category, calibration=repo.is_no_error_found(item),
                              original_response=item.original_response,
                              proposed_response=item.proposed_response, source=item.source)
            careful = decide_item(facts, truth[item.interaction_id], seed=0,
                                  mistake_rate=0.0, style_edit_rate=0.0)
            status = {"confirm": "confirmed", "dismiss": "dismissed", "approve": "approved",
                      "edit": "edited", "reject": "rejected"}[careful.decision]
            styled = careful.decision == "approve" and item.status == "edited"
            wrong += (status != item.status and not styled) or (
                careful.decision == "edit" and item.final_response != careful.final_response)
            n += 1
    assert n == errors["decisions"] + samples["decisions"]
    assert wrong == errors["simulated_mistakes"] + samples["simulated_mistakes"]
    assert abs(wrong / n - MISTAKE_RATE) <= 0.05
    # the approved corrections became preference pairs
    n_pairs = warehouse_rows(learnloop_home, "SELECT count(*) FROM preference_pairs")[0][0]
    assert n_pairs == pairs["preference_pairs"]["dagster/row_count"] > 10
    assert {r[0] for r in warehouse_rows(learnloop_home, "SELECT DISTINCT decided_by FROM "
                                                         "preference_pairs")} == {"demo-reviewer"}
    # running it again decides nothing new
    again = review_demo_items(url, landing, seed=21, mistake_rate=MISTAKE_RATE)
    assert again["decisions"] == 0
