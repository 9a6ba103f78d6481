"""build_dataset: each stage on small hand-built examples, and the reproducibility guarantee."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import numpy as np
import polars as pl
import pytest
from conftest import make_example, random_vectors

from ml import embeddings
from ml.datasets import DatasetSpec, HeldOut, build_dataset, stored_vectors
from ml.datasets.build import balance_bound, largest_remainder

# stages under test one at a time: no split, no replay, no balance bound unless asked for
PLAIN = {"validation_share": 0.0, "replay_share": 0.0, "max_category_share": None,
         "min_size": 0, "max_tokens": None}


def reasons(build, pool="candidates"):
    return {d.key: d.reason for d in build.dropped if d.pool == pool}


def keys(examples):
    return [e.key for e in examples]


def test_exact_duplicates_keep_the_highest_quality_then_the_earliest():
    v = random_vectors(5)
    early = datetime(2026, 1, 1, tzinfo=UTC)
    cands = [
        make_example(1, "How do I reset my password?", "Use the reset link.", quality=0.7,
                     vector=v[0]),
        make_example(2, "how do I  reset my PASSWORD?", " Use the  reset link.", quality=0.9,
                     vector=v[1]),
        make_example(3, "Where is my order?", "It ships today.", quality=0.8, vector=v[2]),
        make_example(4, "WHERE is my order?", "It ships today.", quality=0.8, vector=v[3],
                     timestamp=early),
        # same prompt, another reply: not an exact duplicate
        make_example(5, "How do I reset my password?", "Call support.", vector=v[4]),
    ]
    build = build_dataset(cands, [], DatasetSpec(**PLAIN))
    assert reasons(build) == {"sample:1": "exact_duplicate_of:sample:2",
                              "sample:3": "exact_duplicate_of:sample:4"}
    assert keys(build.train) == ["sample:2", "sample:4", "sample:5"]
    assert build.counts["dropped"]["exact_duplicate"] == 2
    assert build.counts["after"] == {"eligible": 5, "exact_duplicate": 3, "near_duplicate": 3,
                                     "over_cap": 3, "balance": 3}


def test_near_duplicates_by_minilm_cosine_through_lancedb():
    cands = [
        make_example(1, "How do I reset my password?", quality=0.8),
        make_example(2, "How can I reset my password?", quality=0.95),  # the keeper: best quality
        make_example(3, "how do i reset my password", quality=0.7),
        make_example(4, "I forgot my password, how do I reset it?", quality=0.8),  # cosine 0.94
        make_example(5, "What is your refund policy?", quality=0.8),
        make_example(6, "What is the refund policy?", quality=0.8),  # 0.96: a tie on quality
        make_example(7, "Do you ship to Canada?"),
        make_example(8, "Bananas are yellow."),
    ]
    build = build_dataset(cands, [], DatasetSpec(**PLAIN))
    assert reasons(build) == {"sample:1": "near_duplicate_of:sample:2",
                              "sample:3": "near_duplicate_of:sample:2",
                              "sample:6": "near_duplicate_of:sample:5"}
    assert keys(build.train) == ["sample:2", "sample:4", "sample:5", "sample:7", "sample:8"]
    assert build.counts["vectors"] == {"given": 0, "mapped": 0, "encoded": 8}
    # every kept example carries its MiniLM vector (unit length)
    assert all(abs(np.linalg.norm(e.vector) - 1) < 1e-4 for e in build.train)
    # a stricter threshold keeps the refund paraphrase
    strict = build_dataset(cands, [], DatasetSpec(**PLAIN, near_dup_threshold=0.97))
    assert "sample:6" not in reasons(strict) and "sample:1" in reasons(strict)


def test_stored_question_vectors_are_read_from_lancedb(tmp_path):
    db = embeddings.connect(str(tmp_path / "lancedb"))
    frame = pl.DataFrame({"interaction_id": ["i1", "i2", "i3"], "tenant_id": ["acme"] * 3,
                          "user_message": ["How do I reset my password?",
                                           "How can I reset my password?", "Where is my order?"],
                          "response": ["Use the link.", "Use the link.", "It ships today."]})
    embeddings.add_new_embeddings(db, frame)
    cands = [make_example(1, "How do I reset my password?", interaction_id="i1"),
             make_example(2, "How can I reset my password?", interaction_id="i2"),
             make_example(3, "Where is my order?", key="interaction:acme/i3"),
             make_example(4, "Do you ship to Canada?", interaction_id="not-embedded")]
    found = stored_vectors(db, cands)
    assert sorted(found) == ["interaction:acme/i3", "sample:1", "sample:2"]
    build = build_dataset(cands, [], DatasetSpec(**PLAIN), vectors=found)
    assert build.counts["vectors"] == {"given": 0, "mapped": 3, "encoded": 1}
    assert reasons(build) == {"sample:2": "near_duplicate_of:sample:1"}


def _clusters():
    """Three tight clusters of five in 9-d; in each the point at the centre has a middle key."""
    rows = []
    for c in range(3):
        centre = np.zeros(9)
        centre[3 * c] = 1.0
        offsets = [0.3 * np.eye(9)[3 * c + 1], -0.3 * np.eye(9)[3 * c + 1],
                   0.3 * np.eye(9)[3 * c + 2], -0.3 * np.eye(9)[3 * c + 2]]
        points = [centre + offsets[0], centre + offsets[1], centre, centre + offsets[2],
                  centre + offsets[3]]
        rows += [(10 * c + i, p) for i, p in enumerate(points)]
    return rows


def test_a_cap_keeps_the_example_nearest_each_kmeans_centroid():
    cands = [make_example(n, f"Billing question {n}", vector=v) for n, v in _clusters()]
    cands += [make_example(100 + i, f"Shipping question {i}", category="shipping",
                           vector=random_vectors(2, dim=9)[i]) for i in range(2)]
    spec = DatasetSpec(**PLAIN, category_caps={"billing": 3}, near_dup_threshold=0.999)
    build = build_dataset(cands, [], spec)
    kept = sorted(e.key for e in build.train if e.category == "billing")
    assert kept == sorted(["sample:2", "sample:12", "sample:22"])  # the three centres
    assert sorted(d.key for d in build.dropped if d.stage == "over_cap") == sorted(
        f"sample:{10 * c + i}" for c in range(3) for i in (0, 1, 3, 4))
    assert {d.reason for d in build.dropped} == {"over_cap:3"}
    assert build.counts["by_category"]["shipping"]["train"] == 2  # under its (no) cap
    # a default cap applies to every category without its own
    both = build_dataset(cands, [], DatasetSpec(**PLAIN, default_cap=1,
                                                near_dup_threshold=0.999))
    assert sorted(both.counts["by_category"]) == ["billing", "shipping"]
    assert [v["train"] for v in both.counts["by_category"].values()] == [1, 1]


def test_the_balance_bound_cuts_the_dominant_category():
    v = random_vectors(15)
    cands = [make_example(i, f"Billing {i}", vector=v[i]) for i in range(12)]
    cands += [make_example(20 + i, f"Shipping {i}", category="shipping", vector=v[12 + i])
              for i in range(3)]
    build = build_dataset(cands, [], DatasetSpec(**{**PLAIN, "max_category_share": 0.5}))
    assert build.counts["after"]["balance"] == 6
    assert build.counts["balance"] == {"bound": 3, "feasible": True}
    assert sum(d.stage == "balance" for d in build.dropped) == 9
    assert {d.reason for d in build.dropped} == {"over_max_category_share:3"}
    # two categories cannot both stay under 30%: left to the balance check
    infeasible = build_dataset(cands, [], DatasetSpec(**{**PLAIN, "max_category_share": 0.3}))
    assert infeasible.counts["balance"] == {"bound": None, "feasible": False}
    assert len(infeasible.train) == 15
    assert balance_bound({"a": 100, "b": 10}, 0.5) == 10
    assert balance_bound({"a": 5, "b": 5}, 0.5) is None
    assert balance_bound({"a": 10, "b": 4, "c": 1}, 0.5) == 5


def test_replay_is_a_bounded_stratified_share_of_train():
    v = random_vectors(60, seed=3)
    new = [make_example(i, f"New question {i}", vector=v[i]) for i in range(20)]
    pool = [make_example(100 + i, f"Old billing question {i}", source="replay:interaction",
                         key=f"interaction:acme/b{i}", vector=v[20 + i]) for i in range(8)]
    pool += [make_example(200 + i, f"Old shipping question {i}", category="shipping",
                          source="replay:interaction", key=f"interaction:acme/s{i}",
                          vector=v[30 + i]) for i in range(4)]
    bad = [
        make_example(300, "Low quality", source="replay:interaction", quality=0.5,
                     key="interaction:acme/low", vector=v[40]),
        make_example(301, "No quality", source="replay:interaction", quality=None,
                     key="interaction:acme/none", vector=v[41]),
        make_example(302, "Held out", source="replay:approved", vector=v[42]),
        make_example(303, "NEW question 3", source="replay:approved", vector=v[43]),
        make_example(304, "Other tenant", source="replay:approved", vector=v[44],
                     tenant_id="globex"),
    ]
    spec = DatasetSpec(validation_share=0.2, max_category_share=None, min_size=0,
                       filters={"tenants": ["acme"]})
    build = build_dataset(new, pool + bad, spec, HeldOut(keys=frozenset({"sample:302"})))
    assert build.counts["splits"] == {"train": 20, "validation": 4, "replay": 4}
    replay = [e for e in build.train if e.is_replay]
    assert len(replay) == 4 and not any(e.is_replay for e in build.validation)
    assert build.stats["replay_share"] == 0.2  # floor(0.2 * 16 / 0.8) = 4 of 20
    # proportional to the eligible pool (8 billing : 4 shipping), largest remainder
    assert sorted(e.category for e in replay) == ["billing"] * 3 + ["shipping"]
    assert reasons(build, "replay") == {
        "interaction:acme/low": "below_replay_min_quality:0.8",
        "interaction:acme/none": "below_replay_min_quality:0.8",
        "sample:302": "held_out:key",
        "sample:303": "prompt_in_dataset",
        "sample:304": "filter:tenant",
    }
    assert build.counts["replay"] == {"target": 4, "eligible": 12, "added": 4, "not_sampled": 8}
    assert build.counts["by_source"]["replay:interaction"] == {"train": 4, "validation": 0,
                                                               "replay": 4}
    # a larger share takes more, never above the share of the final train split
    more = build_dataset(new, pool, DatasetSpec(**{**spec.to_dict(), "replay_share": 0.4}))
    n_replay = sum(e.is_replay for e in more.train)
    assert n_replay == 10 and n_replay / len(more.train) <= 0.4
    assert largest_remainder(4, {"billing": 8, "shipping": 4}) == {"billing": 3, "shipping": 1}


def test_replay_skips_near_duplicates_and_validation_sessions():
    v = random_vectors(30, seed=5)
    new = [make_example(i, f"New question {i}", vector=v[i], session=f"s{i // 2}")
           for i in range(20)]
    first = build_dataset(new, [], DatasetSpec(min_size=0, max_category_share=None))
    val_session = first.validation[0].session_key
    pool = [
        make_example(100, "Same meaning, other words", source="replay:approved",
                     vector=v[5] * 2),  # the direction of sample:5
        make_example(101, "From a validation session", source="replay:approved",
                     session=val_session, vector=v[25]),
        make_example(102, "A fine old question", source="replay:approved", vector=v[26]),
        make_example(103, "Its twin", source="replay:approved", vector=v[26] + 1e-4),
    ]
    build = build_dataset(new, pool, DatasetSpec(min_size=0, max_category_share=None))
    got = reasons(build, "replay")
    assert got["sample:100"] == "near_duplicate_of:sample:5"
    assert got["sample:101"] == "session_in_validation"
    # of the twins, the first in the seeded order is taken and the other is its near-duplicate
    taken = [k for k in ("sample:102", "sample:103") if k not in got]
    other = ({"sample:102", "sample:103"} - set(taken)).pop()
    assert len(taken) == 1 and got[other] == f"near_duplicate_of:{taken[0]}"
    assert sum(e.is_replay for e in build.train) == 1


def test_the_split_keeps_sessions_whole_and_stratifies_by_category():
    v = random_vectors(40, seed=11)
    cands = [make_example(i, f"Billing {i}", session=f"b{i // 2}", vector=v[i])
             for i in range(20)]
    cands += [make_example(100 + i, f"Shipping {i}", category="shipping", vector=v[20 + i])
              for i in range(10)]
    cands += [make_example(200, "Account question", category="account", vector=v[30])]
    # one conversation about two things goes to one side as a whole
    cands += [make_example(300, "Billing in a mixed chat", session="mixed", vector=v[31]),
              make_example(301, "Shipping in a mixed chat", category="shipping",
                           session="mixed", vector=v[32])]
    spec = DatasetSpec(**{**PLAIN, "validation_share": 0.2})
    build = build_dataset(cands, [], spec)
    train_sessions = {e.session_key for e in build.train}
    val_sessions = {e.session_key for e in build.validation}
    assert not train_sessions & val_sessions
    by_cat = build.counts["by_category"]
    assert by_cat["account"] == {"train": 1, "validation": 0, "replay": 0}  # a single session
    # the mixed chat belongs to billing (a tie: the smaller name): billing's sessions hold 22
    # items, round(0.2 * 22) = 4 of them go to validation as two whole sessions
    billing_group = [e for e in build.validation if e.category == "billing"
                     or e.session_key == "mixed"]
    assert len(billing_group) == 4 and by_cat["billing"]["train"] >= 17
    assert by_cat["shipping"]["validation"] in (2, 3) and by_cat["shipping"]["train"] >= 8
    pair_sides = {s: {e.key for e in build.validation if e.session_key == s}
                  for s in val_sessions if s.startswith("b")}
    assert all(len(k) == 2 for k in pair_sides.values())
    # another seed, another (equally valid) split
    other = build_dataset(cands, [], DatasetSpec(**{**PLAIN, "validation_share": 0.2,
                                                    "seed": 1}))
    assert keys(other.validation) != keys(build.validation)
    assert not {e.session_key for e in other.train} & {e.session_key for e in other.validation}


def test_held_out_items_never_enter_the_dataset_by_key_or_by_prompt():
    v = random_vectors(6)
    cands = [make_example(1, "How do I reset my password?", vector=v[0]),
             make_example(2, "WHERE is my order?", vector=v[1]),  # an eval item's prompt
             make_example(3, "Do you ship to Canada?", vector=v[2])]
    pool = [make_example(4, "Where is  my order?", source="replay:approved", vector=v[3])]
    eval_item = make_example(99, "where is my order?")
    from ml.datasets import Example
    held = HeldOut(keys=frozenset({"sample:1"}),
                   prompt_hashes=frozenset({Example.from_dict(eval_item).prompt_hash}))
    build = build_dataset(cands, pool, DatasetSpec(**{**PLAIN, "replay_share": 0.5}), held)
    assert keys(build.train) == ["sample:3"]
    assert reasons(build) == {"sample:1": "held_out:key", "sample:2": "held_out:prompt"}
    assert reasons(build, "replay") == {"sample:4": "held_out:prompt"}


def test_filters_tags_incremental_invalid_and_too_long():
    v = random_vectors(12)
    old = datetime(2025, 6, 1, tzinfo=UTC)
    cands = [
        make_example(1, "Kept", source="llm:gpt-5", vector=v[0], tags=["gold"]),
        make_example(2, "Too old", vector=v[1], timestamp=old, tags=["gold"]),
        make_example(3, "Low quality", quality=0.2, vector=v[2], tags=["gold"]),
        make_example(4, "Retrieval source", source="retrieval", vector=v[3], tags=["gold"]),
        make_example(5, "Excluded", vector=v[4], tags=["gold", "exclude"]),
        make_example(6, "Not gold", vector=v[5]),
        make_example(7, "In the previous version", vector=v[6], tags=["gold"]),
        make_example(8, "Wrong roles", vector=v[7], tags=["gold"],
                     messages=[{"role": "assistant", "content": "Hi"},
                               {"role": "user", "content": "Hello"}]),
        make_example(9, "Blank reply", answer=" ", vector=v[8], tags=["gold"]),
        make_example(10, "Long " * 40, vector=v[9], tags=["gold"]),
        make_example(11, "Human source", source="human", vector=v[10], tags=["gold"]),
    ]
    cands[8]["completion"] = "   "
    spec = DatasetSpec(**{**PLAIN, "max_tokens": 30, "incremental": True},
                       include_tags=["gold"],
                       filters={"date_from": "2026-01-01", "quality_min": 0.5,
                                "sources": ["llm:*", "human"]})
    build = build_dataset(cands, [], spec, previous_keys=["sample:7"],
                          count_tokens=lambda conv: sum(len(m["content"].split()) for m in conv))
    got = reasons(build)
    assert keys(build.train) == ["sample:1", "sample:11"]
    assert got["sample:2"] == "filter:date" and got["sample:3"] == "filter:quality"
    assert got["sample:4"] == "filter:source" and got["sample:5"] == "filter:exclude_tag:exclude"
    assert got["sample:6"] == "filter:include_tags"
    assert got["sample:7"] == "in_previous_version"
    assert got["sample:8"].startswith("invalid: message 0: expected role user")
    assert got["sample:9"] == "invalid: completion: empty turn"
    assert got["sample:10"] == "over_max_tokens:43"
    # without incremental the previous version's keys are built again
    again = build_dataset(cands, [], DatasetSpec(**{**spec.to_dict(), "incremental": False}),
                          previous_keys=["sample:7"])
    assert "sample:7" in keys(again.train)


def test_the_same_data_in_any_order_gives_the_same_build():
    v = random_vectors(40, dim=384, seed=2)  # MiniLM-sized: some examples get encoded
    cands = [make_example(i, f"Question {i}", category=("billing", "shipping")[i % 2],
                          session=f"s{i // 3}", vector=v[i], quality=0.5 + (i % 5) / 10)
             for i in range(30)]
    cands += [make_example(50, "Question 3", answer="Answer number 3.", vector=v[30])]
    cands += [make_example(51, "How do I reset my password?"),
              make_example(52, "How can I reset my password?")]  # encoded, near-duplicates
    pool = [make_example(100 + i, f"Old {i}", source="replay:interaction",
                         key=f"interaction:acme/o{i}", vector=v[31 + i]) for i in range(8)]
    spec = DatasetSpec(category_caps={"billing": 10}, min_size=0)
    first = build_dataset(cands, pool, spec)
    random.Random(4).shuffle(cands)
    random.Random(5).shuffle(pool)
    second = build_dataset(cands, pool, spec)
    assert first.version_hash == second.version_hash
    assert keys(first.train) == keys(second.train)
    assert keys(first.validation) == keys(second.validation)
    assert first.dropped == second.dropped and first.counts == second.counts
    assert first.stats == second.stats and first.items() == second.items()
    # and the hash moves with the spec and with the text
    assert build_dataset(cands, pool, DatasetSpec(**{**spec.to_dict(), "seed": 3})
                         ).version_hash != first.version_hash
    cands[0] = {**cands[0], "completion": cands[0]["completion"] + " More."}
    assert build_dataset(cands, pool, spec).version_hash != first.version_hash


def test_items_for_the_store_and_stats():
    v = random_vectors(4)
    cands = [make_example(i, f"Question {i}", vector=v[i], quality=q)
             for i, q in enumerate([0.6, 0.8, None, 1.0])]
    build = build_dataset(cands, [], DatasetSpec(**PLAIN))
    item = build.items()[0]
    assert set(item) == {"item_key", "review_item_id", "split", "source", "category",
                         "tenant_id", "session_key", "prompt_hash", "example_hash"}
    assert item["item_key"] == "sample:0" and item["split"] == "train"
    q = build.stats["quality"]
    assert q == {"count": 3, "missing": 1, "mean": 0.8, "min": 0.6, "p25": 0.7, "median": 0.8,
                 "p75": 0.9, "max": 1.0}
    assert build.stats["category_mix"] == {"billing": 1.0}
    assert build.stats["mean_turns"] == 2.0


def test_a_key_given_twice_or_a_bad_field_is_an_error():
    with pytest.raises(ValueError, match=r"candidates: key 'sample:1' is given twice"):
        build_dataset([make_example(1, "a"), make_example(1, "b")], [], DatasetSpec())
    with pytest.raises(ValueError, match=r"replay_pool\[0\]: example sample:2: quality"):
        build_dataset([], [make_example(2, "a", quality="x")], DatasetSpec())
