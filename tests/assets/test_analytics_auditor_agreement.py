"""The auditor_agreement mart on a hand-made warehouse (real dbt, real DuckDB, real Dagster): labels
come from reviewers only (flag confirmed/dismissed, and "no error found" calibration items confirmed
= false negative / dismissed = true negative); human corrections are reported apart, never as labels
for an auditor that reads them. Precision uses every decided flag; recall and Cohen's kappa are
estimated on the calibration sample only, each label weighted by the inverse of its probability of
a review item (audited_errors.label_weight), and kappa equals ml.audit.metrics.cohen_kappa with the
same weights."""

from __future__ import annotations

from datetime import date, datetime
from pathlib import Path

import dagster as dg
import pytest

from assets.analytics import dbt_analytics_assets, dbt_resource
from ml import warehouse as wh
from ml.audit.labels import label_weight
from ml.audit.metrics import cohen_kappa
from ml.tables import (
    AUDITED_COLUMNS,
    INTERACTION_COLUMNS,
    QUALITY_COLUMNS,
    QUARANTINE_COLUMNS,
    REVIEW_DECISION_COLUMNS,
    TABLES,
)
from tests.stores import resources_for, warehouse_target

D1 = date(2025, 1, 1)
RATE = 0.2  # clean_review_rate: a clean calibration verdict put to review weighs 1 / 0.2 = 5

# (interaction, flagged, reviewer decision on the auditor's item, human agent corrected it,
#  in the calibration sample (None: written before it was recorded), clean verdict put to review)
CASES = [
    # signalled interactions (outside the calibration sample): raw counts and precision only
    ("f1", True, "confirmed", False, False, False),   # tp
    ("f2", True, "confirmed", False, False, False),   # tp
    ("f3", True, "confirmed", True, False, False),    # tp (the decision labels it, not the correction)
    ("f4", True, "dismissed", False, False, False),   # fp
    ("f5", True, None, True, False, False),           # unlabeled: a correction is no label for "rules"
    ("f6", True, None, False, False, False),          # unlabeled
    ("c5", False, None, True, False, False),          # unlabeled; counted in correction_labeled
    ("c6", False, None, False, False, False),         # unlabeled
    # the calibration sample
    ("k1", True, "confirmed", False, True, False),    # tp, weight 1
    ("k2", True, "confirmed", False, True, False),    # tp, weight 1
    ("k3", True, "dismissed", False, True, False),    # fp, weight 1
    ("k4", True, None, False, True, False),           # flag not decided yet: no label
    ("c1", False, "confirmed", False, True, True),    # fn, weight 5
    ("c2", False, "dismissed", False, True, True),    # tn, weight 5
    ("c3", False, "dismissed", False, True, True),    # tn, weight 5
    ("c4", False, None, False, True, False),          # clean, not put to review: no label
    # a verdict written before in_calibration / label_weight existed: raw counts only
    ("l1", True, "confirmed", False, None, False),    # tp
]


def _weight(flagged: bool, in_cal: bool | None, reviewed: bool) -> float | None:
    return label_weight(flagged, bool(in_cal), reviewed, RATE) if in_cal is not None else None


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
    for n, (iid, flagged, decision, corrected, in_cal, reviewed) in enumerate(CASES, start=1):
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
            "signals": [], "answered_by": "rules", "audited_at": datetime(2025, 1, 2, 9, 0),
            "in_calibration": in_cal, "label_weight": _weight(flagged, in_cal, reviewed)})
        if decision:
            events.append({
                "event_id": n, "item_id": n, "kind": "error", "tenant_id": "acme",
                "interaction_id": iid, "actor": "ann", "action": "decide",
                "status_before": "pending", "status_after": decision, "note": None,
                "event_at": datetime(2025, 1, 3, 10, n), "auditor": "rules",
                "prompt_version": "rules-v1", "category": None, "severity": None,
                "source": None})
    # a later decision overrides an earlier one (f4 was first confirmed, then dismissed)
    assert events[3]["interaction_id"] == "f4"
    events.insert(0, {**events[3], "event_id": 0, "status_after": "confirmed"})
    con = wh.connect(path)
    try:
        _create(con, "interactions", INTERACTION_COLUMNS, interactions)
        _create(con, "quarantined_interactions", QUARANTINE_COLUMNS, [])
        _create(con, "interaction_quality", QUALITY_COLUMNS, [])
        _create(con, "audited_errors", AUDITED_COLUMNS, verdicts)
        _create(con, "review_decisions", REVIEW_DECISION_COLUMNS, events)
        _create(con, "model_evaluations", TABLES["model_evaluations"].types, [])
    finally:
        con.close()


def test_agreement_uses_reviewer_labels_and_matches_cohen_kappa(learnloop_home: Path):
    warehouse = warehouse_target(learnloop_home)
    _warehouse(warehouse)
    result = dg.materialize([dbt_analytics_assets],
                            resources=resources_for(dbt=dbt_resource),
                            instance=dg.DagsterInstance.ephemeral())
    assert result.success
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()
              if e.asset_key == dg.AssetKey("auditor_agreement")}
    assert checks and all(checks.values()), checks

    con = wh.connect(warehouse, read_only=True)
    try:
        cur = con.execute("SELECT * FROM analytics.auditor_agreement")
        names = [d[0] for d in cur.description]
        rows = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
    finally:
        con.close()
    [row] = rows
    # raw counts over all verdicts: flagged f1-f6, k1-k4, l1; decided flags f1 f2 f3 k1 k2 l1
    # confirmed, f4 k3 dismissed; clean verdicts decided c1 c2 c3
    assert (row["audited"], row["flagged"], row["confirmed"], row["dismissed"]) == (17, 11, 6, 2)
    assert row["negatives_reviewed"] == 3
    assert (row["labeled"], row["tp"], row["fp"], row["fn"], row["tn"]) == (11, 6, 2, 1, 2)
    assert row["precision"] == pytest.approx(6 / 8)  # every decided flag, in or out of the sample
    # calibration sample, labeled: k1 k2 (tp, 1), k3 (fp, 1), c1 (fn, 5), c2 c3 (tn, 5 each)
    # -> weighted TP 2, FP 1, FN 5, TN 10, N 18
    assert row["calibration_labeled"] == 6
    assert (row["weighted_tp"], row["weighted_fp"], row["weighted_fn"],
            row["weighted_tn"]) == pytest.approx((2, 1, 5, 10))
    # recall = 2 / (2 + 5) = 2/7; the biased raw tp / (tp + fn) would be 6/7, and the unweighted
    # calibration counts 2 / (2 + 1) = 2/3
    assert row["recall"] == pytest.approx(2 / 7)
    # po = (2 + 10) / 18 = 12/18; pe = ((2+1)(2+5) + (5+10)(1+10)) / 18^2 = (21 + 165)/324
    # kappa = (216 - 186) / (324 - 186) = 30/138 = 5/23
    assert row["cohens_kappa"] == pytest.approx(5 / 23)
    cal = [(flagged, decision == "confirmed", _weight(flagged, in_cal, reviewed))
           for _, flagged, decision, _, in_cal, reviewed in CASES
           if decision and in_cal and _weight(flagged, in_cal, reviewed) is not None]
    assert len(cal) == 6
    expected = cohen_kappa([p for p, _, _ in cal], [a for _, a, _ in cal], [w for _, _, w in cal])
    assert expected == pytest.approx(5 / 23, abs=1e-4)
    assert row["cohens_kappa"] == pytest.approx(expected, abs=1e-4)
    # unweighted, the same six labels give po 4/6, pe 1/2 -> kappa 1/3: the weights matter
    assert cohen_kappa([p for p, _, _ in cal], [a for _, a, _ in cal]) == pytest.approx(1 / 3,
                                                                                      abs=1e-4)
    # corrections are reported apart: f3, f5 flagged of f3, f5, c5
    assert (row["correction_labeled"], row["correction_flagged"]) == (3, 2)
    assert row["correction_recall"] == pytest.approx(2 / 3)


@pytest.mark.parametrize("older", ["null_values", "no_columns"])
def test_no_calibration_labels_leave_recall_and_kappa_null(learnloop_home: Path, older: str):
    """Without labeled verdicts in the calibration sample, recall and kappa are NULL, not a biased
    figure. Here: verdicts written before in_calibration / label_weight were recorded (NULL), or
    an older warehouse whose audited_errors table lacks the two columns altogether (the mart
    still builds)."""
    warehouse = warehouse_target(learnloop_home)
    _warehouse(warehouse)
    con = wh.connect(warehouse)
    try:
        if older == "null_values":
            con.execute("UPDATE audited_errors SET in_calibration = NULL, label_weight = NULL")
        else:
            con.execute("ALTER TABLE audited_errors DROP COLUMN label_weight")
            con.execute("ALTER TABLE audited_errors DROP COLUMN in_calibration")
    finally:
        con.close()
    result = dg.materialize([dbt_analytics_assets],
                            resources=resources_for(dbt=dbt_resource),
                            instance=dg.DagsterInstance.ephemeral())
    assert result.success
    con = wh.connect(warehouse, read_only=True)
    try:
        row = con.execute("SELECT labeled, tp, fn, calibration_labeled, precision, recall, "
                          "cohens_kappa FROM analytics.auditor_agreement").fetchone()
    finally:
        con.close()
    assert row[:4] == (11, 6, 1, 0)
    assert row[4] == pytest.approx(6 / 8)
    assert row[5] is None and row[6] is None


def test_a_correction_blind_auditor_counts_corrections_as_labels(learnloop_home: Path, tmp_path):
    """With `rules` listed in the dbt var correction_blind_auditors, corrections of undecided
    verdicts become error labels in the raw counts: f5 (flagged) a tp, c5 (clean) a fn. Corrected
    interactions are signalled, never in the calibration sample: recall stays 2/7."""
    import json
    import subprocess

    from assets.analytics import DBT_PROJECT_DIR, dbt_executable

    warehouse = warehouse_target(learnloop_home)
    _warehouse(warehouse)
    run = subprocess.run(
        [dbt_executable(), "build",
         "--project-dir", str(DBT_PROJECT_DIR), "--profiles-dir", str(DBT_PROJECT_DIR),
         "--target-path", str(tmp_path / "target"), "--log-path", str(tmp_path / "logs"),
         "--vars", json.dumps({"warehouse_path": str(warehouse),
                               "correction_blind_auditors": ["rules"]})],
        capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:]
    con = wh.connect(warehouse, read_only=True)
    try:
        row = con.execute("SELECT labeled, tp, fp, fn, tn, calibration_labeled, recall "
                          "FROM analytics.auditor_agreement").fetchone()
    finally:
        con.close()
    assert row[:6] == (13, 7, 2, 2, 2, 6)  # 11 labels + f5 (tp) + c5 (fn)
    assert row[6] == pytest.approx(2 / 7)
