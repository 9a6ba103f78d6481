"""The evaluation suite: stratified, bounded, stable and growing across versions, never trained on,
held out of every later build; the retention set; the writer."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest
from conftest import make_example, random_vectors

from ml.datasets import DatasetSpec, Example, HeldOut, build_dataset
from ml.datasets.eval_suite import EVAL_PATHS, select_eval_suite, write_eval_suite
from ml.datasets.exports import read_manifest, verify_exports
from ml.datasets.schemas import validate_line

V = random_vectors(400, dim=384, seed=21)


def corrections(start: int, counts: dict[str, int]) -> list[dict]:
    out, n = [], start
    for cat, k in counts.items():
        for _ in range(k):
            out.append(make_example(n, f"{cat} correction question {n}", category=cat,
                                    vector=V[n % len(V)]))
            n += 1
    return out


def history(n: int, intents: dict[str | None, int], **kw) -> list[dict]:
    out = []
    for intent, k in intents.items():
        for _ in range(k):
            out.append(make_example(n, f"historical question {n}", key=f"interaction:acme/h{n}",
                                    source="replay:interaction", intent=intent, **kw))
            n += 1
    return out


def test_stratified_by_category_bounded_by_share_and_never_trained():
    corr = corrections(0, {"billing": 60, "shipping": 30, "account": 10})
    trained = HeldOut(keys=frozenset(f"sample:{i}" for i in range(10)))
    suite = select_eval_suite(corr, [], trained=trained, seed=0)
    # 90 available -> at most 20% = 18, spread 50:30:10
    assert suite.counts["available"] == 90 and suite.counts["limit"] == 18
    assert suite.counts["eval_by_category"] == {"account": 2, "billing": 10, "shipping": 6}
    assert not {e.key for e in suite.eval} & trained.keys
    assert suite.counts["trained"] == 10
    # "size when the data allows"
    small = select_eval_suite(corr, [], trained=trained, size=5)
    assert len(small.eval) == 5
    assert sum(small.counts["eval_by_category"].values()) == 5
    # by prompt too: a trained prompt is not available
    by_prompt = HeldOut(prompt_hashes=frozenset({Example.from_dict(corr[50]).prompt_hash}))
    assert select_eval_suite(corr, [], trained=by_prompt).counts["trained"] == 1


def test_the_suite_is_stable_and_grows_and_its_items_never_enter_a_build():
    first_batch = corrections(0, {"billing": 30, "shipping": 20})
    v1 = select_eval_suite(first_batch, [], seed=0)
    assert len(v1.eval) == 10
    # training data is built with the suite held out
    spec = DatasetSpec(min_size=0, replay_share=0.0, max_category_share=None)
    build1 = build_dataset(first_batch, [], spec, v1.held_out())
    trained = HeldOut.of(build1.train + build1.validation)
    assert not trained.keys & v1.held_out().keys
    assert len(build1.train) + len(build1.validation) == 40

    # later: more corrections, one of them the same question as an eval item
    second_batch = corrections(100, {"billing": 30, "shipping": 20, "account": 10})
    eval_item = v1.eval[0]
    second_batch.append(make_example(999, eval_item.question.upper(), "A newer answer.",
                                     vector=V[399]))
    everything = first_batch + second_batch
    v2 = select_eval_suite(everything, [], previous_eval_keys=[e.key for e in v1.eval],
                           trained=trained, seed=0)
    assert {e.key for e in v1.eval} <= {e.key for e in v2.eval}  # stable
    assert len(v2.eval) > len(v1.eval)  # grows
    assert v2.counts["kept_from_previous"] == 10 and v2.counts["duplicate_prompt"] == 1
    assert "sample:999" not in {e.key for e in v2.eval}
    assert not {e.key for e in v2.eval} & trained.keys
    # available: the 10 eval items + 60 new (the eval question asked again is a duplicate
    # prompt); 20% of 70 = 14
    assert v2.counts["available"] == 70 and len(v2.eval) == 14

    # every item ever held out stays out of later builds, by key and by prompt
    held = HeldOut(keys=v1.held_out().keys | v2.held_out().keys,
                   prompt_hashes=v1.held_out().prompt_hashes | v2.held_out().prompt_hashes)
    build2 = build_dataset(everything, [], spec, held)
    built = {e.key for e in build2.train + build2.validation}
    assert not built & held.keys
    dropped = {d.key: d.reason for d in build2.dropped}
    assert dropped["sample:999"] == "held_out:prompt"
    assert sum(r == "held_out:key" for r in dropped.values()) == 14

    # an eval item that disappeared (e.g. its review was reverted) is counted, not kept
    gone = v2.eval[0].key
    v3 = select_eval_suite([c for c in everything if c["key"] != gone], [],
                           previous_eval_keys=[e.key for e in v2.eval], trained=trained)
    assert v3.counts["previous_missing"] == 1 and v3.counts["kept_from_previous"] == 13
    assert {e.key for e in v2.eval} - {e.key for e in v3.eval} == {gone}


def test_same_inputs_in_any_order_give_the_same_version():
    corr = corrections(0, {"billing": 20, "shipping": 15})
    hist = history(500, {"order": 10, "refund": 5}, quality=0.9)
    a = select_eval_suite(corr, hist, seed=3, retention_size=6)
    random.Random(0).shuffle(corr)
    random.Random(1).shuffle(hist)
    b = select_eval_suite(corr, hist, seed=3, retention_size=6)
    assert a == b and a.version_hash == b.version_hash
    assert select_eval_suite(corr, hist, seed=4, retention_size=6).version_hash != a.version_hash


def test_retention_is_good_history_stratified_by_intent():
    hist = history(500, {"order": 20, "refund": 10, None: 5}, quality=0.9)
    hist += history(600, {"order": 3}, quality=None, thumbs_up=True)  # thumbs up, no score
    hist += history(700, {"order": 5}, quality=0.5)  # not good
    corr = corrections(0, {"billing": 20})
    # a historical interaction asking an eval item's question is not used for retention
    first = select_eval_suite(corr, [], seed=0)
    asked = make_example(800, first.eval[0].question, key="interaction:acme/dup",
                         source="replay:interaction", quality=0.95)
    suite = select_eval_suite(corr, hist + [asked], seed=0, retention_size=19)
    assert suite.eval == first.eval
    assert suite.counts["history_not_good"] == 5 and suite.counts["history_in_eval"] == 1
    assert suite.counts["retention_eligible"] == 38 and len(suite.retention) == 19
    # 23 order : 10 refund : 5 unknown of 38, largest remainder of 19
    assert suite.counts["retention_by_intent"] == {"order": 12, "refund": 5, "unknown": 2}
    assert all(e.quality is None or e.quality >= 0.8 for e in suite.retention)
    again = select_eval_suite(corr, hist, seed=0, retention_size=19,
                              previous_retention_keys=[e.key for e in suite.retention])
    assert {e.key for e in again.retention} == {e.key for e in suite.retention}
    assert again.counts["retention_kept_from_previous"] == 19


def test_the_writer_writes_schema_valid_lines_and_identical_bytes(tmp_path):
    corr = corrections(0, {"billing": 20, "shipping": 15})
    hist = history(500, {"order": 10, "refund": 5}, quality=0.9)
    suite = select_eval_suite(corr, hist, retention_size=6)
    paths = write_eval_suite(suite, tmp_path / "v1")
    assert paths == EVAL_PATHS
    for name in ("eval", "retention"):
        lines = (tmp_path / "v1" / paths[name]).read_text(encoding="utf-8").splitlines()
        assert len(lines) == len(getattr(suite, name))
        for line in lines:
            validate_line("openai_chat", json.loads(line))
    manifest = read_manifest(tmp_path / "v1")
    assert manifest["kind"] == "eval_suite" and manifest["version_hash"] == suite.version_hash
    index = manifest["items"]["eval"]
    assert [i["key"] for i in index] == [e.key for e in suite.eval]
    assert index[0]["line"] == 1 and index[0]["category"] == suite.eval[0].category
    assert verify_exports(tmp_path / "v1") == []
    write_eval_suite(suite, tmp_path / "v2")
    for name in ("eval.jsonl", "retention.jsonl", "manifest.json"):
        assert (tmp_path / "v1" / name).read_bytes() == (tmp_path / "v2" / name).read_bytes()
    items = suite.items()
    assert Counter(i["split"] for i in items) == {"eval": len(suite.eval), "retention": 6}


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"size": -1}, "size must be an integer >= 0"),
    ({"max_share": 1.0}, r"max_share must be in \(0, 1\)"),
    ({"seed": "a"}, "seed must be an integer"),
])
def test_bad_parameters_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        select_eval_suite([], [], **kwargs)


def test_retention_leaves_out_answers_a_correction_superseded():
    """A liked historical reply to a question reviewers answered differently (a stale price
    users did not notice) is not retention material; the same question answered as the
    correction does, and other questions, still are."""
    corr = [make_example(n, f"How much is item {n}?", f"Item {n} costs $10.00.",
                         category="factual_error") for n in range(10)]
    stale = make_example(900, "  how much is ITEM 3 ", "Item 3 costs $12.99.",
                         key="interaction:acme/stale", source="replay:interaction",
                         thumbs_up=True, session="s-900")
    agrees = make_example(901, "How much is item 4?", "Item 4 costs $10.00.",
                          key="interaction:acme/agrees", source="replay:interaction",
                          quality=0.95, session="s-901")
    other = make_example(902, "Where is my order?", "It ships tomorrow.",
                         key="interaction:acme/other", source="replay:interaction",
                         quality=0.95, session="s-902")
    # a previous suite's retention item is dropped too once a correction supersedes it
    suite = select_eval_suite(corr, [stale, agrees, other], seed=0, max_share=0.1,
                              previous_retention_keys=[stale.get("key")])
    picked = {e.key for e in suite.retention}
    assert "interaction:acme/stale" not in picked
    assert suite.counts["history_superseded"] == 1
    assert picked == {"interaction:acme/agrees", "interaction:acme/other"} - {
        e.key for e in suite.eval}
