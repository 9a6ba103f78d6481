"""Near neighbours by cosine similarity through LanceDB: the one function
(:func:`similar_pairs`) behind near-duplicate removal, replay de-duplication and the leakage check.

The vectors to search go into a table of an in-memory LanceDB database (``memory://``, private
to the call, nothing written to disk); all queries run as one batched flat (exact, no index)
search with the ``cosine`` distance. LanceDB returns the ``k`` nearest rows per query; where the
k-th is still within the threshold the query is searched again with a larger ``k``, so every
neighbour at or above the threshold is found whatever their number. The decision itself uses the
cosine recomputed in float64 from the L2-normalised vectors (LanceDB's float32 distance only
selects candidates, with a small margin), so the result does not depend on LanceDB's SIMD
rounding. Zero vectors (no text) have no neighbours.

The result is a sorted list, independent of LanceDB's order of equal distances.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

_MARGIN = 1e-3  # candidates within threshold - margin by LanceDB's float32 distance
_FIRST_K = 16


def normalise_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (float32); zero rows stay zero."""
    v = np.asarray(vectors, dtype=np.float32)
    if v.ndim != 2:
        raise ValueError(f"vectors must be a 2-d array, got shape {v.shape}")
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(norms > 0, v / np.where(norms > 0, norms, 1), 0)
    return out.astype(np.float32)


def _table(index: np.ndarray) -> Any:
    import lancedb

    db = lancedb.connect("memory://")
    dim = index.shape[1]
    data = pa.table({
        "row": pa.array(np.arange(len(index), dtype=np.int64)),
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(index.reshape(-1)), dim),
    })
    return db.create_table("vectors", data)


def _search(table: Any, queries: np.ndarray, rows: list[int], k: int) -> dict[int, list[int]]:
    """query row -> the rows LanceDB returns as its ``k`` nearest (cosine)."""
    found: dict[int, list[int]] = {q: [] for q in rows}
    batch = [queries[q] for q in rows]
    result = (table.search(batch if len(batch) > 1 else batch[0], vector_column_name="vector")
              .distance_type("cosine").limit(k).select(["row", "_distance"]).to_arrow())
    hits = result.column("row").to_pylist()
    owners = (result.column("query_index").to_pylist() if "query_index" in result.column_names
              else [0] * len(hits))
    for owner, row in zip(owners, hits, strict=True):
        found[rows[owner]].append(row)
    return found


def similar_pairs(queries: np.ndarray, index: np.ndarray | None = None, *, threshold: float,
                  ) -> list[tuple[int, int, float]]:
    """Every (query row, index row, cosine) with cosine >= ``threshold``, sorted.

    ``index`` None: the queries against themselves (a row is not its own neighbour). Vectors are
    L2-normalised here, so any scale works."""
    q = normalise_rows(queries)
    same = index is None
    ix = q if same else normalise_rows(index)
    if not len(q) or not len(ix):
        return []
    if q.shape[1] != ix.shape[1]:
        raise ValueError(f"query vectors have {q.shape[1]} dimensions, index vectors "
                         f"{ix.shape[1]}")
    table = _table(ix)
    live = [i for i in range(len(q)) if q[i].any()]
    out: set[tuple[int, int]] = set()
    k = min(_FIRST_K, len(ix))
    todo = live
    while todo:
        found = _search(table, q, todo, k)
        again = []
        for qi, rows in found.items():
            rows = [r for r in rows if ix[r].any()]
            sims = ix[rows].astype(np.float64) @ q[qi].astype(np.float64) if rows else []
            for r, s in zip(rows, sims, strict=True):
                if s >= threshold and not (same and r == qi):
                    out.add((qi, r))
            # the k-th neighbour is still close: there may be more beyond k
            if len(found[qi]) >= k and k < len(ix) and len(sims) and \
                    min(sims) >= threshold - _MARGIN:
                again.append(qi)
        if not again:
            break
        todo, k = again, min(k * 4, len(ix))
    return [(a, b, float(q[a].astype(np.float64) @ ix[b].astype(np.float64)))
            for a, b in sorted(out)]
