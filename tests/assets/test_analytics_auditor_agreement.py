"""The auditor_agreement mart on a hand-made warehouse (real dbt, real DuckDB, real Dagster): labels
come from reviewers only (flag confirmed/dismissed, and "no error found" calibration items confirmed
= false negative / dismissed = true negative); human corrections are reported apart, never as labels
for an auditor that reads them; Cohen's kappa in a non-degenerate case equals
ml.audit.metrics.cohen_kappa on the same labels."""

from __future__ import annotations

from datetime import date, datetime
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from assets.analytics import dbt_analytics_assets, dbt_resource
from assets.review import REVIEW_DECISION_COLUMNS
from ml.audit.metrics import cohen_kappa
from ml.audit.taxonomy import AUDITED_COLUMNS
from ml.schema import INTERACTION_COLUMNS, QUALITY_COLUMNS, QUARANTINE_COLUMNS
from orchestration.resources import LearnloopResource

D1 = date(2025, 1, 1)

# (interaction, flagged, reviewer decision on the auditor's item, human agent corrected it)
CASES = [
    ("f1", True, "confirmed", False),   # tp
    ("f2", True, "confirmed", False),   # tp
    ("f3", True, "confirmed", True),    # tp (the decision labels it, the correction does not)
    ("f4", True, "dismissed", False),   # fp
    ("f5", True, None, True),           # unlabeled: a correction is no label for "rules"
    ("f6", True, None, False),          # unlabeled
    ("c1", False, "confirmed", False),  # fn: a reviewer confirmed a "no error found" item
    ("c2", False, "dismissed", False),  # tn
    ("c3", False, "dismissed", False),  # tn
    ("c4", False, "dismissed", False),  # tn
    ("c5", False, None, True),          # unlabeled; counted in correction_labeled
    ("c6", False, None, False),         # unlabeled
]


def _create(con, table: str, columns: dict[str, str], rows: list[dict]) -> None:
    cols = ", ".join(f'"{c}" {t}' for c, t in columns.items())
    con.execute(f'CREATE TABLE main."{table}" ({cols})')
    for row in rows:
        assert not set(row) - set(columns), f"unknown columns for {table}"
        names = ", ".join(f'"{c}"' for c in row)
        con.execute(f'INSERT INTO main."{table}" ({names}) VALUES '
                    f'({", ".join("?" for _ in row)})', list(row.values()))


def _warehouse(path: Path) -> None:
    interactions, verdicts, events = [], [], []
    for n, (iid, flagged, decision, corrected) in enumerate(CASES, start=1):
        interactions.append({
            "interaction_id": iid, "tenant_id": "acme", "session_id": f"s-{iid}",
            "turn_index": 0, "ts": datetime(2025, 1, 1, 12, n), "user_message": "q",
            "response": "a", "messages": "[]", "tags": [], "pii_types": [],
            "source_file": "d.jsonl", "partition_date": D1,
            **({"corrected_response": "better", "correction_agent_id": "agent"} if corrected
               else {})})
        verdicts.append({
            "interaction_id": iid, "tenant_id": "acme", "partition_date": D1, "auditor": "rules",
            "prompt_version": "rules-v1", "is_error": flagged,
            "category": "factual_error" if flagged else None,
            "severity": "high" if flagged else None, "confidence": 0.8, "explanation": "t",
            "signals": [], "answered_by": "rules", "audited_at": datetime(2025, 1, 2, 9, 0)})
        if decision:
            events.append({
                "event_id": n, "item_id": n, "kind": "error", "tenant_id": "acme",
                "interaction_id": iid, "actor": "ann", "action": "decide",
                "status_before": "pending", "status_after": decision, "note": None,
                "event_at": datetime(2025, 1, 3, 10, n), "auditor": "rules",
                "prompt_version": "rules-v1", "category": None, "severity": None,
                "source": None})
    # a later decision overrides an earlier one (f4 was first confirmed, then dismissed)
    events.insert(0, {**events[3], "event_id": 0, "status_after": "confirmed"})
    con = duckdb.connect(str(path))
    try:
        _create(con, "interactions", INTERACTION_COLUMNS, interactions)
        _create(con, "quarantined_interactions", QUARANTINE_COLUMNS, [])
        _create(con, "interaction_quality", QUALITY_COLUMNS, [])
        _create(con, "audited_errors", AUDITED_COLUMNS, verdicts)
        _create(con, "review_decisions", REVIEW_DECISION_COLUMNS, events)
    finally:
        con.close()


def test_agreement_uses_reviewer_labels_and_matches_cohen_kappa(learnloop_home: Path):
    warehouse = learnloop_home / "warehouse.duckdb"
    _warehouse(warehouse)
    result = dg.materialize([dbt_analytics_assets],
                            resources={"dbt": dbt_resource, "learnloop": LearnloopResource()},
                            instance=dg.DagsterInstance.ephemeral())
    assert result.success
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()
              if e.asset_key == dg.AssetKey("auditor_agreement")}
    assert checks and all(checks.values()), checks

    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        cur = con.execute("SELECT * FROM analytics.auditor_agreement")
        names = [d[0] for d in cur.description]
        rows = [dict(zip(names, r)) for r in cur.fetchall()]
    finally:
        con.close()
    [row] = rows
    assert (row["audited"], row["flagged"], row["confirmed"], row["dismissed"]) == (12, 6, 3, 1)
    assert row["negatives_reviewed"] == 4
    assert (row["labeled"], row["tp"], row["fp"], row["fn"], row["tn"]) == (8, 3, 1, 1, 3)
    assert row["precision"] == pytest.approx(3 / 4)
    assert row["recall"] == pytest.approx(3 / 4)  # were corrections labels: 5/5 = 1.0 (circular)
    # po = 6/8, pe = (4*4 + 4*4)/64 = 0.5 -> kappa 0.5
    assert row["cohens_kappa"] == pytest.approx(0.5)
    labeled = [(flagged, decision == "confirmed") for _, flagged, decision, _ in CASES if decision]
    expected = cohen_kappa([p for p, _ in labeled], [a for _, a in labeled])
    assert expected == pytest.approx(0.5) and row["cohens_kappa"] == pytest.approx(expected)
    # corrections are reported apart: f3, f5 flagged of f3, f5, c5
    assert (row["correction_labeled"], row["correction_flagged"]) == (3, 2)
    assert row["correction_recall"] == pytest.approx(2 / 3)


def test_a_correction_blind_auditor_counts_corrections_as_labels(learnloop_home: Path, tmp_path):
    """With `rules` listed in the dbt var correction_blind_auditors, corrections of undecided
    verdicts become error labels: f5 (flagged) a tp, c5 (clean) a fn."""
    import json
    import subprocess

    from assets.analytics import DBT_PROJECT_DIR, dbt_executable

    warehouse = learnloop_home / "warehouse.duckdb"
    _warehouse(warehouse)
    run = subprocess.run(
        [dbt_executable(), "build",
         "--project-dir", str(DBT_PROJECT_DIR), "--profiles-dir", str(DBT_PROJECT_DIR),
         "--target-path", str(tmp_path / "target"), "--log-path", str(tmp_path / "logs"),
         "--vars", json.dumps({"warehouse_path": str(warehouse),
                               "correction_blind_auditors": ["rules"]})],
        capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:]
    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        row = con.execute("SELECT labeled, tp, fp, fn, tn, recall FROM analytics.auditor_agreement"
                          ).fetchone()
    finally:
        con.close()
    assert row[:5] == (10, 4, 1, 2, 3)
    assert row[5] == pytest.approx(4 / 6)
