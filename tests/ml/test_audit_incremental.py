"""The scheduled audit selection reads only new work (ml.audit.tables.read_selection_pool and
write_passed_over), and the audit reads its candidates in chunks (interaction_chunks), on a real
DuckDB warehouse."""

from __future__ import annotations

from datetime import datetime

import duckdb
import polars as pl
import pytest

from ml import warehouse as wh
from ml.audit import tables
from ml.audit.candidates import CandidateConfig, select_candidates, selection_fingerprint

CFG = CandidateConfig(calibration_rate=0.0)
SEL = selection_fingerprint("rules", "rules-v1", CFG)
NOW = datetime(2026, 1, 2)


@pytest.fixture()
def con(tmp_path):
    c = duckdb.connect(str(tmp_path / "w.duckdb"))
    for name in ("interactions", "interaction_quality"):
        wh.ensure_table(c, name)
    yield c
    c.close()


def _add(con, iid: str, *, thumbs: str | None = None, quality: float | None = 0.9,
         minute: int = 0) -> None:
    con.execute("INSERT INTO interactions (interaction_id, tenant_id, ts, feedback_thumbs, "
                "response) VALUES (?, 't', ?, ?, ?)",
                [iid, datetime(2026, 1, 1, 0, minute), thumbs, f"reply {iid}"])
    if quality is not None:
        con.execute("INSERT INTO interaction_quality (interaction_id, tenant_id, quality_score) "
                    "VALUES (?, 't', ?)", [iid, quality])


def _select(con, retry=()):
    pool = tables.read_selection_pool(con, auditor="rules", prompt_version="rules-v1",
                                      selection=SEL, retry_keys=retry)
    cands = select_candidates(pool, None, auditor="rules", prompt_version="rules-v1", config=CFG,
                              now=NOW, run_id="r")
    tables.write_passed_over(con, SEL, pool, cands, now=NOW)
    return sorted(pool["interaction_id"]), sorted(cands["interaction_id"])


def _verdict(con, iid: str) -> None:
    wh.upsert_rows(con, "audited_errors", pl.DataFrame(
        {"interaction_id": [iid], "tenant_id": ["t"], "auditor": ["rules"],
         "prompt_version": ["rules-v1"], "is_error": [True]}).with_columns(
        *[pl.lit(None).cast(t).alias(c) for c, t in wh.registered("audited_errors")
          .polars_schema().items() if c not in ("interaction_id", "tenant_id", "auditor",
                                                "prompt_version", "is_error")]))


def test_a_run_reads_only_what_is_new_changed_unaudited_or_retried(con):
    _add(con, "quiet1"), _add(con, "quiet2", minute=1), _add(con, "bad", thumbs="down", minute=2)
    _add(con, "unscored", minute=3, quality=None)
    assert _select(con) == (["bad", "quiet1", "quiet2", "unscored"], ["bad"])
    # next run: the candidate is not audited yet (a crash, a limit): read again; the rest not
    assert _select(con) == (["bad"], ["bad"])
    _verdict(con, "bad")
    assert _select(con) == ([], [])
    _add(con, "new", thumbs="down", minute=4)
    assert _select(con) == (["new"], ["new"])
    # a quality score arriving (or recomputed) and late feedback make an interaction new again
    con.execute("INSERT INTO interaction_quality (interaction_id, tenant_id, quality_score) "
                "VALUES ('unscored', 't', 0.1)")
    con.execute("UPDATE interactions SET feedback_thumbs = 'down' WHERE interaction_id = 'quiet1'")
    assert _select(con) == (["new", "quiet1", "unscored"], ["new", "quiet1", "unscored"])
    # a failed attempt (e.g. of a manual audit) is retried even when passed over
    assert _select(con, retry=[("t", "quiet2")])[0] == ["new", "quiet1", "quiet2", "unscored"]
    # other selection settings: everything without a verdict is new to them
    other = tables.read_selection_pool(con, auditor="rules", prompt_version="rules-v1",
                                       selection=selection_fingerprint(
                                           "rules", "rules-v1", CandidateConfig(seed=1)))
    assert sorted(other["interaction_id"]) == ["new", "quiet1", "quiet2", "unscored"]
    # quiet2 passed over; quiet1 and unscored keep the row of their old inputs (never matches)
    assert con.execute("SELECT count(*) FROM audit_passed_over").fetchone()[0] == 3


def test_candidates_are_read_in_chunks_and_batches_keep_time_order(con):
    for n, minute in enumerate([5, 1, 4, 2, 3]):
        _add(con, f"i{n}", minute=minute)
    keys = [("t", "i4"), ("t", "missing"), ("t", "i0"), ("t", "i1"), ("t", "i3"), ("t", "i2")]
    chunks = list(tables.interaction_chunks(con, keys, 4))
    assert [start for start, _ in chunks] == [0, 4]
    assert [r["_pos"].to_list() for _, r in chunks] == [[0, 2, 3], [4, 5]]
    first = tables.rows_of_batch(chunks[0][1], 0, 3)  # i4 (min 3), i0 (min 5): by time
    assert first["interaction_id"].to_list() == ["i4", "i0"] and "_pos" not in first.columns
    assert "quality_score" in first.columns
    with pytest.raises(ValueError, match="chunk must be at least 1"):
        list(tables.interaction_chunks(con, keys, 0))
