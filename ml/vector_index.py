"""Index upkeep for a LanceDB table of vectors: one call, :func:`maintain`, made after writes.

What it does, in order (each step only when needed, so calling it after every write is cheap):

1. **Scalar indexes** on the filter columns (:attr:`IndexPolicy.bitmap_columns`, e.g. ``kind``:
   few distinct values; :attr:`IndexPolicy.btree_columns`, e.g. ``tenant_id``,
   ``interaction_id``): created when missing. With them a filter such as ``kind =
   'approved_reply' AND tenant_id = 'acme'`` is answered from the index instead of a scan of
   every row, so a prefiltered search reads only the matching rows' vectors and its cost no
   longer grows with the rest of the table (docs/vector-search.md has the figures).
2. **ANN index** on the vector column (:attr:`IndexPolicy.index_type`, cosine) once the table
   has :attr:`IndexPolicy.ann_min_rows` rows. Below that an exact (flat) search is as fast and
   exact, so no index is built (``ann_min_rows=None``: never). An existing index is *rebuilt*
   (its partitions retrained on all rows, their number sized to the table) when more than
   :attr:`IndexPolicy.rebuild_share` of the rows are not covered by it, or when the table has
   grown :attr:`IndexPolicy.rebuild_growth` times since the index was trained (its name records
   the rows it was trained on: ``vector_ann_<rows>``), so partitions do not grow without bound;
   smaller additions are folded in by step 3. Rebuilding at each doubling keeps the total
   training work proportional to the final size.
3. **Optimize** (``Table.optimize``): compacts small fragments into large ones, adds the rows
   appended since the indexes were built to them (the vector index gets a delta over its
   existing partitions; searches cover unindexed rows with a flat scan until then), and removes
   table versions older than :attr:`IndexPolicy.cleanup_older_than`. Run when there are
   unindexed rows, at least :attr:`IndexPolicy.compact_min_fragments` fragments, or more than
   :attr:`IndexPolicy.max_versions` versions.

:func:`maintain` returns what it did as a flat dict (Dagster metadata). Pure LanceDB: no Dagster.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

INDEX_TYPES = ("IVF_PQ", "IVF_HNSW_SQ", "IVF_FLAT")


@dataclass(frozen=True)
class IndexPolicy:
    """How :func:`maintain` keeps a table's indexes (defaults: docs/vector-search.md)."""

    vector_column: str = "vector"
    distance: str = "cosine"
    # ANN index once the table has this many rows; None: never (exact search only)
    ann_min_rows: int | None = 100_000
    index_type: str = "IVF_FLAT"  # measured best at 200k rows: docs/vector-search.md
    num_partitions: int | None = None  # None: rows // partition_rows (at least 1)
    partition_rows: int = 4_096  # 49 partitions at 200k rows; LanceDB probes 20 by default
    num_sub_vectors: int | None = 48  # IVF_PQ: 384 / 48 = 8 dimensions per code byte
    hnsw_m: int = 20  # IVF_HNSW_SQ
    hnsw_ef_construction: int = 150
    rebuild_share: float = 0.5  # retrain the ANN index when this share of rows is unindexed
    rebuild_growth: float = 2.0  # ... or when the table has grown this much since training
    bitmap_columns: tuple[str, ...] = ()
    btree_columns: tuple[str, ...] = ()
    compact_min_fragments: int = 8
    max_versions: int = 50
    cleanup_older_than: timedelta = field(default_factory=lambda: timedelta(hours=1))

    def __post_init__(self) -> None:
        if self.index_type not in INDEX_TYPES:
            raise ValueError(f"IndexPolicy.index_type must be one of {INDEX_TYPES}, "
                             f"got {self.index_type!r}")
        if self.distance not in ("cosine", "l2", "dot"):
            raise ValueError(f"IndexPolicy.distance must be cosine, l2 or dot, "
                             f"got {self.distance!r}")
        if self.ann_min_rows is not None and self.ann_min_rows < 256:
            raise ValueError(f"IndexPolicy.ann_min_rows must be at least 256 (IVF training "
                             f"needs rows) or None, got {self.ann_min_rows}")
        if self.rebuild_growth <= 1.0:
            raise ValueError(f"IndexPolicy.rebuild_growth must be above 1, "
                             f"got {self.rebuild_growth}")
        if not 0.0 < self.rebuild_share <= 1.0:
            raise ValueError(f"IndexPolicy.rebuild_share must be in (0, 1], "
                             f"got {self.rebuild_share}")
        if self.partition_rows < 1 or self.compact_min_fragments < 1 or self.max_versions < 1:
            raise ValueError("IndexPolicy.partition_rows, compact_min_fragments and "
                             "max_versions must be positive")
        overlap = set(self.bitmap_columns) & set(self.btree_columns)
        if overlap:
            raise ValueError(f"IndexPolicy: columns both bitmap and btree: {sorted(overlap)}")

    def vector_config(self, rows: int) -> Any:
        """The LanceDB index configuration for a table of ``rows`` rows."""
        from lancedb.index import HnswSq, IvfFlat, IvfPq

        parts = self.num_partitions or max(1, rows // self.partition_rows)
        if self.index_type == "IVF_PQ":
            return IvfPq(distance_type=self.distance, num_partitions=parts,
                         num_sub_vectors=self.num_sub_vectors)
        if self.index_type == "IVF_HNSW_SQ":
            return HnswSq(distance_type=self.distance, num_partitions=parts, m=self.hnsw_m,
                          ef_construction=self.hnsw_ef_construction)
        return IvfFlat(distance_type=self.distance, num_partitions=parts)


def _indices(table: Any) -> dict[str, Any]:
    """column -> its index configuration (one index per column here)."""
    out: dict[str, Any] = {}
    for ix in table.list_indices():
        for col in ix.columns:
            out[col] = ix
    return out


def _unindexed(table: Any, name: str) -> int:
    stats = table.index_stats(name)
    if stats is None:
        raise RuntimeError(f"index {name!r} listed but has no statistics")
    return int(stats.num_unindexed_rows)


def _fragments(table: Any) -> int:
    return int(table.stats()["fragment_stats"]["num_fragments"])


def _ann_name(column: str, rows: int) -> str:
    return f"{column}_ann_{rows}"


def trained_rows(name: str) -> int | None:
    """The rows an ANN index named by :func:`maintain` was trained on (None for another name)."""
    head, _, tail = name.rpartition("_ann_")
    return int(tail) if head and tail.isdigit() else None


def vector_index_name(table: Any, column: str = "vector") -> str | None:
    """The name of the index on ``column`` (None without one)."""
    ix = _indices(table).get(column)
    return None if ix is None else ix.name


def maintain(table: Any, policy: IndexPolicy | None = None) -> dict[str, Any]:
    """Bring ``table``'s indexes and files up to date after writes (see the module docstring).

    Returns what it did: ``rows``, ``scalar_indexes_created`` (columns), ``ann_index``
    (``none`` below ``ann_min_rows`` / ``built`` / ``rebuilt`` / ``kept``), ``ann_unindexed_rows``
    (before), ``optimized`` (bool), ``fragments_before``/``fragments_after``,
    ``versions_before``/``versions_after`` and ``seconds``."""
    policy = policy or IndexPolicy()
    started = time.perf_counter()
    names = set(table.schema.names)
    wanted = [*policy.bitmap_columns, *policy.btree_columns]
    if policy.ann_min_rows is not None:
        wanted.append(policy.vector_column)
    unknown = [c for c in wanted if c not in names]
    if unknown:
        raise ValueError(f"maintain: table {table.name!r} has no column(s) {unknown}")
    rows = table.count_rows()
    fragments_before = _fragments(table)
    versions_before = len(table.list_versions())
    out: dict[str, Any] = {"rows": rows, "scalar_indexes_created": [], "ann_index": "none",
                           "ann_unindexed_rows": 0, "optimized": False}
    have = _indices(table)
    if rows:
        from lancedb.index import Bitmap, BTree

        for col in policy.bitmap_columns + policy.btree_columns:
            if col not in have:
                table.create_index(col, config=Bitmap() if col in policy.bitmap_columns
                                   else BTree())
                out["scalar_indexes_created"].append(col)
    ann = have.get(policy.vector_column)
    col = policy.vector_column
    if ann is not None:
        unindexed = _unindexed(table, ann.name)
        out["ann_unindexed_rows"] = unindexed
        trained = trained_rows(ann.name) or (rows - unindexed)
        if rows and (unindexed / rows > policy.rebuild_share
                     or rows >= policy.rebuild_growth * max(trained, 1)):
            table.drop_index(ann.name)  # the name carries the trained size: drop, then build
            table.create_index(col, config=policy.vector_config(rows), name=_ann_name(col, rows))
            out["ann_index"] = "rebuilt"
        else:
            out["ann_index"] = "kept"
    elif policy.ann_min_rows is not None and rows >= policy.ann_min_rows:
        table.create_index(col, config=policy.vector_config(rows), name=_ann_name(col, rows))
        out["ann_index"] = "built"
        out["ann_unindexed_rows"] = rows
    stale = any(_unindexed(table, ix.name) for ix in table.list_indices())
    if (stale or fragments_before >= policy.compact_min_fragments
            or versions_before > policy.max_versions):
        table.optimize(cleanup_older_than=policy.cleanup_older_than)
        out["optimized"] = True
    out.update(fragments_before=fragments_before, fragments_after=_fragments(table),
               versions_before=versions_before, versions_after=len(table.list_versions()),
               seconds=round(time.perf_counter() - started, 3))
    return out


# ---- the embeddings table ------------------------------------------------------------------------
# ``interaction_embeddings`` (ml.embeddings): questions of every interaction and the teacher's
# approved replies. Filters: ``kind`` (2 values: bitmap), ``tenant_id`` and ``interaction_id``
# (btree: any number of distinct values). ANN index on the question vector from ANN_MIN_ROWS rows
# (IVF_FLAT: docs/vector-search.md has the figures behind the type and the size).
ANN_MIN_ROWS = 100_000
EMBEDDINGS_POLICY = IndexPolicy(ann_min_rows=ANN_MIN_ROWS,
                                bitmap_columns=("kind", "partition_date"),
                                btree_columns=("tenant_id", "interaction_id"))


def maintain_embeddings(table: Any, policy: IndexPolicy | None = None) -> dict[str, Any]:
    """:func:`maintain` with :data:`EMBEDDINGS_POLICY`: what the embeddings asset calls after
    appending and the teacher after rewriting its approved replies."""
    return maintain(table, policy or EMBEDDINGS_POLICY)
