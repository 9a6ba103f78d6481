"""The dataset checks: they pass on a clean build and fail on planted bad data."""

from __future__ import annotations

import json

import pytest
from conftest import make_example, random_vectors

from ml.datasets import DatasetSpec, Example, HeldOut, build_dataset
from ml.datasets.checks import (
    check_category_balance,
    check_min_size,
    check_no_empty_turns,
    check_no_held_out,
    check_no_leakage,
    check_no_pii,
    check_roles,
    check_token_limit,
    resolve_tokenizer,
    run_checks,
)
from ml.datasets.tokens import minilm_tokenizer_path, token_counter

QUESTIONS = ["How do I reset my password?", "Where is my order?", "Do you ship to Canada?",
             "How do I cancel my subscription?", "My card was declined", "What is your refund "
             "policy?", "Can I change my shipping address?", "Is there a student discount?",
             "How long does delivery take?", "Can I pay with PayPal?"]


def E(n, question="Where is my order?", answer=None, **kw) -> Example:  # noqa: N802
    return Example.from_dict(make_example(n, question, answer, **kw))


@pytest.fixture(scope="module")
def minilm():
    return resolve_tokenizer(None, None)


def test_a_clean_build_passes_every_check(minilm):
    cands = [make_example(i, q, category=("billing", "shipping")[i % 2], session=f"s{i}")
             for i, q in enumerate(QUESTIONS)]
    spec = DatasetSpec(min_size=5, validation_share=0.2, replay_share=0.0)
    build = build_dataset(cands, [], spec)
    results = run_checks(build, HeldOut(), minilm)
    assert sorted(results) == ["check_category_balance", "check_min_size",
                               "check_no_empty_turns", "check_no_held_out", "check_no_leakage",
                               "check_no_pii", "check_roles", "check_token_limit"]
    assert {n: r.passed for n, r in results.items()} == dict.fromkeys(results, True)
    assert all(r.failures == () for r in results.values())
    json.dumps({n: r.to_dict() for n, r in results.items()})  # JSON-able for Dagster metadata
    assert results["check_token_limit"].metadata["tokenizer"].startswith("minilm_stand_in:")
    with pytest.raises(ValueError, match="a tokenizer is required"):
        run_checks(build, HeldOut())


def test_pii_is_found_by_either_detector_and_never_echoed():
    clean = E(1, "My email is [EMAIL], where is my order?", "It ships today.")
    email = E(2, "Where is my order?", "Write to jane.doe@example.com for help.")
    phone = E(3, "Call me on +1 415 555 2671 please", "Will do.")
    result = check_no_pii([clean, email, phone])
    assert not result.passed
    assert result.metadata["by_type"] == {"EMAIL": 2, "PHONE": 2}  # each found by both
    assert {(f["key"], f["turn"], f["pii_type"]) for f in result.failures} == {
        ("sample:2", "completion", "EMAIL"), ("sample:3", "messages[0]", "PHONE")}
    assert {f["detector"] for f in result.failures} == {"ml.pii", "presidio"}
    assert "jane.doe" not in json.dumps(result.to_dict())
    assert "415" not in json.dumps(result.to_dict())
    assert check_no_pii([clean]).passed


def test_roles_out_of_order_and_empty_turns_fail():
    good = E(1)
    bad_order = E(2, messages=[{"role": "assistant", "content": "Hi"},
                               {"role": "user", "content": "Where is my order?"}])
    two_users = E(3, messages=[{"role": "user", "content": "Hi"},
                               {"role": "user", "content": "Where is my order?"}])
    ends_with_assistant = E(4, messages=[{"role": "user", "content": "Hi"},
                                         {"role": "assistant", "content": "Hello"}])
    result = check_roles([good, bad_order, two_users, ends_with_assistant])
    assert not result.passed and result.metadata == {"examples": 4, "failures": 3}
    assert [f["key"] for f in result.failures] == ["sample:2", "sample:3", "sample:4"]
    assert "expected role user, got assistant" in result.failures[0]["problem"]
    assert check_roles([good]).passed

    blank = E(5, messages=[{"role": "user", "content": " \n"}])
    no_reply = E(6, answer="x")
    no_reply = Example.from_dict({**no_reply.to_dict(), "completion": ""})
    empty = check_no_empty_turns([good, blank, no_reply])
    assert not empty.passed
    assert [(f["key"], f["turns"]) for f in empty.failures] == [
        ("sample:5", ["messages[0]"]), ("sample:6", ["completion"])]
    assert check_no_empty_turns([good]).passed


def test_token_limit_with_a_callable_and_with_the_minilm_tokenizer(minilm):
    short, long = E(1, "Where is my order?", "Soon."), E(2, "word " * 30, "Soon.")
    words = check_token_limit([short, long], lambda text: len(text.split()), 20)
    # "user: word x30" and "assistant: Soon." rendered as lines: 33 words
    assert not words.passed and words.failures == ({"key": "sample:2", "tokens": 33},)
    assert words.metadata["longest"] == 33 and words.metadata["max_tokens"] == 20
    count = token_counter(minilm)
    n_short = count(short.conversation())
    assert 5 < n_short < 20
    real = check_token_limit([short, long], minilm, n_short)
    assert not real.passed and [f["key"] for f in real.failures] == ["sample:2"]
    assert "minilm_stand_in" in real.description
    assert check_token_limit([short], minilm, 1024).passed


def test_leakage_by_session_hash_prompt_and_near_duplicate():
    v = random_vectors(8, dim=384)
    train = [E(1, "Where is my order?", "It ships today.", session="s1", vector=v[0]),
             E(2, "Do you ship to Canada?", "Yes.", session="s2", vector=v[1]),
             E(3, "How do I reset my password?", "Use the link.", session="s3"),
             E(4, "Bananas?", "Yellow.", session="s4", vector=v[2])]
    validation = [E(10, "Another question", "Answer.", session="s1", vector=v[3]),
                  E(11, "where is my ORDER?", "It ships  today.", session="v1", vector=v[4]),
                  E(12, "Do you ship to canada?", "No.", session="v2", vector=v[5]),
                  E(13, "How can I reset my password?", "Click the link.", session="v3"),
                  E(14, "Something else entirely", "Fine.", session="v4", vector=v[6])]
    result = check_no_leakage(train, validation, threshold=0.95)
    assert not result.passed
    assert {(f["key"], f["kind"], f.get("train_key")) for f in result.failures} == {
        ("sample:10", "session", None), ("sample:11", "example_hash", "sample:1"),
        ("sample:12", "prompt_hash", "sample:2"), ("sample:13", "near_duplicate", "sample:3")}
    near = next(f for f in result.failures if f["kind"] == "near_duplicate")
    assert near["similarity"] >= 0.95
    assert result.metadata["near_duplicate_pairs"] == 1
    assert check_no_leakage(train, validation[-1:], threshold=0.95).passed


def test_held_out_min_size_and_balance():
    items = [E(i, f"Question {i}", category="billing") for i in range(6)] + \
        [E(10, "Shipping question", category="shipping"),
         E(11, "Old one", category="shipping", source="replay:approved")]
    held = HeldOut(keys=frozenset({"sample:1"}),
                   prompt_hashes=frozenset({E(99, "QUESTION 2").prompt_hash}))
    result = check_no_held_out(items, held)
    assert not result.passed
    assert result.failures == ({"key": "sample:1", "by": "key"},
                               {"key": "sample:2", "by": "prompt_hash"})
    assert check_no_held_out(items, None).passed

    assert not check_min_size(items[:3], 5).passed and check_min_size(items, 5).passed
    assert check_min_size(items[:3], 5).failures == ({"train": 3, "short_by": 2},)

    spec = DatasetSpec(category_caps={"billing": 4}, max_category_share=0.5)
    balance = check_category_balance(items, spec)
    assert not balance.passed
    assert balance.failures == ({"category": "billing", "count": 6, "cap": 4},
                                {"category": "billing", "share": 0.8571,
                                 "max_category_share": 0.5})
    assert balance.metadata["categories"] == {"billing": 6, "shipping": 1}  # replay not counted
    assert check_category_balance(items[:6], spec.__class__(default_cap=6)).passed


def test_resolve_tokenizer_never_downloads_and_says_what_it_used(tmp_path):
    fallback = resolve_tokenizer("no-such-org/no-such-model", tmp_path)
    assert fallback.source == "minilm_stand_in"
    assert fallback.name == str(minilm_tokenizer_path())
    assert any("no-such-org/no-such-model" in n for n in fallback.notes)
    assert any("no offline base model" in n for n in fallback.notes)
    # the offline base model's tokenizer, once a later issue has built it
    fallback.tokenizer.save_pretrained(tmp_path / "models" / "base")
    base = resolve_tokenizer(None, tmp_path)
    assert base.source == "offline_base" and base.name == str(tmp_path / "models" / "base")
    # a local path given as the base model wins
    local = resolve_tokenizer(str(tmp_path / "models" / "base"), None)
    assert local.source == "base_model" and local.notes == ()
    text = [{"role": "user", "content": "Where is my order?"}]
    assert token_counter(local)(text) == token_counter(fallback)(text)
