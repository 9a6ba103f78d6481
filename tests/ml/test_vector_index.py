"""ml.vector_index.maintain on real small LanceDB tables in tmp_path: scalar indexes on the filter
columns, an ANN index once the table passes a size (kept, folded in, rebuilt), compaction and
old-version cleanup, and loud errors for a bad policy."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import numpy as np
import pyarrow as pa
import pytest

from ml import embeddings
from ml.vector_index import (
    EMBEDDINGS_POLICY,
    INDEX_TYPES,
    IndexPolicy,
    maintain,
    maintain_embeddings,
    trained_rows,
    vector_index_name,
)

DIM = 384


def _rows(n: int, start: int, rng: np.random.Generator) -> pa.Table:
    centres = np.random.default_rng(0).normal(size=(8, DIM)).astype(np.float32)
    v = centres[rng.integers(0, len(centres), n)] + 0.3 * rng.normal(size=(n, DIM))
    v = (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)
    return pa.table({
        "interaction_id": [f"i{start + k}" for k in range(n)],
        "tenant_id": [("acme", "globex")[(start + k) % 2] for k in range(n)],
        "kind": ["question"] * n,
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(v.reshape(-1)), DIM),
    })


def _policy(**kw) -> IndexPolicy:
    base = dict(ann_min_rows=500, index_type="IVF_FLAT", bitmap_columns=("kind",),
                btree_columns=("tenant_id", "interaction_id"), compact_min_fragments=4)
    return IndexPolicy(**{**base, **kw})


def _index_types(table) -> dict[str, str]:
    return {ix.columns[0]: ix.index_type for ix in table.list_indices()}


def _finds_near_copies(table) -> None:
    """The index answers: a row's near copy finds the row (its exact nearest neighbour)."""
    rng = np.random.default_rng(4)
    rows = table.search().select(["interaction_id", "vector"]).limit(None).to_arrow()
    ids = rows.column("interaction_id").to_pylist()
    mat = rows.column("vector").combine_chunks().flatten().to_numpy().reshape(-1, DIM)
    queries = mat[:20] + 0.002 * rng.normal(size=(20, DIM)).astype(np.float32)
    res = (table.search(list(queries), vector_column_name="vector").distance_type("cosine")
           .limit(10).select(["interaction_id", "_distance"]).to_arrow())
    found: list[set[str]] = [set() for _ in queries]
    for q, iid in zip(res.column("query_index").to_pylist(),
                      res.column("interaction_id").to_pylist(), strict=True):
        found[q].add(iid)
    assert sum(ids[q] in found[q] for q in range(20)) >= 18


def test_ann_index_is_built_past_the_size_kept_for_small_additions_rebuilt_for_large(
        tmp_path):
    rng = np.random.default_rng(1)
    db = embeddings.connect(str(tmp_path / "db"))
    table = db.create_table("t", _rows(300, 0, rng))
    policy = _policy()

    done = maintain(table, policy)  # below the size: scalar indexes only, exact search
    assert done["ann_index"] == "none" and vector_index_name(table) is None
    assert sorted(done["scalar_indexes_created"]) == ["interaction_id", "kind", "tenant_id"]
    assert _index_types(table)["kind"] == "Bitmap"
    assert _index_types(table)["tenant_id"] == "BTree"

    for k in range(3):  # past the size, in several appends (fragments)
        table.add(_rows(100, 300 + 100 * k, rng))
    done = maintain(table, policy)
    assert done["ann_index"] == "built" and done["rows"] == 600
    assert done["optimized"] and done["fragments_before"] == 4
    assert done["fragments_after"] < done["fragments_before"]
    assert table.index_stats(vector_index_name(table)).num_unindexed_rows == 0
    assert table.index_stats("kind_idx").num_unindexed_rows == 0

    table.add(_rows(100, 600, rng))  # a small addition is folded into the index
    done = maintain(table, policy)
    assert done["ann_index"] == "kept" and done["ann_unindexed_rows"] == 100
    stats = table.index_stats(vector_index_name(table))
    assert stats.num_unindexed_rows == 0 and stats.num_indexed_rows == 700

    table.add(_rows(500, 700, rng))  # twice the rows it was trained on: retrained, resized
    done = maintain(table, policy)
    assert done["ann_index"] == "rebuilt" and done["ann_unindexed_rows"] == 500
    assert vector_index_name(table) == "vector_ann_1200"
    assert trained_rows(vector_index_name(table)) == 1_200
    assert table.index_stats("vector_ann_1200").num_indexed_rows == 1_200

    table.add(_rows(1_000, 1_200, rng))  # grown less than twice, but most rows unindexed
    done = maintain(table, replace(policy, rebuild_share=0.4))
    assert done["ann_index"] == "rebuilt" and vector_index_name(table) == "vector_ann_2200"

    _finds_near_copies(table)


@pytest.mark.parametrize("index_type", [t for t in INDEX_TYPES if t != "IVF_FLAT"])
def test_the_other_index_types_build_and_answer(tmp_path, index_type):
    db = embeddings.connect(str(tmp_path / "db"))
    table = db.create_table("t", _rows(600, 0, np.random.default_rng(6)))
    done = maintain(table, _policy(index_type=index_type))
    assert done["ann_index"] == "built"
    assert table.index_stats(vector_index_name(table)).index_type == index_type
    _finds_near_copies(table)


def test_nothing_to_do_when_up_to_date_and_old_versions_are_cleaned(tmp_path):
    rng = np.random.default_rng(2)
    db = embeddings.connect(str(tmp_path / "db"))
    table = db.create_table("t", _rows(50, 0, rng))
    policy = _policy(ann_min_rows=None)
    maintain(table, policy)
    again = maintain(table, policy)
    assert again["scalar_indexes_created"] == [] and not again["optimized"]
    for k in range(5):
        table.add(_rows(10, 50 + 10 * k, rng))
    cleaning = _policy(ann_min_rows=None, cleanup_older_than=timedelta(0), max_versions=2)
    with pytest.warns(UserWarning, match="removes every version"):  # LanceDB's own warning
        done = maintain(table, cleaning)
    assert done["optimized"] and done["versions_after"] < done["versions_before"]
    assert done["fragments_after"] < done["fragments_before"] and table.count_rows() == 100
    assert table.index_stats("tenant_id_idx").num_unindexed_rows == 0


def test_empty_table_gets_no_index_and_embeddings_policy_covers_the_filter_columns(tmp_path):
    db = embeddings.connect(str(tmp_path / "db"))
    table = embeddings.open_embeddings(db)
    done = maintain_embeddings(table)
    assert done["rows"] == 0 and done["scalar_indexes_created"] == []
    assert done["ann_index"] == "none"
    assert set(EMBEDDINGS_POLICY.bitmap_columns + EMBEDDINGS_POLICY.btree_columns) == {
        "kind", "partition_date", "tenant_id", "interaction_id"}
    assert EMBEDDINGS_POLICY.ann_min_rows is not None


def test_bad_policy_and_unknown_column_are_named(tmp_path):
    with pytest.raises(ValueError, match="index_type"):
        IndexPolicy(index_type="HNSW")
    with pytest.raises(ValueError, match="distance"):
        IndexPolicy(distance="manhattan")
    with pytest.raises(ValueError, match="ann_min_rows"):
        IndexPolicy(ann_min_rows=10)
    with pytest.raises(ValueError, match="rebuild_growth"):
        IndexPolicy(rebuild_growth=1.0)
    with pytest.raises(ValueError, match="rebuild_share"):
        IndexPolicy(rebuild_share=0.0)
    with pytest.raises(ValueError, match="kind"):
        IndexPolicy(bitmap_columns=("kind",), btree_columns=("kind",))
    db = embeddings.connect(str(tmp_path / "db"))
    table = db.create_table("t", _rows(10, 0, np.random.default_rng(3)))
    with pytest.raises(ValueError, match="no column.*'channel'"):
        maintain(table, _policy(btree_columns=("channel",)))
