"""Dataset versions in the operational store (store/datasets.py), on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest

from store.datasets import (
    AmbiguousVersion,
    approved_after,
    dataset_items,
    dataset_summary,
    get_dataset,
    held_out,
    latest_dataset,
    list_datasets,
    record_dataset,
    trained,
)
from store.db import session_scope
from store.models import ReviewItem
from store.repo import NotFound, create_item, decide


def _items(keys, split="train"):
    return [{"item_key": k, "split": split, "prompt_hash": f"p-{k}", "example_hash": f"e-{k}",
             "category": "factual_error", "source": "human_agent", "tenant_id": "t",
             "session_key": f"t/{k}"} for k in keys]


def test_a_version_is_recorded_once_and_named_by_hash_prefix_or_ordinal(store_url):
    with session_scope(store_url) as s:
        a, new_a = record_dataset(s, kind="training", name="default", version_hash="abcd1234" * 8,
                                  items=_items(["sample:1", "sample:2"]), n_train=2,
                                  spec={"seed": 0})
        again, new_again = record_dataset(s, kind="training", name="default",
                                          version_hash="abcd1234" * 8, items=_items(["sample:9"]))
        b, _ = record_dataset(s, kind="training", name="default", version_hash="abce0000" * 8,
                              items=_items(["sample:1", "sample:3"]), parent_version=a.version_hash)
        assert new_a and not new_again and again.id == a.id
        assert (a.version, b.version) == (1, 2)
        assert [i.item_key for i in dataset_items(s, a.id)] == ["sample:1", "sample:2"]
        assert get_dataset(s, "abcd").id == a.id
        assert get_dataset(s, "ABCD1234").id == a.id  # case does not matter
        assert get_dataset(s, "default@2").id == b.id
        assert get_dataset(s, "@1").id == a.id
        with pytest.raises(NotFound, match="at least 4"):
            get_dataset(s, "abc")
        with pytest.raises(NotFound, match="no dataset version"):
            get_dataset(s, "default@7")
        record_dataset(s, kind="eval_suite", name="default", version_hash="abcd9999" * 8,
                       items=[])
        with pytest.raises(AmbiguousVersion, match="ambiguous"):
            get_dataset(s, "abcd")
        assert get_dataset(s, "abcd", kind="training").id == a.id
    with session_scope(store_url) as s:
        assert [d.version for d in list_datasets(s, kind="training")] == [2, 1]
        assert latest_dataset(s, "training").version_hash.startswith("abce")
        summary = dataset_summary(latest_dataset(s, "training"))
        assert summary["parent_version"] == "abcd1234" * 8 and summary["kind"] == "training"


def test_bad_items_and_kinds_are_refused_with_the_field_named(store_url):
    with session_scope(store_url) as s:
        with pytest.raises(ValueError, match="split must be one of"):
            record_dataset(s, kind="training", name="x", version_hash="f" * 64,
                           items=[{**_items(["k"])[0], "split": "test"}])
        with pytest.raises(ValueError, match="kind must be one of"):
            record_dataset(s, kind="model", name="x", version_hash="f" * 64, items=[])


def test_eval_items_are_held_out_by_key_and_prompt_hash(store_url):
    with session_scope(store_url) as s:
        record_dataset(s, kind="eval_suite", name="default", version_hash="e" * 64,
                       items=_items(["sample:5"], "eval") + _items(["interaction:t/9"],
                                                                    "retention"))
        record_dataset(s, kind="training", name="default", version_hash="1" * 64,
                       items=_items(["sample:1"]) + _items(["sample:2"], "validation"))
    with session_scope(store_url) as s:
        h = held_out(s)
        assert ("sample:5", "x") in h and ("other", "p-sample:5") in h
        assert ("interaction:t/9", "x") in h  # retention items are held out too
        assert trained(s).keys == {"sample:1", "sample:2"}


def test_concurrent_writers_of_the_same_version_get_one_row(store_url):
    errors: list[BaseException] = []
    ids: list[int] = []

    def write():
        try:
            with session_scope(store_url) as s:
                ds, _ = record_dataset(s, kind="training", name="race", version_hash="9" * 64,
                                       items=_items(["sample:1"]))
                ids.append(ds.id)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=write) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with session_scope(store_url) as s:
        rows = list_datasets(s, name="race")
    # SQLite serialises writers (a loser may see "database is locked" and retry in its own run);
    # whatever committed, there is exactly one version
    assert len(rows) == 1 and set(ids) <= {rows[0].id}
    assert not [e for e in errors if "locked" not in str(e)]


def test_approved_after_counts_only_newer_approvals(store_url):
    with session_scope(store_url) as s:
        for n in range(3):
            item, _ = create_item(s, kind="sample", dedup_key=f"k{n}", tenant_id="t",
                                  interaction_id=f"i{n}", proposed_response="fixed")
            decide(s, item.id, decision="approve", expected_version=1, actor="r")
    with session_scope(store_url) as s:
        assert approved_after(s, None) == 3
        first = min(i.decided_at for i in s.query(ReviewItem).all())
        assert approved_after(s, first - timedelta(seconds=1)) == 3
        assert approved_after(s, datetime.now(UTC) + timedelta(seconds=5)) == 0
